//! rstar-gpu: rStar-Math ("small LLMs can master math reasoning with self-evolved deep thinking")
//! as a GPU-native search engine.
//!
//! The foundation is [`forest`]: the search trees of thousands of problems stored together so that
//! selection, expansion and backup run for all of them in one batched operation, on the CPU
//! (rayon, the reference), on CUDA (kernels compiled at run time by NVRTC) or on any other GPU
//! through wgpu.

pub mod forest;

pub use forest::{
    BackendKind, Backup, Expansion, Forest, ForestBackend, ForestConfig, ForestError,
    ForestSnapshot, Input, Node, NodeId, Rule, Selection, NONE,
};
