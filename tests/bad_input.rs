//! Bad input gives one clear error naming the thing — never a panic, never a silent overwrite —
//! and leaves the forest usable, on every backend available here.

mod common;

use rstar_gpu::forest::{BackendKind, Backup, Expansion, Forest, ForestConfig, ForestError, NONE};
use std::process::Command;

fn cfg() -> ForestConfig {
    ForestConfig {
        trees: 3,
        capacity: 8,
        max_children: 4,
        max_depth: 4,
        max_leaves: 2,
        ..ForestConfig::default()
    }
}

fn backends() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Cpu];
    v.extend(common::device_backends());
    v
}

fn expand_root(f: &mut Forest, n: u32) -> Result<(), ForestError> {
    let c = f.config().clone();
    f.select(1)?;
    let mut e = Expansion::zeros(c.trees, 1, c.max_children);
    e.counts.fill(n);
    let r = f.expand(&e);
    f.backup(&Backup {
        values: vec![0.0; c.trees],
        mask: vec![0; c.trees],
    })?;
    r
}

#[test]
fn invalid_configurations_are_refused() {
    for kind in backends() {
        let zero = ForestConfig { trees: 0, ..cfg() };
        let e = Forest::new(zero, kind).err().expect("zero trees must fail");
        assert!(matches!(e, ForestError::InvalidConfig(_)), "{kind}: {e}");
        assert!(e.to_string().contains("trees must be at least 1"), "{e}");
        for bad in [
            ForestConfig {
                capacity: 0,
                ..cfg()
            },
            ForestConfig {
                max_children: 0,
                ..cfg()
            },
            ForestConfig {
                max_children: 256,
                ..cfg()
            },
            ForestConfig {
                max_leaves: 65,
                ..cfg()
            },
            ForestConfig {
                max_depth: 0,
                ..cfg()
            },
            ForestConfig {
                virtual_loss: f32::NAN,
                ..cfg()
            },
            ForestConfig {
                trees: 1 << 20,
                capacity: 1 << 20,
                ..cfg()
            },
        ] {
            let e = Forest::new(bad.clone(), kind)
                .err()
                .unwrap_or_else(|| panic!("{kind}: {bad:?} accepted"));
            assert!(matches!(e, ForestError::InvalidConfig(_)), "{kind}: {e}");
        }
    }
}

#[test]
fn leaves_per_step_out_of_range() {
    for kind in backends() {
        let Some(mut f) = common::forest_or_skip(&cfg(), kind) else {
            continue;
        };
        for k in [0, 3, 100] {
            let e = f.select(k).unwrap_err();
            assert!(e.to_string().contains("leaves per step"), "{kind}: {e}");
        }
        f.select(2).unwrap(); // still usable
    }
}

#[test]
fn capacity_overflow_is_an_error_and_leaves_the_tree_unchanged() {
    for kind in backends() {
        let Some(mut f) = common::forest_or_skip(&cfg(), kind) else {
            continue;
        };
        expand_root(&mut f, 4).unwrap(); // 5 of 8 nodes
        let before = f.read_back().unwrap();
        // Next leaves are root children; 4 more children each would need 9 > 8 nodes.
        let e = expand_root(&mut f, 4).unwrap_err();
        assert_eq!(
            e,
            ForestError::CapacityExceeded {
                tree: 0,
                capacity: 8
            },
            "{kind}"
        );
        assert!(e.to_string().contains("raise --capacity"), "{e}");
        let after = f.read_back().unwrap();
        assert_eq!(
            before.n_nodes, after.n_nodes,
            "{kind}: a full tree must not grow"
        );
        for t in 0..3 {
            for (a, b) in before.tree(t).iter().zip(after.tree(t)) {
                assert_eq!(
                    (a.first_child, a.meta & !8, a.parent),
                    (b.first_child, b.meta & !8, b.parent),
                    "{kind}"
                );
            }
        }
        // Smaller expansions still fit.
        expand_root(&mut f, 3).unwrap();
    }
}

#[test]
fn non_finite_values_are_refused_before_anything_changes() {
    for kind in backends() {
        let Some(mut f) = common::forest_or_skip(&cfg(), kind) else {
            continue;
        };
        f.select(1).unwrap();
        let mut e = Expansion::zeros(3, 1, 4);
        e.counts[0] = 2;
        e.values[1] = f32::NAN;
        let err = f.expand(&e).unwrap_err();
        assert!(
            matches!(err, ForestError::InvalidInput(_)) && err.to_string().contains("NaN"),
            "{kind}: {err}"
        );
        e.values[1] = 0.0;
        e.priors[0] = f32::INFINITY;
        assert!(
            matches!(f.expand(&e), Err(ForestError::InvalidInput(_))),
            "{kind}"
        );
        e.priors[0] = 0.5;
        f.expand(&e).unwrap();
        let bad = Backup {
            values: vec![f32::NAN, 0.0, 0.0],
            mask: vec![1, 0, 0],
        };
        let err = f.backup(&bad).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{kind}: {err}");
        // A NaN under a zero mask is ignored; the forest stays usable.
        f.backup(&Backup {
            values: vec![f32::NAN, 0.5, 0.5],
            mask: vec![0, 1, 1],
        })
        .unwrap();
        let snap = f.read_back().unwrap();
        assert_eq!(snap.node(1, 0).visits, 1);
        assert!(snap.nodes.iter().take(8).all(|n| n.value_sum.is_finite()));
        let roots = vec![0.0, f32::NAN, 0.0];
        assert!(matches!(
            f.reset(&roots, 0),
            Err(ForestError::InvalidInput(_))
        ));
    }
}

#[test]
fn wrong_shapes_and_flags_are_refused() {
    for kind in backends() {
        let Some(mut f) = common::forest_or_skip(&cfg(), kind) else {
            continue;
        };
        f.select(2).unwrap();
        let mut e = Expansion::zeros(3, 1, 4); // K is 2
        assert!(
            f.expand(&e).unwrap_err().to_string().contains("expected 6"),
            "{kind}"
        );
        e = Expansion::zeros(3, 2, 4);
        e.counts[0] = 5;
        assert!(
            f.expand(&e)
                .unwrap_err()
                .to_string()
                .contains("exceeds max_children"),
            "{kind}"
        );
        e.counts[0] = 1;
        e.flags[0] = 1 << 7;
        assert!(
            f.expand(&e).unwrap_err().to_string().contains("flags"),
            "{kind}"
        );
        assert!(f
            .backup(&Backup {
                values: vec![0.0; 5],
                mask: vec![0; 5]
            })
            .is_err());
        assert!(
            f.reroot(&[0, 0, 0]).is_err(),
            "reroot with a selection in flight"
        );
        f.backup(&Backup {
            values: vec![0.0; 6],
            mask: vec![0; 6],
        })
        .unwrap();
        assert!(f
            .reroot(&[0, 0])
            .unwrap_err()
            .to_string()
            .contains("new_roots"));
    }
}

#[test]
fn invalid_expansions_and_reroots_name_the_tree() {
    for kind in backends() {
        let Some(mut f) = common::forest_or_skip(&cfg(), kind) else {
            continue;
        };
        expand_root(&mut f, 1).unwrap(); // each root has one child
        f.select(2).unwrap(); // slot 1 collides (only one open child): empty
        let sel = f.selection().unwrap();
        assert_eq!(sel.leaf(2, 1), None);
        let mut e = Expansion::zeros(3, 2, 4);
        e.counts[2 * 2 + 1] = 1; // children for tree 2's empty slot
        assert_eq!(
            f.expand(&e),
            Err(ForestError::InvalidExpand { tree: 2 }),
            "{kind}"
        );
        f.backup(&Backup {
            values: vec![0.0; 6],
            mask: vec![0; 6],
        })
        .unwrap();
        assert_eq!(
            f.reroot(&[0, 99, NONE]),
            Err(ForestError::InvalidReroot { tree: 1 }),
            "{kind}"
        );
        f.read_back().unwrap();
    }
}

#[test]
fn phase_order_is_enforced() {
    let mut f = Forest::new(cfg(), BackendKind::Cpu).unwrap();
    assert!(matches!(
        f.expand(&Expansion::zeros(3, 1, 4)),
        Err(ForestError::PhaseOrder(_))
    ));
    assert!(matches!(
        f.backup(&Backup::default()),
        Err(ForestError::PhaseOrder(_))
    ));
    assert!(matches!(f.selection(), Err(ForestError::PhaseOrder(_))));
    f.select(1).unwrap();
    assert!(matches!(f.select(1), Err(ForestError::PhaseOrder(_))));
}

#[test]
fn cli_reports_one_line_errors() {
    let exe = env!("CARGO_BIN_EXE_rstar-gpu");
    for (args, needle) in [
        (
            vec![
                "bench",
                "forest",
                "--backend",
                "cpu",
                "--trees",
                "0",
                "--json",
            ],
            "trees must be at least 1",
        ),
        (
            vec![
                "bench",
                "forest",
                "--backend",
                "cpu",
                "--trees",
                "4",
                "--capacity",
                "5",
                "--json",
            ],
            "capacity",
        ),
        (
            vec![
                "bench",
                "forest",
                "--backend",
                "cpu",
                "--trees",
                "4",
                "--leaves-per-step",
                "65",
            ],
            "max_leaves",
        ),
    ] {
        let out = Command::new(exe)
            .args(&args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: stderr was {err:?}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "no JSON on failure");
    }
    let out = Command::new(exe)
        .args([
            "bench",
            "forest",
            "--backend",
            "cpu",
            "--trees",
            "8",
            "--sims",
            "8",
            "--json",
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("exactly one JSON object on stdout");
    for key in [
        "bench",
        "backend",
        "trees",
        "sims",
        "branching",
        "max_depth",
        "rule",
        "sims_per_sec",
        "ms_per_search",
        "mean_depth",
        "max_depth_seen",
        "checksum",
        "root_visits_tree0",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn expansion_builder_checks_its_bounds() {
    use rstar_gpu::forest::ChildInit;
    let mut e = Expansion::zeros(2, 3, 4);
    let c = ChildInit {
        value: 0.5,
        prior: 0.25,
        flags: 0,
    };
    e.set(5, &[c; 4]).unwrap();
    assert_eq!(
        (e.counts[5], e.values[5 * 4 + 3], e.priors[5 * 4]),
        (4, 0.5, 0.25)
    );
    assert!(e
        .set(5, &[c; 5])
        .unwrap_err()
        .to_string()
        .contains("at most 4"));
    assert!(e
        .set(6, &[c])
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    let mut b = Backup::none(6);
    b.set(2, -1.0);
    assert_eq!(
        (
            b.values[2],
            b.mask[2],
            b.mask.iter().map(|&m| m as u32).sum::<u32>()
        ),
        (-1.0, 1, 1)
    );
}
