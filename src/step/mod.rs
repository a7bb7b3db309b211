//! rStar-Math's code-augmented CoT step format: what one step of a solution is, how a generated
//! continuation becomes a [`Step`], and how steps become the exact text the policy continues from.
//!
//! This module owns the special tokens and stop strings, the [`Step`] record with its
//! [`StopReason`] and [`ParseIssue`]s, the parser ([`parse_step`] for one generated step,
//! [`parse_solution`] for a whole solution text) and the renderer ([`render_prefix`],
//! [`render_solution`], [`program_of`]). It does not run code (`exec`) nor judge answers (`grade`).
//!
//! # The format (reference/rstar-math.md §b)
//! ```text
//! <code>
//! # Step 1: Calculate the total weight lifted with two 20-pound weights
//! total_weight_20 = 2 * 20 * 12
//! <end_of_step>
//!
//! # Step 2: ...
//! weight_per_rep_15 = 2 * 15
//! <end_of_step>
//! # Now print the final answer
//! print(reps_needed)
//! <end_of_code>
//! <output>16.0<end_of_output><answer>From the result, ... \boxed{16} times ...
//! <end_of_answer>
//! ```
//! One step is one generation: the policy stops *at* a stop string ([`STOP_STRINGS`]). A step's
//! [`Step::raw`] text always ends with its stop string (appended by [`parse_step`] when the
//! generator left it out), so that the rendered prefix is what rStar's `state.text` holds.
//!
//! # Rendering rules (rStar's `state.text`, joined root to leaf)
//! * every step is its raw text; a step that ended with `<end_of_step>`, `<end_of_code>` or
//!   `<end_of_output>` is followed by [`STEP_DELIM`] (`"\n"`); an `<end_of_answer>` step (final)
//!   and a truncated step are not;
//! * a step containing `<end_of_code>` whose interpreter output is known ([`Step::output`]) is
//!   followed by `<output>{output}<end_of_output>` right after the delimiter, with no delimiter
//!   after it (the answer step follows directly, as in the example).
//!
//! So the blank line between steps in the example is the model's own leading `"\n"` of the next
//! step, kept verbatim in that step's `raw`.
//!
//! # Never fails
//! Partial, truncated or garbled model output is normal input: parsing never fails and never
//! panics; whatever is odd about a step is listed in [`Step::issues`].

mod parse;
mod render;

use serde::{Deserialize, Serialize};

pub use parse::{last_boxed, parse_solution, parse_step};
pub use render::{program_of, render_prefix, render_solution, Trajectory};

/// Opens the code block (first step of a solution).
pub const CODE: &str = "<code>";
/// Ends an intermediate step.
pub const END_OF_STEP: &str = "<end_of_step>";
/// Ends the last code step (the one that prints the answer).
pub const END_OF_CODE: &str = "<end_of_code>";
/// Opens the interpreter output shown to the policy.
pub const OUTPUT: &str = "<output>";
/// Closes the interpreter output.
pub const END_OF_OUTPUT: &str = "<end_of_output>";
/// Opens the natural-language answer (which holds `\boxed{…}`).
pub const ANSWER: &str = "<answer>";
/// Closes the answer; the solution ends here.
pub const END_OF_ANSWER: &str = "<end_of_answer>";

/// The seven format tokens rStar adds to the tokenizer.
pub const SPECIAL_TOKENS: [&str; 7] = [
    CODE,
    END_OF_STEP,
    END_OF_CODE,
    OUTPUT,
    END_OF_OUTPUT,
    ANSWER,
    END_OF_ANSWER,
];

/// Other tokens rStar adds for SFT/PPM that must never appear inside a step (chat markers,
/// refinement and error-info blocks); seeing one in a step is a [`ParseIssue::StrayToken`].
pub const OTHER_SPECIAL_TOKENS: [&str; 7] = [
    "<|user|>",
    "<|assistant|>",
    "<refine>",
    "<end_of_refine>",
    "<error_info>",
    "<end_of_error_info>",
    "<BACK>",
];

/// Stop strings at generation time (rounds 2–4 and evaluation).
pub const STOP_STRINGS: [&str; 3] = [END_OF_STEP, END_OF_CODE, END_OF_ANSWER];

/// Stop strings of the bootstrap round (a model not trained on the format may write its own
/// `<output>` block; stopping at its end keeps it from continuing with invented results).
pub const BOOTSTRAP_STOP_STRINGS: [&str; 4] =
    [END_OF_STEP, END_OF_CODE, END_OF_ANSWER, END_OF_OUTPUT];

/// rStar's `step_delim`, appended after every non-final step.
pub const STEP_DELIM: &str = "\n";

/// Which stop string ended a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `<end_of_step>`: an intermediate code step.
    EndOfStep,
    /// `<end_of_code>`: the last code step; its output is shown to the policy.
    EndOfCode,
    /// `<end_of_answer>`: the final answer.
    EndOfAnswer,
    /// `<end_of_output>` (bootstrap stop only): the model wrote an output block itself.
    EndOfOutput,
    /// No stop string: the generation hit its length limit or end-of-sequence, so the step is
    /// truncated (or the generator reported a stop string this format does not know).
    Length,
}

impl StopReason {
    /// The stop string, `None` for [`StopReason::Length`].
    pub fn as_token(self) -> Option<&'static str> {
        match self {
            StopReason::EndOfStep => Some(END_OF_STEP),
            StopReason::EndOfCode => Some(END_OF_CODE),
            StopReason::EndOfAnswer => Some(END_OF_ANSWER),
            StopReason::EndOfOutput => Some(END_OF_OUTPUT),
            StopReason::Length => None,
        }
    }

    /// The reason for a stop string, `None` for a string that is not one of
    /// [`BOOTSTRAP_STOP_STRINGS`].
    pub fn from_token(s: &str) -> Option<StopReason> {
        match s {
            END_OF_STEP => Some(StopReason::EndOfStep),
            END_OF_CODE => Some(StopReason::EndOfCode),
            END_OF_ANSWER => Some(StopReason::EndOfAnswer),
            END_OF_OUTPUT => Some(StopReason::EndOfOutput),
            _ => None,
        }
    }

    /// Whether the step is followed by [`STEP_DELIM`] when rendered (see the module docs).
    pub fn takes_delim(self) -> bool {
        matches!(
            self,
            StopReason::EndOfStep | StopReason::EndOfCode | StopReason::EndOfOutput
        )
    }
}

/// Something odd about a step. None of these stop a step from being parsed; the search decides
/// what to do with them (rStar itself only distinguishes "contains boxed" from "run it").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum ParseIssue {
    /// Nothing but whitespace (and the stop string).
    #[error("empty step")]
    Empty,
    /// No stop string ended the step (length limit or end-of-sequence).
    #[error("truncated: no stop string")]
    Truncated,
    /// The generator reported a stop string this format does not know; the step is treated as
    /// truncated and the string is not appended.
    #[error("unknown stop string {0:?}")]
    UnknownStop(String),
    /// A code step (ended by `<end_of_step>`/`<end_of_code>`) with no Python statement, only
    /// comments or blank lines.
    #[error("code step without code")]
    NoCode,
    /// Code continued after an `<answer>` was opened (the step ended as a code step).
    #[error("code after an answer")]
    CodeAfterAnswer,
    /// An `<answer>` opened while the code block was still open (statements before it in this
    /// step and no `<end_of_code>`).
    #[error("answer inside the code block")]
    AnswerInsideCode,
    /// Non-whitespace text after `<end_of_answer>`.
    #[error("text after the answer")]
    TextAfterAnswer,
    /// Non-whitespace text after `<end_of_code>` that is neither output nor answer.
    #[error("text after the end of the code")]
    TextAfterCode,
    /// An opening token without its closing one, or a closing token without its opening one.
    #[error("unbalanced {0}")]
    Unbalanced(String),
    /// A special token where it does not belong (`<code>` after the start, a stop string in the
    /// middle of a step, chat markers, …).
    #[error("stray token {0}")]
    StrayToken(String),
    /// The step ended by a stop string that does not fit where the step was (e.g. `<end_of_step>`
    /// after `<end_of_code>`).
    #[error("misplaced stop string {0}")]
    MisplacedStop(String),
    /// The model wrote an `<output>` block itself; its content is kept in
    /// [`Step::model_output`] but is not an interpreter result.
    #[error("the model wrote its own output block")]
    ModelOutput,
    /// An `<answer>` without "boxed": rStar would not treat this step as final.
    #[error("answer without \\boxed")]
    AnswerWithoutBoxed,
    /// `\boxed{` without its closing brace.
    #[error("unclosed \\boxed{{")]
    UnclosedBoxed,
}

/// One step: one generation of the policy, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The exact text of the step, ending with its stop string (none when truncated). This is
    /// what goes into the prefix, verbatim.
    pub raw: String,
    /// Which stop string ended it.
    pub stop: StopReason,
    /// The step opens the code block (begins with `<code>`, leading whitespace allowed).
    pub opens_code: bool,
    /// The comment lines of the code (trimmed, `#` kept): the natural-language `# Step k: …` part.
    pub comments: Vec<String>,
    /// The step's Python source: the code region without the format tokens and without leading
    /// and trailing blank lines, ending with `"\n"` when not empty. Comment lines are kept
    /// (valid Python, and line numbers in tracebacks then match the step).
    pub code: String,
    /// The step contains `<end_of_code>`: it closes the code block, and its interpreter output is
    /// shown to the policy.
    pub ends_code: bool,
    /// The text of an `<output>…` block the model wrote itself (never an interpreter result).
    pub model_output: Option<String>,
    /// The text inside `<answer>…<end_of_answer>` (to the end when unclosed). Also set, with an
    /// [`ParseIssue::Unbalanced`] issue, when the step ended with `<end_of_answer>` but never
    /// opened `<answer>`.
    pub answer: Option<String>,
    /// The content of the last `\boxed{…}` (nested braces) in the answer, or in the whole step
    /// when there is no answer block.
    pub boxed: Option<String>,
    /// The interpreter output of this step, set by the caller (executor) and shown in the prefix
    /// when [`Step::ends_code`]; filled from the text by [`parse_solution`].
    #[serde(default)]
    pub output: Option<String>,
    /// Everything odd about the step, in the order found, without repeats.
    pub issues: Vec<ParseIssue>,
}

impl Step {
    /// rStar's test for a final answer: the step text contains "boxed" (`agents/utils.py`). A
    /// final step is never executed.
    pub fn is_final(&self) -> bool {
        self.raw.contains("boxed")
    }

    /// The code has at least one Python statement (a non-blank line that is not a comment).
    pub fn has_statements(&self) -> bool {
        parse::has_statements(&self.code)
    }

    /// rStar runs every non-final step; this says whether there is anything to run.
    pub fn needs_execution(&self) -> bool {
        !self.is_final() && self.has_statements()
    }

    /// The step is well-formed (no issues).
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }

    /// Sets the interpreter output shown after a `<end_of_code>` step (builder style).
    pub fn with_output(mut self, output: impl Into<String>) -> Step {
        self.output = Some(output.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reason_tokens_round_trip() {
        for t in BOOTSTRAP_STOP_STRINGS {
            let r = StopReason::from_token(t).expect("known stop string");
            assert_eq!(r.as_token(), Some(t));
            assert!(r.takes_delim() == (t != END_OF_ANSWER));
        }
        assert_eq!(StopReason::from_token("</s>"), None);
        assert_eq!(StopReason::Length.as_token(), None);
        assert!(!StopReason::Length.takes_delim());
    }

    #[test]
    fn issues_serialize_tagged() {
        let j = serde_json::to_string(&ParseIssue::StrayToken(CODE.into())).unwrap();
        assert_eq!(j, r#"{"kind":"stray_token","detail":"<code>"}"#);
        let j = serde_json::to_string(&ParseIssue::Truncated).unwrap();
        assert_eq!(j, r#"{"kind":"truncated"}"#);
        assert_eq!(
            ParseIssue::Unbalanced(ANSWER.into()).to_string(),
            "unbalanced <answer>"
        );
    }
}
