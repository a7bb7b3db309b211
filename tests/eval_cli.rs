//! `rstar-gpu eval` end to end on the real SmolLM2 GGUF with tiny budgets: both prompt styles
//! run (the code style through the sandboxed executor), every problem gets a graded record, the
//! summary matches the records, and a second run resumes without redoing anything.
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rstar-gpu"))
}

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn eval_runs_grades_and_resumes() {
    rstar_gpu::assets::model_path("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
    let out = std::env::temp_dir().join(format!("rstar-eval-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    for (style, tokens) in [("plain", "48"), ("code", "40")] {
        let dir = out.join(style);
        let run = |limit: &str| {
            let o = bin()
                .args([
                    "eval",
                    "--data",
                    "gsm8k",
                    "--limit",
                    limit,
                    "--model",
                    "smollm2-135m",
                    "--prompt",
                    style,
                ])
                .args([
                    "--max-tokens",
                    tokens,
                    "--max-depth",
                    "3",
                    "--batch",
                    "2",
                    "--json",
                    "--out",
                ])
                .arg(&dir)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{style}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let stdout = String::from_utf8(o.stdout).unwrap();
            assert_eq!(
                stdout.lines().count(),
                1,
                "--json prints one line: {stdout}"
            );
            serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
        };
        let s = run("3");
        assert_eq!(s["n_problems"], 3);
        let recs = records(&dir.join("results.jsonl"));
        assert_eq!(recs.len(), 3);
        let correct = recs.iter().filter(|r| r["correct"] == true).count();
        assert_eq!(s["correct"], correct);
        for r in &recs {
            assert!(
                r["reference"].is_string() && !r["solution"].as_str().unwrap().is_empty(),
                "{r}"
            );
            assert!(r["tokens"].as_u64().unwrap() > 0);
        }
        assert!(dir.join("report.md").exists() && dir.join("summary.json").exists());
        // Resume: one more problem is solved; the first three are kept, not redone.
        let s = run("4");
        assert_eq!(s["n_problems"], 4);
        assert_eq!(
            s["new_tokens_this_run"].as_u64().unwrap(),
            records(&dir.join("results.jsonl"))[3]["tokens"]
                .as_u64()
                .unwrap()
        );
        let again = records(&dir.join("results.jsonl"));
        assert_eq!(&again[..3], &recs[..]);
    }
    // Bad input is one clear line.
    let o = bin()
        .args(["eval", "--data", "/nonexistent/x.jsonl", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent/x.jsonl")
            && err.lines().filter(|l| l.starts_with("error")).count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
