//! Golden trees: small hand-checked scenarios (tests/golden/*.json, each with its derivation in
//! its "description") run on every backend available here, asserting exact selections, paths,
//! visit counts, virtual losses, flags and values.

mod common;

use rstar_gpu::forest::{flags, BackendKind, Backup, Expansion, ForestConfig, ForestError, NONE};
use serde_json::Value;

fn id_or_none(v: &Value) -> u32 {
    if v.is_null() {
        NONE
    } else {
        v.as_u64().expect("node id") as u32
    }
}

fn flag_bits(names: &Value) -> u32 {
    names
        .as_array()
        .expect("flags list")
        .iter()
        .fold(0, |acc, n| {
            acc | match n.as_str().unwrap() {
                "expanded" => flags::EXPANDED,
                "terminal" => flags::TERMINAL,
                "answer" => flags::ANSWER,
                "pending" => flags::PENDING,
                other => panic!("unknown flag {other}"),
            }
        })
}

fn run(path: &std::path::Path, kind: BackendKind) -> bool {
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let name = fx["name"].as_str().unwrap();
    let cfg: ForestConfig = serde_json::from_value(fx["config"].clone()).expect("config");
    let Some(mut f) = common::forest_or_skip(&cfg, kind) else {
        return false;
    };
    if let Some(root) = fx.get("root") {
        let v = root["value"].as_f64().unwrap() as f32;
        f.reset(&vec![v; cfg.trees], root["visits"].as_u64().unwrap() as u32)
            .unwrap();
    }
    let (b, a) = (cfg.trees, cfg.max_children);
    let mut k = 0;
    for (i, step) in fx["steps"].as_array().unwrap().iter().enumerate() {
        let ctx = format!("{name} [{kind}] step {i}");
        let result: Result<(), ForestError> = if let Some(kk) = step.get("select") {
            k = kk.as_u64().unwrap() as usize;
            f.select(k).unwrap();
            let sel = f.selection().unwrap();
            if let Some(want) = step.get("expect_leaves") {
                let want: Vec<u32> = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|t| t.as_array().unwrap().iter().map(id_or_none))
                    .collect();
                assert_eq!(sel.leaves, want, "{ctx}: leaves");
            }
            if let Some(want) = step.get("expect_paths") {
                for (t, slots) in want.as_array().unwrap().iter().enumerate() {
                    for (s, p) in slots.as_array().unwrap().iter().enumerate() {
                        let p: Vec<u32> = p.as_array().unwrap().iter().map(id_or_none).collect();
                        assert_eq!(sel.path(t, s), &p[..], "{ctx}: path of tree {t} slot {s}");
                    }
                }
            }
            Ok(())
        } else if let Some(trees) = step.get("expand") {
            let mut e = Expansion::zeros(b, k, a);
            for (t, slots) in trees.as_array().unwrap().iter().enumerate() {
                for (s, kids) in slots.as_array().unwrap().iter().enumerate() {
                    let kids = kids.as_array().unwrap();
                    e.counts[t * k + s] = kids.len() as u32;
                    for (j, c) in kids.iter().enumerate() {
                        let at = (t * k + s) * a + j;
                        e.values[at] = c["value"].as_f64().unwrap() as f32;
                        e.priors[at] = c.get("prior").and_then(Value::as_f64).unwrap_or(0.0) as f32;
                        let on = |key: &str| c.get(key).and_then(Value::as_bool).unwrap_or(false);
                        e.flags[at] = (on("terminal") as u32 * flags::TERMINAL)
                            | (on("answer") as u32 * flags::ANSWER)
                            | (on("count_init") as u32 * flags::COUNT_INIT);
                    }
                }
            }
            f.expand(&e)
        } else if let Some(trees) = step.get("backup") {
            let mut bk = Backup {
                values: vec![0.0; b * k],
                mask: vec![0; b * k],
            };
            for (t, slots) in trees.as_array().unwrap().iter().enumerate() {
                for (s, v) in slots.as_array().unwrap().iter().enumerate() {
                    if let Some(v) = v.as_f64() {
                        bk.values[t * k + s] = v as f32;
                        bk.mask[t * k + s] = 1;
                    }
                }
            }
            f.backup(&bk)
        } else if let Some(roots) = step.get("reroot") {
            let roots: Vec<u32> = roots.as_array().unwrap().iter().map(id_or_none).collect();
            f.reroot(&roots)
        } else if let Some(want) = step.get("expect_n_nodes") {
            let snap = f.read_back().unwrap();
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(snap.n_nodes, want, "{ctx}: nodes in use");
            Ok(())
        } else if let Some(nodes) = step.get("expect_nodes") {
            let snap = f.read_back().unwrap();
            for n in nodes.as_array().unwrap() {
                let (t, id) = (
                    n["tree"].as_u64().unwrap() as usize,
                    n["id"].as_u64().unwrap() as u32,
                );
                assert!(id < snap.n_nodes[t], "{ctx}: tree {t} has no node {id}");
                let x = snap.node(t, id);
                let c = format!("{ctx}: tree {t} node {id} ({x:?})");
                let u = |key: &str| n.get(key).map(|v| v.as_u64().unwrap() as u32);
                let fl = |key: &str| n.get(key).map(|v| v.as_f64().unwrap() as f32);
                if let Some(v) = u("visits") {
                    assert_eq!(x.visits, v, "{c}: visits");
                }
                if let Some(v) = u("vloss") {
                    assert_eq!(x.vloss, v, "{c}: vloss");
                }
                if let Some(v) = u("depth") {
                    assert_eq!(x.depth(), v, "{c}: depth");
                }
                if let Some(v) = u("n_children") {
                    assert_eq!(x.n_children(), v, "{c}: n_children");
                }
                if let Some(v) = n.get("parent") {
                    assert_eq!(x.parent, id_or_none(v), "{c}: parent");
                }
                if let Some(v) = n.get("first_child") {
                    assert_eq!(x.first_child, id_or_none(v), "{c}: first_child");
                }
                if let Some(v) = fl("value_sum") {
                    assert!((x.value_sum - v).abs() < 1e-6, "{c}: value_sum");
                }
                if let Some(v) = fl("init_value") {
                    assert!((x.init_value - v).abs() < 1e-6, "{c}: init_value");
                }
                if let Some(v) = n.get("flags") {
                    assert_eq!(x.flags(), flag_bits(v), "{c}: flags");
                }
            }
            Ok(())
        } else {
            panic!("{ctx}: unknown step {step}");
        };
        match (step.get("expect_error").and_then(Value::as_str), result) {
            (None, r) => r.unwrap_or_else(|e| panic!("{ctx}: unexpected error: {e}")),
            (Some(want), Err(e)) => {
                let ok = matches!(
                    (want, &e),
                    ("capacity", ForestError::CapacityExceeded { .. })
                        | ("invalid_expand", ForestError::InvalidExpand { .. })
                        | ("invalid_reroot", ForestError::InvalidReroot { .. })
                );
                assert!(ok, "{ctx}: expected a {want} error, got {e}");
            }
            (Some(want), Ok(())) => panic!("{ctx}: expected a {want} error, got success"),
        }
    }
    true
}

fn fixtures() -> Vec<std::path::PathBuf> {
    let dir = common::repo_path("tests/golden");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 6,
        "expected at least 6 golden fixtures, found {}",
        v.len()
    );
    v
}

fn run_all(kind: BackendKind) {
    let mut ran = 0;
    for p in fixtures() {
        if run(&p, kind) {
            ran += 1;
        }
    }
    eprintln!("golden trees on {kind}: {ran} fixtures");
}

#[test]
fn golden_cpu() {
    run_all(BackendKind::Cpu);
}

#[test]
fn golden_wgpu() {
    run_all(BackendKind::Wgpu);
}

#[test]
fn golden_cuda() {
    run_all(BackendKind::Cuda);
}
