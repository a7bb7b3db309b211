//! Final-answer extraction: which part of a generated solution is "the answer".
//!
//! Rules, tried in this order (the first that finds something wins, and the result says which):
//! 1. [`Rule::Boxed`] — the content of the LAST `\boxed{…}` or `\fbox{…}` in the text, with nested
//!    braces balanced (`\boxed{\frac{1}{2}}` gives `\frac{1}{2}`). `\boxed 5` (no brace, as some
//!    models write) takes the next token. An unclosed `\boxed{` (truncated output) is skipped, so an
//!    earlier complete one can still count.
//! 2. [`Rule::Hash`] — GSM8K's `#### N`: the rest of the line after the last `####`.
//! 3. [`Rule::Output`] — the printed output of the last executed step (rStar's `<output>` block),
//!    which the caller passes in; its last non-empty line, trimmed.
//! 4. [`Rule::LastNumber`] — the last number in the text (`-1,234.5`, `3/4`, `.5`), as a fallback
//!    for solutions that state the answer in prose.
//!
//! Boxed comes first because rStar's answer block (`<answer>… \boxed{…}`) is the policy's own
//! statement of its final answer; the printed output is only a fallback when it gave none.

use serde::{Deserialize, Serialize};

/// Which rule found the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The last `\boxed{…}` / `\fbox{…}`.
    Boxed,
    /// GSM8K's `#### N`.
    Hash,
    /// The last step's printed output, passed by the caller.
    Output,
    /// The last number in the text.
    LastNumber,
}

/// An extracted final answer (raw text: not yet normalised).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extracted {
    /// The answer text as written (trimmed).
    pub answer: String,
    /// The rule that found it.
    pub rule: Rule,
}

/// Extracts the final answer of `text` by the rules of the module docs; `printed_output` is the
/// output of the last executed step, if any. `None` when no rule finds anything.
pub fn extract_answer(text: &str, printed_output: Option<&str>) -> Option<Extracted> {
    if let Some(a) = last_boxed(text) {
        return Some(Extracted {
            answer: a,
            rule: Rule::Boxed,
        });
    }
    if let Some(a) = hash_answer(text) {
        return Some(Extracted {
            answer: a,
            rule: Rule::Hash,
        });
    }
    if let Some(out) = printed_output {
        if let Some(line) = out.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            return Some(Extracted {
                answer: line.to_string(),
                rule: Rule::Output,
            });
        }
    }
    last_number(text).map(|a| Extracted {
        answer: a,
        rule: Rule::LastNumber,
    })
}

/// The content of the last complete `\boxed{…}` or `\fbox{…}` (nested braces balanced).
pub fn last_boxed(text: &str) -> Option<String> {
    // Walk the occurrences from the end, so a truncated last box falls back to an earlier one.
    let mut starts: Vec<usize> = Vec::new();
    for pat in ["\\boxed", "\\fbox"] {
        starts.extend(text.match_indices(pat).map(|(i, m)| i + m.len()));
    }
    if starts.is_empty() {
        return None;
    }
    starts.sort_unstable();
    // All brace pairs in one pass: looking each box's group up separately would be quadratic on
    // a garbled generation of many unclosed `\boxed{`.
    let closing = brace_pairs(text);
    for &after in starts.iter().rev() {
        let rest = &text[after..];
        let trimmed = rest.trim_start();
        if trimmed.starts_with('{') {
            let open = after + (rest.len() - trimmed.len());
            if let Some(&close) = closing.get(&open) {
                return Some(text[open + 1..close].trim().to_string());
            }
        } else if rest.starts_with(' ') {
            // `\boxed 5`: the token up to the next space or `$`.
            let tok: String = trimmed
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '$')
                .collect();
            if !tok.is_empty() {
                return Some(tok);
            }
        }
    }
    None
}

/// Byte index of each `{` that is closed → byte index of its `}` (escaped `\{` `\}` skipped).
fn brace_pairs(s: &str) -> std::collections::HashMap<usize, usize> {
    let mut pairs = std::collections::HashMap::new();
    let mut stack = Vec::new();
    let mut prev_backslash = false;
    for (i, c) in s.char_indices() {
        match c {
            '{' if !prev_backslash => stack.push(i),
            '}' if !prev_backslash => {
                if let Some(open) = stack.pop() {
                    pairs.insert(open, i);
                }
            }
            _ => {}
        }
        prev_backslash = c == '\\' && !prev_backslash;
    }
    pairs
}

/// Byte index of the `}` closing a group whose `{` was just consumed (`s` starts after it).
/// Escaped braces `\{` `\}` do not count.
pub(crate) fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    let mut prev_backslash = false;
    for (i, c) in s.char_indices() {
        match c {
            '{' if !prev_backslash => depth += 1,
            '}' if !prev_backslash => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        prev_backslash = c == '\\' && !prev_backslash;
    }
    None
}

/// GSM8K's answer: the rest of the line after the last `####`.
pub fn hash_answer(text: &str) -> Option<String> {
    let i = text.rfind("####")?;
    let line = text[i + 4..].lines().next().unwrap_or("").trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// The last number in `text`: an optional sign, digits with optional thousands separators, an
/// optional decimal part, or a simple fraction `a/b`. Separators are kept (normalisation removes
/// them); a trailing sentence period is not part of the number.
pub fn last_number(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = b.len();
    // Find the last digit, then grow the token to the left over digits, `,` `.` `/` and a sign.
    while i > 0 && !b[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i == 0 {
        return None;
    }
    let end = i;
    let mut start = end;
    while start > 0 {
        let c = b[start - 1];
        let sep = matches!(c, b',' | b'.' | b'/');
        if c.is_ascii_digit() || (sep && start >= 2 && b[start - 2].is_ascii_digit()) {
            start -= 1;
        } else if c == b'.' {
            // `.5`
            start -= 1;
            break;
        } else {
            break;
        }
    }
    if start > 0 && b[start - 1] == b'-' {
        start -= 1;
    }
    let tok = text[start..end].trim_start_matches([',', '/']);
    (!tok.is_empty()).then(|| tok.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_nested_last() {
        let t = r"first \boxed{1} then \boxed{\frac{1}{\sqrt{2}}} done";
        assert_eq!(last_boxed(t).as_deref(), Some(r"\frac{1}{\sqrt{2}}"));
        assert_eq!(last_boxed(r"\fbox{ 7 }").as_deref(), Some("7"));
        assert_eq!(last_boxed(r"so \boxed 5$.").as_deref(), Some("5"));
        // A truncated last box falls back to the earlier complete one.
        assert_eq!(last_boxed(r"\boxed{3} and \boxed{4").as_deref(), Some("3"));
        assert_eq!(last_boxed(r"\boxed{\{1,2\}}").as_deref(), Some(r"\{1,2\}"));
        assert_eq!(last_boxed("no box"), None);
    }

    #[test]
    fn rules_in_order() {
        let e = extract_answer("x\n#### 1,234\n", Some("99")).unwrap();
        assert_eq!((e.answer.as_str(), e.rule), ("1,234", Rule::Hash));
        let e = extract_answer("we print it", Some("3.5\n\n")).unwrap();
        assert_eq!((e.answer.as_str(), e.rule), ("3.5", Rule::Output));
        let e = extract_answer(r"so \boxed{2}", Some("3")).unwrap();
        assert_eq!(e.rule, Rule::Boxed);
        let e = extract_answer("The answer is -1,250.5.", None).unwrap();
        assert_eq!((e.answer.as_str(), e.rule), ("-1,250.5", Rule::LastNumber));
        assert_eq!(extract_answer("nothing", Some("  \n")), None);
    }

    #[test]
    fn last_number_forms() {
        assert_eq!(last_number("it is 3/4 of them").as_deref(), Some("3/4"));
        assert_eq!(last_number("about .5 left").as_deref(), Some(".5"));
        assert_eq!(last_number("x=7, y=12").as_deref(), Some("12"));
        assert_eq!(
            last_number("price 1,000,000 dollars").as_deref(),
            Some("1,000,000")
        );
        assert_eq!(last_number("1, 2").as_deref(), Some("2"));
        assert_eq!(last_number("none"), None);
    }
}
