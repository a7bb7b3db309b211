//! `rstar-gpu evolve` on the real SmolLM2 with tiny budgets: two rounds complete (search → data →
//! policy SFT → PPM → evaluations) with a manifest, report and PNG chart; and the same run
//! SIGKILLed mid-round and resumed writes exactly the records of the uninterrupted run.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/trees.rs"]
mod trees;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rstar-gpu"))
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rstar-evolve-cli-{tag}-{}", std::process::id()));
    if d.exists() {
        std::fs::remove_dir_all(&d).unwrap();
    }
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Easy arithmetic, so the 135M model finds some correct and some wrong answers.
fn data(dir: &Path) -> (PathBuf, PathBuf) {
    let train = dir.join("train.jsonl");
    let eval = dir.join("eval.jsonl");
    let rows = |qs: &[(&str, &str)]| {
        qs.iter()
            .map(|(q, a)| serde_json::json!({"question": q, "answer": a}).to_string() + "\n")
            .collect::<String>()
    };
    std::fs::write(
        &train,
        rows(&[
            (
                "Tom has 3 apples and buys 4 more. How many apples does he have?",
                "7",
            ),
            ("What is 6 times 5?", "30"),
            (
                "A box holds 10 pens. Sam takes 2 pens. How many pens are left?",
                "8",
            ),
        ]),
    )
    .unwrap();
    std::fs::write(
        &eval,
        rows(&[
            ("What is 9 plus 8?", "17"),
            ("Anna has 12 sweets and eats 5. How many are left?", "7"),
        ]),
    )
    .unwrap();
    (train, eval)
}

/// Arguments of the test run. Trees of two other problems (with correct and wrong answers) are
/// the bootstrap data: SmolLM2-135M itself rarely writes a valid step at these budgets, and the
/// run must train a policy and a PPM in round 1.
fn args(train: &Path, eval: &Path, out: &Path) -> Vec<String> {
    let boot = train.with_file_name("bootstrap-trees.jsonl");
    if !boot.exists() {
        let text: String = trees::trees()
            .iter()
            .map(|t| t.to_json_line().unwrap() + "\n")
            .collect();
        std::fs::write(&boot, text).unwrap();
    }
    [
        "evolve",
        "--rounds",
        "2",
        "--model",
        "smollm2-135m",
        "--train-data",
        train.to_str().unwrap(),
        "--train-limit",
        "3",
        "--eval-data",
        eval.to_str().unwrap(),
        "--eval-limit",
        "2",
        "--rollouts",
        "3",
        "--candidates",
        "3",
        "--max-depth",
        "4",
        "--step-tokens",
        "48",
        "--batch",
        "2",
        "--sft-layers",
        "lora:4",
        "--sft-epochs",
        "1",
        "--sft-lr",
        "1e-3",
        "--ppm-epochs",
        "3",
        "--ppm-from-round",
        "2",
        "--backend",
        "cpu",
        "--bootstrap-trees",
        boot.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Every record file of a run, by path relative to the run: its lines, sorted.
fn records(out: &Path) -> BTreeMap<String, Vec<String>> {
    let mut map = BTreeMap::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if ["results.jsonl", "trees.jsonl", "pairs.jsonl", "sft.jsonl"].contains(&name) {
                    let mut lines: Vec<String> = std::fs::read_to_string(&p)
                        .unwrap()
                        .lines()
                        .map(str::to_string)
                        .collect();
                    lines.sort();
                    let rel = p.strip_prefix(out).unwrap().to_string_lossy().into_owned();
                    map.insert(rel, lines);
                }
            }
        }
    }
    map
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn two_rounds_complete_and_a_killed_run_resumes_to_the_same_records() {
    let dir = tempdir("run");
    let (train, eval) = data(&dir);

    // Uninterrupted.
    let a = dir.join("a");
    let o = bin()
        .args(args(&train, &eval, &a))
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["rounds"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["round"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for r in rows {
        assert!(r["greedy_accuracy"].is_number(), "{r}");
        assert!(r["mcts_accuracy"].is_number(), "{r}");
    }
    assert!(rows[1]["coverage"].is_number() && rows[2]["coverage"].is_number());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    for round in m["rounds"].as_array().unwrap().iter().skip(1) {
        let names: Vec<&str> = round["stages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["done"] == true)
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "search",
                "data",
                "policy",
                "ppm",
                "eval-greedy",
                "eval-mcts"
            ],
            "{round}"
        );
    }
    let report = std::fs::read_to_string(a.join("report.md")).unwrap();
    assert!(
        report.contains("| round |") && report.contains("\n| 2 |"),
        "{report}"
    );
    let png = std::fs::read(a.join("accuracy.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Every search and evaluation wrote one record per problem.
    assert_eq!(lines(&a.join("round-1/search/results.jsonl")), 3);
    assert_eq!(lines(&a.join("round-2/eval-mcts/results.jsonl")), 2);
    // A finished run is not started over by mistake.
    let again = bin().args(args(&train, &eval, &a)).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    // Killed mid-round (after the first search batch of round 1 is written), then resumed.
    let b = dir.join("b");
    let mut child = bin()
        .args(args(&train, &eval, &b))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first_batch = b.join("round-1/search/results.jsonl");
    let t0 = Instant::now();
    while lines(&first_batch) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(t0.elapsed() < Duration::from_secs(1200), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        lines(&first_batch) < 3,
        "killed too late to test a mid-round resume"
    );
    let o = bin()
        .args(args(&train, &eval, &b))
        .arg("--resume")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (ra, rb) = (records(&a), records(&b));
    assert_eq!(ra.keys().collect::<Vec<_>>(), rb.keys().collect::<Vec<_>>());
    for (k, la) in &ra {
        assert_eq!(
            la, &rb[k],
            "{k} differs between the uninterrupted and the resumed run"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_evolve_input_is_one_clear_error() {
    let dir = tempdir("bad");
    let missing = dir.join("nope.jsonl");
    let o = bin()
        .args([
            "evolve",
            "--rounds",
            "1",
            "--model",
            "smollm2-135m",
            "--train-data",
            missing.to_str().unwrap(),
            "--out",
            dir.join("out").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope.jsonl"), "{err}");
    // A resumed run with other settings is refused, naming the setting.
    let (train, eval) = data(&dir);
    let out = dir.join("cfg");
    std::fs::create_dir_all(&out).unwrap();
    let mut m = rstar_gpu::evolve::Manifest::new(serde_json::json!({"rollouts": 99}));
    m.round_mut(0, "x", None);
    m.write(&out.join("manifest.json")).unwrap();
    let o = bin()
        .args(args(&train, &eval, &out))
        .arg("--resume")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rollouts"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
