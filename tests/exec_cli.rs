//! `rstar-gpu exec` as a command: the JSONL contract and malformed input.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn exec(input: &str, args: &[&str]) -> (Vec<Value>, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rstar-gpu"))
        .arg("exec")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each output line is JSON"))
        .collect();
    (
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn jsonl_in_jsonl_out_in_order() {
    let input = r#"{"id": "1", "code": "x = 3\nprint(x)", "parent": null}
{"id": "2", "code": "print(x * 2)", "parent": "1"}

{"id": "3", "code": "print(undefined_name)", "parent": null}
{"id": 4, "code": "print(x + 1)", "parent": "1"}
"#;
    let (out, err, ok) = exec(input, &["--workers", "1"]);
    assert!(ok, "{err}");
    let ids: Vec<&str> = out.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "4"]);
    assert_eq!(out[0]["stdout"], "3\n");
    assert_eq!(out[1]["stdout"], "6\n");
    assert_eq!(out[1]["ok"], true);
    assert_eq!(out[2]["ok"], false);
    assert_eq!(
        out[2]["error"],
        "NameError: name 'undefined_name' is not defined"
    );
    assert_eq!(out[3]["stdout"], "4\n");
    for v in &out {
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["elapsed_ms", "error", "id", "ok", "stdout"]); // sorted by serde_json
        assert!(v["elapsed_ms"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn malformed_line_is_named_after_earlier_results() {
    let input = "{\"id\": \"a\", \"code\": \"print(1)\", \"parent\": null}\n{\"id\": \"b\", \"code\": \"print(2)\"}\n{\"id\": \"c\", \"code\": 5}\n{\"id\": \"d\", \"code\": \"print(4)\"}\n";
    let (out, err, ok) = exec(input, &["--workers", "1"]);
    assert!(!ok);
    assert_eq!(out.len(), 2, "the results before the bad line are written");
    assert_eq!(out[1]["stdout"], "2\n");
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("error: ") && line.contains("line 3"),
        "{err}"
    );
    let (out, err, ok) = exec("this is not json\n", &[]);
    assert!(!ok && out.is_empty() && err.contains("line 1"), "{err}");
}
