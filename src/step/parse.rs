//! Text → [`Step`]: the tokenizer, the per-step state machine, and the whole-solution splitter.
//!
//! Everything here works on `&str` slices cut at ASCII token boundaries (`<`, `\`, `{`, `}`,
//! `\n`), which are always char boundaries, so no input can make a slice panic.

use super::{
    ParseIssue, Step, StopReason, ANSWER, CODE, END_OF_ANSWER, END_OF_CODE, END_OF_OUTPUT,
    OTHER_SPECIAL_TOKENS, OUTPUT, STEP_DELIM, STOP_STRINGS,
};

/// Parses the text the policy produced for one step.
///
/// `stop` is the stop string the generator reported (vLLM's `stop_reason`), `None` when it
/// stopped for length or end-of-sequence. The generator may or may not have included the stop
/// string in `generated`; both are accepted, and [`Step::raw`] always ends with it. With
/// `stop = None`, a text that ends with a stop string (including `<end_of_output>`) is taken as
/// stopped by it. A `stop` that is not a known stop string is kept as an issue and the step is
/// treated as truncated.
pub fn parse_step(generated: &str, stop: Option<&str>) -> Step {
    let mut issues = Vec::new();
    let (raw, reason) = match stop.filter(|s| !s.is_empty()) {
        Some(s) => match StopReason::from_token(s) {
            Some(reason) if generated.ends_with(s) => (generated.to_string(), reason),
            Some(reason) => (format!("{generated}{s}"), reason),
            None => {
                issues.push(ParseIssue::UnknownStop(s.to_string()));
                (generated.to_string(), StopReason::Length)
            }
        },
        None => {
            let reason = super::BOOTSTRAP_STOP_STRINGS
                .iter()
                .find(|t| generated.ends_with(**t))
                .and_then(|t| StopReason::from_token(t))
                .unwrap_or(StopReason::Length);
            (generated.to_string(), reason)
        }
    };
    build(raw, reason, issues)
}

/// Splits a whole solution text (as rendered by [`super::render_solution`], or as found in
/// rStar's SFT data) into its steps.
///
/// A step ends at the first of [`STOP_STRINGS`]; one [`STEP_DELIM`] after it is consumed; after a
/// step containing `<end_of_code>`, an `<output>…<end_of_output>` block becomes that step's
/// [`Step::output`]. Text after the last stop string becomes a truncated step. For well-formed
/// text `render_solution(&parse_solution(x), None) == x`, and for any text parsing the rendering
/// again gives the same steps.
pub fn parse_solution(text: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let next = STOP_STRINGS
            .iter()
            .filter_map(|t| rest.find(t).map(|i| (i + t.len(), *t)))
            .min_by_key(|&(end, _)| end);
        let Some((end, token)) = next else {
            steps.push(build(rest.to_string(), StopReason::Length, Vec::new()));
            break;
        };
        let reason = StopReason::from_token(token).unwrap_or(StopReason::Length);
        let mut step = build(rest[..end].to_string(), reason, Vec::new());
        rest = &rest[end..];
        if reason.takes_delim() {
            rest = rest.strip_prefix(STEP_DELIM).unwrap_or(rest);
        }
        if step.ends_code {
            if let Some(after) = rest.strip_prefix(OUTPUT) {
                if let Some(close) = after.find(END_OF_OUTPUT) {
                    step.output = Some(after[..close].to_string());
                    rest = &after[close + END_OF_OUTPUT.len()..];
                }
            }
        }
        steps.push(step);
    }
    steps
}

/// The content of the last `\boxed{…}` (or `\fbox{…}`) in `text`, braces matched with nesting;
/// `\boxed 5` (space form) runs to the next `$` or line end. `None` when there is none or when it
/// is never closed.
pub fn last_boxed(text: &str) -> Option<&str> {
    match scan_last_boxed(text) {
        Boxed::Found(s) => Some(s),
        Boxed::None | Boxed::Unclosed => None,
    }
}

enum Boxed<'a> {
    None,
    Found(&'a str),
    Unclosed,
}

fn scan_last_boxed(text: &str) -> Boxed<'_> {
    let at = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|k| text.rfind(k).map(|i| i + k.len()))
        .max();
    let Some(after_kw) = at else {
        return Boxed::None;
    };
    let rest = &text[after_kw..];
    let trimmed = rest.trim_start();
    if let Some(inner) = trimmed.strip_prefix('{') {
        // Naive brace counting, as the standard MATH `last_boxed_only_string` does: escaped
        // braces `\{ \}` come in pairs inside a well-formed answer, so they cancel out.
        let mut depth = 1usize;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Boxed::Found(&inner[..i]);
                    }
                }
                _ => {}
            }
        }
        Boxed::Unclosed
    } else if trimmed.len() < rest.len() && !trimmed.is_empty() {
        let end = trimmed.find(['$', '\n']).unwrap_or(trimmed.len());
        let s = trimmed[..end].trim();
        if s.is_empty() {
            Boxed::None
        } else {
            Boxed::Found(s)
        }
    } else {
        Boxed::None
    }
}

/// A piece of a step's body: plain text, or a token at a char boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Tok(&'static str),
}

/// Splits `body` at every special token (format tokens and the other chat/SFT tokens).
fn tokenize(body: &str) -> Vec<Piece<'_>> {
    const FORMAT: [&str; 7] = super::SPECIAL_TOKENS;
    let mut pieces = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while let Some(off) = body[i..].find('<') {
        let at = i + off;
        let tail = &body[at..];
        let tok = FORMAT
            .iter()
            .chain(OTHER_SPECIAL_TOKENS.iter())
            .find(|t| tail.starts_with(**t));
        match tok {
            Some(t) => {
                if at > text_start {
                    pieces.push(Piece::Text(&body[text_start..at]));
                }
                pieces.push(Piece::Tok(t));
                i = at + t.len();
                text_start = i;
            }
            None => i = at + 1,
        }
    }
    if text_start < body.len() {
        pieces.push(Piece::Text(&body[text_start..]));
    }
    pieces
}

/// Where in the step the parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Inside the code block (every step starts here: all but the first continue the block).
    Code,
    /// After `<end_of_code>` or a closed `<output>` block.
    AfterCode,
    /// Inside an `<output>` block the model wrote.
    Output,
    /// Inside `<answer>`.
    Answer,
    /// After `<end_of_answer>`.
    AfterAnswer,
}

struct Acc {
    region: Region,
    code: String,
    after_code: String,
    model_output: Option<String>,
    answer: Option<String>,
    opens_code: bool,
    ends_code: bool,
    seen_token: bool,
    issues: Vec<ParseIssue>,
}

impl Acc {
    fn issue(&mut self, issue: ParseIssue) {
        if !self.issues.contains(&issue) {
            self.issues.push(issue);
        }
    }

    fn text(&mut self, t: &str) {
        match self.region {
            Region::Code => self.code.push_str(t),
            Region::AfterCode => self.after_code.push_str(t),
            Region::Output => self
                .model_output
                .get_or_insert_with(String::new)
                .push_str(t),
            Region::Answer => self.answer.get_or_insert_with(String::new).push_str(t),
            Region::AfterAnswer => {
                if !t.trim().is_empty() {
                    self.issue(ParseIssue::TextAfterAnswer);
                }
            }
        }
    }

    /// A token in the middle of the body (not the stop string that ended the step).
    fn token(&mut self, t: &'static str) {
        let first = !self.seen_token;
        self.seen_token = true;
        let stray = |acc: &mut Acc| acc.issue(ParseIssue::StrayToken(t.to_string()));
        match (t, self.region) {
            (CODE, Region::Code) if first && self.code.trim().is_empty() => {
                self.opens_code = true;
                // Whitespace before `<code>` stays in `raw` only.
                self.code.clear();
            }
            (END_OF_CODE, Region::Code) => {
                self.ends_code = true;
                self.region = Region::AfterCode;
                // A stop string in the middle: the generator should have stopped here.
                stray(self);
            }
            (OUTPUT, Region::Code | Region::AfterCode) => {
                self.issue(ParseIssue::ModelOutput);
                self.region = Region::Output;
                self.model_output.get_or_insert_with(String::new);
            }
            (END_OF_OUTPUT, Region::Output) => self.region = Region::AfterCode,
            (END_OF_OUTPUT, _) => self.issue(ParseIssue::Unbalanced(t.to_string())),
            (ANSWER, Region::Code | Region::AfterCode) => {
                if self.region == Region::Code && has_statements(&self.code) {
                    self.issue(ParseIssue::AnswerInsideCode);
                }
                self.region = Region::Answer;
                self.answer.get_or_insert_with(String::new);
            }
            (END_OF_ANSWER, Region::Answer) => {
                self.region = Region::AfterAnswer;
                stray(self);
            }
            (END_OF_ANSWER, Region::AfterAnswer) => self.issue(ParseIssue::TextAfterAnswer),
            (END_OF_ANSWER, _) => self.issue(ParseIssue::Unbalanced(t.to_string())),
            (_, Region::AfterAnswer) => self.issue(ParseIssue::TextAfterAnswer),
            // `<end_of_step>` inside code (rStar's extract_program just drops it), `<code>` after
            // the start, chat markers, an `<output>`/`<answer>` inside a block.
            _ => stray(self),
        }
    }

    /// The stop string that ended the step.
    fn stop(&mut self, reason: StopReason) {
        let misplaced = |acc: &mut Acc| {
            let tok = reason.as_token().unwrap_or_default();
            acc.issue(ParseIssue::MisplacedStop(tok.to_string()));
        };
        match (reason, self.region) {
            // Truncation is reported once, by the caller.
            (StopReason::Length, _) => {}
            (StopReason::EndOfStep, Region::Code) => {}
            (StopReason::EndOfCode, Region::Code) => {
                self.ends_code = true;
                self.region = Region::AfterCode;
            }
            (StopReason::EndOfStep | StopReason::EndOfCode, Region::Answer) => {
                self.issue(ParseIssue::CodeAfterAnswer);
                self.issue(ParseIssue::Unbalanced(ANSWER.to_string()));
            }
            (StopReason::EndOfStep | StopReason::EndOfCode, Region::AfterAnswer) => {
                self.issue(ParseIssue::CodeAfterAnswer);
            }
            (StopReason::EndOfAnswer, Region::Answer) => self.region = Region::AfterAnswer,
            (StopReason::EndOfAnswer, Region::Code) if self.answer.is_none() => {
                // No `<answer>`: the model wrote its answer as plain text (often after the
                // output). Everything since the code ended, or the whole body, is the answer.
                self.issue(ParseIssue::Unbalanced(END_OF_ANSWER.to_string()));
                self.answer = Some(std::mem::take(&mut self.code));
            }
            (StopReason::EndOfAnswer, Region::AfterCode) if self.answer.is_none() => {
                self.issue(ParseIssue::Unbalanced(END_OF_ANSWER.to_string()));
                self.answer = Some(std::mem::take(&mut self.after_code));
            }
            (StopReason::EndOfOutput, Region::Output) => self.region = Region::AfterCode,
            (StopReason::EndOfOutput, _) => {
                self.issue(ParseIssue::Unbalanced(END_OF_OUTPUT.to_string()));
            }
            (_, Region::Output) => {
                self.issue(ParseIssue::Unbalanced(OUTPUT.to_string()));
            }
            _ => misplaced(self),
        }
    }
}

/// Parses `raw` (which ends with the stop string of `reason`, if any).
fn build(raw: String, reason: StopReason, issues: Vec<ParseIssue>) -> Step {
    let body = reason
        .as_token()
        .and_then(|t| raw.strip_suffix(t))
        .unwrap_or(&raw);
    let mut acc = Acc {
        region: Region::Code,
        code: String::new(),
        after_code: String::new(),
        model_output: None,
        answer: None,
        opens_code: false,
        ends_code: false,
        seen_token: false,
        issues: Vec::new(),
    };
    for issue in issues {
        acc.issue(issue);
    }
    for piece in tokenize(body) {
        match piece {
            Piece::Text(t) => acc.text(t),
            Piece::Tok(t) => acc.token(t),
        }
    }
    acc.stop(reason);
    if reason == StopReason::Length {
        acc.issue(ParseIssue::Truncated);
    }
    if !acc.after_code.trim().is_empty() {
        acc.issue(ParseIssue::TextAfterCode);
    }

    let code = tidy_code(&acc.code);
    let comments: Vec<String> = code
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if body.trim().is_empty() {
        acc.issue(ParseIssue::Empty);
    } else if matches!(reason, StopReason::EndOfStep | StopReason::EndOfCode)
        && acc.answer.is_none()
        && !has_statements(&code)
    {
        acc.issue(ParseIssue::NoCode);
    }
    let boxed_scan = match &acc.answer {
        Some(a) => scan_last_boxed(a),
        None => scan_last_boxed(body),
    };
    let boxed = match boxed_scan {
        Boxed::Found(s) => Some(s.to_string()),
        Boxed::Unclosed => {
            acc.issue(ParseIssue::UnclosedBoxed);
            None
        }
        Boxed::None => None,
    };
    if acc.answer.is_some() && !raw.contains("boxed") {
        acc.issue(ParseIssue::AnswerWithoutBoxed);
    }
    Step {
        stop: reason,
        opens_code: acc.opens_code,
        comments,
        code,
        ends_code: acc.ends_code,
        model_output: acc.model_output,
        answer: acc.answer,
        boxed,
        output: None,
        issues: acc.issues,
        raw,
    }
}

/// The code region without leading/trailing blank lines, each line verbatim (indentation
/// matters), ending with `"\n"` when not empty.
fn tidy_code(code: &str) -> String {
    let lines: Vec<&str> = code.split('\n').collect();
    let first = lines.iter().position(|l| !l.trim().is_empty());
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let (Some(first), Some(last)) = (first, last) else {
        return String::new();
    };
    let mut out = String::with_capacity(code.len());
    for line in &lines[first..=last] {
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out
}

/// A non-blank line that is not a comment.
pub(super) fn has_statements(code: &str) -> bool {
    code.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    })
}

#[cfg(test)]
mod tests {
    use super::super::END_OF_STEP;
    use super::*;

    #[test]
    fn tokenize_splits_at_tokens_only() {
        let p = tokenize("<code>\na < b<end_of_step>");
        assert_eq!(
            p,
            vec![
                Piece::Tok(CODE),
                Piece::Text("\na < b"),
                Piece::Tok(END_OF_STEP)
            ]
        );
        assert!(tokenize("").is_empty());
        assert_eq!(tokenize("<"), vec![Piece::Text("<")]);
    }

    #[test]
    fn first_step_with_code_token() {
        let s = parse_step(
            "<code>\n# Step 1: Calculate the total weight\ntotal = 2 * 20 * 12\n",
            Some(END_OF_STEP),
        );
        assert!(s.opens_code);
        assert_eq!(s.stop, StopReason::EndOfStep);
        assert!(s.raw.ends_with("\n<end_of_step>"));
        assert_eq!(s.comments, vec!["# Step 1: Calculate the total weight"]);
        assert_eq!(
            s.code,
            "# Step 1: Calculate the total weight\ntotal = 2 * 20 * 12\n"
        );
        assert!(!s.ends_code);
        assert!(s.is_clean(), "{:?}", s.issues);
        assert!(s.needs_execution());
    }

    #[test]
    fn stop_included_or_not_gives_the_same_step() {
        let a = parse_step("\n# Step 2\nx = 1\n", Some(END_OF_STEP));
        let b = parse_step("\n# Step 2\nx = 1\n<end_of_step>", Some(END_OF_STEP));
        let c = parse_step("\n# Step 2\nx = 1\n<end_of_step>", None);
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert!(!a.opens_code);
    }

    #[test]
    fn end_of_code_step() {
        let s = parse_step(
            "# Now print the final answer\nprint(x)\n",
            Some(END_OF_CODE),
        );
        assert!(s.ends_code);
        assert_eq!(s.stop, StopReason::EndOfCode);
        assert!(s.is_clean(), "{:?}", s.issues);
    }

    #[test]
    fn answer_step_with_nested_boxed() {
        let s = parse_step(
            "<answer>So \\boxed{\\frac{1}{\\sqrt{2}}} it is.\n",
            Some(END_OF_ANSWER),
        );
        assert_eq!(s.boxed.as_deref(), Some("\\frac{1}{\\sqrt{2}}"));
        assert_eq!(
            s.answer.as_deref(),
            Some("So \\boxed{\\frac{1}{\\sqrt{2}}} it is.\n")
        );
        assert!(s.is_final());
        assert!(!s.needs_execution());
        assert!(s.is_clean(), "{:?}", s.issues);
    }

    #[test]
    fn truncated_and_empty() {
        let s = parse_step("x = (1 +", None);
        assert_eq!(s.stop, StopReason::Length);
        assert!(s.issues.contains(&ParseIssue::Truncated));
        let e = parse_step("  \n", Some(END_OF_STEP));
        assert!(e.issues.contains(&ParseIssue::Empty));
        let z = parse_step("", None);
        assert_eq!(z.issues, vec![ParseIssue::Truncated, ParseIssue::Empty]);
    }

    #[test]
    fn comment_only_step_has_no_code() {
        let s = parse_step("# Step 3: think harder\n", Some(END_OF_STEP));
        assert_eq!(s.issues, vec![ParseIssue::NoCode]);
        assert!(!s.needs_execution());
    }

    #[test]
    fn unknown_stop_is_truncation() {
        let s = parse_step("x = 1", Some("</s>"));
        assert_eq!(s.raw, "x = 1");
        assert_eq!(s.stop, StopReason::Length);
        assert!(s.issues.contains(&ParseIssue::UnknownStop("</s>".into())));
    }

    #[test]
    fn model_written_output_bootstrap() {
        let s = parse_step("print(x)\n<output>16", Some(END_OF_OUTPUT));
        assert_eq!(s.stop, StopReason::EndOfOutput);
        assert_eq!(s.model_output.as_deref(), Some("16"));
        assert!(s.issues.contains(&ParseIssue::ModelOutput));
        assert_eq!(s.code, "print(x)\n");
    }

    #[test]
    fn garbled_steps_report_issues() {
        let s = parse_step(
            "<answer>\\boxed{3}<end_of_answer>\nx = 2\n",
            Some(END_OF_STEP),
        );
        assert!(s.issues.contains(&ParseIssue::TextAfterAnswer));
        let s = parse_step("<answer>so 3\nx = 2\n", Some(END_OF_STEP));
        assert!(s.issues.contains(&ParseIssue::CodeAfterAnswer));
        assert!(s.issues.contains(&ParseIssue::AnswerWithoutBoxed));
        let s = parse_step("x = 1\n<code>y = 2", Some(END_OF_STEP));
        assert!(s.issues.contains(&ParseIssue::StrayToken(CODE.into())));
        let s = parse_step("x = 1<|assistant|>", Some(END_OF_STEP));
        assert!(s
            .issues
            .contains(&ParseIssue::StrayToken("<|assistant|>".into())));
        let s = parse_step("x<end_of_output>", Some(END_OF_STEP));
        assert!(s
            .issues
            .contains(&ParseIssue::Unbalanced(END_OF_OUTPUT.into())));
        let s = parse_step("<answer>\\boxed{1", Some(END_OF_ANSWER));
        assert!(s.issues.contains(&ParseIssue::UnclosedBoxed));
        assert_eq!(s.boxed, None);
        let s = parse_step("x = 1\n<answer>\\boxed{1}", Some(END_OF_ANSWER));
        assert!(s.issues.contains(&ParseIssue::AnswerInsideCode));
    }

    #[test]
    fn answer_without_answer_token() {
        let s = parse_step("The answer is \\boxed{7}.", Some(END_OF_ANSWER));
        assert_eq!(s.answer.as_deref(), Some("The answer is \\boxed{7}."));
        assert_eq!(s.code, "");
        assert_eq!(s.boxed.as_deref(), Some("7"));
        assert!(s
            .issues
            .contains(&ParseIssue::Unbalanced(END_OF_ANSWER.into())));
    }

    #[test]
    fn boxed_forms() {
        assert_eq!(last_boxed("\\boxed{1} and \\boxed{2}"), Some("2"));
        assert_eq!(last_boxed("$\\boxed 5$"), Some("5"));
        assert_eq!(last_boxed("\\fbox{a{b}c}"), Some("a{b}c"));
        assert_eq!(last_boxed("\\boxed{"), None);
        assert_eq!(last_boxed("no box"), None);
        assert_eq!(last_boxed("\\boxed"), None);
        assert_eq!(last_boxed("\\boxed{\\{1,2\\}}"), Some("\\{1,2\\}"));
    }

    #[test]
    fn code_keeps_indentation_and_drops_blank_edges() {
        let s = parse_step("\n\nfor i in range(3):\n    x += i\n\n", Some(END_OF_STEP));
        assert_eq!(s.code, "for i in range(3):\n    x += i\n");
    }

    #[test]
    fn solution_split() {
        let text = "<code>\nx = 1\n<end_of_step>\nprint(x)\n<end_of_code>\n<output>1<end_of_output><answer>\\boxed{1}<end_of_answer>";
        let steps = parse_solution(text);
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1].output.as_deref(), Some("1"));
        assert_eq!(steps[2].boxed.as_deref(), Some("1"));
        assert!(steps.iter().all(Step::is_clean), "{steps:?}");
    }
}
