//! The one trait every forest backend implements, and backend selection.
//!
//! Callers use [`super::Forest`], which validates inputs and phase order; a backend trusts what
//! it is given except for what only it can see (node flags, arena fill), which it reports through
//! per-tree status words ([`super::status`]). Device backends keep all tree state on the device
//! between calls; `select`, `expand`, `backup` and the toy evaluator each enqueue one launch for
//! the whole batch and return without waiting, except where a host input must be uploaded or a
//! host result read.

use super::{Backup, Expansion, ForestConfig, ForestError, ForestSnapshot, Selection};
use serde::{Deserialize, Serialize};

/// Where a phase's input comes from.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a, T> {
    /// Host arrays (the LLM search path): uploaded, then applied.
    Host(&'a T),
    /// Already on the backend, written by the built-in toy evaluator (no host round trip).
    Staged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// rayon over trees; the reference the others must match.
    Cpu,
    /// CUDA kernels compiled at run time by NVRTC (kernels/forest.cu).
    Cuda,
    /// wgpu compute shaders (shaders/forest.wgsl): Vulkan, Metal, DX12 or GL.
    Wgpu,
}

impl BackendKind {
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parameters of the toy workload of `reference/toy_forest.c`.
#[derive(Clone, Debug, PartialEq)]
pub struct ToyParams {
    /// Actions per node (children per expansion), ≤ max_children.
    pub branching: usize,
    /// `[branching]` softmax(-1.5·a), identical at every node.
    pub priors: Vec<f32>,
}

/// Depth statistics the toy evaluator accumulates per tree (summed on read-back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToyStats {
    pub depth_sum: u64,
    pub leaves: u64,
    pub max_depth: u32,
}

pub trait ForestBackend: Send {
    fn kind(&self) -> BackendKind;
    /// Human-readable device description (adapter, GPU name, thread count).
    fn description(&self) -> String;
    /// Every tree becomes a lone root: `root_values: [B]`, `root_visits` ∈ {0, 1}.
    fn reset(&mut self, root_values: &[f32], root_visits: u32) -> Result<(), ForestError>;
    /// Select up to `k` leaves per tree; results stay on the backend.
    fn select(&mut self, k: usize) -> Result<(), ForestError>;
    /// Read the last selection back.
    fn selection(&mut self, k: usize) -> Result<Selection, ForestError>;
    /// Attach children to the last selection's leaves (`k` = that selection's K).
    fn expand(&mut self, input: Input<'_, Expansion>, k: usize) -> Result<(), ForestError>;
    /// Back up along the last selection's paths and remove its virtual loss.
    fn backup(&mut self, input: Input<'_, Backup>, k: usize) -> Result<(), ForestError>;
    /// `new_roots: [B]`; NONE or 0 keeps a tree.
    fn reroot(&mut self, new_roots: &[u32]) -> Result<(), ForestError>;
    fn read_back(&mut self) -> Result<ForestSnapshot, ForestError>;
    /// Wait for queued work; report and clear sticky per-tree errors.
    fn sync(&mut self) -> Result<(), ForestError>;

    /// Toy evaluator: set every root's state to its tree index and zero the depth statistics.
    fn toy_reset(&mut self, toy: &ToyParams) -> Result<(), ForestError>;
    /// Toy evaluator over the last selection: computes each leaf's state and value and stages an
    /// expansion (`branching` children with the toy priors, unless the leaf is expanded) and a
    /// backup of the leaf's value, on the backend. `record` adds the leaves' depths to the stats.
    fn toy_evaluate(&mut self, k: usize, record: bool) -> Result<(), ForestError>;
    fn toy_stats(&mut self) -> Result<ToyStats, ForestError>;
}

/// Build a backend of the given kind.
pub fn create(
    kind: BackendKind,
    config: &ForestConfig,
) -> Result<Box<dyn ForestBackend>, ForestError> {
    Ok(match kind {
        BackendKind::Cpu => Box::new(super::cpu::CpuForest::new(config)?),
        BackendKind::Cuda => Box::new(super::cuda::CudaForest::new(config)?),
        BackendKind::Wgpu => Box::new(super::wgpu::WgpuForest::new(config)?),
    })
}

/// The best backend that can start here: CUDA, then wgpu on a hardware adapter, then the CPU.
pub fn best_available() -> BackendKind {
    if super::cuda::available().is_ok() {
        BackendKind::Cuda
    } else if super::wgpu::hardware_adapter_available() {
        BackendKind::Wgpu
    } else {
        BackendKind::Cpu
    }
}
