//! Answer normalisation (one canonical string per answer) and a small exact-enough numeric
//! evaluator for LaTeX arithmetic.
//!
//! [`normalize`] applies, in order (each rule exists because real answers are written that way):
//! 1. Unicode look-alikes to LaTeX (`−` `×` `·` `π` `°` `∞`), line breaks to spaces; Python's
//!    `**` (a step's printed output) → `^`.
//! 2. Spacing commands dropped: `\!` `\,` `\;` `\:` `\ ` `\quad` `~`; `{,}` (a LaTeX thousands
//!    comma) becomes `,`; `\left` / `\right` dropped; `\displaystyle` dropped.
//! 3. `\dfrac` / `\tfrac` / `\cfrac` → `\frac`; `bmatrix` → `pmatrix`; `\leq` → `\le`,
//!    `\geq` → `\ge`, `\neq` → `\ne`, `\varnothing` → `\emptyset`.
//! 4. Degrees (`^\circ`, `^{\circ}`, `\circ`, `\degree`) dropped; `$` and `\$` dropped; `\%` → `%`.
//! 5. Text: `\text{…}` `\mbox{…}` `\textbf{…}` `\mathrm{…}` …: a text group that follows a value
//!    and ends it is a unit and is dropped together with a trailing `^2`/`^3`
//!    (`864 \mbox{ inches}^2` → `864`);
//!    otherwise the group is unwrapped (`\text{Evelyn}` → `Evelyn`, `\text{(C)}` → `(C)`).
//! 6. Plain unit words after a plain number are dropped (`5 cm` → `5`, `12 dollars` → `12`);
//!    `50 percent` → `50%`; one-letter words are kept (`5 x` may be an expression), and so are
//!    joining words (`3 and 4` is not `3`).
//! 7. Whitespace removed (one space kept between two letters, so `\cot x` stays a function call).
//! 8. `\frac34` `\frac{3}4` `\frac9{19}` → `\frac{3}{4}` …; `\sqrt2` → `\sqrt{2}`; single-character
//!    groups after `^` and `_` unwrapped (`10^{3}` → `10^3`, `4210_{5}` → `4210_5`).
//! 9. A whole-number answer with thousands separators loses them (`10,080` → `10080`); only when the
//!    entire answer is one such number, because inside a tuple `1,000` is ambiguous.
//! 10. `.5` → `0.5`; a trailing sentence period dropped; an outer `{…}` unwrapped, and a whole
//!     answer still wrapped in `\boxed{…}` unwrapped (models sometimes box inside the box).
//! 11. `x = 5` → `5` and `x \in [a,b]` → `[a,b]` when the left side is one variable (a letter, an
//!     optional subscript, or a Greek command): graders accept the bare value for "find x".
//! 12. A multiple-choice letter in parentheses `(C)` → `C`.
//!
//! Numbers are compared as values (see [`eval_number`]), so trailing zeros and `\frac{1}{2}` vs
//! `0.5` are not normalised here.

/// Normalises an answer string by the rules of the module docs.
pub fn normalize(s: &str) -> String {
    // A LaTeX row break `\\` must survive the spacing rules (`\\ -1` is not `\ ` + `-1`).
    let mut s = s.trim().replace("\\\\", "\u{0}");
    for (from, to) in [
        ("\n", " "),
        ("\r", " "),
        ("\u{2212}", "-"),
        ("\u{00d7}", "\\times "),
        ("\u{00b7}", "\\cdot "),
        ("\u{03c0}", "\\pi "),
        ("\u{00b0}", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", " "),
        ("\\qquad", " "),
        ("\\quad", " "),
        ("~", " "),
        ("{,}", ","),
        ("\\displaystyle", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cfrac", "\\frac"),
        ("\u{221e}", "\\infty "),
        ("\\varnothing", "\\emptyset"),
        ("\\leq", "\\le"),
        ("\\geq", "\\ge"),
        ("\\neq", "\\ne"),
        ("**", "^"),
        ("bmatrix", "pmatrix"),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("^{\\degree}", ""),
        ("\\degree", ""),
        ("\\circ", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\%", "%"),
    ] {
        if s.contains(from) {
            s = s.replace(from, to);
        }
    }
    s = s.replace('\u{0}', "\\\\");
    s = drop_command(&s, "\\left");
    s = drop_command(&s, "\\right");
    s = strip_text_groups(&s);
    s = strip_unit_words(&s);
    s = remove_spaces(&s);
    s = fix_frac_sqrt(&s);
    s = unwrap_single_char_scripts(&s);
    s = strip_thousands(&s);
    s = add_leading_zero(&s);
    while s.ends_with('.') && !s.ends_with("\\.") {
        s.pop();
    }
    s = unwrap_outer_braces(&s);
    if let Some(inner) = s
        .strip_prefix("\\boxed{")
        .or_else(|| s.strip_prefix("\\fbox{"))
    {
        if inner.len().checked_sub(1).is_some()
            && crate::grade::extract::matching_brace(inner) == inner.len().checked_sub(1)
        {
            s = inner[..inner.len() - 1].to_string();
        }
    }
    s = strip_variable_lhs(&s);
    if let Some(inner) = s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        if inner.len() == 1 && inner.as_bytes()[0].is_ascii_uppercase() {
            s = inner.to_string();
        }
    }
    s
}

/// Drops a `\left`-style command where it is a whole command (not the start of `\leftarrow`).
fn drop_command(s: &str, cmd: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(cmd) {
        out.push_str(&rest[..i]);
        let after = &rest[i + cmd.len()..];
        if after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push_str(cmd);
        } else if let Some(a) = after.strip_prefix('.') {
            // `\left.` / `\right.`: an invisible delimiter.
            rest = a;
            continue;
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

const TEXT_COMMANDS: [&str; 8] = [
    "\\text",
    "\\mbox",
    "\\textbf",
    "\\textit",
    "\\textrm",
    "\\mathrm",
    "\\mathbf",
    "\\operatorname",
];

/// Rule 5: units in text groups dropped, other text groups unwrapped.
fn strip_text_groups(s: &str) -> String {
    let mut s = s.to_string();
    // Bounded: each pass removes one group.
    for _ in 0..16 {
        let Some((start, cmd_len)) = TEXT_COMMANDS
            .iter()
            .filter_map(|c| find_command(&s, c).map(|i| (i, c.len())))
            .min()
        else {
            break;
        };
        let after = &s[start + cmd_len..];
        let Some(open) = after.strip_prefix('{') else {
            break;
        };
        let Some(close) = crate::grade::extract::matching_brace(open) else {
            break;
        };
        let content = open[..close].to_string();
        let tail = &open[close + 1..];
        let prefix = s[..start].trim_end();
        let value_before = prefix
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_digit() || c == '}' || c == ')' || c == '%');
        let operator_cmd = s[start..].starts_with("\\operatorname");
        // A unit ends the value: nothing but an exponent on it (`cm}^2`) and a separator may
        // follow. `3\text{ or }5` is not a unit, it is text between values.
        let t = tail.trim_start();
        let t = ["^2", "^3", "^{2}", "^{3}"]
            .iter()
            .find_map(|e| t.strip_prefix(e))
            .unwrap_or(t);
        let ends_value = t.trim().is_empty()
            || t.starts_with([',', ')', ']', ';'])
            || t.starts_with("\\}")
            || t.starts_with("\\right");
        if value_before && !operator_cmd && ends_value {
            s = format!("{}{}", prefix, t);
        } else {
            s = format!("{}{}{}", &s[..start], content.trim(), tail);
        }
    }
    s
}

/// Index of `cmd` in `s` where it is a whole command (not followed by more letters).
fn find_command(s: &str, cmd: &str) -> Option<usize> {
    s.match_indices(cmd)
        .find(|(i, _)| !s[i + cmd.len()..].starts_with(|c: char| c.is_ascii_alphabetic()))
        .map(|(i, _)| i)
}

/// Rule 6: `5 cm` → `5` when the answer is a plain number followed by unit words.
fn strip_unit_words(s: &str) -> String {
    let t = s.trim();
    let num_end = t
        .char_indices()
        .take_while(|&(i, c)| {
            c.is_ascii_digit() || matches!(c, '.' | ',' | '%') || (i == 0 && c == '-')
        })
        .last()
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0);
    if num_end == 0 || !t[..num_end].bytes().any(|b| b.is_ascii_digit()) {
        return t.to_string();
    }
    let mut rest = t[num_end..].trim();
    for e in ["^2", "^3", "^{2}", "^{3}"] {
        if let Some(r) = rest.strip_suffix(e) {
            rest = r;
            break;
        }
    }
    let rest = rest.trim_end_matches('.');
    let words: Vec<&str> = rest.split_whitespace().collect();
    if words.len() == 1 && words[0].eq_ignore_ascii_case("percent") {
        return format!("{}%", &t[..num_end]);
    }
    // Words that join values are not units: `3 and 4` is not `3`.
    const JOINERS: [&str; 8] = [
        "and", "or", "to", "through", "than", "plus", "minus", "times",
    ];
    let is_units = !words.is_empty()
        && words.iter().all(|w| {
            w.len() >= 2
                && w.chars().all(|c| c.is_ascii_alphabetic())
                && !JOINERS.contains(&w.to_ascii_lowercase().as_str())
        });
    if is_units {
        t[..num_end].to_string()
    } else {
        t.to_string()
    }
}

/// Rule 7: whitespace removed, except one space between two letters.
fn remove_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space
            && c.is_ascii_alphabetic()
            && out.chars().last().is_some_and(|p| p.is_ascii_alphabetic())
        {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
    }
    out
}

/// Rule 8: `\frac34` → `\frac{3}{4}`, `\sqrt2` → `\sqrt{2}` (a bare argument is one character).
fn fix_frac_sqrt(s: &str) -> String {
    fix_frac_sqrt_at(s, 0)
}

fn fix_frac_sqrt_at(s: &str, depth: u32) -> String {
    // Nesting deeper than any real answer: leave it as written rather than recurse further.
    if depth > 32 {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some((i, cmd, nargs)) = next_frac_or_sqrt(rest) {
        out.push_str(&rest[..i + cmd.len()]);
        rest = &rest[i + cmd.len()..];
        if cmd == "\\sqrt" && rest.starts_with('[') {
            if let Some(j) = rest.find(']') {
                out.push_str(&rest[..=j]);
                rest = &rest[j + 1..];
            }
        }
        for _ in 0..nargs {
            if let Some(open) = rest.strip_prefix('{') {
                match crate::grade::extract::matching_brace(open) {
                    Some(j) => {
                        // Fix commands nested inside the group too (`\frac{\sqrt3}{2}`).
                        out.push('{');
                        out.push_str(&fix_frac_sqrt_at(&open[..j], depth + 1));
                        out.push('}');
                        rest = &open[j + 1..];
                    }
                    None => {
                        // Unbalanced: not a formula; leave the rest as written (and stay linear
                        // on `\sqrt{\sqrt{\sqrt{…`).
                        out.push_str(rest);
                        return out;
                    }
                }
            } else if let Some(c) = rest.chars().next() {
                if c == '\\' {
                    // `\frac\pi2`: a command argument.
                    let len = 1 + rest[1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphabetic())
                        .map(char::len_utf8)
                        .sum::<usize>();
                    out.push('{');
                    out.push_str(&rest[..len]);
                    out.push('}');
                    rest = &rest[len..];
                } else {
                    out.push('{');
                    out.push(c);
                    out.push('}');
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
    }
    out.push_str(rest);
    out
}

/// The next whole `\frac` (2 arguments) or `\sqrt` (1) in `s`, scanning each backslash once.
fn next_frac_or_sqrt(s: &str) -> Option<(usize, &'static str, usize)> {
    let mut from = 0;
    while let Some(k) = s[from..].find('\\') {
        let i = from + k;
        for (cmd, nargs) in [("\\frac", 2usize), ("\\sqrt", 1usize)] {
            if let Some(after) = s[i..].strip_prefix(cmd) {
                if !after.starts_with(|c: char| c.is_ascii_alphabetic()) {
                    return Some((i, cmd, nargs));
                }
            }
        }
        from = i + 1;
    }
    None
}

/// `^{3}` → `^3`, `_{5}` → `_5`.
fn unwrap_single_char_scripts(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if (b[i] == b'^' || b[i] == b'_')
            && i + 3 < b.len()
            && b[i + 1] == b'{'
            && b[i + 2].is_ascii_alphanumeric()
            && b[i + 3] == b'}'
        {
            out.push(b[i] as char);
            out.push(b[i + 2] as char);
            i += 4;
            continue;
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Rule 9: `-1,234,567.5` → `-1234567.5` when the whole answer is such a number.
fn strip_thousands(s: &str) -> String {
    let body = s.strip_prefix('-').unwrap_or(s);
    let body = body.strip_suffix('%').unwrap_or(body);
    let (int, frac) = match body.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (body, None),
    };
    let groups: Vec<&str> = int.split(',').collect();
    let ok = groups.len() >= 2
        && (1..=3).contains(&groups[0].len())
        && groups.iter().all(|g| g.bytes().all(|c| c.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()));
    if ok {
        s.replace(',', "")
    } else {
        s.to_string()
    }
}

/// `.5` → `0.5` where the dot does not follow a digit.
fn add_leading_zero(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 2);
    for (i, c) in s.char_indices() {
        if c == '.'
            && b.get(i + 1).is_some_and(u8::is_ascii_digit)
            && (i == 0 || !b[i - 1].is_ascii_digit())
        {
            out.push('0');
        }
        out.push(c);
    }
    out
}

fn unwrap_outer_braces(s: &str) -> String {
    let mut s = s;
    // A few levels at most: each level rescans the string, and `{{{…}}}` from a garbled generation
    // must stay linear.
    for _ in 0..8 {
        let Some(inner) = s.strip_prefix('{') else {
            break;
        };
        match crate::grade::extract::matching_brace(inner) {
            Some(j) if j + 1 == inner.len() => s = &inner[..j],
            _ => break,
        }
    }
    s.to_string()
}

/// Rule 11: `x=5` → `5`, `x\in[-2,7]` → `[-2,7]`, `\theta=…` → `…`, `a_1=…` → `…`.
fn strip_variable_lhs(s: &str) -> String {
    let (lhs, rhs) = if let Some((l, r)) = s.split_once("\\in") {
        if r.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return s.to_string(); // `\infty`, `\int`
        }
        (l, r)
    } else {
        match s.split_once('=') {
            Some((l, r)) if !r.contains('=') => (l, r),
            _ => return s.to_string(),
        }
    };
    if is_single_variable(lhs) && !rhs.is_empty() {
        rhs.to_string()
    } else {
        s.to_string()
    }
}

/// A letter with an optional subscript (`x`, `a_1`, `x_{12}`), or a Greek-letter command.
pub(crate) fn is_single_variable(s: &str) -> bool {
    let s = s.trim();
    if let Some(cmd) = s.strip_prefix('\\') {
        return !cmd.is_empty()
            && cmd.chars().all(|c| c.is_ascii_alphabetic())
            && GREEK.contains(&cmd);
    }
    let mut it = s.chars();
    let Some(first) = it.next() else { return false };
    if !first.is_ascii_alphabetic() {
        return false;
    }
    let rest: String = it.collect();
    if rest.is_empty() {
        return true;
    }
    let Some(sub) = rest.strip_prefix('_') else {
        return false;
    };
    let sub = sub
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(sub);
    !sub.is_empty() && sub.chars().all(|c| c.is_ascii_alphanumeric())
}

const GREEK: [&str; 14] = [
    "alpha", "beta", "gamma", "delta", "theta", "lambda", "mu", "phi", "psi", "omega", "rho",
    "sigma", "tau", "varphi",
];

/// A number from [`eval_number`]: its value and whether it was written as a percentage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Number {
    /// The value as written, without the percent conversion (`50%` → 50).
    pub value: f64,
    /// Ended with `%`.
    pub percent: bool,
}

/// Evaluates a normalised answer that is plain arithmetic: decimals, `+ - * /`, `\cdot`,
/// `\times`, `\div`, `^`, `\frac{a}{b}`, `\sqrt{x}`, `\sqrt[n]{x}`, `\pi`, parentheses and braces,
/// Python's `sqrt(x)` and `pi` (printed output), implicit multiplication (`2\sqrt{3}`, `3\pi`),
/// a mixed number `1\frac{4}{5}` (= 9/5, MATH's
/// convention, only for an integer followed by a proper fraction of integers), scientific `1.5e3`,
/// and a trailing `%`. `None` for anything else (letters, commas, `\infty`, …) or a non-finite
/// result.
pub fn eval_number(s: &str) -> Option<Number> {
    let (body, percent) = match s.strip_suffix('%') {
        Some(b) => (b, true),
        None => (s, false),
    };
    if body.is_empty() {
        return None;
    }
    let mut p = Parser {
        s: body.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.expr()?;
    (p.i == p.s.len() && v.is_finite()).then_some(Number { value: v, percent })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: u32,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, lit: &str) -> bool {
        let l = lit.as_bytes();
        if self.s[self.i..].starts_with(l) {
            // A command must not continue with letters (`\pi` is not the start of `\pix`).
            let next = self.s.get(self.i + l.len());
            if l[0] == b'\\' && next.is_some_and(u8::is_ascii_alphabetic) {
                return false;
            }
            self.i += l.len();
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Option<f64> {
        self.enter()?;
        let mut v = self.term()?;
        loop {
            if self.eat("+") {
                v += self.term()?;
            } else if self.eat("-") {
                v -= self.term()?;
            } else {
                break;
            }
        }
        self.depth -= 1;
        Some(v)
    }

    fn term(&mut self) -> Option<f64> {
        let start = self.i;
        let mut v = self.unary()?;
        let first_is_int = self.s[start..self.i].iter().all(u8::is_ascii_digit);
        // Mixed number: `1\frac{4}{5}`.
        if first_is_int {
            if let Some((n, d, len)) = self.simple_frac() {
                if n < d {
                    self.i += len;
                    v += n / d;
                }
            }
        }
        loop {
            if self.eat("*") || self.eat("\\cdot") || self.eat("\\times") {
                v *= self.unary()?;
            } else if self.eat("/") || self.eat("\\div") {
                v /= self.unary()?;
            } else if self.starts_primary() {
                v *= self.power()?;
            } else {
                break;
            }
        }
        Some(v)
    }

    /// `\frac{123}{456}` at the cursor: (numerator, denominator, byte length).
    fn simple_frac(&self) -> Option<(f64, f64, usize)> {
        let rest = std::str::from_utf8(&self.s[self.i..]).ok()?;
        let r = rest.strip_prefix("\\frac{")?;
        let (n, r2) = r.split_once('}')?;
        let r3 = r2.strip_prefix('{')?;
        let (d, _) = r3.split_once('}')?;
        let int = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if !int(n) || !int(d) {
            return None;
        }
        let len = "\\frac{".len() + n.len() + 2 + d.len() + 1;
        Some((n.parse().ok()?, d.parse().ok()?, len))
    }

    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(c) if c.is_ascii_digit() || c == b'.' || c == b'(' || c == b'{' => true,
            Some(b'\\') => ["\\frac", "\\sqrt", "\\pi"]
                .iter()
                .any(|c| self.s[self.i..].starts_with(c.as_bytes())),
            Some(b's' | b'p') => ["sqrt(", "pi"]
                .iter()
                .any(|c| self.s[self.i..].starts_with(c.as_bytes())),
            _ => false,
        }
    }

    /// Counts one level of recursion; `None` past a depth no real answer reaches (`-----…5`
    /// or `2^2^2^…` from a garbled generation must not overflow the stack).
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= 256).then_some(())
    }

    fn unary(&mut self) -> Option<f64> {
        self.enter()?;
        let v = if self.eat("-") {
            -self.unary()?
        } else if self.eat("+") {
            self.unary()?
        } else {
            self.power()?
        };
        self.depth -= 1;
        Some(v)
    }

    fn power(&mut self) -> Option<f64> {
        self.enter()?;
        let base = self.primary()?;
        let v = if self.eat("^") {
            let e = if self.eat("-") {
                -self.power()?
            } else {
                self.power()?
            };
            base.powf(e)
        } else {
            base
        };
        self.depth -= 1;
        Some(v)
    }

    fn group(&mut self) -> Option<f64> {
        if !self.eat("{") {
            return None;
        }
        let v = self.expr()?;
        self.eat("}").then_some(v)
    }

    fn primary(&mut self) -> Option<f64> {
        let c = self.peek()?;
        if c.is_ascii_digit() || c == b'.' {
            return self.number();
        }
        if self.eat("(") {
            let v = self.expr()?;
            return self.eat(")").then_some(v);
        }
        if c == b'{' {
            return self.group();
        }
        if self.eat("\\frac") {
            let n = self.group()?;
            let d = self.group()?;
            return Some(n / d);
        }
        if self.eat("\\sqrt") {
            let mut index = 2.0;
            if self.eat("[") {
                index = self.expr()?;
                if !self.eat("]") {
                    return None;
                }
            }
            let x = self.group()?;
            if x < 0.0 && index == 2.0 {
                return None;
            }
            return Some(if index == 2.0 {
                x.sqrt()
            } else {
                x.powf(1.0 / index)
            });
        }
        if self.eat("\\pi") {
            return Some(std::f64::consts::PI);
        }
        // Python's spelling, as a step's printed output shows it (`3*sqrt(2)`, `2*pi`).
        if self.s[self.i..].starts_with(b"sqrt(") {
            self.i += 4;
            let x = self.primary()?;
            return (x >= 0.0).then(|| x.sqrt());
        }
        if self.s[self.i..].starts_with(b"pi")
            && !self.s.get(self.i + 2).is_some_and(u8::is_ascii_alphabetic)
        {
            self.i += 2;
            return Some(std::f64::consts::PI);
        }
        None
    }

    fn number(&mut self) -> Option<f64> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        // Scientific notation only when digits follow the `e` (so `2e` stays "2 times e").
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let mut j = self.i + 1;
            if matches!(self.s.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if self.s.get(j).is_some_and(u8::is_ascii_digit) {
                self.i = j;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
            }
        }
        let txt = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        if txt == "." {
            return None;
        }
        txt.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rules() {
        let cases = [
            (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
            (r"90^\circ", "90"),
            (r"\$32,\!348", "32348"),
            (r"11,\! 111,\! 111,\! 100", "11111111100"),
            (r"\text{Evelyn}", "Evelyn"),
            (r"\text{(C)}", "C"),
            (r"864 \mbox{ inches}^2", "864"),
            (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}"),
            (r"5.4 \text{ cents}", "5.4"),
            (r"\frac43", r"\frac{4}{3}"),
            (r"\frac 59", r"\frac{5}{9}"),
            (r"\frac9{19}", r"\frac{9}{19}"),
            (r"11\sqrt2", r"11\sqrt{2}"),
            (r"\dfrac{33}{100}", r"\frac{33}{100}"),
            ("x=5", "5"),
            (r"x \in [-2,7]", "[-2,7]"),
            (".0000672", "0.0000672"),
            ("5 cm", "5"),
            ("10^{3}", "10^3"),
            ("4210_{5}", "4210_5"),
            (r"\cot x", r"\cot x"),
            ("50\\%", "50%"),
            ("{5}", "5"),
            ("7.", "7"),
            (r"y = 2x + 3", "2x+3"),
            (r"\frac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}"),
        ];
        for (a, want) in cases {
            assert_eq!(normalize(a), want, "normalize({a:?})");
        }
    }

    #[test]
    fn eval() {
        let v = |s: &str| eval_number(&normalize(s)).map(|n| n.value);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(v(r"\frac{3}{4}"), 0.75));
        assert!(close(v(r"1\frac{4}{5}"), 1.8));
        assert!(close(v(r"137 \frac{1}{2}"), 137.5));
        assert!(close(v(r"2\sqrt{2}"), 2.0 * 2f64.sqrt()));
        assert!(close(v(r"\frac{3\sqrt{3}}{4}"), 3.0 * 3f64.sqrt() / 4.0));
        assert!(close(v(r"10^{3}"), 1000.0));
        assert!(close(v(r"2^{-1}"), 0.5));
        assert!(close(v(r"-\frac{\pi}{6}"), -std::f64::consts::PI / 6.0));
        assert!(close(v(r"1.5\times10^3"), 1500.0));
        assert!(close(v("1.5e3"), 1500.0));
        assert!(close(v(r"\sqrt[3]{8}"), 2.0));
        assert!(close(v("3/4"), 0.75));
        assert!(close(v("2(3+1)"), 8.0));
        assert_eq!(
            eval_number("50%"),
            Some(Number {
                value: 50.0,
                percent: true
            })
        );
        assert_eq!(v("2x"), None);
        assert_eq!(v("1,2"), None);
        assert_eq!(v(r"\infty"), None);
        assert_eq!(v(r"\sqrt{-1}"), None);
        assert_eq!(v("1/0"), None);
        assert_eq!(v(""), None);
    }
}
