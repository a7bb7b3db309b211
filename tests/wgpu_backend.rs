//! wgpu backend tests (CI runs them on Mesa's lavapipe): the toy workload against
//! `reference/toy_forest.c` and the CPU backend, the shader's own sine on the device, random
//! operation sequences against the CPU backend, per-tree errors, the 2-D dispatch and clean
//! "unavailable" errors.
//!
//! Without a wgpu adapter every test prints `SKIP wgpu: <reason>` and passes, unless
//! `RSTAR_REQUIRE_WGPU=1` (set in CI), which turns a missing adapter into a failure.

mod common;

use common::{assert_same_forest, random_expansion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rstar_gpu::forest::cpu::CpuForest;
use rstar_gpu::forest::wgpu::WgpuForest;
use rstar_gpu::forest::{
    toy, BackendKind, Backup, Expansion, Forest, ForestBackend, ForestConfig, ForestError, Input,
    Rule, Selection, NONE,
};

fn require() -> bool {
    std::env::var("RSTAR_REQUIRE_WGPU").is_ok_and(|v| v == "1")
}

/// A wgpu forest, or `None` after printing `SKIP wgpu: …` (a failure under `RSTAR_REQUIRE_WGPU=1`).
fn wgpu_forest(cfg: &ForestConfig) -> Option<Forest> {
    common::forest_or_skip(cfg, BackendKind::Wgpu)
}

fn toy_cfg(trees: usize, sims: usize, rule: Rule, k: usize) -> ForestConfig {
    toy::config(trees, sims, rule, k)
}

/// Identical selections, including the raw path records past each path's end (the device writes
/// exactly what the CPU writes).
fn assert_same_selection(want: &Selection, got: &Selection, ctx: &str) {
    common::assert_same_selection(want, got, ctx);
    assert_eq!(want, got, "{ctx}: raw path records");
}

/// toy_forest.c's numbers (PUCT): (B, S) → (checksum, mean_depth, root_visits_tree0).
const TOY_C: [(usize, usize, u64, f64, [u32; 8]); 2] = [
    (64, 64, 4827, 7.4446, [52, 12, 0, 0, 0, 0, 0, 0]),
    (1000, 32, 37539, 6.1648, [26, 6, 0, 0, 0, 0, 0, 0]),
];

#[test]
fn toy_reproduces_toy_forest_c() {
    for &(b, s, checksum, mean_depth, tree0) in &TOY_C {
        let Some(mut f) = wgpu_forest(&toy_cfg(b, s, Rule::MCTX_PUCT, 1)) else {
            return;
        };
        let r = toy::run(&mut f, s, 1, 8, 1).unwrap();
        eprintln!(
            "wgpu toy B={b} S={s} on {}: checksum {} mean_depth {:.4} tree0 {:?}",
            f.backend_description(),
            r.checksum,
            r.mean_depth,
            r.root_visits_tree0
        );
        assert_eq!(r.checksum, checksum, "B={b} S={s}");
        assert!(
            (r.mean_depth - mean_depth).abs() < 5e-5,
            "B={b} S={s}: mean depth {}",
            r.mean_depth
        );
        assert_eq!(r.root_visits_tree0, tree0.to_vec());
        assert_eq!(r.max_depth_seen, 16);
        assert_eq!(r.leaves, (b * s) as u64);
    }
}

/// Every rule, one and several leaves per step: same report and the same final forest as the CPU
/// backend.
#[test]
fn toy_matches_cpu_for_every_rule() {
    let rules = [
        Rule::MCTX_PUCT,
        Rule::RSTAR_UCT,
        Rule::UctUnvisitedFirst { c: 2.0 },
    ];
    for rule in rules {
        for &(b, s, k) in &[(64usize, 64usize, 1usize), (1000, 32, 1), (200, 48, 4)] {
            let cfg = toy_cfg(b, s, rule, k);
            let Some(mut dev) = wgpu_forest(&cfg) else {
                return;
            };
            let mut cpu = Forest::new(cfg.clone(), BackendKind::Cpu).unwrap();
            let want = toy::run(&mut cpu, s, k, 8, 1).unwrap();
            let got = toy::run(&mut dev, s, k, 8, 1).unwrap();
            let ctx = format!("{} B={b} S={s} K={k}", rule.name());
            eprintln!(
                "wgpu toy {ctx}: checksum {} (cpu {}), mean depth {:.4}, leaves {}",
                got.checksum, want.checksum, got.mean_depth, got.leaves
            );
            assert_eq!(got.checksum, want.checksum, "{ctx}");
            assert_eq!(got.root_visits_tree0, want.root_visits_tree0, "{ctx}");
            assert_eq!(got.mean_depth, want.mean_depth, "{ctx}");
            assert_eq!(got.max_depth_seen, want.max_depth_seen, "{ctx}");
            assert_eq!(got.leaves, want.leaves, "{ctx}");
            let inexact =
                assert_same_forest(&cpu.read_back().unwrap(), &dev.read_back().unwrap(), &ctx);
            eprintln!("  {inexact} float fields not bit-identical");
        }
    }
}

/// The shader's sine on the actual driver: within 1 ulp of the host's `f32::sin` over 1e6
/// random toy states and equal to the correctly rounded sine (the f64 sine rounded to f32) but
/// for f64 double-rounding accidents; the toy value is `0.1 · sin` rounded once.
#[test]
fn device_sine_is_accurate() {
    let cfg = ForestConfig::default();
    let mut f = match WgpuForest::new(&cfg) {
        Ok(f) => f,
        Err(ForestError::Unavailable { reason, .. }) if !require() => {
            eprintln!("SKIP wgpu: {reason}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut r = ChaCha8Rng::seed_from_u64(3);
    let mut states: Vec<u32> = (0..1_000_000)
        .map(|_| r.random::<u32>() & 0x7fff_ffff)
        .collect();
    states.extend([0, 1, 1570, 3141, 3142, 0x7fff_ffff, 2_147_483_000]);
    let out = f.toy_value_probe(&states).unwrap();
    let (mut max_ulp, mut off_host, mut off_f64, mut off_value) = (0u32, 0, 0, 0);
    for (&st, &(s, v)) in states.iter().zip(&out) {
        let x = st as f32 * 1e-3;
        let host = x.sin();
        let u = (s.to_bits() as i32).abs_diff(host.to_bits() as i32);
        max_ulp = max_ulp.max(u);
        off_host += (u != 0) as u32;
        off_f64 += (s != (x as f64).sin() as f32) as u32;
        off_value += (v != 0.1f32 * s) as u32;
    }
    eprintln!(
        "device toy_sin over {} states: max {max_ulp} ulp from f32::sin ({off_host} differ), \
         {off_f64} differ from the rounded f64 sine",
        states.len()
    );
    assert!(max_ulp <= 1, "max {max_ulp} ulp");
    assert!(
        off_f64 <= 2,
        "{off_f64} differ from the correctly rounded sine"
    );
    assert_eq!(off_value, 0, "toy value is not 0.1 · sin");
}

/// Random shapes and operation sequences, compared with the CPU backend after every phase:
/// identical selections (including the raw path records), identical per-tree errors, identical
/// structure and visit counts, values within 1e-5 relative.
#[test]
fn random_operations_match_cpu() {
    let rules = [
        Rule::RSTAR_UCT,
        Rule::UctUnvisitedFirst { c: 2.0 },
        Rule::MCTX_PUCT,
        Rule::Uct { c: 0.7 },
        Rule::Puct { c1: 2.5, c2: 100.0 },
    ];
    let (mut cases, mut steps, mut inexact, mut errors) = (0, 0, 0, 0);
    for seed in 0..60u64 {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let cfg = ForestConfig {
            trees: r.random_range(1..=150),
            capacity: r.random_range(1..=200),
            max_children: r.random_range(1..=10),
            max_depth: r.random_range(1..=10),
            max_leaves: r.random_range(1..=4),
            rule: rules[seed as usize % rules.len()],
            virtual_loss: [0.0, 0.5, 1.0, 2.0][r.random_range(0..4)],
        };
        let Some(mut dev) = wgpu_forest(&cfg) else {
            return;
        };
        let mut cpu = Forest::new(cfg.clone(), BackendKind::Cpu).unwrap();
        let ctx0 = format!("seed {seed} {cfg:?}");
        // Random initial roots (value, visit 0/1).
        let values: Vec<f32> = (0..cfg.trees).map(|_| r.random_range(-1.0..1.0)).collect();
        let visits = r.random_range(0..=1);
        cpu.reset(&values, visits).unwrap();
        dev.reset(&values, visits).unwrap();
        let rounds = r.random_range(4..=12);
        let reroot_at = r.random_range(1..rounds);
        for round in 0..rounds {
            let ctx = format!("{ctx0} round {round}");
            let k = r.random_range(1..=cfg.max_leaves);
            cpu.select(k).unwrap();
            dev.select(k).unwrap();
            let sa = cpu.selection().unwrap();
            let sb = dev.selection().unwrap();
            assert_same_selection(&sa, &sb, &ctx);
            let snap = cpu.read_back().unwrap();
            inexact += assert_same_forest(&snap, &dev.read_back().unwrap(), &ctx);
            let e = random_expansion(&mut r, &cfg, &sa, &snap, 0.03);
            let ea = cpu.expand(&e);
            let eb = dev.expand(&e);
            assert_eq!(ea, eb, "{ctx}: expand results differ");
            errors += ea.is_err() as usize;
            let n = cfg.trees * k;
            let bk = Backup {
                values: (0..n).map(|_| r.random_range(-1.0f32..=1.0)).collect(),
                mask: (0..n).map(|_| u8::from(r.random_bool(0.85))).collect(),
            };
            cpu.backup(&bk).unwrap();
            dev.backup(&bk).unwrap();
            dev.sync().unwrap();
            let snap = cpu.read_back().unwrap();
            inexact += assert_same_forest(&snap, &dev.read_back().unwrap(), &ctx);
            if round == reroot_at {
                let roots: Vec<u32> = snap
                    .n_nodes
                    .iter()
                    .map(|&n| match r.random_range(0..10) {
                        0..=2 => 0,
                        3 => NONE,
                        4 => n + r.random_range(0..3), // not a node: InvalidReroot
                        _ => r.random_range(0..n),
                    })
                    .collect();
                let ra = cpu.reroot(&roots);
                let rb = dev.reroot(&roots);
                assert_eq!(ra, rb, "{ctx}: reroot results differ");
                errors += ra.is_err() as usize;
                inexact += assert_same_forest(
                    &cpu.read_back().unwrap(),
                    &dev.read_back().unwrap(),
                    &format!("{ctx} after reroot"),
                );
            }
            steps += 1;
        }
        cases += 1;
    }
    eprintln!(
        "wgpu vs cpu: {cases} random forests, {steps} select/expand/backup rounds, {errors} \
         per-tree errors compared, {inexact} float fields not bit-identical"
    );
}

/// Errors of staged expansions stay on the device until `sync` (or a read), then are reported
/// once; a host expansion reports at once, like the CPU backend.
#[test]
fn staged_errors_are_sticky_until_sync() {
    // Capacity 1 + 8: the setup step fills every root; the next staged expansion cannot fit.
    let cfg = toy_cfg(100, 0, Rule::MCTX_PUCT, 1);
    let Some(mut f) = wgpu_forest(&cfg) else {
        return;
    };
    f.backend_mut().toy_reset(&toy::params(8)).unwrap();
    toy::step(&mut f, 1, false).unwrap();
    f.sync().unwrap();
    // A second step selects root children and stages 8 children each: no room.
    toy::step(&mut f, 1, false).unwrap();
    assert_eq!(
        f.sync(),
        Err(ForestError::CapacityExceeded {
            tree: 0,
            capacity: 9
        })
    );
    f.sync().unwrap(); // reported once
                       // Host expansion: immediate, the lowest failing tree.
    f.select(1).unwrap();
    let mut e = Expansion::zeros(100, 1, 8);
    e.counts[37] = 8;
    assert_eq!(
        f.expand(&e),
        Err(ForestError::CapacityExceeded {
            tree: 37,
            capacity: 9
        })
    );
    f.backup(&Backup {
        values: vec![0.0; 100],
        mask: vec![0; 100],
    })
    .unwrap();
    f.sync().unwrap();
    // Reroot to a node that does not exist.
    let mut roots = vec![0; 100];
    roots[5] = 50;
    assert_eq!(
        f.reroot(&roots),
        Err(ForestError::InvalidReroot { tree: 5 })
    );
}

/// The grid folded into a second dimension (as for more than 65535 · 64 trees) handles every
/// tree exactly once: the x extent is forced down to 3 workgroups, so 1000 trees take a 3 × 6
/// grid with idle threads at the end, and must still match the CPU backend.
#[test]
fn two_dimensional_dispatch_matches_cpu() {
    let cfg = ForestConfig {
        trees: 1000,
        capacity: 64,
        max_children: 4,
        max_depth: 6,
        max_leaves: 2,
        rule: Rule::RSTAR_UCT,
        virtual_loss: 1.0,
    };
    let mut dev = match WgpuForest::new(&cfg) {
        Ok(f) => f,
        Err(ForestError::Unavailable { reason, .. }) if !require() => {
            eprintln!("SKIP wgpu: {reason}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    dev.set_max_workgroups_x(3);
    let mut cpu = CpuForest::new(&cfg).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(99);
    let values: Vec<f32> = (0..cfg.trees).map(|_| r.random_range(-1.0..1.0)).collect();
    cpu.reset(&values, 1).unwrap();
    dev.reset(&values, 1).unwrap();
    for round in 0..6 {
        let k = 1 + round % 2;
        cpu.select(k).unwrap();
        dev.select(k).unwrap();
        let sa = cpu.selection(k).unwrap();
        assert_same_selection(&sa, &dev.selection(k).unwrap(), &format!("round {round}"));
        let snap = cpu.read_back().unwrap();
        let e = random_expansion(&mut r, &cfg, &sa, &snap, 0.03);
        assert_eq!(
            cpu.expand(Input::Host(&e), k),
            dev.expand(Input::Host(&e), k)
        );
        let bk = Backup {
            values: (0..cfg.trees * k)
                .map(|_| r.random_range(-1.0f32..=1.0))
                .collect(),
            mask: vec![1; cfg.trees * k],
        };
        cpu.backup(Input::Host(&bk), k).unwrap();
        dev.backup(Input::Host(&bk), k).unwrap();
        assert_same_forest(
            &cpu.read_back().unwrap(),
            &dev.read_back().unwrap(),
            &format!("round {round}"),
        );
    }
    // Every tree, the last ones included, was selected and backed up at least once.
    let snap = dev.read_back().unwrap();
    for b in 0..cfg.trees {
        assert!(snap.node(b, 0).visits >= 2, "tree {b}");
    }
}

/// A forest that cannot fit the adapter's limits is refused cleanly before anything is allocated.
#[test]
fn too_large_forest_is_unavailable() {
    let cfg = ForestConfig {
        trees: 1 << 20,
        capacity: 1 << 11,
        ..ForestConfig::default()
    };
    match Forest::new(cfg, BackendKind::Wgpu) {
        Err(ForestError::Unavailable { backend, reason }) => {
            assert_eq!(backend, "wgpu");
            eprintln!("as expected: {reason}");
        }
        Ok(_) => panic!("a 64 GiB forest was accepted"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}
