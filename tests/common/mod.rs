//! Helpers shared by the integration tests: seeded random forests, inputs and comparisons, and
//! backend selection that skips (prints `SKIP …`) where a device backend cannot start.
//!
//! `RSTAR_REQUIRE_WGPU=1` / `RSTAR_REQUIRE_CUDA=1` turn "backend unavailable" into a failure: CI
//! sets the first, because a skipped backend in CI is a broken CI.
#![allow(dead_code)]

pub mod model;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rstar_gpu::forest::{
    flags, BackendKind, Backup, Expansion, Forest, ForestConfig, ForestError, ForestSnapshot, Rule,
    Selection, NONE,
};

/// The three rules every differential test covers.
pub const RULES: [Rule; 3] = [
    Rule::RSTAR_UCT,
    Rule::UctUnvisitedFirst { c: 2.0 },
    Rule::MCTX_PUCT,
];

/// A file of the repository: under the crate root the test was built in, or, when the test
/// binary was carried to another machine (a GPU box), under the current directory.
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if built.exists() {
        built
    } else {
        std::path::PathBuf::from(rel)
    }
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A small random forest shape (small capacities so that full trees are exercised too).
pub fn random_config(r: &mut ChaCha8Rng, rule: Rule) -> ForestConfig {
    ForestConfig {
        trees: r.random_range(1..=24),
        capacity: r.random_range(1..=120),
        max_children: r.random_range(1..=9),
        max_depth: r.random_range(1..=8),
        max_leaves: r.random_range(1..=4),
        rule,
        virtual_loss: [0.0, 0.5, 1.0, 2.0][r.random_range(0..4)],
    }
}

/// A forest on `kind`, or `None` (after printing `SKIP <kind>: <reason>`) when that backend
/// cannot start here — unless `RSTAR_REQUIRE_<KIND>=1`, which makes it a failure. Any other error
/// fails the test.
pub fn forest_or_skip(cfg: &ForestConfig, kind: BackendKind) -> Option<Forest> {
    match Forest::new(cfg.clone(), kind) {
        Ok(f) => Some(f),
        Err(ForestError::Unavailable { reason, .. }) => {
            let var = format!("RSTAR_REQUIRE_{}", kind.name().to_uppercase());
            if std::env::var(&var).is_ok_and(|v| v == "1") {
                panic!("{kind} backend required ({var}=1) but unavailable: {reason}");
            }
            eprintln!("SKIP {kind}: {reason}");
            None
        }
        Err(e) => panic!("creating a {kind} forest: {e}"),
    }
}

/// The device backends that can start here (probed through [`forest_or_skip`]).
pub fn device_backends() -> Vec<BackendKind> {
    let probe = ForestConfig {
        trees: 1,
        capacity: 16,
        ..ForestConfig::default()
    };
    [BackendKind::Wgpu, BackendKind::Cuda]
        .into_iter()
        .filter(|&k| forest_or_skip(&probe, k).is_some())
        .collect()
}

pub fn assert_same_selection(want: &Selection, got: &Selection, ctx: &str) {
    assert_eq!(want.k, got.k, "{ctx}: K");
    assert_eq!(want.leaves, got.leaves, "{ctx}: selected leaves differ");
    assert_eq!(want.path_len, got.path_len, "{ctx}: path lengths differ");
    for t in 0..want.trees {
        for s in 0..want.k {
            assert_eq!(
                want.path(t, s),
                got.path(t, s),
                "{ctx}: path of tree {t} slot {s}"
            );
        }
    }
}

/// Floats equal within 1e-5 relative (absolute below 1).
pub fn close(a: f32, b: f32) -> bool {
    a == b || (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0)
}

/// Same structure and visit counts, values within 1e-5 relative, over the nodes in use. Returns
/// how many float fields were not bit-identical (the backends are meant to agree exactly).
pub fn assert_same_forest(want: &ForestSnapshot, got: &ForestSnapshot, ctx: &str) -> usize {
    assert_eq!(want.n_nodes, got.n_nodes, "{ctx}: n_nodes differ");
    let mut inexact = 0;
    for b in 0..want.trees {
        for (id, (w, g)) in want.tree(b).iter().zip(got.tree(b)).enumerate() {
            let same = w.visits == g.visits
                && w.vloss == g.vloss
                && w.first_child == g.first_child
                && w.parent == g.parent
                && w.meta == g.meta
                && close(w.value_sum, g.value_sum)
                && close(w.init_value, g.init_value)
                && close(w.prior, g.prior);
            assert!(
                same,
                "{ctx}: tree {b} node {id}\n  want {w:?}\n  got  {g:?}"
            );
            inexact += [
                (w.value_sum, g.value_sum),
                (w.init_value, g.init_value),
                (w.prior, g.prior),
            ]
            .iter()
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        }
    }
    inexact
}

/// Children for the selected leaves: mostly valid; with probability `p_invalid` per slot,
/// children for an empty slot or an already expanded leaf (InvalidExpand).
pub fn random_expansion(
    r: &mut ChaCha8Rng,
    cfg: &ForestConfig,
    sel: &Selection,
    snap: &ForestSnapshot,
    p_invalid: f64,
) -> Expansion {
    let (k, a) = (sel.k, cfg.max_children);
    let mut e = Expansion::zeros(cfg.trees, k, a);
    for (i, &leaf) in sel.leaves.iter().enumerate() {
        let expanded = leaf != NONE && snap.node(i / k, leaf).is(flags::EXPANDED);
        e.counts[i] = if leaf == NONE || expanded {
            if r.random_bool(p_invalid) {
                r.random_range(1..=a as u32)
            } else {
                0
            }
        } else if r.random_bool(0.15) {
            0
        } else {
            r.random_range(1..=a as u32)
        };
        for j in 0..a {
            let x = i * a + j;
            // Quantised values make exact ties common, so tie-breaking is exercised.
            e.values[x] = if r.random_bool(0.5) {
                r.random_range(-4..=4) as f32 / 4.0
            } else {
                r.random_range(-1.0f32..=1.0)
            };
            e.priors[x] = r.random_range(0.0f32..=1.0);
            let mut f = 0;
            if r.random_bool(0.15) {
                f |= flags::TERMINAL;
            }
            if r.random_bool(0.1) {
                f |= flags::ANSWER;
            }
            if r.random_bool(0.3) {
                f |= flags::COUNT_INIT;
            }
            e.flags[x] = f;
        }
    }
    e
}

pub fn random_backup(r: &mut ChaCha8Rng, trees: usize, k: usize) -> Backup {
    let n = trees * k;
    Backup {
        values: (0..n)
            .map(|_| {
                if r.random_bool(0.5) {
                    [-1.0, 1.0, 0.5][r.random_range(0..3)]
                } else {
                    r.random_range(-1.0f32..=1.0)
                }
            })
            .collect(),
        mask: (0..n).map(|_| u8::from(r.random_bool(0.85))).collect(),
    }
}

/// New roots: mostly "keep" (0 or NONE) or a node in use, sometimes an id past the tree's end.
pub fn random_roots(r: &mut ChaCha8Rng, snap: &ForestSnapshot) -> Vec<u32> {
    snap.n_nodes
        .iter()
        .map(|&n| match r.random_range(0..20) {
            0..=7 => 0,
            8..=9 => NONE,
            10 => n + r.random_range(0..3),
            _ => r.random_range(0..n.max(1)),
        })
        .collect()
}
