//! The toy workload reproduces `reference/toy_forest.c` (copied in tests/reference/) on every
//! backend: same checksum, mean depth and tree-0 root visits.

mod common;

use common::forest_or_skip;
use rstar_gpu::forest::{toy, BackendKind, ForestConfig, Rule};
use serde::Deserialize;
use std::process::Command;

#[derive(Deserialize, Debug)]
struct CRun {
    mean_depth: f64,
    max_depth_seen: u32,
    checksum: u64,
    root_visits_tree0: Vec<u32>,
}

fn cfg(trees: usize, sims: usize, rule: Rule) -> ForestConfig {
    toy::config(trees, sims, rule, 1)
}

/// Reference numbers printed by toy_forest.c (checked into this test so it runs without a C
/// compiler): (B, S) → (checksum, mean_depth, max_depth_seen, root_visits_tree0).
const EXPECTED: [(usize, usize, u64, f64, u32, [u32; 8]); 2] = [
    (64, 64, 4827, 7.4446, 16, [52, 12, 0, 0, 0, 0, 0, 0]),
    (1000, 32, 37539, 6.1648, 16, [26, 6, 0, 0, 0, 0, 0, 0]),
];

fn check_backend(kind: BackendKind) {
    for &(b, s, checksum, mean_depth, max_depth, tree0) in &EXPECTED {
        let Some(mut f) = forest_or_skip(&cfg(b, s, Rule::MCTX_PUCT), kind) else {
            return;
        };
        let r = toy::run(&mut f, s, 1, 8, 1).unwrap();
        assert_eq!(r.checksum, checksum, "{kind} B={b} S={s}");
        assert!(
            (r.mean_depth - mean_depth).abs() < 5e-5,
            "{kind} B={b} S={s}: mean depth {}",
            r.mean_depth
        );
        assert_eq!(r.max_depth_seen, max_depth);
        assert_eq!(r.root_visits_tree0, tree0.to_vec());
        assert_eq!(r.leaves, (b * s) as u64);
    }
}

#[test]
fn cpu_reproduces_toy_forest_c() {
    check_backend(BackendKind::Cpu);
}

#[test]
fn wgpu_reproduces_toy_forest_c() {
    check_backend(BackendKind::Wgpu);
}

#[test]
fn cuda_reproduces_toy_forest_c() {
    check_backend(BackendKind::Cuda);
}

/// Other rules have no C reference: every device backend must agree with the CPU backend.
#[test]
fn device_backends_agree_with_cpu_on_uct_rules() {
    for kind in common::device_backends() {
        for rule in [Rule::RSTAR_UCT, Rule::UctUnvisitedFirst { c: 2.0 }] {
            for &(b, s) in &[(64usize, 64usize), (1000, 32)] {
                let mut cpu = forest_or_skip(&cfg(b, s, rule), BackendKind::Cpu).unwrap();
                let mut dev = forest_or_skip(&cfg(b, s, rule), kind).unwrap();
                let want = toy::run(&mut cpu, s, 1, 8, 1).unwrap();
                let got = toy::run(&mut dev, s, 1, 8, 1).unwrap();
                assert_eq!(
                    (want.checksum, want.root_visits_tree0.clone()),
                    (got.checksum, got.root_visits_tree0.clone()),
                    "{kind} {rule:?} B={b}"
                );
                assert_eq!(want.mean_depth, got.mean_depth);
            }
        }
    }
}

/// Compile and run the C reference for more shapes, when a C compiler is present (it is in CI).
#[test]
fn cpu_matches_the_c_reference_on_more_shapes() {
    let dir = std::env::temp_dir().join(format!("rstar-toy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("toy_forest");
    let src = common::repo_path("tests/reference/toy_forest.c");
    let built = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(src)
        .arg("-lm")
        .status();
    if !matches!(built, Ok(s) if s.success()) {
        eprintln!("SKIP toy_forest.c: no working C compiler (cc)");
        return;
    }
    for &(b, s, d) in &[
        (7usize, 100usize, 16usize),
        (300, 48, 16),
        (128, 64, 5),
        (33, 200, 30),
    ] {
        let out = Command::new(&exe)
            .args([b.to_string(), s.to_string(), d.to_string()])
            .output()
            .unwrap();
        let c: CRun = serde_json::from_slice(&out.stdout).unwrap();
        let mut cf = cfg(b, s, Rule::MCTX_PUCT);
        cf.max_depth = d;
        let mut f = forest_or_skip(&cf, BackendKind::Cpu).unwrap();
        let r = toy::run(&mut f, s, 1, 8, 1).unwrap();
        assert_eq!(r.checksum, c.checksum, "B={b} S={s} D={d}");
        assert_eq!(
            r.root_visits_tree0, c.root_visits_tree0,
            "B={b} S={s} D={d}"
        );
        assert_eq!(r.max_depth_seen, c.max_depth_seen);
        assert!(
            (r.mean_depth - c.mean_depth).abs() < 5e-5,
            "B={b} S={s} D={d}: {} vs {}",
            r.mean_depth,
            c.mean_depth
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// K > 1 leaves per step: the workload still runs every simulation, with virtual loss spreading them.
#[test]
fn toy_with_several_leaves_per_step() {
    let mut c = cfg(200, 64, Rule::MCTX_PUCT);
    c.max_leaves = 4;
    let mut f = forest_or_skip(&c, BackendKind::Cpu).unwrap();
    let r = toy::run(&mut f, 64, 4, 8, 1).unwrap();
    assert!(
        r.leaves > 200 * 48 && r.leaves <= 200 * 64,
        "{} leaves",
        r.leaves
    );
    for kind in common::device_backends() {
        let mut d = forest_or_skip(&c, kind).unwrap();
        let g = toy::run(&mut d, 64, 4, 8, 1).unwrap();
        assert_eq!(
            (g.checksum, g.leaves, g.root_visits_tree0),
            (r.checksum, r.leaves, r.root_visits_tree0.clone()),
            "{kind}"
        );
    }
}
