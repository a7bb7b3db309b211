//! Self-evolution's bookkeeping: the run manifest, stage completion, and the per-round report.
//!
//! A run (`rstar-gpu evolve --out DIR`) is a fixed sequence of *stages* per round — search the
//! training problems, select pairs and SFT data, train the policy, train the PPM, evaluate — each
//! writing under `DIR/round-R/STAGE`. `DIR/manifest.json` records the run's settings and, per
//! stage, whether it finished and what it reported. The manifest is replaced atomically (write a
//! temporary file, fsync, rename) after every stage, so a run killed at any moment (SIGKILL
//! included) resumes from the last finished stage:
//!
//! - evaluation and search stages append one JSONL record per finished problem and resume at
//!   problem granularity (a torn last line is dropped, finished problems are not redone);
//! - training stages write into `STAGE.partial` and rename it into place when complete, so a
//!   half-written checkpoint is never taken for a finished one;
//! - a stage is marked done only after its outputs are in place.
//!
//! The orchestration (which model each stage loads) is the CLI's (`src/cli/evolve.rs`); this
//! module owns the on-disk contract and the report.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FORMAT: &str = "rstar-gpu-evolve";
const VERSION: u32 = 1;

/// Why a manifest could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EvolveError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not an evolve manifest ({msg}); move it away or choose another --out", .path.display())]
    Manifest { path: PathBuf, msg: String },
    #[error("{0}")]
    Mismatch(String),
}

/// One stage's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub done: bool,
    /// Wall seconds of the run that finished it (resumed stages: the finishing run only).
    pub secs: f64,
    /// What the stage reported (an evaluation summary, training report, counts), or why it was
    /// skipped.
    pub summary: serde_json::Value,
}

/// One round's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub round: usize,
    /// The policy this round searches and evaluates with (a model spec or checkpoint dir); for
    /// round 0 the base model.
    pub policy_in: String,
    /// The PPM the search uses, if any.
    pub ppm_in: Option<String>,
    /// The policy trained this round (`None` until trained, or when there was no SFT data).
    pub policy_out: Option<String>,
    pub ppm_out: Option<String>,
    pub stages: Vec<Stage>,
}

impl Round {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn is_done(&self, name: &str) -> bool {
        self.stage(name).is_some_and(|s| s.done)
    }

    /// Records `name` as finished (replacing an earlier record of it).
    pub fn finish(&mut self, name: &str, secs: f64, summary: serde_json::Value) {
        self.stages.retain(|s| s.name != name);
        self.stages.push(Stage {
            name: name.to_string(),
            done: true,
            secs,
            summary,
        });
    }

    fn num(&self, stage: &str, key: &str) -> Option<f64> {
        self.stage(stage)
            .filter(|s| s.done)
            .and_then(|s| s.summary.get(key))
            .and_then(|v| v.as_f64())
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The settings that decide the run's results (a resumed run must match them).
    pub config: serde_json::Value,
    pub rounds: Vec<Round>,
}

impl Manifest {
    pub fn new(config: serde_json::Value) -> Self {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            config,
            rounds: Vec::new(),
        }
    }

    /// Reads `path`; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Manifest>, EvolveError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(EvolveError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| EvolveError::Manifest {
            path: path.into(),
            msg: e.to_string(),
        })?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(EvolveError::Manifest {
                path: path.into(),
                msg: format!("format {} v{}", m.format, m.version),
            });
        }
        Ok(Some(m))
    }

    /// Checks that a resumed run has the same settings (the number of rounds may grow).
    pub fn check_config(&self, config: &serde_json::Value) -> Result<(), EvolveError> {
        let strip = |v: &serde_json::Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("rounds");
            }
            v
        };
        let (a, b) = (strip(&self.config), strip(config));
        if a == b {
            return Ok(());
        }
        let mut diffs = Vec::new();
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (k, va) in a {
                if b.get(k) != Some(va) {
                    diffs.push(format!(
                        "{k}: {va} then, {} now",
                        b.get(k).unwrap_or(&serde_json::Value::Null)
                    ));
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                diffs.push(format!("{k}: new setting"));
            }
        }
        Err(EvolveError::Mismatch(format!(
            "the run in this directory used other settings ({}); resume with the same flags or choose another --out",
            diffs.join("; ")
        )))
    }

    /// Writes the manifest atomically: a temporary file, fsync, rename.
    pub fn write(&self, path: &Path) -> Result<(), EvolveError> {
        let io = |source| EvolveError::Io {
            path: path.into(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| EvolveError::Manifest {
            path: path.into(),
            msg: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// The round record `r`, created (with `policy_in` / `ppm_in`) if missing.
    pub fn round_mut(&mut self, r: usize, policy_in: &str, ppm_in: Option<&str>) -> &mut Round {
        if let Some(i) = self.rounds.iter().position(|x| x.round == r) {
            return &mut self.rounds[i];
        }
        self.rounds.push(Round {
            round: r,
            policy_in: policy_in.into(),
            ppm_in: ppm_in.map(str::to_string),
            policy_out: None,
            ppm_out: None,
            stages: Vec::new(),
        });
        self.rounds.sort_by_key(|x| x.round);
        let i = self.rounds.iter().position(|x| x.round == r).unwrap_or(0);
        &mut self.rounds[i]
    }
}

/// Stage names, in the order a round runs them.
pub mod stages {
    pub const SEARCH: &str = "search";
    pub const DATA: &str = "data";
    pub const POLICY: &str = "policy";
    pub const PPM: &str = "ppm";
    pub const EVAL_GREEDY: &str = "eval-greedy";
    pub const EVAL_MCTS: &str = "eval-mcts";
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundRow {
    pub round: usize,
    /// Fraction of the round's training problems with a correct trajectory.
    pub coverage: Option<f64>,
    pub sft_examples: Option<f64>,
    pub pairs: Option<f64>,
    pub ppm_heldout_accuracy: Option<f64>,
    pub greedy_accuracy: Option<f64>,
    pub mcts_accuracy: Option<f64>,
    /// Policy tokens of the round's search, per problem.
    pub search_tokens_per_problem: Option<f64>,
    pub mcts_tokens_per_problem: Option<f64>,
    pub secs: f64,
}

/// The report's rows, one per round in the manifest.
pub fn rows(m: &Manifest) -> Vec<RoundRow> {
    m.rounds
        .iter()
        .map(|r| {
            let ppm_acc = r
                .stage(stages::PPM)
                .filter(|s| s.done)
                .and_then(|s| s.summary.get("epochs"))
                .and_then(|e| e.as_array())
                .and_then(|e| e.last())
                .and_then(|e| e.get("heldout_accuracy"))
                .and_then(|v| v.as_f64());
            RoundRow {
                round: r.round,
                coverage: r.num(stages::SEARCH, "coverage"),
                sft_examples: r.num(stages::DATA, "sft_examples"),
                pairs: r.num(stages::DATA, "pairs"),
                ppm_heldout_accuracy: ppm_acc,
                greedy_accuracy: r.num(stages::EVAL_GREEDY, "accuracy"),
                mcts_accuracy: r.num(stages::EVAL_MCTS, "accuracy"),
                search_tokens_per_problem: r.num(stages::SEARCH, "tokens_per_problem"),
                mcts_tokens_per_problem: r.num(stages::EVAL_MCTS, "tokens_per_problem"),
                secs: r.stages.iter().map(|s| s.secs).sum(),
            }
        })
        .collect()
}

/// The markdown report: one table row per round.
pub fn markdown(m: &Manifest) -> String {
    let pct = |x: Option<f64>| x.map_or("–".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let num = |x: Option<f64>| x.map_or("–".to_string(), |x| format!("{x:.0}"));
    let mut s = String::from("# Self-evolution report\n\n");
    s.push_str("Round 0 is the base policy (no training). Coverage: training problems with at least one correct trajectory in the round's search. Greedy / MCTS: accuracy on the evaluation problems (MCTS in test mode, with the round's PPM when there is one).\n\n");
    s.push_str("| round | policy | search mode | coverage (train) | SFT examples | pairs | PPM held-out pairwise acc. | greedy acc. | MCTS(+PPM) acc. | search tokens / problem | MCTS eval tokens / problem | time (s) |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (r, row) in m.rounds.iter().zip(rows(m)) {
        let mode = r
            .stage(stages::SEARCH)
            .and_then(|s| s.summary.get("search"))
            .and_then(|s| s.get("mode"))
            .and_then(|v| v.as_str())
            .unwrap_or("–");
        let policy = r.policy_out.as_deref().unwrap_or(&r.policy_in);
        let policy = Path::new(policy)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| policy.to_string());
        let policy = if r.round > 0 && r.policy_out.is_some() {
            format!("SFT r{} ({policy})", r.round)
        } else {
            policy
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            row.round,
            policy,
            mode,
            pct(row.coverage),
            num(row.sft_examples),
            num(row.pairs),
            pct(row.ppm_heldout_accuracy),
            pct(row.greedy_accuracy),
            pct(row.mcts_accuracy),
            num(row.search_tokens_per_problem),
            num(row.mcts_tokens_per_problem),
            row.secs
        ));
    }
    s
}

/// The chart's series: greedy and MCTS accuracy, training coverage, PPM held-out accuracy.
pub fn series(m: &Manifest) -> Vec<crate::report::Series> {
    let rows = rows(m);
    let mk = |name: &str, f: &dyn Fn(&RoundRow) -> Option<f64>| crate::report::Series {
        name: name.into(),
        points: rows
            .iter()
            .filter_map(|r| f(r).map(|y| (r.round as f64, y)))
            .collect(),
    };
    vec![
        mk("greedy accuracy (eval)", &|r| r.greedy_accuracy),
        mk("MCTS(+PPM) accuracy (eval)", &|r| r.mcts_accuracy),
        mk("coverage (train search)", &|r| r.coverage),
        mk("PPM held-out pairwise acc.", &|r| r.ppm_heldout_accuracy),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rstar-evolve-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn manifest_round_trips_and_resumes_stage_by_stage() {
        let dir = tmp("manifest");
        let path = dir.join("manifest.json");
        assert!(Manifest::read(&path).unwrap().is_none());
        let cfg = serde_json::json!({"rounds": 2, "model": "m", "rollouts": 4});
        let mut m = Manifest::new(cfg.clone());
        let r = m.round_mut(1, "m", None);
        r.finish(stages::SEARCH, 3.0, serde_json::json!({"coverage": 0.5}));
        assert!(r.is_done(stages::SEARCH));
        assert!(!r.is_done(stages::DATA));
        m.write(&path).unwrap();
        let back = Manifest::read(&path).unwrap().unwrap();
        assert_eq!(back, m);
        // More rounds is a continuation; other settings are not.
        back.check_config(&serde_json::json!({"rounds": 4, "model": "m", "rollouts": 4}))
            .unwrap();
        let err = back
            .check_config(&serde_json::json!({"rounds": 2, "model": "m", "rollouts": 8}))
            .unwrap_err();
        assert!(err.to_string().contains("rollouts"), "{err}");
        std::fs::write(&path, "{not json").unwrap();
        assert!(Manifest::read(&path).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn report_rows_read_the_stage_summaries() {
        let mut m = Manifest::new(serde_json::json!({}));
        let r = m.round_mut(1, "base", None);
        r.finish(
            stages::SEARCH,
            10.0,
            serde_json::json!({"coverage": 0.25, "tokens_per_problem": 800.0, "search": {"mode": "terminal-guided"}}),
        );
        r.finish(
            stages::DATA,
            0.5,
            serde_json::json!({"sft_examples": 6, "pairs": 9}),
        );
        r.finish(
            stages::PPM,
            2.0,
            serde_json::json!({"epochs": [{"heldout_accuracy": 0.4}, {"heldout_accuracy": 0.6}]}),
        );
        r.finish(
            stages::EVAL_GREEDY,
            4.0,
            serde_json::json!({"accuracy": 0.1}),
        );
        r.policy_out = Some("/x/round-1/policy".into());
        let rows = rows(&m);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.coverage, Some(0.25));
        assert_eq!(row.ppm_heldout_accuracy, Some(0.6));
        assert_eq!(row.greedy_accuracy, Some(0.1));
        assert_eq!(row.mcts_accuracy, None);
        assert_eq!(row.secs, 16.5);
        let md = markdown(&m);
        assert!(md.contains("| 1 | SFT r1 (policy) | terminal-guided | 25.0% | 6 | 9 | 60.0% | 10.0% | – | 800 |"), "{md}");
    }
}
