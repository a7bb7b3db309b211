//! `rstar-gpu train data` and `train ppm` end to end: hand-built search trees → pairs and SFT
//! files (checked against the library's selection) → a PPM head trained on the real SmolLM2
//! backbone, saved, loaded back, and ranking the training pairs as the report says.
use std::path::Path;
use std::process::Command;

use rstar_gpu::search::{Mode, SearchTree, Terminal, TreeNode};
use rstar_gpu::train::pairs::{pairs, PairConfig};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rstar-gpu"))
}

/// (parent, q, terminal, correct, text)
type Row = (
    Option<u32>,
    f32,
    Option<Terminal>,
    Option<bool>,
    &'static str,
);

fn tree(id: &str, question: &str, reference: &str, rows: &[Row]) -> SearchTree {
    let mut nodes: Vec<TreeNode> = rows
        .iter()
        .enumerate()
        .map(|(i, &(parent, q, terminal, correct, text))| TreeNode {
            id: i as u32,
            parent,
            depth: 0,
            text: text.to_string(),
            output: None,
            error: None,
            visits: 1,
            q,
            init_value: 0.0,
            terminal,
            answer: terminal.filter(|t| *t == Terminal::Answer).map(|_| {
                if correct == Some(true) {
                    reference.into()
                } else {
                    "0".into()
                }
            }),
            correct,
            tokens: 10,
            children: Vec::new(),
        })
        .collect();
    for i in 1..nodes.len() {
        let p = nodes[i].parent.unwrap() as usize;
        nodes[i].depth = nodes[p].depth + 1;
        nodes[p].children.push(i as u32);
    }
    SearchTree {
        id: id.into(),
        question: question.into(),
        reference: Some(reference.into()),
        mode: Mode::TerminalGuided,
        rollouts: 4,
        expansions: 4,
        policy_tokens: 100,
        nodes,
    }
}

const A: Option<Terminal> = Some(Terminal::Answer);

fn trees() -> Vec<SearchTree> {
    vec![
        tree(
            "t-apples",
            "Tom has 3 apples and buys 4 more. How many apples does he have?",
            "7",
            &[
                (None, 0.2, None, None, ""),
                (Some(0), 0.9, None, None, "<code>\n# Step 1: add the apples he buys to the ones he has\ntotal = 3 + 4\n<end_of_step>"),
                (Some(0), -0.8, None, None, "<code>\n# Step 1: multiply the counts\ntotal = 3 * 4\n<end_of_step>"),
                (Some(1), 1.0, A, Some(true), "<answer>\nHe has \\boxed{7} apples.\n<end_of_answer>"),
                (Some(2), -1.0, A, Some(false), "<answer>\nHe has \\boxed{12} apples, after multiplying.\n<end_of_answer>"),
            ],
        ),
        tree(
            "t-pens",
            "A pen costs 2 dollars. How much do 5 pens cost?",
            "10",
            &[
                (None, 0.1, None, None, ""),
                (Some(0), 0.8, None, None, "<code>\n# Step 1: price times the number of pens\ncost = 2 * 5\n<end_of_step>"),
                (Some(0), -0.9, None, None, "<code>\n# Step 1: add the price and the count together\ncost = 2 + 5\n<end_of_step>"),
                (Some(1), 1.0, A, Some(true), "<answer>\nThey cost \\boxed{10} dollars.\n<end_of_answer>"),
                (Some(2), -1.0, A, Some(false), "<answer>\nThe total is \\boxed{7} dollars in all.\n<end_of_answer>"),
            ],
        ),
    ]
}

fn json_out(o: std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "--json prints one line: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap()
}

fn write_trees(path: &Path, ts: &[SearchTree]) {
    let text: String = ts
        .iter()
        .map(|t| t.to_json_line().unwrap() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn train_data_then_ppm_on_smollm2() {
    rstar_gpu::assets::model_path("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("rstar-train-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ts = trees();
    write_trees(&dir.join("trees.jsonl"), &ts);

    // Pairs and SFT data, as the library selects them.
    let data = dir.join("data");
    let s = json_out(
        bin()
            .args(["train", "data", "--json", "--trees"])
            .arg(dir.join("trees.jsonl"))
            .arg("--out")
            .arg(&data)
            .output()
            .unwrap(),
    );
    let expected: usize = ts
        .iter()
        .map(|t| pairs(t, &PairConfig::default()).len())
        .sum();
    assert!(
        expected >= 4,
        "the fixture should give step and final pairs"
    );
    assert_eq!(s["pairs"], expected);
    assert_eq!(s["trees"], 2);
    assert_eq!(s["covered"], 2);
    assert_eq!(s["sft_examples"], 2, "one correct trajectory per problem");
    let read = rstar_gpu::train::export::read_pairs(&data.join("pairs.jsonl")).unwrap();
    assert_eq!(read.len(), expected);
    for l in std::fs::read_to_string(data.join("sft.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["role"], "user");
        assert!(m[1]["content"].as_str().unwrap().contains("\\boxed{"));
    }

    // A head on the real backbone: every training pair ends up ranked right.
    let ppm_dir = dir.join("ppm");
    let r = json_out(
        bin()
            .args(["train", "ppm", "--json", "--model", "smollm2-135m"])
            .args(["--holdout", "0", "--epochs", "60", "--pairs"])
            .arg(data.join("pairs.jsonl"))
            .arg("--out")
            .arg(&ppm_dir)
            .output()
            .unwrap(),
    );
    assert_eq!(r["train_pairs"], expected);
    let epochs = r["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 60);
    let last = epochs.last().unwrap();
    assert_eq!(last["train_accuracy"], 1.0, "{r}");
    assert!(
        last["train_loss"].as_f64().unwrap() < epochs[0]["train_loss"].as_f64().unwrap(),
        "{r}"
    );
    assert!(ppm_dir.join("train_report.json").exists());

    // The saved PPM (raw hidden states in, tanh out) ranks the pairs as training measured.
    let path = rstar_gpu::assets::model_path("smollm2-135m").unwrap();
    let policy = rstar_gpu::model::generate::LocalPolicy::load(
        &path,
        rstar_gpu::model::transformer::WeightMode::Quantized,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let ppm = rstar_gpu::model::ppm::Ppm::load(&ppm_dir, |spec| {
        assert_eq!(spec, "smollm2-135m");
        Ok((policy.model().clone(), policy.tokenizer().clone()))
    })
    .unwrap();
    for p in &read {
        let chosen = format!("{}{}", p.prefix, p.chosen);
        let rejected = format!("{}{}", p.prefix, p.rejected);
        let s = ppm
            .score(&[(&p.question, &chosen), (&p.question, &rejected)])
            .unwrap();
        assert!(s[0] > s[1], "{}: {} vs {}", p.problem, s[0], s[1]);
        assert!(s.iter().all(|x| (-1.0..=1.0).contains(x)));
    }

    // eval loads the trained PPM: sc with --ppm records Best-of-N on the same samples.
    let ev = dir.join("eval");
    let s = json_out(
        bin()
            .args(["eval", "--data", "gsm8k", "--limit", "2", "--method", "sc"])
            .args([
                "--samples",
                "2",
                "--model",
                "smollm2-135m",
                "--max-tokens",
                "48",
            ])
            .args(["--json", "--ppm"])
            .arg(&ppm_dir)
            .arg("--out")
            .arg(&ev)
            .output()
            .unwrap(),
    );
    assert_eq!(s["bon_n"], 2, "{s}");
    let bon_acc = s["bon_accuracy"].as_f64().unwrap();
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(ev.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let right = recs.iter().filter(|r| r["bon_correct"] == true).count();
    assert_eq!(bon_acc, right as f64 / 2.0);
    for r in &recs {
        assert!(r["bon_correct"].is_boolean(), "{r}");
        // The pick is one of the sampled answers (or none when no sample answered).
        assert!(
            r["bon_answer"].is_null() || r["n_answers"].as_u64().unwrap() > 0,
            "{r}"
        );
    }

    // Bad input: one error line naming the file.
    let o = bin()
        .args(["train", "ppm", "--model", "smollm2-135m", "--pairs"])
        .arg(dir.join("missing.jsonl"))
        .arg("--out")
        .arg(dir.join("x"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing.jsonl"), "{err}");
    std::fs::write(dir.join("bad.jsonl"), "{\"prompt\": 1}\n").unwrap();
    let o = bin()
        .args(["train", "ppm", "--model", "smollm2-135m", "--pairs"])
        .arg(dir.join("bad.jsonl"))
        .arg("--out")
        .arg(dir.join("x"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.jsonl:1"), "{err}");
    std::fs::write(dir.join("bad_trees.jsonl"), "not json\n").unwrap();
    let o = bin()
        .args(["train", "data", "--trees"])
        .arg(dir.join("bad_trees.jsonl"))
        .arg("--out")
        .arg(dir.join("y"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("bad_trees.jsonl"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
