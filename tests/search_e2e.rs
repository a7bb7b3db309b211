//! End to end on the real SmolLM2 GGUF, 3 GSM8K problems, tiny budgets: greedy, self-consistency,
//! Best-of-N (untrained PPM head: a smoke check) and MCTS all run through `rstar-gpu eval`, grade a
//! record per problem, and MCTS writes valid trees that `rstar-gpu view` renders as text and HTML;
//! `solve` prints one JSON object; a TOML config with an unknown key is one clear error line.
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rstar-gpu"))
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn all_four_methods_on_smollm2() {
    rstar_gpu::assets::model_path("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
    let out = std::env::temp_dir().join(format!("rstar-search-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let methods: [(&str, &[&str]); 4] = [
        ("greedy", &["--prompt", "plain", "--max-tokens", "48"]),
        (
            "sc",
            &["--prompt", "plain", "--samples", "3", "--max-tokens", "48"],
        ),
        (
            "bon",
            &[
                "--prompt",
                "plain",
                "--samples",
                "2",
                "--max-tokens",
                "48",
                "--ppm",
                "untrained",
            ],
        ),
        (
            "mcts",
            &[
                "--mode",
                "terminal-guided",
                "--rollouts",
                "2",
                "--candidates",
                "2",
                "--max-depth",
                "3",
                "--max-tokens",
                "40",
                "--backend",
                "cpu",
            ],
        ),
    ];
    for (method, extra) in methods {
        let dir = out.join(method);
        let stdout = run_ok(
            bin()
                .args(["eval", "--data", "gsm8k", "--split", "test", "--limit", "3"])
                .args([
                    "--model",
                    "smollm2-135m",
                    "--method",
                    method,
                    "--batch",
                    "3",
                    "--json",
                ])
                .args(extra)
                .arg("--out")
                .arg(&dir),
        );
        assert_eq!(
            stdout.lines().count(),
            1,
            "{method}: one JSON line: {stdout}"
        );
        let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(s["n_problems"], 3, "{method}: {s}");
        assert_eq!(s["method"], method);
        let recs = lines(&dir.join("results.jsonl"));
        assert_eq!(recs.len(), 3, "{method}");
        if method == "sc" {
            // pass@k from the records: pass@3 is the coverage, pass@1 the mean fraction correct.
            let cov = recs.iter().filter(|r| r["covered"] == true).count() as f64 / 3.0;
            assert!(
                (s["pass_at_k"]["3"].as_f64().unwrap() - cov).abs() < 1e-9,
                "{s}"
            );
            let frac: f64 = recs
                .iter()
                .map(|r| r["n_correct"].as_f64().unwrap() / 3.0)
                .sum::<f64>()
                / 3.0;
            assert!(
                (s["pass_at_k"]["1"].as_f64().unwrap() - frac).abs() < 1e-9,
                "{s}"
            );
            assert!(s["tokens_per_sample"].as_f64().unwrap() > 0.0);
        }
        for r in &recs {
            assert!(
                r["correct"].is_boolean() && r["covered"].is_boolean(),
                "{method}: {r}"
            );
            assert!(r["tokens"].as_u64().unwrap() > 0, "{method}: {r}");
            assert_eq!(r["method"], method);
            // The chosen answer is never correct unless some answer was.
            assert!(
                r["covered"] == true || r["correct"] == false,
                "{method}: {r}"
            );
            // An answer is chosen exactly when some trajectory or sample reached one.
            assert_eq!(
                r["answer"].is_string(),
                r["n_answers"].as_u64().unwrap() > 0,
                "{method}: {r}"
            );
        }
        let correct = recs.iter().filter(|r| r["correct"] == true).count();
        assert_eq!(s["correct"], correct, "{method}");
        if method == "mcts" {
            let share = &s["time_share"];
            assert!(share["policy"].as_f64().unwrap() > 0.0, "{s}");
            assert!(share["forest"].as_f64().unwrap() < share["policy"].as_f64().unwrap());
            let trees = rstar_gpu::search::read_trees(&dir.join("trees.jsonl")).unwrap();
            assert_eq!(trees.len(), 3);
            for (t, r) in trees.iter().zip(&recs) {
                assert_eq!(t.id, r["id"].as_str().unwrap());
                assert!(t.nodes.len() > 1, "the search expanded the root");
                assert!(t.rollouts <= 2);
                assert_eq!(t.covered(), r["covered"] == true);
            }
            let text = run_ok(
                bin()
                    .arg("view")
                    .arg(dir.join("trees.jsonl"))
                    .args(["--problem", "1"]),
            );
            assert!(
                text.contains("[0] N=") && text.contains(&trees[1].id),
                "{text}"
            );
            let html = dir.join("tree.html");
            run_ok(
                bin()
                    .arg("view")
                    .arg(dir.join("trees.jsonl"))
                    .arg("--html")
                    .arg(&html),
            );
            let page = std::fs::read_to_string(&html).unwrap();
            assert!(page.starts_with("<!doctype html>") && page.contains("<details"));
            // Resume: nothing is redone, the trees file keeps one line per problem.
            let again = run_ok(
                bin()
                    .args([
                        "eval",
                        "--data",
                        "gsm8k",
                        "--limit",
                        "3",
                        "--model",
                        "smollm2-135m",
                    ])
                    .args(["--method", "mcts", "--json"])
                    .args(extra)
                    .arg("--out")
                    .arg(&dir),
            );
            let s2: serde_json::Value = serde_json::from_str(&again).unwrap();
            assert_eq!(s2["new_tokens_this_run"], 0);
            assert_eq!(lines(&dir.join("trees.jsonl")).len(), 3);
        }
    }

    // solve: one JSON object, with the answer graded against --reference.
    let stdout = run_ok(
        bin()
            .args([
                "solve",
                "What is 2 + 3?",
                "--model",
                "smollm2-135m",
                "--method",
                "mcts",
            ])
            .args([
                "--rollouts",
                "1",
                "--candidates",
                "2",
                "--max-depth",
                "2",
                "--max-tokens",
                "32",
            ])
            .args([
                "--reference",
                "5",
                "--backend",
                "cpu",
                "--json",
                "--tree-out",
            ])
            .arg(out.join("solve.jsonl")),
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        v["correct"].is_boolean() && v["policy_tokens"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(
        rstar_gpu::search::read_trees(&out.join("solve.jsonl"))
            .unwrap()
            .len(),
        1
    );

    // A config with a misspelt key: one clear error line naming the file.
    let cfg = out.join("bad.toml");
    std::fs::write(&cfg, "rollout = 3\n").unwrap();
    let o = bin()
        .args([
            "solve",
            "What is 2 + 3?",
            "--model",
            "smollm2-135m",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("bad.toml") && errors[0].contains("rollout"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
