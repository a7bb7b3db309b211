//! Answer equivalence: the quick rules, then the symbolic fallback.
//!
//! Both answers are first normalised ([`normalize`]); then, in order:
//! 1. **Same string** after normalisation → equal.
//! 2. **Unions** `A \cup B`: same number of parts, compared part by part.
//! 3. **Matrices** (`pmatrix`): same shape, compared entry by entry.
//! 4. **Sequences**: tuples `(a,b)`, intervals `(a,b]`, sets `\{a,b\}`, bare lists `a, b`, and
//!    `a \pm b` (read as the list `a+b, a-b`). Lengths must match. Two bracketed sequences must
//!    use the same brackets: `(1,2)` vs `[1,2]` is *not equal* (open vs closed interval ends
//!    matter, and a point is not an interval). A parenthesised tuple matches a bare list in order;
//!    bare lists and sets match in any order ("all solutions" answers), tuples and intervals in
//!    order. Elements are compared with all these rules.
//! 5. **Equations**: `lhs = rhs` on both sides compares sides pairwise (one-variable left sides
//!    were already dropped by normalisation, so `x = 5` vs `5` is equal).
//! 6. **Bases**: a number in another base (`52_8`) equals only the same string.
//!    **Numbers** (both sides evaluate with [`eval_number`]): equal when
//!    `|a - b| <= 1e-4 * max(|a|, |b|)` (the relative tolerance of the common graders'
//!    `math_equal`; so `0.1` vs `0.10000001` is equal, `0.1` vs `0.1001` is not), or both are
//!    below 1e-12 in size. **Percentages:** an answer written with `%` matches its number or its
//!    number / 100 (`50%` equals `50` and `0.5`); a plain number is never multiplied by 100, so
//!    `0.5` vs `50` is not equal.
//! 7. **Text**: answers without digits compare case-insensitively (`\text{East}` vs `east`); two
//!    different plain words are not equal.
//! 8. Otherwise **undecided**: the [`SymbolicChecker`] (if any) decides; without one, or when it
//!    cannot (no sympy, parse error, timeout), the verdict is "not equal" with the reason in
//!    [`Outcome::note`].

use serde::{Deserialize, Serialize};

use super::normalize::{eval_number, normalize, Number};
use super::symbolic::SymbolicChecker;

/// Relative tolerance for numeric comparison (as `math_equal`'s `isclose(rel_tol=1e-4)`).
pub const REL_TOL: f64 = 1e-4;

/// Longest tuple / list / set compared element by element.
const MAX_ITEMS: usize = 256;

/// Which rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Identical after normalisation.
    String,
    /// Numeric values (within [`REL_TOL`]).
    Numeric,
    /// A percentage matched as `x` or `x / 100`.
    Percent,
    /// Tuples, intervals, sets, lists, unions, matrices (element-wise).
    Elements,
    /// Bracket kinds differ (`(1,2)` vs `[1,2]`) or lengths differ.
    Shape,
    /// Equations compared side by side.
    Equation,
    /// Plain text.
    Text,
    /// The symbolic checker.
    Symbolic,
    /// Nothing decided (the verdict is "not equal"; see [`Outcome::note`]).
    Undecided,
}

/// The verdict on one pair of answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Judged equivalent.
    pub equivalent: bool,
    /// The rule that decided.
    pub via: Via,
    /// Why it was undecided (no symbolic checker, sympy missing, parse error, timeout).
    pub note: Option<String>,
}

/// Internal three-way verdict.
#[derive(Clone, Debug, PartialEq)]
enum V {
    Eq(Via),
    Ne(Via),
    Undecided(String),
}

/// Compares two answers with the rules of the module docs; `symbolic` decides what they leave
/// open (each undecided element separately, so `(x+1, 2)` vs `(1+x, 2)` works).
pub fn compare(pred: &str, reference: &str, symbolic: Option<&dyn SymbolicChecker>) -> Outcome {
    if pred.trim() == reference.trim() && !pred.trim().is_empty() {
        return Outcome {
            equivalent: true,
            via: Via::String,
            note: None,
        };
    }
    let (a, b) = (
        expand_pm(&normalize(pred)),
        expand_pm(&normalize(reference)),
    );
    if a.is_empty() || b.is_empty() {
        let note = Some("empty answer".to_string());
        return Outcome {
            equivalent: false,
            via: Via::Undecided,
            note,
        };
    }
    let cmp = Cmp { symbolic };
    match cmp.cmp(&a, &b, 0) {
        V::Eq(via) => Outcome {
            equivalent: true,
            via,
            note: None,
        },
        V::Ne(via) => Outcome {
            equivalent: false,
            via,
            note: None,
        },
        V::Undecided(why) => Outcome {
            equivalent: false,
            via: Via::Undecided,
            note: Some(why),
        },
    }
}

struct Cmp<'a> {
    symbolic: Option<&'a dyn SymbolicChecker>,
}

impl Cmp<'_> {
    fn cmp(&self, a: &str, b: &str, depth: u32) -> V {
        if a == b {
            return V::Eq(Via::String);
        }
        if depth > 8 {
            return V::Undecided("nesting too deep".into());
        }
        // 2. Unions.
        let (ua, ub) = (split_top(a, "\\cup"), split_top(b, "\\cup"));
        if ua.len() > 1 || ub.len() > 1 {
            if ua.len() != ub.len() {
                return V::Ne(Via::Shape);
            }
            return self.all_ordered(&ua, &ub, depth);
        }
        // 3. Matrices.
        if let (Some(ma), Some(mb)) = (matrix(a), matrix(b)) {
            if ma.len() != mb.len() || ma.iter().zip(&mb).any(|(x, y)| x.len() != y.len()) {
                return V::Ne(Via::Shape);
            }
            let fa: Vec<&str> = ma.iter().flatten().copied().collect();
            let fb: Vec<&str> = mb.iter().flatten().copied().collect();
            return self.all_ordered(&fa, &fb, depth);
        }
        // 4. Sequences.
        let (sa, sb) = (Seq::parse(a), Seq::parse(b));
        if sa.is_some() || sb.is_some() {
            let sa = sa.unwrap_or_else(|| Seq::single(a));
            let sb = sb.unwrap_or_else(|| Seq::single(b));
            return self.cmp_seq(&sa, &sb, depth);
        }
        // 5. Equations.
        if let (Some((la, ra)), Some((lb, rb))) = (a.split_once('='), b.split_once('=')) {
            let sides = self.all_ordered(&[la, ra], &[lb, rb], depth);
            return match sides {
                V::Eq(_) => V::Eq(Via::Equation),
                // `y = 2x + 3` vs `2x - y = -3`: rearrangements are left open.
                _ => V::Undecided("equations differ as written".into()),
            };
        }
        // A number in another base (`52_8`, `4210_5`) is only ever equal as written: its
        // digits mean nothing in base 10, and the question asked for that base.
        if is_base_number(a) || is_base_number(b) {
            return V::Ne(Via::String);
        }
        // 6. Numbers.
        let (na, nb) = (eval_number(a), eval_number(b));
        if let (Some(x), Some(y)) = (na, nb) {
            return numbers_equal(x, y);
        }
        // 7. Text.
        let texty = |s: &str| !s.bytes().any(|c| c.is_ascii_digit());
        if texty(a) && texty(b) {
            let clean = |s: &str| {
                s.chars()
                    .filter(|c| !matches!(c, '(' | ')' | ' ' | '.'))
                    .flat_map(char::to_lowercase)
                    .collect::<String>()
            };
            if clean(a) == clean(b) {
                return V::Eq(Via::Text);
            }
            let word = |s: &str| s.len() >= 2 && s.chars().all(|c| c.is_alphabetic() || c == ' ');
            if word(a) && word(b) {
                return V::Ne(Via::Text);
            }
        }
        let plain_word = |s: &str| s.len() >= 3 && s.chars().all(|c| c.is_alphabetic());
        if (na.is_some() && plain_word(b)) || (nb.is_some() && plain_word(a)) {
            return V::Ne(Via::Text);
        }
        // 8. Symbolic.
        match self.symbolic {
            None => V::Undecided("quick rules cannot decide; no symbolic checker".into()),
            Some(c) => match c.check(a, b) {
                Ok(true) => V::Eq(Via::Symbolic),
                Ok(false) => V::Ne(Via::Symbolic),
                Err(e) => V::Undecided(format!("symbolic check undecided: {e}")),
            },
        }
    }

    fn all_ordered(&self, a: &[&str], b: &[&str], depth: u32) -> V {
        let mut undecided = None;
        for (x, y) in a.iter().zip(b) {
            match self.cmp(x, y, depth + 1) {
                V::Eq(_) => {}
                V::Ne(via) => return V::Ne(via),
                V::Undecided(w) => undecided = Some(w),
            }
        }
        match undecided {
            Some(w) => V::Undecided(w),
            None => V::Eq(Via::Elements),
        }
    }

    fn all_unordered(&self, a: &[&str], b: &[&str], depth: u32) -> V {
        let mut used = vec![false; b.len()];
        let mut undecided = None;
        'outer: for x in a {
            for (j, y) in b.iter().enumerate() {
                if used[j] {
                    continue;
                }
                match self.cmp(x, y, depth + 1) {
                    V::Eq(_) => {
                        used[j] = true;
                        continue 'outer;
                    }
                    V::Ne(_) => {}
                    V::Undecided(w) => undecided = Some(w),
                }
            }
            return match undecided {
                Some(w) => V::Undecided(w),
                None => V::Ne(Via::Elements),
            };
        }
        V::Eq(Via::Elements)
    }

    fn cmp_seq(&self, a: &Seq, b: &Seq, depth: u32) -> V {
        // Unordered matching is quadratic; no real answer lists this many elements.
        if a.items.len().max(b.items.len()) > MAX_ITEMS {
            return V::Undecided(format!("more than {MAX_ITEMS} elements"));
        }
        let unordered = |k: Kind| matches!(k, Kind::Set | Kind::Bare);
        if a.items.len() != b.items.len() && !(unordered(a.kind) && unordered(b.kind)) {
            return V::Ne(Via::Shape);
        }
        use Kind::*;
        match (a.kind, b.kind) {
            (Set | Bare, Set | Bare) => {
                // `\{1\pm\sqrt5, -2\}`: a `\pm` element stands for two solutions.
                let expand = |items: &[&str]| -> Vec<String> {
                    items
                        .iter()
                        .flat_map(|x| {
                            let e = expand_pm(x);
                            split_top(&e, ",")
                                .into_iter()
                                .map(str::to_string)
                                .collect::<Vec<_>>()
                        })
                        .collect()
                };
                let (ea, eb) = (expand(&a.items), expand(&b.items));
                if ea.len() != eb.len() {
                    return V::Ne(Via::Shape);
                }
                let ra: Vec<&str> = ea.iter().map(String::as_str).collect();
                let rb: Vec<&str> = eb.iter().map(String::as_str).collect();
                self.all_unordered(&ra, &rb, depth)
            }
            (Brackets(oa, ca), Brackets(ob, cb)) => {
                if (oa, ca) != (ob, cb) {
                    return V::Ne(Via::Shape);
                }
                self.all_ordered(&a.items, &b.items, depth)
            }
            (Brackets('(', ')'), Bare) | (Bare, Brackets('(', ')')) => {
                self.all_ordered(&a.items, &b.items, depth)
            }
            _ => V::Ne(Via::Shape),
        }
    }
}

/// `52_8`, `4210_{5}` (after normalisation `4210_5`), `10_{12}`.
fn is_base_number(s: &str) -> bool {
    let Some((digits, base)) = s.split_once('_') else {
        return false;
    };
    let base = base
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(base);
    !digits.is_empty()
        && digits.bytes().all(|c| c.is_ascii_alphanumeric())
        && digits.bytes().any(|c| c.is_ascii_digit())
        && !base.is_empty()
        && base.bytes().all(|c| c.is_ascii_digit())
}

fn numbers_equal(x: Number, y: Number) -> V {
    let close = |a: f64, b: f64| {
        let m = a.abs().max(b.abs());
        m < 1e-12 || (a - b).abs() <= REL_TOL * m
    };
    if close(x.value, y.value) {
        return V::Eq(Via::Numeric);
    }
    // A percentage matches its value or its value / 100; both sides percentages compare as is.
    let pa = if x.percent && !y.percent {
        Some(x.value / 100.0)
    } else {
        None
    };
    let pb = if y.percent && !x.percent {
        Some(y.value / 100.0)
    } else {
        None
    };
    if pa.is_some_and(|v| close(v, y.value)) || pb.is_some_and(|v| close(x.value, v)) {
        return V::Eq(Via::Percent);
    }
    V::Ne(Via::Numeric)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `(…)`, `[…]`, `(…]`, `[…)`.
    Brackets(char, char),
    /// `\{…\}`.
    Set,
    /// No brackets: `a, b, c`.
    Bare,
}

struct Seq<'a> {
    kind: Kind,
    items: Vec<&'a str>,
}

impl<'a> Seq<'a> {
    fn single(s: &'a str) -> Self {
        Seq {
            kind: Kind::Bare,
            items: vec![s],
        }
    }

    /// A tuple, interval, set or list; `None` for a single value.
    fn parse(s: &'a str) -> Option<Self> {
        if let Some(inner) = s.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")) {
            if closes_at_end(s, 2) {
                let items = split_top(inner, ",")
                    .into_iter()
                    .filter(|x| !x.is_empty())
                    .collect();
                return Some(Seq {
                    kind: Kind::Set,
                    items,
                });
            }
        }
        let b = s.as_bytes();
        if b.len() >= 2
            && matches!(b[0], b'(' | b'[')
            && matches!(b[b.len() - 1], b')' | b']')
            && closes_at_end(s, 1)
        {
            let items = split_top(&s[1..s.len() - 1], ",");
            if items.len() >= 2 {
                let kind = Kind::Brackets(b[0] as char, b[b.len() - 1] as char);
                return Some(Seq { kind, items });
            }
            return None;
        }
        let items = split_top(s, ",");
        if items.len() >= 2 {
            return Some(Seq {
                kind: Kind::Bare,
                items,
            });
        }
        None
    }
}

/// Whether the bracket opened at byte 0 (length `open_len`) closes exactly at the end of `s`.
fn closes_at_end(s: &str, open_len: usize) -> bool {
    let mut depth = 0i32;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && matches!(b.get(i + 1), Some(b'{' | b'}')) {
            depth += if b[i + 1] == b'{' { 1 } else { -1 };
            i += 2;
        } else {
            match c {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        if depth == 0 && i < b.len() && i >= open_len {
            return false;
        }
    }
    depth == 0
}

/// Splits at top-level occurrences of `sep` (outside any bracket or brace).
fn split_top<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0i32, 0usize, 0usize);
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && matches!(b.get(i + 1), Some(b'{' | b'}')) {
            depth += if b[i + 1] == b'{' { 1 } else { -1 };
            i += 2;
            continue;
        }
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && b[i..].starts_with(sep.as_bytes()) {
            parts.push(&s[start..i]);
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

/// `\begin{pmatrix}a&b\\c&d\end{pmatrix}` → rows of entries.
fn matrix(s: &str) -> Option<Vec<Vec<&str>>> {
    let inner = s
        .strip_prefix("\\begin{pmatrix}")?
        .strip_suffix("\\end{pmatrix}")?;
    Some(
        inner
            .split("\\\\")
            .filter(|r| !r.is_empty())
            .map(|r| r.split('&').collect())
            .collect(),
    )
}

/// Expands one top-level `a\pm b` into `a+b,a-b` (so it compares as a list of solutions).
pub(crate) fn expand_pm(s: &str) -> String {
    let parts = split_top(s, "\\pm");
    if parts.len() == 2 && !parts[0].is_empty() && split_top(s, ",").len() == 1 {
        let (a, b) = (parts[0], parts[1]);
        format!("{a}+{b},{a}-{b}")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(a: &str, b: &str) -> bool {
        compare(a, b, None).equivalent
    }

    #[test]
    fn quick_rules() {
        assert!(eq(r"\frac{1}{2}", "0.5"));
        assert!(eq("50\\%", "0.5"));
        assert!(eq("50%", "50"));
        assert!(!eq("0.5", "50"));
        assert!(!eq("(1,2)", "[1,2]"));
        assert!(eq("(1,2)", "1, 2"));
        assert!(eq("1,-2", "-2,1"));
        assert!(!eq("(1,-2)", "(-2,1)"));
        assert!(eq(r"(-\infty, 0]", r"(-\infty,0]"));
        assert!(eq(r"\text{East}", "east"));
        assert!(!eq("east", "west"));
        assert!(eq("x=5", "5"));
        assert!(!eq("1/2", "2"));
        assert!(eq(
            r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}",
            r"\begin{pmatrix}0.2\\-3.6\end{pmatrix}"
        ));
    }

    #[test]
    fn undecided_without_checker_is_not_equal_with_reason() {
        let o = compare("x^3+3x-6", "3x+x^3-6", None);
        assert!(!o.equivalent);
        assert_eq!(o.via, Via::Undecided);
        assert!(o.note.is_some());
    }

    #[test]
    fn split_and_brackets() {
        assert_eq!(split_top("(1,2),3", ","), vec!["(1,2)", "3"]);
        assert_eq!(split_top(r"\{1,2\},3", ","), vec![r"\{1,2\}", "3"]);
        assert!(closes_at_end("(1,2]", 1));
        assert!(!closes_at_end("(1)(2)", 1));
        assert_eq!(expand_pm(r"1\pm\sqrt{19}"), r"1+\sqrt{19},1-\sqrt{19}");
    }
}
