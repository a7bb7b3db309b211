//! The CPU backend's SSE2-only selection path (what runs on CPUs without AVX2) against the plain
//! model. A separate test binary, because it switches the AVX2 path off for the whole process.

mod common;

use common::model::Model;
use common::*;
use rstar_gpu::forest::{BackendKind, Backup, Forest};

#[test]
fn sse_path_matches_model() {
    std::env::set_var("RSTAR_CPU_NO_AVX2", "1");
    for (ri, rule) in RULES.iter().enumerate() {
        for case in 0..60u64 {
            let seed = 7 << 40 | (ri as u64) << 32 | case;
            let mut r = rng(seed);
            let mut cfg = random_config(&mut r, *rule);
            cfg.max_children = 8;
            let mut m = Model::new(&cfg);
            let mut f = Forest::new(cfg.clone(), BackendKind::Cpu).unwrap();
            for round in 0..10 {
                let k = 1 + round % cfg.max_leaves;
                m.select(k);
                f.select(k).unwrap();
                let want = m.selection();
                assert_same_selection(
                    &want,
                    &f.selection().unwrap(),
                    &format!("seed {seed} round {round}"),
                );
                let mut e = random_expansion(&mut r, &cfg, &want, &m.snapshot(), 0.0);
                for c in e.counts.iter_mut() {
                    if *c > 0 {
                        *c = 8; // full blocks exercise the vector path
                    }
                }
                assert_eq!(m.expand(&e), f.expand(&e));
                let bk: Backup = random_backup(&mut r, cfg.trees, k);
                m.backup(&bk);
                f.backup(&bk).unwrap();
                assert_same_forest(
                    &m.snapshot(),
                    &f.read_back().unwrap(),
                    &format!("seed {seed} round {round}"),
                );
            }
        }
    }
}
