//! The settings of one MCTS run ([`SearchConfig`]), with the paper's defaults, loadable from TOML.
//!
//! Every field can be set in a TOML file (`--config FILE`, unknown keys are an error) and the
//! common ones again by flags, which win.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SearchError;

/// How new nodes get their values (`../shared/reference/rstar-math.md` §a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Rounds 1–2: an answer node gets +1/−1 against the reference answer and is backed up to the
    /// root; fresh non-terminal nodes start at 0 with no visit.
    TerminalGuided,
    /// Rounds 3–4: as terminal-guided, but a fresh non-terminal node gets the PPM's score as its
    /// initial value (counted as one visit, never backed up).
    PpmAugmented,
    /// Test time (no reference used): fresh nodes get their PPM score once; an answer node backs
    /// its PPM score up to the root. Without a PPM every score is 0.
    Test,
}

impl Mode {
    /// Whether this mode grades answers against the reference during the search.
    pub fn needs_reference(self) -> bool {
        !matches!(self, Mode::Test)
    }
    /// Whether this mode asks the PPM for initial values.
    pub fn uses_ppm(self) -> bool {
        !matches!(self, Mode::TerminalGuided)
    }
}

/// How one answer is picked from a finished tree (or from N samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerRule {
    /// The answer node with the highest value (at test time: the highest PPM-scored trajectory,
    /// the paper's rule).
    Best,
    /// The top-K answer nodes by value vote, each weighted by its value mapped to [0, 1] (the
    /// official code's `eval_maj.py` variant); answers are grouped by the grader's equivalence.
    Vote,
    /// Every answer node votes once (self-consistency over the tree); for searches without a PPM.
    Majority,
}

/// One MCTS run's settings. `Default` is the paper's: c = 2, max depth 16, 8 candidates,
/// 16 rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    pub mode: Mode,
    /// UCT exploration constant c in `Q + c·sqrt(ln N_parent / N)`.
    pub c: f32,
    /// Most steps in a trajectory; a non-answer step deeper than this is terminal with −1.
    pub max_depth: usize,
    /// Candidate steps the policy samples per expansion (before dedupe), 1..=255.
    pub candidates: usize,
    /// Rollouts per problem: a rollout ends when an expansion leaves no open child to descend
    /// into (all new children terminal).
    pub rollouts: usize,
    /// When a candidate holds an answer, keep only the first such candidate (rStar's rule); with
    /// `false`, keep the first answer and every non-answer candidate (so a small policy that
    /// answers too early does not end the search at that node).
    pub answer_only: bool,
    /// Leaves selected per tree per step (virtual loss keeps them apart), 1..=64.
    pub leaves_per_step: usize,
    /// Virtual loss per in-flight selection.
    pub virtual_loss: f32,
    /// Consecutive failing code steps (the code raised, or its output mentions "error") that make
    /// a node terminal with −1 (rStar: 2 in the bootstrap round, 1 later).
    pub errors_threshold: u32,
    /// Sampling temperature of the candidates.
    pub temperature: f64,
    pub top_p: f64,
    /// Most new tokens per step.
    pub step_tokens: usize,
    /// Sampler seed (each sample's stream also depends on its prompt text).
    pub seed: u64,
    /// How the final answer is picked from the tree.
    pub answer_rule: AnswerRule,
    /// K of [`AnswerRule::Vote`].
    pub vote_top_k: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            mode: Mode::TerminalGuided,
            c: 2.0,
            max_depth: 16,
            candidates: 8,
            rollouts: 16,
            answer_only: true,
            leaves_per_step: 1,
            virtual_loss: 1.0,
            errors_threshold: 2,
            temperature: 0.7,
            top_p: 1.0,
            step_tokens: 256,
            seed: 0,
            answer_rule: AnswerRule::Best,
            vote_top_k: 4,
        }
    }
}

impl SearchConfig {
    /// Reads a TOML file; fields left out keep their defaults.
    pub fn from_toml_file(path: &Path) -> Result<SearchConfig, SearchError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SearchError::Config(format!("cannot read {}: {e}", path.display())))?;
        let cfg: SearchConfig = toml::from_str(&text).map_err(|e| {
            SearchError::Config(format!(
                "{}: {} (see `rstar-gpu solve --help` for the keys)",
                path.display(),
                e.message()
            ))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every range the driver relies on.
    pub fn validate(&self) -> Result<(), SearchError> {
        let bad = |m: &str| Err(SearchError::Config(m.to_string()));
        if !(self.c.is_finite() && self.c >= 0.0) {
            return bad("c must be finite and >= 0");
        }
        if self.max_depth == 0 || self.max_depth > 1000 {
            return bad("max_depth must be in 1..=1000");
        }
        if self.candidates == 0 || self.candidates > crate::forest::MAX_CHILDREN_LIMIT {
            return bad("candidates must be in 1..=255");
        }
        if self.rollouts == 0 {
            return bad("rollouts must be at least 1");
        }
        if self.leaves_per_step == 0 || self.leaves_per_step > crate::forest::MAX_LEAVES_LIMIT {
            return bad("leaves_per_step must be in 1..=64");
        }
        if !(self.virtual_loss.is_finite() && self.virtual_loss >= 0.0) {
            return bad("virtual_loss must be finite and >= 0");
        }
        if self.errors_threshold == 0 {
            return bad("errors_threshold must be at least 1");
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be finite and >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if self.step_tokens == 0 {
            return bad("step_tokens must be at least 1");
        }
        if self.vote_top_k == 0 {
            return bad("vote_top_k must be at least 1");
        }
        Ok(())
    }

    /// Most expansions one tree may take: every rollout descends at most `max_depth + 1` levels.
    pub fn max_expansions(&self) -> usize {
        self.rollouts.saturating_mul(self.max_depth + 1)
    }

    /// Node capacity that the expansion budget can never exceed.
    pub fn capacity(&self) -> usize {
        1 + self.max_expansions().saturating_mul(self.candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let cfg = SearchConfig {
            mode: Mode::PpmAugmented,
            rollouts: 4,
            ..SearchConfig::default()
        };
        let text = toml::to_string(&cfg).unwrap();
        let back: SearchConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let partial: SearchConfig = toml::from_str("candidates = 3\nmode = \"test\"").unwrap();
        assert_eq!(partial.candidates, 3);
        assert_eq!(partial.mode, Mode::Test);
        assert_eq!(partial.rollouts, 16);
        assert!(toml::from_str::<SearchConfig>("candidate = 3").is_err());
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let mut c = SearchConfig::default();
        assert!(c.validate().is_ok());
        c.candidates = 0;
        assert!(c.validate().is_err());
        c = SearchConfig {
            temperature: f64::NAN,
            ..SearchConfig::default()
        };
        assert!(c.validate().is_err());
        assert_eq!(SearchConfig::default().capacity(), 1 + 16 * 17 * 8);
    }
}
