//! `rstar-gpu train data` and `train ppm` end to end: hand-built search trees → pairs and SFT
//! files (checked against the library's selection) → a PPM head trained on the real SmolLM2
//! backbone, saved, loaded back, and ranking the training pairs as the report says.
use std::path::Path;
use std::process::Command;

#[path = "common/trees.rs"]
mod trees;
use rstar_gpu::search::SearchTree;
use rstar_gpu::train::pairs::{pairs, PairConfig};
use trees::trees;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rstar-gpu"))
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

/// `train ppm --layers top:1`: the head stage, then the last layer and the head together; the
/// PPM directory carries its own backbone checkpoint, which `Ppm::load` finds inside it, and the
/// loaded PPM ranks the training pairs right.
#[test]
fn ppm_with_a_trained_top_layer_saves_and_loads_its_backbone() {
    rstar_gpu::assets::model_path("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("rstar-train-top-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_trees(&dir.join("trees.jsonl"), &trees());
    let data = dir.join("data");
    json_out(
        bin()
            .args(["train", "data", "--json", "--trees"])
            .arg(dir.join("trees.jsonl"))
            .arg("--out")
            .arg(&data)
            .output()
            .unwrap(),
    );
    let ppm_dir = dir.join("ppm");
    let r = json_out(
        bin()
            .args(["train", "ppm", "--json", "--model", "smollm2-135m"])
            .args(["--holdout", "0", "--epochs", "60", "--layers", "top:1"])
            .args(["--backbone-epochs", "2", "--pairs"])
            .arg(data.join("pairs.jsonl"))
            .arg("--out")
            .arg(&ppm_dir)
            .output()
            .unwrap(),
    );
    assert_eq!(r["layers"], "top:1");
    assert_eq!(r["epochs"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(
        r["head_stage"]["epochs"].as_array().unwrap().len(),
        60,
        "{r}"
    );
    assert!(ppm_dir.join("backbone/model.safetensors").exists());
    let cfg = rstar_gpu::model::ppm::Ppm::read_config(&ppm_dir).unwrap();
    assert_eq!(cfg.backbone, "backbone");
    let ppm = rstar_gpu::model::ppm::Ppm::load(&ppm_dir, |spec| {
        assert!(
            std::path::Path::new(spec).ends_with("ppm/backbone"),
            "{spec}"
        );
        let p = rstar_gpu::model::generate::LocalPolicy::load(
            std::path::Path::new(spec),
            rstar_gpu::model::transformer::WeightMode::Dequantized,
            &candle_core::Device::Cpu,
        )?;
        Ok((p.model().clone(), p.tokenizer().clone()))
    })
    .unwrap();
    let read = rstar_gpu::train::export::read_pairs(&data.join("pairs.jsonl")).unwrap();
    let right = read
        .iter()
        .filter(|p| {
            let chosen = format!("{}{}", p.prefix, p.chosen);
            let rejected = format!("{}{}", p.prefix, p.rejected);
            let s = ppm
                .score(&[(&p.question, &chosen), (&p.question, &rejected)])
                .unwrap();
            s[0] > s[1]
        })
        .count();
    assert_eq!(right, read.len(), "{r}");
    std::fs::remove_dir_all(&dir).ok();
}
