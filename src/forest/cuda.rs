//! The CUDA backend: the kernels of `kernels/forest.cu`, compiled at run time by NVRTC and run
//! through the CUDA driver API (cudarc), with every tree's state kept on the device.
//!
//! This module owns:
//! * the kernel ABI: [`Kernel`] (one kernel per phase, named as in `forest.cu`) and
//!   [`KernelArgs`], the single by-value argument every kernel takes (the device address of each
//!   array plus the forest's shape), whose layout is pinned by asserts here and in `forest.cu`;
//! * [`KernelForest`], the host side of the backend: it allocates the device arrays, uploads host
//!   inputs, enqueues one launch per phase and reads results back. It runs on any
//!   [`KernelDevice`]: [`CudaDevice`] (the driver) in production, and a host emulation that runs
//!   the same `forest.cu` compiled by the system C++ compiler in `tests/cuda_emu.rs`, so the
//!   kernel logic and this host logic are both checked against the CPU reference without a GPU;
//! * NVRTC compilation ([`compile_ptx`], which needs only libnvrtc, no driver and no GPU) and the
//!   on-disk PTX cache ([`cached_ptx_in`]), keyed by source hash, options, architecture and NVRTC
//!   version.
//!
//! # Why one thread per tree
//! Each kernel gives one thread one tree for the whole phase: the thread handles the tree's K
//! slots in order, exactly as a CPU worker does, so no atomics are needed and every float sum is
//! added in the CPU's order, which makes the backends agree node for node. It leaves most of a
//! large GPU idle at small B and makes uncoalesced loads; the design of
//! `reference/gpu-mcts.md` §6 — an 8-lane sub-warp per tree, lanes scoring children in parallel
//! and reducing with shuffles — is the next step once a device can measure the difference.
//!
//! # Synchronisation and fusion
//! `select` enqueues one launch on one stream and returns without waiting. The toy evaluation, a
//! staged expansion and a backup are not launched on their own: they are recorded and run, tree by
//! tree, in the same launch as the next `select` (`forest_step`), as the CPU backend fuses them —
//! one launch per search step instead of four, which matters when a step's kernels take
//! microseconds. A host input is first copied into a device buffer (the driver stages it before
//! the call returns). `selection`, `read_back`, `toy_stats` and `sync` launch whatever is still
//! deferred, then wait and read back. Per-tree errors (capacity, invalid expansion, invalid
//! reroot) are sticky status words on the device; they are reported and cleared by `sync`,
//! `selection` and `read_back`, and at once after a host expansion and after `reroot`, which wait
//! anyway.
//!
//! # Float agreement
//! NVRTC runs with `--fmad=false` (no fused multiply-add, so every product is rounded as on the
//! CPU), `--ftz=false`, `--prec-div=true`, `--prec-sqrt=true` (IEEE division and square root).
//! CUDA's `logf`/`sinf` are within 1–2 ulp of the host libm's rather than identical, so device
//! results can differ from the CPU's by an ulp in rare cases (a near-tie may then resolve
//! differently); the host emulation uses the host libm and agrees exactly.

use super::backend::{BackendKind, ForestBackend, Input, ToyParams, ToyStats};
use super::{
    status_error, Backup, Expansion, ForestConfig, ForestError, ForestSnapshot, Node, Selection,
};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The kernel source, embedded at build time.
pub const SOURCE: &str = include_str!("../../kernels/forest.cu");

/// Threads per block; thread `b` of the grid handles tree `b`.
const BLOCK: u32 = 128;

fn unavailable(reason: impl Into<String>) -> ForestError {
    ForestError::Unavailable {
        backend: "cuda",
        reason: reason.into(),
    }
}

fn device_error(reason: impl Into<String>) -> ForestError {
    ForestError::Device {
        backend: "cuda",
        reason: reason.into(),
    }
}

/// Run a call into a CUDA library, turning a panic (cudarc panics when a library or one of its
/// symbols cannot be loaded) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, ForestError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        unavailable(format!("{what} failed inside the CUDA library: {msg}"))
    })
}

// ------------------------------------------------------------------------------------------------
// Kernel ABI

/// The kernels of `kernels/forest.cu`, one per phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Reset,
    Select,
    Expand,
    Reroot,
    ToyReset,
    Step,
}

impl Kernel {
    pub const ALL: [Kernel; 6] = [
        Kernel::Reset,
        Kernel::Select,
        Kernel::Expand,
        Kernel::Reroot,
        Kernel::ToyReset,
        Kernel::Step,
    ];

    /// The kernel's `extern "C"` name.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Reset => "forest_reset",
            Kernel::Select => "forest_select",
            Kernel::Expand => "forest_expand",
            Kernel::Reroot => "forest_reroot",
            Kernel::ToyReset => "toy_reset",
            Kernel::Step => "forest_step",
        }
    }
}

/// The one argument of every kernel: `ForestArgs` of `kernels/forest.cu`, field for field.
///
/// Pointers are device addresses (0 = not used by this launch). Shapes: B = `trees`,
/// N = `capacity`, A = `max_children`, D = `max_depth`, KM = `km` (max leaves per step),
/// K = `k` (slots of this launch). As on the CPU backend, selection and staged arrays have rows of
/// KM slots per tree; a host expansion has rows of K slots (`exp_stride`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KernelArgs {
    /// `[B, N]` [`Node`] arenas.
    pub nodes: u64,
    /// `[B, N]` [`Node`] reroot compaction target.
    pub scratch: u64,
    /// `[B]` u32 nodes in use per tree.
    pub n_nodes: u64,
    /// `[B]` u32 sticky status words ([`super::status`]).
    pub status: u64,
    /// `[B, KM]` u32 selected leaves ([`NONE`](super::NONE) = empty slot).
    pub leaves: u64,
    /// `[B, KM]` u32 path lengths (nodes, root .. leaf).
    pub path_len: u64,
    /// `[B, KM, D+1]` u32 paths, root first.
    pub paths: u64,
    /// `[B, exp_stride]` u32 children per slot (expansion input).
    pub exp_counts: u64,
    /// `[B, exp_stride, A]` f32 initial values of the children.
    pub exp_values: u64,
    /// `[B, exp_stride, A]` f32 priors of the children.
    pub exp_priors: u64,
    /// `[B, exp_stride, A]` u32 child flags.
    pub exp_flags: u64,
    /// `[B, KM]` f32 staged backup values.
    pub bk_values: u64,
    /// `[B, KM]` u32 staged backup mask (1 = add value and visit, 0 = only remove virtual loss).
    pub bk_mask: u64,
    /// `[B, K]` f32 host backup values, copied into `bk_values` by the kernel (0 = staged backup).
    pub bk_in_values: u64,
    /// `[B, K]` u32 host backup mask, copied into `bk_mask`.
    pub bk_in_mask: u64,
    /// `[B]` f32 reset input: root initial values.
    pub root_values: u64,
    /// `[B]` u32 reroot input: the node to keep as root.
    pub new_roots: u64,
    /// `[B, N]` u32 toy state per node.
    pub toy_state: u64,
    /// `[B, 3]` u32 toy statistics per tree: depth sum, leaves, max depth.
    pub toy_stats: u64,
    /// `[branching]` f32 toy priors.
    pub toy_priors: u64,
    pub trees: u32,
    pub capacity: u32,
    pub max_children: u32,
    pub max_depth: u32,
    pub k: u32,
    pub km: u32,
    /// Row stride (slots) of the `exp_*` arrays: K for a host expansion, KM for the staged one.
    pub exp_stride: u32,
    /// `Rule::encode` kind: 0 = uct, 1 = uct unvisited-first, 2 = puct.
    pub rule: u32,
    pub rule_p0: f32,
    pub rule_p1: f32,
    pub virtual_loss: f32,
    pub root_visits: u32,
    pub branching: u32,
    pub record: u32,
    /// `forest_step`: K of the selection run after the deferred phases.
    pub k_select: u32,
    /// `forest_step`: the phases to run ([`phase`] bits).
    pub phases: u32,
}

/// Phase bits of `forest_step` (`PH_*` in forest.cu), run per tree in this order.
pub mod phase {
    pub const TOY_EVAL: u32 = 1;
    pub const EXPAND: u32 = 2;
    pub const BACKUP: u32 = 4;
    pub const SELECT: u32 = 8;
}

// The same numbers as the static_asserts of forest.cu (and the host emulation's offsetof check).
const _: () = {
    assert!(std::mem::size_of::<KernelArgs>() == 224);
    assert!(std::mem::offset_of!(KernelArgs, phases) == 220);
    assert!(std::mem::offset_of!(KernelArgs, toy_priors) == 152);
    assert!(std::mem::offset_of!(KernelArgs, trees) == 160);
    assert!(std::mem::offset_of!(KernelArgs, rule_p0) == 192);
    assert!(std::mem::offset_of!(KernelArgs, record) == 212);
    assert!(std::mem::size_of::<Node>() == 32);
};

// SAFETY: plain `repr(C)` data (integers and floats) whose layout matches `ForestArgs` in
// forest.cu, as asserted above; it is passed to kernels by value.
unsafe impl DeviceRepr for KernelArgs {}

/// Handle of a buffer allocated on a [`KernelDevice`].
pub type BufId = usize;

/// What runs the kernels: the seam between [`KernelForest`]'s host logic and the machine.
///
/// Implemented by [`CudaDevice`] (the CUDA driver) and, in `tests/cuda_emu.rs`, by a host
/// emulation that calls the same kernels compiled for the CPU. Work is ordered: every call sees
/// the effects of the calls before it.
pub trait KernelDevice: Send {
    fn description(&self) -> String;
    /// Allocate `bytes` bytes, each set to `fill`, at least 16-byte aligned.
    fn alloc(&mut self, bytes: usize, fill: u8) -> Result<BufId, ForestError>;
    /// The address the kernels use for `buf`.
    fn address(&self, buf: BufId) -> u64;
    /// Enqueue a copy of `src` into `buf` at byte `offset`; `src` may be dropped on return.
    fn upload(&mut self, buf: BufId, offset: usize, src: &[u8]) -> Result<(), ForestError>;
    /// Wait for all queued work, then copy `buf` from byte `offset` into `dst`.
    fn download(&mut self, buf: BufId, offset: usize, dst: &mut [u8]) -> Result<(), ForestError>;
    /// Enqueue `kernel` over a 1-D grid of `blocks` × `threads` threads.
    fn launch(
        &mut self,
        kernel: Kernel,
        blocks: u32,
        threads: u32,
        args: &KernelArgs,
    ) -> Result<(), ForestError>;
    /// Wait for all queued work.
    fn synchronize(&mut self) -> Result<(), ForestError>;
}

// ------------------------------------------------------------------------------------------------
// The backend's host side

/// Staged or uploaded expansion input: `counts [B, KM]` u32, `values`/`priors [B, KM, A]` f32,
/// `flags [B, KM, A]` u32 (a host expansion uses the first B·K rows, rows of K slots).
#[derive(Clone, Copy)]
struct ExpBufs {
    counts: BufId,
    values: BufId,
    priors: BufId,
    flags: BufId,
}

/// Staged or uploaded backup input: `values [B, KM]` f32, `mask [B, KM]` u32 (a host backup
/// uses the first B·K entries, rows of K slots).
#[derive(Clone, Copy)]
struct BkBufs {
    values: BufId,
    mask: BufId,
}

/// Toy evaluator state: `state [B, N]` u32, `stats [B, 3]` u32 (depth sum, leaves, max depth per
/// tree since `toy_reset`; the depth sum wraps after 2^32, i.e. 4M leaves at depth 1024, far beyond
/// any benchmark run), `priors [A]` f32.
#[derive(Clone, Copy)]
struct ToyBufs {
    state: BufId,
    stats: BufId,
    priors: BufId,
    /// Children per toy expansion; 0 until `toy_reset`.
    branching: u32,
}

/// The CUDA backend's host side on any [`KernelDevice`]. Buffers that only some workloads need
/// (reroot scratch, host-input and staged arrays, toy state) are allocated on first use.
pub struct KernelForest<D: KernelDevice> {
    cfg: ForestConfig,
    dev: D,
    /// `[B, N]` Node.
    nodes: BufId,
    /// `[B]` u32.
    n_nodes: BufId,
    /// `[B]` u32.
    status: BufId,
    /// `[B, KM]` u32 (rows of KM = max_leaves slots, the first K used, as on the CPU backend).
    leaves: BufId,
    /// `[B, KM]` u32.
    path_len: BufId,
    /// `[B, KM, D+1]` u32.
    paths: BufId,
    /// `[B]` f32 reset input.
    root_values: BufId,
    /// `[B]` u32 reroot input.
    new_roots: BufId,
    /// `[B, N]` Node, first reroot.
    scratch: Option<BufId>,
    host_exp: Option<ExpBufs>,
    host_bk: Option<BkBufs>,
    staged_exp: Option<ExpBufs>,
    staged_bk: Option<BkBufs>,
    toy: Option<ToyBufs>,
    /// Phases accepted but not launched yet (toy evaluation, staged expansion, backup), with
    /// their arguments: they run in the same launch as the next `select` (`forest_step`), or on
    /// their own at the next read, sync or host-input phase.
    deferred: Option<KernelArgs>,
}

/// The CUDA backend.
pub type CudaForest = KernelForest<CudaDevice>;

impl CudaForest {
    /// Open the first CUDA device, compile (or load the cached) kernels and allocate the forest.
    pub fn new(cfg: &ForestConfig) -> Result<CudaForest, ForestError> {
        cfg.validate()?;
        available()?;
        KernelForest::with_device(cfg, CudaDevice::open(0)?)
    }
}

/// `count` elements of `elem` bytes, as a byte count (an error instead of an overflow).
fn bytes(count: usize, elem: usize) -> Result<usize, ForestError> {
    count.checked_mul(elem).ok_or_else(|| {
        ForestError::InvalidConfig("forest arrays are too large for this machine".into())
    })
}

impl<D: KernelDevice> KernelForest<D> {
    /// Allocate the forest on `dev`. Every tree starts as an all-zero arena with no nodes in use,
    /// as on the CPU backend; `reset` makes the roots.
    pub fn with_device(cfg: &ForestConfig, mut dev: D) -> Result<KernelForest<D>, ForestError> {
        cfg.validate()?;
        let (b, n, km) = (cfg.trees, cfg.capacity, cfg.max_leaves);
        let bk = bytes(b, km)?;
        let nodes = dev.alloc(bytes(bytes(b, n)?, Node::BYTES)?, 0)?;
        let n_nodes = dev.alloc(bytes(b, 4)?, 0)?;
        let status = dev.alloc(bytes(b, 4)?, 0)?;
        // Empty selection slots and unused path entries read NONE (all bits set), as on the CPU.
        let leaves = dev.alloc(bytes(bk, 4)?, 0xff)?;
        let path_len = dev.alloc(bytes(bk, 4)?, 0)?;
        let paths = dev.alloc(bytes(bytes(bk, cfg.path_stride())?, 4)?, 0xff)?;
        let root_values = dev.alloc(bytes(b, 4)?, 0)?;
        let new_roots = dev.alloc(bytes(b, 4)?, 0)?;
        Ok(KernelForest {
            cfg: cfg.clone(),
            dev,
            nodes,
            n_nodes,
            status,
            leaves,
            path_len,
            paths,
            root_values,
            new_roots,
            scratch: None,
            host_exp: None,
            host_bk: None,
            staged_exp: None,
            staged_bk: None,
            toy: None,
            deferred: None,
        })
    }

    /// The device this forest runs on.
    pub fn device(&self) -> &D {
        &self.dev
    }

    fn alloc_exp(&mut self) -> Result<ExpBufs, ForestError> {
        let bk = bytes(self.cfg.trees, self.cfg.max_leaves)?;
        let bka = bytes(bytes(bk, self.cfg.max_children)?, 4)?;
        Ok(ExpBufs {
            counts: self.dev.alloc(bytes(bk, 4)?, 0)?,
            values: self.dev.alloc(bka, 0)?,
            priors: self.dev.alloc(bka, 0)?,
            flags: self.dev.alloc(bka, 0)?,
        })
    }

    fn alloc_bk(&mut self) -> Result<BkBufs, ForestError> {
        let bk = bytes(self.cfg.trees, self.cfg.max_leaves)?;
        Ok(BkBufs {
            values: self.dev.alloc(bytes(bk, 4)?, 0)?,
            mask: self.dev.alloc(bytes(bk, 4)?, 0)?,
        })
    }

    /// The staged expansion, allocated zeroed on first use like the CPU backend's: a staged
    /// expansion before any toy evaluation marks the leaves expanded with no children.
    fn staged_exp(&mut self) -> Result<ExpBufs, ForestError> {
        let bufs = match self.staged_exp {
            Some(b) => b,
            None => self.alloc_exp()?,
        };
        Ok(*self.staged_exp.get_or_insert(bufs))
    }

    /// The staged backup (zeroed: adds no value until something is staged).
    fn staged_bk(&mut self) -> Result<BkBufs, ForestError> {
        let bufs = match self.staged_bk {
            Some(b) => b,
            None => self.alloc_bk()?,
        };
        Ok(*self.staged_bk.get_or_insert(bufs))
    }

    /// The shape, rule and always-present arrays; each phase adds its inputs.
    fn args(&self, k: usize) -> KernelArgs {
        let (rule, p0, p1) = self.cfg.rule.encode();
        let addr = |b: Option<BufId>| b.map_or(0, |b| self.dev.address(b));
        KernelArgs {
            nodes: self.dev.address(self.nodes),
            scratch: addr(self.scratch),
            n_nodes: self.dev.address(self.n_nodes),
            status: self.dev.address(self.status),
            leaves: self.dev.address(self.leaves),
            path_len: self.dev.address(self.path_len),
            paths: self.dev.address(self.paths),
            toy_state: addr(self.toy.map(|t| t.state)),
            toy_stats: addr(self.toy.map(|t| t.stats)),
            toy_priors: addr(self.toy.map(|t| t.priors)),
            trees: self.cfg.trees as u32,
            capacity: self.cfg.capacity as u32,
            max_children: self.cfg.max_children as u32,
            max_depth: self.cfg.max_depth as u32,
            k: k as u32,
            km: self.cfg.max_leaves as u32,
            exp_stride: self.cfg.max_leaves as u32,
            rule,
            rule_p0: p0,
            rule_p1: p1,
            virtual_loss: self.cfg.virtual_loss,
            branching: self.toy.map_or(0, |t| t.branching),
            ..KernelArgs::default()
        }
    }

    fn with_exp(&self, mut a: KernelArgs, e: ExpBufs, stride: usize) -> KernelArgs {
        a.exp_stride = stride as u32;
        a.exp_counts = self.dev.address(e.counts);
        a.exp_values = self.dev.address(e.values);
        a.exp_priors = self.dev.address(e.priors);
        a.exp_flags = self.dev.address(e.flags);
        a
    }

    fn with_bk(&self, mut a: KernelArgs, b: BkBufs) -> KernelArgs {
        a.bk_values = self.dev.address(b.values);
        a.bk_mask = self.dev.address(b.mask);
        a
    }

    /// One launch over all trees.
    fn launch(&mut self, kernel: Kernel, args: &KernelArgs) -> Result<(), ForestError> {
        let blocks = self.cfg.trees.div_ceil(BLOCK as usize) as u32;
        self.dev.launch(kernel, blocks, BLOCK, args)
    }

    /// Add a phase to the deferred launch: `set` fills in that phase's inputs.
    fn defer(&mut self, k: usize, bit: u32, set: impl FnOnce(&Self, KernelArgs) -> KernelArgs) {
        let base = self.deferred.unwrap_or_else(|| self.args(k));
        let mut a = set(self, base);
        a.phases |= bit;
        self.deferred = Some(a);
    }

    /// Launch the deferred phases now (alone).
    fn flush(&mut self) -> Result<(), ForestError> {
        match self.deferred.take() {
            Some(a) => self.launch(Kernel::Step, &a),
            None => Ok(()),
        }
    }

    fn upload<T: bytemuck::Pod>(&mut self, buf: BufId, data: &[T]) -> Result<(), ForestError> {
        if data.is_empty() {
            return Ok(());
        }
        self.dev.upload(buf, 0, bytemuck::cast_slice(data))
    }

    fn download<T: bytemuck::Pod>(
        &mut self,
        buf: BufId,
        len: usize,
    ) -> Result<Vec<T>, ForestError> {
        let mut v = vec![T::zeroed(); len];
        if len > 0 {
            self.dev
                .download(buf, 0, bytemuck::cast_slice_mut(&mut v))?;
        }
        Ok(v)
    }

    /// Wait, read the status words, clear those that are set, report the first failing tree.
    fn take_status(&mut self) -> Result<(), ForestError> {
        let st: Vec<u32> = self.download(self.status, self.cfg.trees)?;
        if st.iter().any(|&s| s != super::status::OK) {
            self.upload(self.status, &vec![super::status::OK; st.len()])?;
        }
        status_error(&st, self.cfg.capacity)
    }

    /// Refuse host arrays longer than the device buffers (the front end checks exact lengths;
    /// this keeps a direct caller from overrunning a buffer).
    fn check_input(&self, what: &str, got: usize, max: usize) -> Result<(), ForestError> {
        if got > max {
            return Err(ForestError::InvalidInput(format!(
                "{what} has {got} elements, at most {max} fit"
            )));
        }
        Ok(())
    }
}

impl<D: KernelDevice> ForestBackend for KernelForest<D> {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn description(&self) -> String {
        self.dev.description()
    }

    fn reset(&mut self, root_values: &[f32], root_visits: u32) -> Result<(), ForestError> {
        self.check_input("root_values", root_values.len(), self.cfg.trees)?;
        // Deferred work is moot: every tree restarts (as the CPU backend drops it too).
        self.deferred = None;
        self.upload(self.root_values, root_values)?;
        let mut a = self.args(0);
        a.root_values = self.dev.address(self.root_values);
        a.root_visits = root_visits;
        self.launch(Kernel::Reset, &a)
    }

    fn select(&mut self, k: usize) -> Result<(), ForestError> {
        self.check_input("K", k, self.cfg.max_leaves)?;
        match self.deferred.take() {
            // One launch for the whole step: the deferred phases, then this selection.
            Some(mut a) => {
                a.k_select = k as u32;
                a.phases |= phase::SELECT;
                self.launch(Kernel::Step, &a)
            }
            None => {
                let a = self.args(k);
                self.launch(Kernel::Select, &a)
            }
        }
    }

    fn selection(&mut self, k: usize) -> Result<Selection, ForestError> {
        self.check_input("K", k, self.cfg.max_leaves)?;
        self.flush()?;
        self.take_status()?;
        let (b, km, st) = (self.cfg.trees, self.cfg.max_leaves, self.cfg.path_stride());
        let leaves: Vec<u32> = self.download(self.leaves, b * km)?;
        let path_len: Vec<u32> = self.download(self.path_len, b * km)?;
        let paths: Vec<u32> = self.download(self.paths, b * km * st)?;
        Ok(Selection::from_rows(
            b, k, km, st, &leaves, &path_len, &paths,
        ))
    }

    fn expand(&mut self, input: Input<'_, Expansion>, k: usize) -> Result<(), ForestError> {
        self.check_input("K", k, self.cfg.max_leaves)?;
        match input {
            Input::Host(e) => {
                self.flush()?;
                let (bk, a) = (self.cfg.trees * self.cfg.max_leaves, self.cfg.max_children);
                self.check_input("expansion counts", e.counts.len(), bk)?;
                for (what, len) in [
                    ("expansion values", e.values.len()),
                    ("expansion priors", e.priors.len()),
                    ("expansion flags", e.flags.len()),
                ] {
                    self.check_input(what, len, bk * a)?;
                }
                let bufs = match self.host_exp {
                    Some(b) => b,
                    None => self.alloc_exp()?,
                };
                self.host_exp = Some(bufs);
                self.upload(bufs.counts, &e.counts)?;
                self.upload(bufs.values, &e.values)?;
                self.upload(bufs.priors, &e.priors)?;
                self.upload(bufs.flags, &e.flags)?;
                let args = self.with_exp(self.args(k), bufs, k);
                self.launch(Kernel::Expand, &args)?;
                // The caller is waiting on host data anyway: report this expansion's errors now.
                self.take_status()
            }
            Input::Staged => {
                let e = self.staged_exp()?;
                let km = self.cfg.max_leaves;
                self.defer(k, phase::EXPAND, |me, a| me.with_exp(a, e, km));
                Ok(())
            }
        }
    }

    fn backup(&mut self, input: Input<'_, Backup>, k: usize) -> Result<(), ForestError> {
        self.check_input("K", k, self.cfg.max_leaves)?;
        let staged = self.staged_bk()?;
        let mut host_in = None;
        if let Input::Host(bk) = input {
            let max = self.cfg.trees * self.cfg.max_leaves;
            self.check_input("backup values", bk.values.len(), max)?;
            self.check_input("backup mask", bk.mask.len(), max)?;
            let bufs = match self.host_bk {
                Some(b) => b,
                None => self.alloc_bk()?,
            };
            self.host_bk = Some(bufs);
            // The kernels read the mask as u32 (no byte loads, same shape as the values).
            let mask: Vec<u32> = bk.mask.iter().map(|&m| u32::from(m != 0)).collect();
            self.upload(bufs.values, &bk.values)?;
            self.upload(bufs.mask, &mask)?;
            host_in = Some(bufs);
        }
        // Deferred to the next launch (a backup cannot fail once the front end has checked it).
        self.defer(k, phase::BACKUP, |me, a| {
            let mut a = me.with_bk(a, staged);
            // The kernel copies host values into the staged arrays first, as the CPU backend
            // does, so a later staged backup sees the same arrays on both backends.
            if let Some(h) = host_in {
                a.bk_in_values = me.dev.address(h.values);
                a.bk_in_mask = me.dev.address(h.mask);
            }
            a
        });
        Ok(())
    }

    fn reroot(&mut self, new_roots: &[u32]) -> Result<(), ForestError> {
        self.check_input("new_roots", new_roots.len(), self.cfg.trees)?;
        self.flush()?;
        if self.scratch.is_none() {
            let n = bytes(bytes(self.cfg.trees, self.cfg.capacity)?, Node::BYTES)?;
            self.scratch = Some(self.dev.alloc(n, 0)?);
        }
        self.upload(self.new_roots, new_roots)?;
        let mut a = self.args(0);
        a.new_roots = self.dev.address(self.new_roots);
        self.launch(Kernel::Reroot, &a)?;
        self.take_status()
    }

    fn read_back(&mut self) -> Result<ForestSnapshot, ForestError> {
        self.flush()?;
        self.take_status()?;
        let (b, n) = (self.cfg.trees, self.cfg.capacity);
        Ok(ForestSnapshot {
            trees: b,
            capacity: n,
            n_nodes: self.download(self.n_nodes, b)?,
            nodes: self.download(self.nodes, b * n)?,
        })
    }

    fn sync(&mut self) -> Result<(), ForestError> {
        self.flush()?;
        self.dev.synchronize()?;
        self.take_status()
    }

    fn toy_reset(&mut self, toy: &ToyParams) -> Result<(), ForestError> {
        let a = self.cfg.max_children;
        if toy.branching == 0 || toy.branching > a || toy.priors.len() != toy.branching {
            return Err(ForestError::InvalidInput(format!(
                "toy branching {} with {} priors: need 1..={a} actions and one prior each",
                toy.branching,
                toy.priors.len()
            )));
        }
        self.flush()?;
        self.staged_exp()?;
        self.staged_bk()?;
        let t = match self.toy {
            Some(t) => t,
            None => {
                let (b, n) = (self.cfg.trees, self.cfg.capacity);
                ToyBufs {
                    state: self.dev.alloc(bytes(bytes(b, n)?, 4)?, 0)?,
                    stats: self.dev.alloc(bytes(b, 12)?, 0)?,
                    priors: self.dev.alloc(bytes(a, 4)?, 0)?,
                    branching: 0,
                }
            }
        };
        self.toy = Some(ToyBufs {
            branching: toy.branching as u32,
            ..t
        });
        self.upload(t.priors, &toy.priors)?;
        let args = self.args(0);
        self.launch(Kernel::ToyReset, &args)
    }

    fn toy_evaluate(&mut self, k: usize, record: bool) -> Result<(), ForestError> {
        self.check_input("K", k, self.cfg.max_leaves)?;
        if self.toy.is_none() {
            return Err(ForestError::PhaseOrder(
                "toy_evaluate before toy_reset".into(),
            ));
        }
        let (e, bk) = (self.staged_exp()?, self.staged_bk()?);
        let km = self.cfg.max_leaves;
        self.defer(k, phase::TOY_EVAL, |me, a| {
            let mut a = me.with_bk(me.with_exp(a, e, km), bk);
            a.record = u32::from(record);
            a
        });
        Ok(())
    }

    fn toy_stats(&mut self) -> Result<ToyStats, ForestError> {
        // Before any toy_reset there is nothing recorded (the CPU backend reports zeros too).
        let Some(t) = self.toy else {
            return Ok(ToyStats::default());
        };
        self.flush()?;
        let s: Vec<u32> = self.download(t.stats, self.cfg.trees * 3)?;
        Ok(s.chunks_exact(3)
            .fold(ToyStats::default(), |acc, t| ToyStats {
                depth_sum: acc.depth_sum + u64::from(t[0]),
                leaves: acc.leaves + u64::from(t[1]),
                max_depth: acc.max_depth.max(t[2]),
            }))
    }
}

// ------------------------------------------------------------------------------------------------
// NVRTC

/// NVRTC options besides `-arch`. `--fmad=false` keeps every product rounded on its own (the CPU
/// never fuses); the other three are NVRTC's defaults, stated so that the float semantics do
/// not depend on them.
pub const NVRTC_OPTIONS: [&str; 5] = [
    "--fmad=false",
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "-default-device",
];

/// Whether libnvrtc can be loaded.
pub fn nvrtc_available() -> Result<(), ForestError> {
    // SAFETY: only tries to dlopen the library.
    let present = guarded("looking for libnvrtc", || unsafe {
        cudarc::nvrtc::sys::is_culib_present()
    })?;
    if present {
        Ok(())
    } else {
        Err(unavailable(
            "libnvrtc not found (install the CUDA toolkit or PyPI's nvidia-cuda-nvrtc-cu12 and put \
             its lib directory on LD_LIBRARY_PATH)",
        ))
    }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32), ForestError> {
    nvrtc_available()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtcVersion writes two ints through valid pointers.
    let r = guarded("nvrtcVersion", || unsafe {
        cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    r.result()
        .map_err(|e| unavailable(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// The virtual architectures NVRTC can compile for, as numbers (`90` for `compute_90`).
pub fn nvrtc_supported_archs() -> Result<Vec<i32>, ForestError> {
    nvrtc_available()?;
    guarded("nvrtcGetSupportedArchs", || {
        let mut n = 0;
        // SAFETY: the count is written through a valid pointer, then exactly that many ints.
        unsafe { cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut n) }
            .result()
            .map_err(|e| unavailable(format!("nvrtcGetNumSupportedArchs: {e:?}")))?;
        let mut archs = vec![0; n.max(0) as usize];
        if !archs.is_empty() {
            unsafe { cudarc::nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
                .result()
                .map_err(|e| unavailable(format!("nvrtcGetSupportedArchs: {e:?}")))?;
        }
        Ok(archs)
    })?
}

fn check_arch(arch: &str) -> Result<(), ForestError> {
    let ok = ["compute_", "sm_"].iter().any(|p| {
        arch.strip_prefix(p).is_some_and(|rest| {
            let digits = rest.trim_end_matches(|c: char| c.is_ascii_lowercase());
            !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
        })
    });
    if ok {
        Ok(())
    } else {
        Err(ForestError::InvalidInput(format!(
            "GPU architecture {arch:?} must look like compute_90 or sm_90"
        )))
    }
}

/// Every NVRTC option used for `arch`.
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    let mut o = vec![format!("-arch={arch}")];
    o.extend(NVRTC_OPTIONS.iter().map(|s| s.to_string()));
    o
}

/// Compile `kernels/forest.cu` to PTX for `arch` (`compute_80`, `compute_90`, …). Needs libnvrtc
/// only: no driver and no GPU, so CI can check that every kernel compiles.
pub fn compile_ptx(arch: &str) -> Result<String, ForestError> {
    check_arch(arch)?;
    nvrtc_available()?;
    let opts = cudarc::nvrtc::CompileOptions {
        options: nvrtc_options(arch),
        name: Some("forest.cu".into()),
        ..Default::default()
    };
    let ptx = guarded("NVRTC", || {
        cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts)
    })?
    .map_err(|e| {
        let detail = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => format!("{other:?}"),
        };
        device_error(format!(
            "NVRTC could not compile kernels/forest.cu for {arch}: {detail}"
        ))
    })?;
    let raw = ptx
        .as_bytes()
        .ok_or_else(|| device_error("NVRTC returned no PTX image"))?;
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8(raw[..end].to_vec())
        .map_err(|_| device_error("NVRTC returned PTX that is not UTF-8"))
}

/// PTX text that names every kernel and can be handed to the driver.
pub fn ptx_is_complete(ptx: &str) -> bool {
    !ptx.contains('\0')
        && ptx.contains(".version")
        && ptx.contains(".target")
        && Kernel::ALL
            .iter()
            .all(|k| ptx.contains(&format!(".entry {}(", k.name())))
}

/// `$RSTAR_HOME/ptx`, or `~/.cache/rstar-gpu/ptx`.
pub fn default_ptx_cache_dir() -> Option<PathBuf> {
    let home = match std::env::var_os("RSTAR_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => dirs::home_dir()?.join(".cache").join("rstar-gpu"),
    };
    Some(home.join("ptx"))
}

/// PTX from the cache, or freshly compiled.
#[derive(Clone, Debug)]
pub struct CachedPtx {
    pub ptx: String,
    /// The cache file (written unless the directory is not writable).
    pub path: PathBuf,
    pub from_cache: bool,
}

fn cache_path(dir: &Path, arch: &str) -> Result<PathBuf, ForestError> {
    let (major, minor) = nvrtc_version()?;
    let mut h = Sha256::new();
    h.update(SOURCE.as_bytes());
    for o in nvrtc_options(arch) {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    let hex: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(dir.join(format!("forest-{arch}-nvrtc{major}.{minor}-{hex}.ptx")))
}

/// Write `text` to `path` atomically: a reader sees the old file, the whole new one, or none.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = path.with_extension(format!("ptx.{}.{nanos}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The PTX for `arch` from the cache in `dir` (keyed by source hash, options, architecture and
/// NVRTC version), compiling and caching it when it is missing or incomplete (a corrupt entry is
/// recompiled and replaced). A cache that cannot be written only costs a recompile next time.
pub fn cached_ptx_in(dir: &Path, arch: &str) -> Result<CachedPtx, ForestError> {
    check_arch(arch)?;
    let path = cache_path(dir, arch)?;
    if let Ok(ptx) = std::fs::read_to_string(&path) {
        if ptx_is_complete(&ptx) {
            return Ok(CachedPtx {
                ptx,
                path,
                from_cache: true,
            });
        }
        tracing::warn!(
            "PTX cache entry {} is incomplete; recompiling",
            path.display()
        );
    }
    let ptx = compile_ptx(arch)?;
    if !ptx_is_complete(&ptx) {
        return Err(device_error(format!(
            "NVRTC output for {arch} lacks a kernel entry point"
        )));
    }
    if let Err(e) = write_atomically(&path, &ptx) {
        tracing::warn!("cannot write PTX cache {}: {e}", path.display());
    }
    Ok(CachedPtx {
        ptx,
        path,
        from_cache: false,
    })
}

// ------------------------------------------------------------------------------------------------
// The CUDA driver

/// Whether the CUDA backend can start here: libcuda and libnvrtc load and a device exists.
/// The answer is computed once per process.
pub fn available() -> Result<(), ForestError> {
    static PROBE: OnceLock<Result<(), ForestError>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

fn driver_available() -> Result<(), ForestError> {
    // SAFETY: only tries to dlopen the library.
    let present = guarded("looking for libcuda", || unsafe {
        cudarc::driver::sys::is_culib_present()
    })?;
    if present {
        Ok(())
    } else {
        Err(unavailable(
            "no CUDA driver (libcuda not found): no NVIDIA GPU on this machine?",
        ))
    }
}

fn probe() -> Result<(), ForestError> {
    driver_available()?;
    nvrtc_available()?;
    let n = guarded("cuDeviceGetCount", CudaContext::device_count)?
        .map_err(|e| unavailable(format!("the CUDA driver reports no usable device: {e}")))?;
    if n < 1 {
        return Err(unavailable("the CUDA driver reports no device"));
    }
    Ok(())
}

/// One CUDA device: a context, its default stream, the loaded kernels and every buffer.
pub struct CudaDevice {
    // Buffers first: they are freed (stream-ordered) before the module and context go.
    bufs: Vec<CudaSlice<u8>>,
    functions: Vec<CudaFunction>,
    stream: Arc<CudaStream>,
    _ctx: Arc<CudaContext>,
    description: String,
}

fn driver(what: &str) -> impl Fn(cudarc::driver::DriverError) -> ForestError + '_ {
    move |e| device_error(format!("{what}: {e}"))
}

impl CudaDevice {
    /// Open device `ordinal`, and load the kernels compiled for the newest virtual architecture
    /// that both NVRTC and the device support (the driver JIT-compiles the PTX for the device).
    pub fn open(ordinal: usize) -> Result<CudaDevice, ForestError> {
        driver_available()?;
        nvrtc_available()?;
        guarded("opening the CUDA device", || Self::open_inner(ordinal))?
    }

    fn open_inner(ordinal: usize) -> Result<CudaDevice, ForestError> {
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot open CUDA device {ordinal}: {e}")))?;
        let stream = ctx.default_stream();
        let name = ctx.name().map_err(driver("cuDeviceGetName"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("compute capability"))?;
        let cc = major * 10 + minor;
        let arch_num = nvrtc_supported_archs()?
            .into_iter()
            .filter(|&a| a <= cc)
            .max()
            .ok_or_else(|| {
                unavailable(format!(
                    "NVRTC cannot compile for compute capability {major}.{minor}"
                ))
            })?;
        let arch = format!("compute_{arch_num}");
        let (nv_major, nv_minor) = nvrtc_version()?;

        let load = |ptx: &str| -> Result<Vec<CudaFunction>, ForestError> {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(driver("loading the forest kernels (cuModuleLoadData)"))?;
            Kernel::ALL
                .iter()
                .map(|k| {
                    module
                        .load_function(k.name())
                        .map_err(driver("cuModuleGetFunction"))
                })
                .collect()
        };
        let functions = match default_ptx_cache_dir() {
            Some(dir) => {
                let cached = cached_ptx_in(&dir, &arch)?;
                match load(&cached.ptx) {
                    Ok(f) => f,
                    // A cached entry the driver rejects is recompiled once and replaced.
                    Err(e) if cached.from_cache => {
                        tracing::warn!(
                            "cached PTX {} rejected ({e}); recompiling",
                            cached.path.display()
                        );
                        let ptx = compile_ptx(&arch)?;
                        let f = load(&ptx)?;
                        if let Err(e) = write_atomically(&cached.path, &ptx) {
                            tracing::warn!("cannot write PTX cache: {e}");
                        }
                        f
                    }
                    Err(e) => return Err(e),
                }
            }
            None => load(&compile_ptx(&arch)?)?,
        };
        Ok(CudaDevice {
            bufs: Vec::new(),
            functions,
            stream,
            _ctx: ctx,
            description: format!(
                "cuda: {name} (compute capability {major}.{minor}, NVRTC {nv_major}.{nv_minor}, PTX {arch})"
            ),
        })
    }

    fn buf(&self, buf: BufId) -> Result<&CudaSlice<u8>, ForestError> {
        self.bufs
            .get(buf)
            .ok_or_else(|| device_error(format!("unknown buffer {buf}")))
    }
}

fn range_error(buf: BufId, offset: usize, len: usize, size: usize) -> ForestError {
    device_error(format!(
        "copy of {len} bytes at offset {offset} does not fit buffer {buf} of {size} bytes"
    ))
}

impl KernelDevice for CudaDevice {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn alloc(&mut self, bytes: usize, fill: u8) -> Result<BufId, ForestError> {
        // Never a zero-sized allocation; cuMemAlloc's 256-byte alignment covers the 16 needed.
        let n = bytes.max(16);
        // SAFETY: the memory is set to `fill` by the memset enqueued right after, before any use
        // (same stream).
        let slice = unsafe { self.stream.alloc::<u8>(n) }
            .map_err(|e| device_error(format!("cannot allocate {n} bytes on the GPU: {e}")))?;
        let (ptr, record) = slice.device_ptr(&self.stream);
        // SAFETY: `ptr` is a live allocation of `n` bytes.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, fill, n, self.stream.cu_stream()) }
            .map_err(driver("cuMemsetD8Async"))?;
        drop(record);
        self.bufs.push(slice);
        Ok(self.bufs.len() - 1)
    }

    fn address(&self, buf: BufId) -> u64 {
        self.bufs
            .get(buf)
            .map_or(0, |s| s.device_ptr(&self.stream).0)
    }

    fn upload(&mut self, buf: BufId, offset: usize, src: &[u8]) -> Result<(), ForestError> {
        if src.is_empty() {
            return Ok(());
        }
        let stream = self.stream.clone();
        let slice = self
            .bufs
            .get_mut(buf)
            .ok_or_else(|| device_error(format!("unknown buffer {buf}")))?;
        let size = slice.len();
        // try_slice_mut refuses a range past the end.
        let mut view = offset
            .checked_add(src.len())
            .and_then(|end| slice.try_slice_mut(offset..end))
            .ok_or_else(|| range_error(buf, offset, src.len(), size))?;
        stream
            .memcpy_htod(src, &mut view)
            .map_err(driver("copy to the GPU"))
    }

    fn download(&mut self, buf: BufId, offset: usize, dst: &mut [u8]) -> Result<(), ForestError> {
        if dst.is_empty() {
            return Ok(());
        }
        let slice = self.buf(buf)?;
        let size = slice.len();
        let view = offset
            .checked_add(dst.len())
            .and_then(|end| slice.try_slice(offset..end))
            .ok_or_else(|| range_error(buf, offset, dst.len(), size))?;
        self.stream
            .memcpy_dtoh(&view, dst)
            .map_err(driver("copy from the GPU"))?;
        self.stream
            .synchronize()
            .map_err(driver("waiting for the GPU"))
    }

    fn launch(
        &mut self,
        kernel: Kernel,
        blocks: u32,
        threads: u32,
        args: &KernelArgs,
    ) -> Result<(), ForestError> {
        let f = self
            .functions
            .get(kernel as usize)
            .ok_or_else(|| device_error(format!("kernel {} not loaded", kernel.name())))?;
        let cfg = LaunchConfig {
            grid_dim: (blocks.max(1), 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(args);
        // SAFETY: every forest kernel takes exactly one `ForestArgs` by value, whose layout
        // `KernelArgs` matches (asserted on both sides); the addresses in it belong to live
        // buffers of this device, sized by `KernelForest` for the forest's shape.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| device_error(format!("launching {}: {e}", kernel.name())))
    }

    fn synchronize(&mut self) -> Result<(), ForestError> {
        self.stream
            .synchronize()
            .map_err(driver("waiting for the GPU"))?;
        // Errors recorded where cudarc could not return them (frees in Drop).
        self._ctx
            .check_err()
            .map_err(driver("an earlier asynchronous CUDA call"))
    }
}
