//! Shared by the CUDA tests (`tests/cuda_emu.rs` on the host emulation, `tests/cuda_backend.rs`
//! on a device): a random-operations differential test of any backend against the CPU reference,
//! and the toy workload driven through the `ForestBackend` trait.
#![allow(dead_code)]

use crate::common::{close, random_expansion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rstar_gpu::forest::backend::{ForestBackend, Input};
use rstar_gpu::forest::cpu::CpuForest;
use rstar_gpu::forest::{toy, Backup, ForestConfig, ForestError, ForestSnapshot, Rule, NONE};
use std::collections::BTreeMap;

/// What a differential run exercised (printed by the tests, so coverage is visible).
#[derive(Debug, Default)]
pub struct DiffStats {
    pub cases: usize,
    pub selects: usize,
    pub leaves: usize,
    pub empty_slots: usize,
    pub host_expands: usize,
    pub staged_expands: usize,
    pub backups: usize,
    pub reroots: usize,
    pub snapshots: usize,
    pub nodes_compared: usize,
    pub floats_compared: usize,
    pub floats_bit_identical: usize,
    /// Errors both backends returned, by kind.
    pub errors: BTreeMap<&'static str, usize>,
}

impl DiffStats {
    fn error(&mut self, r: &Result<(), ForestError>) {
        let kind = match r {
            Ok(()) => return,
            Err(ForestError::CapacityExceeded { .. }) => "capacity",
            Err(ForestError::InvalidExpand { .. }) => "invalid_expand",
            Err(ForestError::InvalidReroot { .. }) => "invalid_reroot",
            Err(_) => "other",
        };
        *self.errors.entry(kind).or_default() += 1;
    }
}

fn random_rule(rng: &mut ChaCha8Rng) -> Rule {
    match rng.random_range(0..3) {
        0 => Rule::Uct {
            c: [0.5, 1.0, 2.0, 1.414][rng.random_range(0..4)],
        },
        1 => Rule::UctUnvisitedFirst {
            c: [0.5, 2.0][rng.random_range(0..2)],
        },
        _ => Rule::Puct {
            c1: [1.25, 0.5, 3.0][rng.random_range(0..3)],
            c2: [19652.0, 5.0, 1.0][rng.random_range(0..3)],
        },
    }
}

pub fn random_config(rng: &mut ChaCha8Rng) -> ForestConfig {
    ForestConfig {
        trees: rng.random_range(1..=24),
        // Small capacities make full trees (CapacityExceeded) part of the test.
        capacity: rng.random_range(1..=90),
        max_children: rng.random_range(1..=6),
        max_depth: rng.random_range(1..=7),
        max_leaves: rng.random_range(1..=4),
        rule: random_rule(rng),
        virtual_loss: [0.0, 0.5, 1.0, 3.0][rng.random_range(0..4)],
    }
}

/// Node arrays equal: integer fields exactly, floats within 1e-5 relative. The whole `[B, N]`
/// arrays are compared, stale slots beyond `n_nodes` included (the backends must write the same
/// slots).
pub fn assert_same_forest(
    want: &ForestSnapshot,
    got: &ForestSnapshot,
    ctx: &str,
    stats: &mut DiffStats,
) {
    assert_eq!(want.n_nodes, got.n_nodes, "{ctx}: n_nodes differ");
    assert_eq!(
        want.nodes.len(),
        got.nodes.len(),
        "{ctx}: arena sizes differ"
    );
    for (i, (w, g)) in want.nodes.iter().zip(&got.nodes).enumerate() {
        let (b, id) = (i / want.capacity, i % want.capacity);
        let same_ints = w.visits == g.visits
            && w.vloss == g.vloss
            && w.first_child == g.first_child
            && w.parent == g.parent
            && w.meta == g.meta;
        let same_floats = close(w.value_sum, g.value_sum)
            && close(w.init_value, g.init_value)
            && close(w.prior, g.prior);
        assert!(
            same_ints && same_floats,
            "{ctx}: tree {b} node {id} differs\n  cpu:   {w:?}\n  other: {g:?}"
        );
        for (x, y) in [
            (w.value_sum, g.value_sum),
            (w.init_value, g.init_value),
            (w.prior, g.prior),
        ] {
            stats.floats_compared += 1;
            stats.floats_bit_identical += usize::from(x.to_bits() == y.to_bits());
        }
    }
    stats.nodes_compared += want.nodes.len();
    stats.snapshots += 1;
}

fn compare_snapshots(
    cpu: &mut dyn ForestBackend,
    other: &mut dyn ForestBackend,
    ctx: &str,
    stats: &mut DiffStats,
) -> ForestSnapshot {
    let want = cpu.read_back().expect("cpu read_back");
    let got = other
        .read_back()
        .unwrap_or_else(|e| panic!("{ctx}: read_back: {e}"));
    assert_same_forest(&want, &got, ctx, stats);
    want
}

/// One random case: a random forest shape and rule, then rounds of select / expand (host or
/// toy-staged, or none) / backup, with rerooting now and then, on the CPU reference and on the
/// backend `make` builds; selections, phase results and whole node arrays must agree.
pub fn run_case(
    seed: u64,
    make: &mut dyn FnMut(&ForestConfig) -> Box<dyn ForestBackend>,
    stats: &mut DiffStats,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cfg = random_config(&mut rng);
    let mut cpu_f = CpuForest::new(&cfg).expect("cpu forest");
    let mut other_f = make(&cfg);
    let cpu: &mut dyn ForestBackend = &mut cpu_f;
    let other: &mut dyn ForestBackend = other_f.as_mut();
    let ctx0 = format!("seed {seed} {cfg:?}");
    stats.cases += 1;

    let roots: Vec<f32> = (0..cfg.trees)
        .map(|_| {
            if rng.random_bool(0.5) {
                0.0
            } else {
                rng.random_range(-1.0f32..=1.0)
            }
        })
        .collect();
    let root_visits = rng.random_range(0..=1);
    cpu.reset(&roots, root_visits).unwrap();
    other.reset(&roots, root_visits).unwrap();
    let mut snap = compare_snapshots(cpu, other, &format!("{ctx0} after reset"), stats);

    let toy_on = rng.random_bool(0.5);
    if toy_on {
        let p = toy::params(rng.random_range(1..=cfg.max_children));
        cpu.toy_reset(&p).unwrap();
        other.toy_reset(&p).unwrap();
    }

    let rounds = rng.random_range(4..=14);
    for round in 0..rounds {
        let ctx = format!("{ctx0} round {round}");
        let k = rng.random_range(1..=cfg.max_leaves);
        cpu.select(k).unwrap();
        other.select(k).unwrap();
        let want = cpu.selection(k).unwrap();
        let got = other.selection(k);
        assert_eq!(Ok(&want), got.as_ref(), "{ctx}: selection (K={k})");
        stats.selects += 1;
        stats.leaves += want.leaves.iter().filter(|&&l| l != NONE).count();
        stats.empty_slots += want.leaves.iter().filter(|&&l| l == NONE).count();

        match rng.random_range(0..10) {
            // Toy-staged expansion and backup (errors surface at the next sync on a device).
            0..=2 if toy_on => {
                let record = rng.random_bool(0.5);
                cpu.toy_evaluate(k, record).unwrap();
                other.toy_evaluate(k, record).unwrap();
                let rc = cpu.expand(Input::Staged, k).and(cpu.sync());
                let ro = other.expand(Input::Staged, k).and(other.sync());
                assert_eq!(rc, ro, "{ctx}: staged expand");
                stats.error(&rc);
                stats.staged_expands += 1;
                cpu.backup(Input::Staged, k).unwrap();
                other.backup(Input::Staged, k).unwrap();
            }
            r => {
                if r != 9 {
                    // Host expansion (round kind 9: backup without expanding).
                    let e = random_expansion(&mut rng, &cfg, &want, &snap, 0.03);
                    let rc = cpu.expand(Input::Host(&e), k);
                    let ro = other.expand(Input::Host(&e), k);
                    assert_eq!(rc, ro, "{ctx}: host expand");
                    stats.error(&rc);
                    stats.host_expands += 1;
                }
                let n = cfg.trees * k;
                let bk = Backup {
                    values: (0..n).map(|_| rng.random_range(-1.0f32..=1.0)).collect(),
                    mask: (0..n).map(|_| u8::from(rng.random_bool(0.85))).collect(),
                };
                cpu.backup(Input::Host(&bk), k).unwrap();
                other
                    .backup(Input::Host(&bk), k)
                    .unwrap_or_else(|e| panic!("{ctx}: backup: {e}"));
            }
        }
        stats.backups += 1;
        snap = compare_snapshots(cpu, other, &format!("{ctx} after backup"), stats);

        if rng.random_bool(0.2) {
            let new_roots: Vec<u32> = (0..cfg.trees)
                .map(|b| {
                    let n = snap.n_nodes[b];
                    match rng.random_range(0..20) {
                        0..=7 => 0,
                        8..=9 => NONE,
                        10 => n + rng.random_range(0..3), // not a node: InvalidReroot
                        _ => rng.random_range(0..n.max(1)),
                    }
                })
                .collect();
            let rc = cpu.reroot(&new_roots);
            let ro = other.reroot(&new_roots);
            assert_eq!(rc, ro, "{ctx}: reroot {new_roots:?}");
            stats.error(&rc);
            stats.reroots += 1;
            snap = compare_snapshots(cpu, other, &format!("{ctx} after reroot"), stats);
        }
    }
    if toy_on {
        assert_eq!(
            cpu.toy_stats().unwrap(),
            other.toy_stats().unwrap(),
            "{ctx0}: toy stats"
        );
    }
}

/// The numbers `rstar-gpu bench forest` reports that do not depend on timing.
#[derive(Clone, Debug, PartialEq)]
pub struct ToySummary {
    pub checksum: u64,
    pub mean_depth: f64,
    pub max_depth_seen: u32,
    pub root_visits_tree0: Vec<u32>,
    pub leaves: u64,
}

/// The forest configuration `rstar-gpu bench forest` builds for the toy workload.
pub fn toy_config(trees: usize, sims: usize, rule: Rule, k: usize) -> ForestConfig {
    toy::config(trees, sims, rule, k)
}

/// `toy::run` (one repetition) through the backend trait: `toy::run` needs a `Forest`, which
/// cannot wrap a backend built outside `backend::create` (the host emulation).
pub fn toy_run_backend(
    be: &mut dyn ForestBackend,
    cfg: &ForestConfig,
    sims: usize,
    k: usize,
) -> Result<ToySummary, ForestError> {
    let params = toy::params(cfg.max_children);
    let step = |be: &mut dyn ForestBackend, kk: usize, record: bool| {
        be.select(kk)?;
        be.toy_evaluate(kk, record)?;
        be.expand(Input::Staged, kk)?;
        be.backup(Input::Staged, kk)
    };
    be.reset(&vec![0.0; cfg.trees], 0)?;
    be.toy_reset(&params)?;
    step(be, 1, false)?;
    be.sync()?;
    let mut done = 0;
    while done < sims {
        let kk = k.min(sims - done);
        step(be, kk, true)?;
        done += kk;
    }
    be.sync()?;
    let stats = be.toy_stats()?;
    let snap = be.read_back()?;
    Ok(summarise(
        &snap,
        stats.depth_sum,
        stats.leaves,
        stats.max_depth,
    ))
}

fn summarise(snap: &ForestSnapshot, depth_sum: u64, leaves: u64, max_depth: u32) -> ToySummary {
    let mut checksum = 0u64;
    let mut tree0 = Vec::new();
    for b in 0..snap.trees {
        for (a, c) in snap.children(b, 0).enumerate() {
            let v = snap.node(b, c).visits;
            checksum += (a as u64 + 1) * u64::from(v);
            if b == 0 {
                tree0.push(v);
            }
        }
    }
    ToySummary {
        checksum,
        mean_depth: if leaves == 0 {
            0.0
        } else {
            depth_sum as f64 / leaves as f64
        },
        max_depth_seen: max_depth,
        root_visits_tree0: tree0,
        leaves,
    }
}

/// The same summary from `toy::run` on a `Forest`.
pub fn toy_summary_of(r: &toy::ToyReport) -> ToySummary {
    ToySummary {
        checksum: r.checksum,
        mean_depth: r.mean_depth,
        max_depth_seen: r.max_depth_seen,
        root_visits_tree0: r.root_visits_tree0.clone(),
        leaves: r.leaves,
    }
}

/// toy_forest.c's output (PUCT, A = 8, D = 16): (B, S, checksum, mean_depth, root_visits_tree0).
pub const TOY_FOREST_C: [(usize, usize, u64, f64, [u32; 8]); 2] = [
    (64, 64, 4827, 7.4446, [52, 12, 0, 0, 0, 0, 0, 0]),
    (1000, 32, 37539, 6.1648, [26, 6, 0, 0, 0, 0, 0, 0]),
];

/// Check a PUCT toy summary against toy_forest.c's numbers.
pub fn assert_matches_toy_forest_c(s: &ToySummary, trees: usize, sims: usize, what: &str) {
    let &(_, _, checksum, mean_depth, tree0) = TOY_FOREST_C
        .iter()
        .find(|t| t.0 == trees && t.1 == sims)
        .expect("known toy_forest.c case");
    assert_eq!(s.checksum, checksum, "{what}: checksum vs toy_forest.c");
    assert!(
        (s.mean_depth - mean_depth).abs() < 5e-5,
        "{what}: mean_depth {} vs toy_forest.c {mean_depth}",
        s.mean_depth
    );
    assert_eq!(s.root_visits_tree0, tree0, "{what}: root_visits_tree0");
}
