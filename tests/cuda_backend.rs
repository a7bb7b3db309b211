//! The CUDA backend as it ships: NVRTC compiles `kernels/forest.cu` (needs only libnvrtc; CI sets
//! `RSTAR_REQUIRE_NVRTC=1` so a missing library fails instead of skipping), and on a machine with
//! a CUDA device the kernels run against the CPU reference. Without a device the device tests
//! print `SKIP cuda device: <reason>` and check nothing else — they never pass by running nothing
//! on a device-equipped machine, and never fail for the lack of one. The kernel logic itself is
//! checked without a device by `tests/cuda_emu.rs`.

mod common;
#[path = "cuda_emu/harness.rs"]
mod harness;

use harness::*;
use rstar_gpu::forest::backend::ForestBackend;
use rstar_gpu::forest::cuda::{self, CudaForest, Kernel};
use rstar_gpu::forest::{toy, BackendKind, Forest, ForestConfig, ForestError, Rule};

/// `Some(reason)` when NVRTC is missing and that is allowed here.
fn nvrtc_skip() -> Option<String> {
    match cuda::nvrtc_available() {
        Ok(()) => None,
        Err(e) => {
            if std::env::var("RSTAR_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("RSTAR_REQUIRE_NVRTC=1 but NVRTC is unavailable: {e}");
            }
            Some(e.to_string())
        }
    }
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if let Some(reason) = nvrtc_skip() {
        println!("SKIP cuda nvrtc: {reason}");
        return;
    }
    let (major, minor) = cuda::nvrtc_version().unwrap();
    for arch in ["compute_80", "compute_90"] {
        let ptx = cuda::compile_ptx(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        for k in Kernel::ALL {
            assert!(
                ptx.contains(&format!(".entry {}(", k.name())),
                "{arch}: no .entry {} in the PTX",
                k.name()
            );
        }
        let target = arch.replace("compute_", "sm_");
        assert!(
            ptx.contains(&format!(".target {target}")),
            "{arch}: wrong .target"
        );
        assert!(cuda::ptx_is_complete(&ptx));
        println!(
            "nvrtc {major}.{minor} {arch}: {} bytes of PTX, {} entries, options {:?}",
            ptx.len(),
            ptx.matches(".entry ").count(),
            cuda::nvrtc_options(arch)
        );
    }
    assert!(cuda::compile_ptx("compute_90 --extra-option").is_err());
}

#[test]
fn ptx_cache_is_reused_and_repaired() {
    if let Some(reason) = nvrtc_skip() {
        println!("SKIP cuda nvrtc: {reason}");
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ptx-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = cuda::cached_ptx_in(&dir, "compute_80").unwrap();
    assert!(!first.from_cache);
    assert!(first.path.starts_with(&dir) && first.path.is_file());
    let second = cuda::cached_ptx_in(&dir, "compute_80").unwrap();
    assert!(second.from_cache);
    assert_eq!(first.ptx, second.ptx);
    // A truncated entry (e.g. a crash by a writer without the atomic rename) is recompiled.
    std::fs::write(&first.path, &first.ptx[..first.ptx.len() / 2]).unwrap();
    let third = cuda::cached_ptx_in(&dir, "compute_80").unwrap();
    assert!(!third.from_cache);
    assert_eq!(std::fs::read_to_string(&first.path).unwrap(), first.ptx);
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Some(reason)` (printed as SKIP) when no CUDA device can be used here.
fn device_skip() -> Option<String> {
    cuda::available().err().map(|e| e.to_string())
}

#[test]
fn missing_device_is_a_clean_error() {
    match cuda::available() {
        Ok(()) => println!("cuda device present: nothing to check here"),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    ForestError::Unavailable {
                        backend: "cuda",
                        ..
                    }
                ),
                "{e:?}"
            );
            let r = Forest::new(ForestConfig::default(), BackendKind::Cuda);
            assert!(
                matches!(
                    r,
                    Err(ForestError::Unavailable {
                        backend: "cuda",
                        ..
                    })
                ),
                "{:?}",
                r.err()
            );
            println!("no cuda device (clean error): {e}");
        }
    }
}

#[test]
fn cuda_toy_checksums() {
    if let Some(reason) = device_skip() {
        println!("SKIP cuda device: {reason}");
        return;
    }
    for rule in [
        Rule::MCTX_PUCT,
        Rule::RSTAR_UCT,
        Rule::UctUnvisitedFirst { c: 2.0 },
    ] {
        for &(trees, sims, ..) in &TOY_FOREST_C {
            for k in [1usize, 4] {
                let cfg = toy_config(trees, sims, rule, k);
                let run = |kind| {
                    let mut f = Forest::new(cfg.clone(), kind).unwrap();
                    let r = toy::run(&mut f, sims, k, 8, 1).unwrap();
                    (toy_summary_of(&r), f.backend_description())
                };
                let (cpu, _) = run(BackendKind::Cpu);
                let (dev, desc) = run(BackendKind::Cuda);
                println!(
                    "{desc} {} B={trees} S={sims} K={k}: checksum {} mean_depth {:.4} tree0 {:?}",
                    rule.name(),
                    dev.checksum,
                    dev.mean_depth,
                    dev.root_visits_tree0
                );
                assert_eq!(cpu, dev, "{} B={trees} S={sims} K={k}", rule.name());
                if rule == Rule::MCTX_PUCT && k == 1 {
                    assert_matches_toy_forest_c(&dev, trees, sims, "cuda");
                }
            }
        }
    }
}

#[test]
fn cuda_matches_cpu_on_random_operations() {
    if let Some(reason) = device_skip() {
        println!("SKIP cuda device: {reason}");
        return;
    }
    let mut stats = DiffStats::default();
    let mut make = |cfg: &ForestConfig| -> Box<dyn ForestBackend> {
        Box::new(CudaForest::new(cfg).expect("cuda forest"))
    };
    for seed in 0..300 {
        run_case(seed, &mut make, &mut stats);
    }
    println!("cuda vs cpu, random operations: {stats:#?}");
    assert_eq!(stats.cases, 300);
}
