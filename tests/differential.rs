//! Differential tests on random forests: the optimised CPU backend against a plain sequential
//! model of the rules, and every device backend (wgpu on lavapipe in CI; CUDA where a GPU exists)
//! against the CPU backend. Identical selections, visit counts and structure; values within 1e-5
//! relative; identical errors.

mod common;

use common::model::Model;
use common::*;
use rand::Rng;
use rstar_gpu::forest::{
    BackendKind, Backup, Expansion, Forest, ForestConfig, ForestError, ForestSnapshot, Selection,
};

enum Runner {
    Model(Model),
    Forest(Forest),
}

impl Runner {
    fn select(&mut self, k: usize) -> Selection {
        match self {
            Runner::Model(m) => {
                m.select(k);
                m.selection()
            }
            Runner::Forest(f) => {
                f.select(k).expect("select");
                f.selection().expect("selection")
            }
        }
    }
    fn expand(&mut self, e: &Expansion) -> Result<(), ForestError> {
        match self {
            Runner::Model(m) => m.expand(e),
            Runner::Forest(f) => f.expand(e),
        }
    }
    fn backup(&mut self, b: &Backup) {
        match self {
            Runner::Model(m) => m.backup(b),
            Runner::Forest(f) => f.backup(b).expect("backup"),
        }
    }
    fn reroot(&mut self, roots: &[u32]) -> Result<(), ForestError> {
        match self {
            Runner::Model(m) => m.reroot(roots),
            Runner::Forest(f) => f.reroot(roots),
        }
    }
    fn reset(&mut self, values: &[f32], visits: u32) {
        match self {
            Runner::Model(m) => m.reset(values, visits),
            Runner::Forest(f) => f.reset(values, visits).expect("reset"),
        }
    }
    fn snapshot(&mut self) -> ForestSnapshot {
        match self {
            Runner::Model(m) => m.snapshot(),
            Runner::Forest(f) => f.read_back().expect("read_back"),
        }
    }
}

/// One random case: a random shape, then rounds of select → expand → backup with an occasional
/// reroot or reset, comparing after every phase.
fn run_case(seed: u64, cfg: &ForestConfig, want: &mut Runner, got: &mut Runner) {
    let mut r = rng(seed ^ 0x5eed);
    let rounds = r.random_range(3..=14);
    for round in 0..rounds {
        let ctx = format!("seed {seed} round {round} cfg {cfg:?}");
        let k = r.random_range(1..=cfg.max_leaves);
        let sa = want.select(k);
        let sb = got.select(k);
        assert_same_selection(&sa, &sb, &ctx);
        let snap = want.snapshot();
        assert_same_forest(&snap, &got.snapshot(), &format!("{ctx} after select"));
        let e = random_expansion(&mut r, cfg, &sa, &snap, 0.04);
        let ea = want.expand(&e);
        let eb = got.expand(&e);
        assert_eq!(ea, eb, "{ctx}: expand results differ");
        let bk = random_backup(&mut r, cfg.trees, k);
        want.backup(&bk);
        got.backup(&bk);
        let snap = want.snapshot();
        assert_same_forest(&snap, &got.snapshot(), &format!("{ctx} after backup"));
        if r.random_bool(0.15) {
            let roots = random_roots(&mut r, &snap);
            assert_eq!(
                want.reroot(&roots),
                got.reroot(&roots),
                "{ctx}: reroot results differ"
            );
            assert_same_forest(
                &want.snapshot(),
                &got.snapshot(),
                &format!("{ctx} after reroot"),
            );
        }
        if r.random_bool(0.05) {
            let values: Vec<f32> = (0..cfg.trees).map(|_| r.random_range(-1.0..1.0)).collect();
            let visits = r.random_range(0..=1);
            want.reset(&values, visits);
            got.reset(&values, visits);
        }
    }
}

fn cases(kind_b: Option<BackendKind>, per_rule: u64) -> u64 {
    let mut n = 0;
    for (ri, rule) in RULES.iter().enumerate() {
        for case in 0..per_rule {
            let seed = (ri as u64) << 32 | case;
            let cfg = random_config(&mut rng(seed), *rule);
            let cpu = Forest::new(cfg.clone(), BackendKind::Cpu).expect("cpu forest");
            let (mut want, mut got) = match kind_b {
                None => (Runner::Model(Model::new(&cfg)), Runner::Forest(cpu)),
                Some(kind) => {
                    let Some(dev) = forest_or_skip(&cfg, kind) else {
                        return 0;
                    };
                    (Runner::Forest(cpu), Runner::Forest(dev))
                }
            };
            run_case(seed, &cfg, &mut want, &mut got);
            n += 1;
        }
    }
    n
}

#[test]
fn cpu_backend_matches_the_plain_model() {
    let n = cases(None, 200);
    eprintln!("cpu vs model: {n} random forests");
    assert_eq!(n, 600);
}

#[test]
fn wgpu_backend_matches_cpu() {
    let n = cases(Some(BackendKind::Wgpu), 100);
    eprintln!("wgpu vs cpu: {n} random forests");
    assert!(n == 0 || n == 300);
}

#[test]
fn cuda_backend_matches_cpu() {
    let n = cases(Some(BackendKind::Cuda), 100);
    eprintln!("cuda vs cpu: {n} random forests");
    assert!(n == 0 || n == 300);
}

/// Many leaves per step on bigger trees: virtual loss and collisions at scale.
#[test]
fn cpu_matches_model_with_many_leaves() {
    for seed in 0..40u64 {
        let mut r = rng(1000 + seed);
        let cfg = ForestConfig {
            trees: r.random_range(1..=50),
            capacity: r.random_range(50..=400),
            max_children: r.random_range(2..=12),
            max_depth: r.random_range(2..=12),
            max_leaves: r.random_range(4..=16),
            rule: RULES[seed as usize % 3],
            virtual_loss: 1.0,
        };
        let mut want = Runner::Model(Model::new(&cfg));
        let mut got = Runner::Forest(Forest::new(cfg.clone(), BackendKind::Cpu).unwrap());
        run_case(seed, &cfg, &mut want, &mut got);
    }
}
