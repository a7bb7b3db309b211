//! What a snippet printed, as the policy will see it: decoded, truncated and (optionally) rounded
//! by rStar's rules (`tools/python_tool.py`, `truncate_string`).

/// rStar's output cap: longer output keeps its first and last halves around `...`.
pub const TRUNCATE_CHARS: usize = 1024;

/// The captured bytes of one snippet's stdout+stderr: the first bytes, the last bytes, and how
/// many there were in all (the worker keeps at most a few KiB of each end).
#[derive(Clone, Debug, Default)]
pub struct Captured {
    /// The first bytes written.
    pub head: Vec<u8>,
    /// The last bytes written after `head` (may start inside a UTF-8 sequence when bytes were
    /// dropped between the two).
    pub tail: Vec<u8>,
    /// Total bytes written.
    pub total: u64,
}

/// The text of `c` and whether the bytes were valid UTF-8 (invalid sequences become U+FFFD).
pub fn decode(c: &Captured) -> (String, bool) {
    let gap = c.total > (c.head.len() + c.tail.len()) as u64;
    if !gap {
        let mut all = c.head.clone();
        all.extend_from_slice(&c.tail);
        return match String::from_utf8(all) {
            Ok(s) => (s, true),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), false),
        };
    }
    // Bytes were dropped in the middle: the head may end, and the tail begin, inside a sequence.
    let head = trim_partial_end(&c.head);
    let tail = skip_continuation(&c.tail);
    let (h, hv) = lossy(head);
    let (t, tv) = lossy(tail);
    // Marks the dropped bytes; `truncate` replaces this with rStar's `...` anyway (the output
    // is then longer than the limit: at least head+tail bytes, so more than 1024 characters).
    (format!("{h}\u{2026}{t}"), hv && tv)
}

fn lossy(b: &[u8]) -> (String, bool) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_string(), true),
        Err(_) => (String::from_utf8_lossy(b).into_owned(), false),
    }
}

/// Drops an incomplete UTF-8 sequence at the end of `b` (at most 3 bytes).
fn trim_partial_end(b: &[u8]) -> &[u8] {
    for back in 1..=3.min(b.len()) {
        let i = b.len() - back;
        let byte = b[i];
        if byte & 0xC0 != 0x80 {
            let need = match byte {
                0x00..=0x7F => 1,
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            return if need > back { &b[..i] } else { b };
        }
    }
    b
}

/// Skips up to 3 leading UTF-8 continuation bytes.
fn skip_continuation(b: &[u8]) -> &[u8] {
    let n = b.iter().take(3).take_while(|&&x| x & 0xC0 == 0x80).count();
    &b[n..]
}

/// rStar's truncation: text longer than `limit` characters becomes its first `limit/2`
/// characters, `...`, and its last `limit/2` characters. `limit == 0` disables it.
pub fn truncate(text: &str, limit: usize) -> String {
    if limit == 0 {
        return text.to_string();
    }
    let n = text.chars().count();
    if n <= limit {
        return text.to_string();
    }
    let half = limit / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(n - half).collect();
    format!("{head}...{tail}")
}

/// rStar's numeric rule: an output that is one number is shown rounded to 4 decimals when that
/// is shorter (`0.30000000000000004` → `0.3`). Anything else is unchanged.
pub fn round_numeric(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() || !t.contains('.') || t.contains(char::is_whitespace) {
        return text.to_string();
    }
    let Ok(x) = t.parse::<f64>() else {
        return text.to_string();
    };
    if !x.is_finite() {
        return text.to_string();
    }
    let r = (x * 1e4).round() / 1e4;
    let s = if r == r.trunc() && r.abs() < 1e15 {
        format!("{r:.1}") // Python prints round(2.00001, 4) as `2.0`
    } else {
        format!("{r}")
    };
    if s.len() < t.len() {
        s
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(head: &[u8], tail: &[u8], total: u64) -> Captured {
        Captured {
            head: head.to_vec(),
            tail: tail.to_vec(),
            total,
        }
    }

    #[test]
    fn truncation_keeps_halves() {
        let s: String = (0..2000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let t = truncate(&s, 1024);
        assert_eq!(t.chars().count(), 1024 + 3);
        assert!(t.starts_with(&s[..512]));
        assert!(t.ends_with(&s[2000 - 512..]));
        assert_eq!(&t[512..515], "...");
        assert_eq!(truncate("short", 1024), "short");
        assert_eq!(truncate(&s, 0), s);
        // Characters, not bytes.
        let u = "é".repeat(1024);
        assert_eq!(truncate(&u, 1024), u);
    }

    #[test]
    fn decode_joins_and_flags_invalid_utf8() {
        assert_eq!(decode(&cap(b"ab", b"cd", 4)), ("abcd".into(), true));
        let (s, ok) = decode(&cap(b"a\xffb", b"", 3));
        assert!(!ok);
        assert_eq!(s, "a\u{fffd}b");
        // A gap: a split "é" (C3 A9) at both ends is dropped, not turned into U+FFFD.
        let (s, ok) = decode(&cap(b"xy\xc3", b"\xa9z", 100));
        assert!(ok);
        assert_eq!(s, "xy\u{2026}z");
    }

    #[test]
    fn rounding_follows_rstar() {
        assert_eq!(round_numeric("0.30000000000000004\n"), "0.3");
        assert_eq!(round_numeric("3.14159265"), "3.1416");
        assert_eq!(round_numeric("2.5"), "2.5");
        assert_eq!(round_numeric("12"), "12");
        assert_eq!(round_numeric("1.000001"), "1.0");
        assert_eq!(round_numeric("x = 0.333333"), "x = 0.333333");
        assert_eq!(round_numeric("[0.333333]"), "[0.333333]");
    }
}
