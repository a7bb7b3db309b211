//! The grader on a table of hand-written answer pairs (`tests/grade/pairs.tsv`).
//!
//! Rows marked `eq` / `ne` must be decided by the quick rules alone, and must keep their verdict
//! when the sympy fallback is on. Rows marked `eq-sym` / `ne-sym` need sympy; they are checked when
//! sympy is importable, skipped with a `SKIP` line otherwise (unless `RSTAR_REQUIRE_SYMPY=1`, which
//! makes a missing sympy a failure, as CI sets it).

use std::process::Command;

use rstar_gpu::grade::{python_interpreter, Grader, Via};

struct Row {
    line: usize,
    verdict: String,
    pred: String,
    reference: String,
    note: String,
}

fn rows() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grade/pairs.tsv");
    let text = std::fs::read_to_string(path).expect("read tests/grade/pairs.tsv");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(
            cols.len() >= 3,
            "pairs.tsv:{}: want verdict<TAB>pred<TAB>reference",
            i + 1
        );
        assert!(
            matches!(cols[0], "eq" | "ne" | "eq-sym" | "ne-sym"),
            "pairs.tsv:{}: bad verdict {:?}",
            i + 1,
            cols[0]
        );
        out.push(Row {
            line: i + 1,
            verdict: cols[0].to_string(),
            pred: cols[1].to_string(),
            reference: cols[2].to_string(),
            note: cols.get(3).unwrap_or(&"").to_string(),
        });
    }
    out
}

fn sympy_available() -> Result<(), String> {
    let py = python_interpreter().map_err(|e| e.to_string())?;
    let ok = Command::new(&py)
        .args(["-c", "import sympy"])
        .status()
        .map_err(|e| e.to_string())?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("{} cannot import sympy", py.display()))
    }
}

#[test]
fn table_has_enough_pairs() {
    let r = rows();
    let eq = r.iter().filter(|r| r.verdict.starts_with("eq")).count();
    let ne = r.len() - eq;
    println!("grade table: {} pairs ({eq} equivalent, {ne} not)", r.len());
    assert!(r.len() >= 150, "only {} pairs", r.len());
    assert!(eq >= 50 && ne >= 50, "unbalanced table: {eq} eq, {ne} ne");
}

#[test]
fn quick_rules_decide_their_rows() {
    let g = Grader::quick();
    let mut failures = Vec::new();
    for r in rows()
        .iter()
        .filter(|r| r.verdict == "eq" || r.verdict == "ne")
    {
        let o = g.equiv(&r.pred, &r.reference);
        let want = r.verdict == "eq";
        // A quick-rule row must be decided, not merely "not equal because undecided".
        let decided = want || o.via != Via::Undecided || undecided_allowed(r);
        if o.equivalent != want || !decided {
            failures.push(format!(
                "pairs.tsv:{}: {} {:?} vs {:?} gave {:?} {}",
                r.line, r.verdict, r.pred, r.reference, o, r.note
            ));
        }
    }
    // Symmetry: the verdict does not depend on which side is the reference.
    for r in rows()
        .iter()
        .filter(|r| r.verdict == "eq" || r.verdict == "ne")
    {
        let (x, y) = (
            g.equiv(&r.pred, &r.reference),
            g.equiv(&r.reference, &r.pred),
        );
        if x.equivalent != y.equivalent {
            failures.push(format!("pairs.tsv:{}: asymmetric: {x:?} vs {y:?}", r.line));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `ne` rows that the quick rules may leave open (so "not equal" for want of a decision): an
/// empty side, or symbols (`C` vs `B`); with sympy they are decided, which `with_sympy_all_rows`
/// checks.
fn undecided_allowed(r: &Row) -> bool {
    let open = |s: &str| s.trim().is_empty() || s.chars().any(|c| c.is_ascii_alphabetic());
    open(&r.pred) || open(&r.reference)
}

#[test]
fn with_sympy_all_rows() {
    if let Err(why) = sympy_available() {
        if std::env::var("RSTAR_REQUIRE_SYMPY").is_ok_and(|v| v == "1") {
            panic!("RSTAR_REQUIRE_SYMPY=1 but sympy is unavailable: {why}");
        }
        println!("SKIP grade sympy rows: {why}");
        return;
    }
    let g = Grader::with_sympy();
    let rows = rows();
    // All rows in one batch (one interpreter start), then the `-sym` rows one by one: the two
    // paths must agree.
    let pairs: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.pred.as_str(), r.reference.as_str()))
        .collect();
    let batch = g.equiv_many(&pairs);
    let mut failures = Vec::new();
    let n = rows.len();
    for (r, o) in rows.iter().zip(&batch) {
        let want = r.verdict.starts_with("eq");
        if o.equivalent != want {
            failures.push(format!(
                "pairs.tsv:{}: {} {:?} vs {:?} gave {:?} {}",
                r.line, r.verdict, r.pred, r.reference, o, r.note
            ));
        }
        if r.verdict.ends_with("-sym") {
            if o.via != Via::Symbolic && o.via != Via::Elements {
                failures.push(format!(
                    "pairs.tsv:{}: expected a symbolic decision, got {o:?}",
                    r.line
                ));
            }
            let single = g.equiv(&r.pred, &r.reference);
            if single.equivalent != o.equivalent {
                failures.push(format!(
                    "pairs.tsv:{}: batch {o:?} but single {single:?}",
                    r.line
                ));
            }
        }
    }
    println!("grade table with sympy: {n} rows checked");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Garbled, truncated and adversarial text is normal input: every function returns, none panics,
/// and pathological nesting stays fast (no subprocess: quick rules only).
#[test]
fn garbled_input_never_panics() {
    use rand::{Rng, SeedableRng};
    use rstar_gpu::grade::{eval_number, extract_answer, normalize};

    const TOKENS: &[&str] = &[
        "0",
        "1",
        "7",
        "12",
        "3.5",
        ".",
        ",",
        "-",
        "+",
        "*",
        "/",
        "^",
        "_",
        "%",
        "\\%",
        "=",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "\\{",
        "\\}",
        "\\\\",
        "&",
        " ",
        "\n",
        "$",
        "\\$",
        "x",
        "e",
        "i",
        "ab",
        "\\frac",
        "\\dfrac",
        "\\sqrt",
        "\\pi",
        "\\pm",
        "\\cup",
        "\\infty",
        "\\text{",
        "\\mbox{",
        "\\boxed{",
        "\\fbox{",
        "####",
        "\\left",
        "\\right",
        "\\!",
        "\\,",
        "^\\circ",
        "\\cdot",
        "\\begin{pmatrix}",
        "\\end{pmatrix}",
        "\\in",
        "é",
        "π",
        "−",
        "°",
        "\u{0}",
        "😀",
        "\\",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let g = Grader::quick();
    for _ in 0..20_000 {
        let n = rng.random_range(0..24);
        let a: String = (0..n)
            .map(|_| TOKENS[rng.random_range(0..TOKENS.len())])
            .collect();
        let m = rng.random_range(0..12);
        let b: String = (0..m)
            .map(|_| TOKENS[rng.random_range(0..TOKENS.len())])
            .collect();
        let _ = extract_answer(&a, Some(&b));
        let _ = eval_number(&normalize(&a));
        let _ = g.equiv(&a, &b);
        let _ = g.grade(&a, None, &b);
    }
    let big = 200_000;
    let t = std::time::Instant::now();
    for s in [
        "(".repeat(big),
        format!("{}1{}", "(".repeat(big), ")".repeat(big)),
        format!("{}1{}", "{".repeat(big), "}".repeat(big)),
        format!("{}5", "-".repeat(big)),
        "2^".repeat(big),
        "\\frac".repeat(big),
        "\\sqrt{".repeat(big),
        "1,".repeat(big),
        "\\boxed{".repeat(big),
        "\\text{a}".repeat(big / 8),
        format!("\\boxed{{{}}}", "{".repeat(big)),
    ] {
        let _ = extract_answer(&s, None);
        let _ = g.equiv(&s, "1");
        let _ = g.equiv("1,2", &s);
    }
    assert!(
        t.elapsed().as_secs() < 30,
        "pathological inputs took {:?}",
        t.elapsed()
    );
}
