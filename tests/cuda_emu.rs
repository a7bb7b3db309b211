//! The CUDA kernels, run on the host: `kernels/forest.cu` is compiled by the system C++ compiler
//! with `tests/cuda_emu/emu.h` standing in for the CUDA names it uses, loaded with libloading, and
//! driven by the real host side of the CUDA backend (`KernelForest`) through a `KernelDevice`
//! whose memory is host memory and whose launch runs the kernel for every (block, thread). So the
//! kernel logic and the backend's buffer and argument plumbing are checked against the CPU
//! reference without a GPU. What this cannot check — the driver, NVRTC's code generation, the
//! device's `logf`/`sinf` — is covered by `tests/cuda_backend.rs` where a device exists.

mod common;
#[path = "cuda_emu/harness.rs"]
mod harness;

use harness::*;
use rstar_gpu::forest::backend::ForestBackend;
use rstar_gpu::forest::cpu::CpuForest;
use rstar_gpu::forest::cuda::{BufId, Kernel, KernelArgs, KernelDevice, KernelForest};
use rstar_gpu::forest::{toy, BackendKind, Forest, ForestConfig, ForestError, Rule};
use std::ffi::c_void;
use std::mem::offset_of;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

type RunFn = unsafe extern "C" fn(*const c_void, u32, u32, *const KernelArgs);
type LayoutFn = unsafe extern "C" fn(*mut u64, u32) -> u32;

/// The kernels compiled for the host.
struct EmuLib {
    lib: libloading::Library,
    run: RunFn,
    kernels: Vec<usize>,
}

fn compiler() -> Option<String> {
    let mut candidates: Vec<String> = std::env::var("CXX").into_iter().collect();
    candidates.extend(["c++", "g++", "clang++"].map(String::from));
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Build and load the emulation library once per test process; `None` (SKIP) without a C++
/// compiler. A compiler that fails on the kernels fails the test.
fn emu_lib() -> Option<Arc<EmuLib>> {
    static LIB: OnceLock<Option<Arc<EmuLib>>> = OnceLock::new();
    LIB.get_or_init(|| {
        let Some(cxx) = compiler() else {
            eprintln!("SKIP cuda emu: no C++ compiler (set CXX or install g++)");
            return None;
        };
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let so = dir.join(format!("forest_emu_{}.so", std::process::id()));
        // -ffp-contract=off: no fused multiply-add, as the CPU backend and NVRTC's --fmad=false.
        let out = Command::new(&cxx)
            .args(["-std=c++17", "-O2", "-shared", "-fPIC", "-ffp-contract=off"])
            .args(["-fno-strict-aliasing", "-Wall", "-Wextra", "-Werror"])
            .arg(format!("-I{}", root.join("tests/cuda_emu").display()))
            .arg(format!("-I{}", root.join("kernels").display()))
            .arg(root.join("tests/cuda_emu/launcher.cpp"))
            .arg("-o")
            .arg(&so)
            .output()
            .expect("running the C++ compiler");
        assert!(
            out.status.success(),
            "{cxx} failed on kernels/forest.cu:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: our own library: no initialisers beyond the C++ runtime's.
        let lib = unsafe { libloading::Library::new(&so) }.expect("loading the emulation library");
        let _ = std::fs::remove_file(&so);
        // SAFETY: the symbols have these signatures in launcher.cpp / forest.cu.
        let (run, kernels) = unsafe {
            let run: RunFn = *lib.get::<RunFn>(b"emu_run\0").expect("emu_run");
            let kernels = Kernel::ALL
                .iter()
                .map(|k| {
                    let name = format!("{}\0", k.name());
                    *lib.get::<*const c_void>(name.as_bytes())
                        .unwrap_or_else(|e| panic!("kernel {} missing: {e}", k.name()))
                        as usize
                })
                .collect();
            (run, kernels)
        };
        Some(Arc::new(EmuLib { lib, run, kernels }))
    })
    .clone()
}

/// Host memory standing in for device memory; 16-byte aligned like cudaMalloc's (and more).
struct EmuDevice {
    lib: Arc<EmuLib>,
    bufs: Vec<Vec<u128>>,
    launches: usize,
}

impl EmuDevice {
    fn bytes_mut(&mut self, buf: BufId) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.bufs[buf])
    }
}

impl KernelDevice for EmuDevice {
    fn description(&self) -> String {
        "cuda kernels on the host emulator".into()
    }
    fn alloc(&mut self, bytes: usize, fill: u8) -> Result<BufId, ForestError> {
        self.bufs.push(vec![
            u128::from_ne_bytes([fill; 16]);
            bytes.div_ceil(16).max(1)
        ]);
        Ok(self.bufs.len() - 1)
    }
    fn address(&self, buf: BufId) -> u64 {
        self.bufs[buf].as_ptr() as u64
    }
    fn upload(&mut self, buf: BufId, offset: usize, src: &[u8]) -> Result<(), ForestError> {
        self.bytes_mut(buf)[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }
    fn download(&mut self, buf: BufId, offset: usize, dst: &mut [u8]) -> Result<(), ForestError> {
        let n = dst.len();
        dst.copy_from_slice(&self.bytes_mut(buf)[offset..offset + n]);
        Ok(())
    }
    fn launch(
        &mut self,
        kernel: Kernel,
        blocks: u32,
        threads: u32,
        args: &KernelArgs,
    ) -> Result<(), ForestError> {
        let i = Kernel::ALL.iter().position(|&k| k == kernel).unwrap();
        // SAFETY: the kernel and emu_run take a `ForestArgs` whose layout `KernelArgs` matches
        // (checked by `layout_matches_kernel_args`); the addresses point into `self.bufs`.
        unsafe { (self.lib.run)(self.lib.kernels[i] as *const c_void, blocks, threads, args) };
        self.launches += 1;
        Ok(())
    }
    fn synchronize(&mut self) -> Result<(), ForestError> {
        Ok(())
    }
}

fn emu_forest(cfg: &ForestConfig, lib: &Arc<EmuLib>) -> KernelForest<EmuDevice> {
    let dev = EmuDevice {
        lib: lib.clone(),
        bufs: Vec::new(),
        launches: 0,
    };
    KernelForest::with_device(cfg, dev).expect("emulated forest")
}

#[test]
fn layout_matches_kernel_args() {
    let Some(lib) = emu_lib() else { return };
    let layout: LayoutFn = unsafe { *lib.lib.get::<LayoutFn>(b"emu_args_layout\0").unwrap() };
    let mut got = [0u64; 64];
    let n = unsafe { layout(got.as_mut_ptr(), got.len() as u32) } as usize;
    let want = [
        offset_of!(KernelArgs, nodes),
        offset_of!(KernelArgs, scratch),
        offset_of!(KernelArgs, n_nodes),
        offset_of!(KernelArgs, status),
        offset_of!(KernelArgs, leaves),
        offset_of!(KernelArgs, path_len),
        offset_of!(KernelArgs, paths),
        offset_of!(KernelArgs, exp_counts),
        offset_of!(KernelArgs, exp_values),
        offset_of!(KernelArgs, exp_priors),
        offset_of!(KernelArgs, exp_flags),
        offset_of!(KernelArgs, bk_values),
        offset_of!(KernelArgs, bk_mask),
        offset_of!(KernelArgs, bk_in_values),
        offset_of!(KernelArgs, bk_in_mask),
        offset_of!(KernelArgs, root_values),
        offset_of!(KernelArgs, new_roots),
        offset_of!(KernelArgs, toy_state),
        offset_of!(KernelArgs, toy_stats),
        offset_of!(KernelArgs, toy_priors),
        offset_of!(KernelArgs, trees),
        offset_of!(KernelArgs, capacity),
        offset_of!(KernelArgs, max_children),
        offset_of!(KernelArgs, max_depth),
        offset_of!(KernelArgs, k),
        offset_of!(KernelArgs, km),
        offset_of!(KernelArgs, exp_stride),
        offset_of!(KernelArgs, rule),
        offset_of!(KernelArgs, rule_p0),
        offset_of!(KernelArgs, rule_p1),
        offset_of!(KernelArgs, virtual_loss),
        offset_of!(KernelArgs, root_visits),
        offset_of!(KernelArgs, branching),
        offset_of!(KernelArgs, record),
        offset_of!(KernelArgs, k_select),
        offset_of!(KernelArgs, phases),
        std::mem::size_of::<KernelArgs>(),
    ]
    .map(|x| x as u64);
    assert_eq!(
        &got[..n],
        &want[..],
        "ForestArgs (C) vs KernelArgs (Rust) offsets"
    );
}

#[test]
fn emulated_kernels_match_cpu_on_random_operations() {
    let Some(lib) = emu_lib() else { return };
    let mut stats = DiffStats::default();
    let mut make =
        |cfg: &ForestConfig| -> Box<dyn ForestBackend> { Box::new(emu_forest(cfg, &lib)) };
    for seed in 0..600 {
        run_case(seed, &mut make, &mut stats);
    }
    eprintln!("cuda emu vs cpu, random operations: {stats:#?}");
    assert_eq!(stats.cases, 600);
    // The cases must reach every error path and both expansion kinds.
    for kind in ["capacity", "invalid_expand", "invalid_reroot"] {
        assert!(
            stats.errors.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} case"
        );
    }
    assert!(stats.staged_expands > 0 && stats.host_expands > 0 && stats.reroots > 0);
    // The emulation uses the host libm, like the CPU backend: agreement is bit for bit (on a
    // device, CUDA's logf/sinf may differ by an ulp, hence the 1e-5 tolerance of the comparison).
    assert_eq!(stats.floats_bit_identical, stats.floats_compared);
}

/// Many leaves per step on bigger trees (virtual loss and collisions at scale).
#[test]
fn emulated_kernels_match_cpu_with_many_leaves() {
    let Some(lib) = emu_lib() else { return };
    for (i, &rule) in [
        Rule::RSTAR_UCT,
        Rule::UctUnvisitedFirst { c: 2.0 },
        Rule::MCTX_PUCT,
    ]
    .iter()
    .enumerate()
    {
        let cfg = ForestConfig {
            trees: 37,
            capacity: 600,
            max_children: 5,
            max_depth: 9,
            max_leaves: 16,
            rule,
            virtual_loss: 1.0,
        };
        for (k, sims) in [(16usize, 64usize), (5, 40)] {
            let mut cpu = CpuForest::new(&cfg).unwrap();
            let mut emu = emu_forest(&cfg, &lib);
            let want = toy_run_backend(&mut cpu, &cfg, sims, k).unwrap();
            let got = toy_run_backend(&mut emu, &cfg, sims, k).unwrap();
            assert_eq!(want, got, "rule {i} K={k}");
            let mut st = DiffStats::default();
            let (a, b) = (cpu.read_back().unwrap(), emu.read_back().unwrap());
            assert_same_forest(&a, &b, &format!("rule {i} K={k}"), &mut st);
        }
    }
}

/// The toy workload under all three rules: the emulated kernels give the CPU backend's numbers
/// (and, for PUCT, toy_forest.c's).
#[test]
fn emulated_toy_checksums() {
    let Some(lib) = emu_lib() else { return };
    let rules = [
        Rule::MCTX_PUCT,
        Rule::RSTAR_UCT,
        Rule::UctUnvisitedFirst { c: 2.0 },
    ];
    for rule in rules {
        for &(trees, sims, ..) in &TOY_FOREST_C {
            for k in [1usize, 4] {
                let cfg = toy_config(trees, sims, rule, k);
                let mut f = Forest::new(cfg.clone(), BackendKind::Cpu).unwrap();
                let cpu = toy_summary_of(&toy::run(&mut f, sims, k, 8, 1).unwrap());
                let mut emu_f = emu_forest(&cfg, &lib);
                let emu = toy_run_backend(&mut emu_f, &cfg, sims, k).unwrap();
                eprintln!(
                    "{} B={trees} S={sims} K={k}: checksum {} mean_depth {:.4} max_depth {} tree0 {:?} ({} launches)",
                    rule.name(),
                    emu.checksum,
                    emu.mean_depth,
                    emu.max_depth_seen,
                    emu.root_visits_tree0,
                    emu_f.device().launches
                );
                assert_eq!(cpu, emu, "{} B={trees} S={sims} K={k}", rule.name());
                if rule == Rule::MCTX_PUCT && k == 1 {
                    assert_matches_toy_forest_c(&emu, trees, sims, "cuda emu");
                }
            }
        }
    }
}

/// Per-tree errors stay on the device until a read or sync reports them, then are cleared.
#[test]
fn emulated_status_words_are_sticky_until_reported() {
    let Some(lib) = emu_lib() else { return };
    let cfg = ForestConfig {
        trees: 3,
        capacity: 9,
        max_children: 8,
        max_leaves: 1,
        ..ForestConfig::default()
    };
    let mut f = emu_forest(&cfg, &lib);
    f.reset(&[0.0; 3], 0).unwrap();
    f.toy_reset(&toy::params(8)).unwrap();
    // Step 1 fills each tree to 9 nodes; step 2 needs 8 more: every tree is full.
    for step in 0..2 {
        f.select(1).unwrap();
        f.toy_evaluate(1, false).unwrap();
        f.expand(rstar_gpu::Input::Staged, 1).unwrap(); // queued, not checked yet
        f.backup(rstar_gpu::Input::Staged, 1).unwrap();
        if step == 0 {
            f.sync().unwrap();
        }
    }
    assert_eq!(
        f.sync(),
        Err(ForestError::CapacityExceeded {
            tree: 0,
            capacity: 9
        })
    );
    assert_eq!(f.sync(), Ok(()), "reported once, then cleared");
}
