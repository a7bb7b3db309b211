//! Final answers: extraction from a generated solution, normalisation, and equivalence with a
//! reference answer — the judge that decides which trajectories are correct.
//!
//! This module owns the extraction rules ([`extract`]), the normalised form of an answer and the
//! arithmetic evaluator ([`mod@normalize`]), the equivalence rules ([`equiv`]), and the seam to a
//! symbolic checker ([`symbolic`]: the [`SymbolicChecker`] trait and its default, sympy in a
//! subprocess with a hard time limit). It does not run model code; the executor owns that.
//!
//! The behaviour follows the standard math graders (the MATH dataset's `is_equiv` /
//! `strip_string`, Qwen/DeepSeek's `math_equal`, which rStar's `rstar_equiv` ORs together),
//! re-derived rather than copied, with each rule documented where it lives. Deliberate choices:
//! * a percentage `50%` equals `50` and `0.5`, but a plain `0.5` never equals `50`;
//! * numbers compare with a relative tolerance of 1e-4 ([`equiv::REL_TOL`]);
//! * `(1,2)` and `[1,2]` differ (interval ends are respected); bare lists and sets are unordered;
//! * an answer the quick rules cannot decide is "not equal" unless the symbolic checker says
//!   equal, and the [`Outcome`] carries the reason it stayed undecided.
//!
//! ```
//! use rstar_gpu::grade::{Grader, Rule};
//!
//! let g = Grader::quick(); // no subprocess; `Grader::with_sympy()` adds the symbolic fallback
//! let r = g.grade(r"so the answer is $\boxed{\dfrac{1}{2}}$.", None, "0.5");
//! assert!(r.correct());
//! assert_eq!(r.extracted.unwrap().rule, Rule::Boxed);
//! assert!(g.equiv("50\\%", "0.5").equivalent);
//! assert!(!g.equiv("(1,2)", "[1,2]").equivalent);
//! ```

pub mod equiv;
pub mod extract;
pub mod normalize;
pub mod symbolic;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use equiv::{compare, Outcome, Via};
pub use extract::{extract_answer, hash_answer, last_boxed, last_number, Extracted, Rule};
pub use normalize::{eval_number, normalize};
pub use symbolic::{python_interpreter, PythonSympy, SymbolicChecker, SYMPY_PROGRAM};

/// Why a symbolic check could not decide. These never escape as panics: the grader turns them
/// into an undecided ("not equal") [`Outcome`] with the message as its note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GradeError {
    /// The interpreter could not be started (or `python3` could not be resolved).
    #[error("cannot start {0}: {1}")]
    Spawn(String, String),
    /// The symbolic check ran past its limit and was killed.
    #[error("symbolic check killed after {0:?}")]
    Timeout(Duration),
    /// sympy is missing, could not parse an answer, or gave no answer.
    #[error("symbolic check failed: {0}")]
    Symbolic(String),
}

/// Grades answers: the quick rules, plus an optional symbolic checker for what they leave open.
#[derive(Clone, Default)]
pub struct Grader {
    symbolic: Option<Arc<dyn SymbolicChecker>>,
}

impl std::fmt::Debug for Grader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grader")
            .field("symbolic", &self.symbolic.is_some())
            .finish()
    }
}

/// The result of grading one solution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    /// The extracted answer and the rule that found it; `None` when nothing was found.
    pub extracted: Option<Extracted>,
    /// The comparison with the reference (`equivalent: false`, `via: Undecided` when nothing was
    /// extracted).
    pub outcome: Outcome,
}

impl Grade {
    /// The solution's answer is equivalent to the reference.
    pub fn correct(&self) -> bool {
        self.outcome.equivalent
    }
}

impl Grader {
    /// Quick rules only: no subprocess, fully deterministic.
    pub fn quick() -> Self {
        Self { symbolic: None }
    }

    /// Quick rules plus sympy in a `python3` subprocess (5 s per undecided pair).
    pub fn with_sympy() -> Self {
        Self::with_checker(Arc::new(PythonSympy::default()))
    }

    /// Quick rules plus the given checker (e.g. the executor's worker pool).
    pub fn with_checker(checker: Arc<dyn SymbolicChecker>) -> Self {
        Self {
            symbolic: Some(checker),
        }
    }

    /// Whether `pred` is equivalent to `reference` (see [`equiv`] for the rules).
    pub fn equiv(&self, pred: &str, reference: &str) -> Outcome {
        compare(pred, reference, self.symbolic.as_deref())
    }

    /// Many pairs at once: the quick rules for all, then one [`SymbolicChecker::check_batch`]
    /// call for every pair (or tuple element) they leave open — one interpreter start instead of
    /// one per pair. Same verdicts as calling [`Grader::equiv`] on each pair.
    pub fn equiv_many(&self, pairs: &[(&str, &str)]) -> Vec<Outcome> {
        let Some(checker) = &self.symbolic else {
            return pairs.iter().map(|(a, b)| compare(a, b, None)).collect();
        };
        // Pass 1 records what the quick rules leave open (a superset of what pass 2 will ask:
        // an undecided answer never cuts a comparison short, an equal one may).
        let recorder = Recorder::default();
        let first: Vec<Outcome> = pairs
            .iter()
            .map(|(a, b)| compare(a, b, Some(&recorder)))
            .collect();
        let mut asked = recorder.0.into_inner().unwrap_or_else(|e| e.into_inner());
        if asked.is_empty() {
            return first;
        }
        asked.sort();
        asked.dedup();
        let results = checker.check_batch(&asked);
        let answers = Answers(asked.into_iter().zip(results).collect());
        pairs
            .iter()
            .map(|(a, b)| compare(a, b, Some(&answers)))
            .collect()
    }

    /// Extracts the final answer of `solution` (with the last step's `printed_output`, if any)
    /// and compares it with `reference`.
    pub fn grade(&self, solution: &str, printed_output: Option<&str>, reference: &str) -> Grade {
        let extracted = extract_answer(solution, printed_output);
        let outcome = match &extracted {
            Some(e) => self.equiv(&e.answer, reference),
            None => Outcome {
                equivalent: false,
                via: Via::Undecided,
                note: Some("no answer found".into()),
            },
        };
        Grade { extracted, outcome }
    }
}

/// [`Grader::equiv_many`]'s first pass: records each question, answers "undecided".
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(String, String)>>);

impl SymbolicChecker for Recorder {
    fn check(&self, a: &str, b: &str) -> Result<bool, GradeError> {
        if let Ok(mut v) = self.0.lock() {
            v.push((a.to_string(), b.to_string()));
        }
        Err(GradeError::Symbolic("deferred".into()))
    }
}

/// [`Grader::equiv_many`]'s second pass: the batch's answers.
struct Answers(std::collections::HashMap<(String, String), Result<bool, GradeError>>);

impl SymbolicChecker for Answers {
    fn check(&self, a: &str, b: &str) -> Result<bool, GradeError> {
        self.0
            .get(&(a.to_string(), b.to_string()))
            .cloned()
            .unwrap_or_else(|| Err(GradeError::Symbolic("not in the batch".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grade_without_answer() {
        let g = Grader::quick().grade("I do not know", None, "5");
        assert!(!g.correct());
        assert_eq!(g.extracted, None);
        assert_eq!(g.outcome.note.as_deref(), Some("no answer found"));
    }

    #[test]
    fn grade_from_printed_output() {
        let g = Grader::quick().grade("print(x)", Some("0.7500\n"), r"\frac34");
        assert!(g.correct(), "{g:?}");
        assert_eq!(g.extracted.unwrap().rule, Rule::Output);
    }
}
