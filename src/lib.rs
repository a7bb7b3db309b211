//! rstar-gpu: rStar-Math ("small LLMs can master math reasoning with self-evolved deep thinking")
//! as a GPU-native search engine.
//!
//! The foundation is [`forest`]: the search trees of thousands of problems stored together so that
//! selection, expansion and backup run for all of them in one batched operation, on the CPU
//! (rayon, the reference), on CUDA (kernels compiled at run time by NVRTC) or on any other GPU
//! through wgpu.
//!
//! One search step for every tree at once — the loop the LLM search driver runs:
//!
//! ```
//! use rstar_gpu::{Backup, BackendKind, Expansion, Forest, ForestConfig, Rule};
//!
//! let cfg = ForestConfig { trees: 2, capacity: 64, max_children: 3, max_leaves: 2, rule: Rule::RSTAR_UCT, ..ForestConfig::default() };
//! let mut forest = Forest::new(cfg, BackendKind::Cpu)?;
//! for _step in 0..4 {
//!     forest.select(2)?;                        // up to K = 2 leaves per tree, virtual loss between them
//!     let sel = forest.selection()?;            // leaves [B, K] and their paths, on the host
//!     let mut children = Expansion::zeros(2, 2, 3);
//!     for (slot, leaf) in sel.leaves.iter().enumerate() {
//!         if *leaf != rstar_gpu::NONE {
//!             children.counts[slot] = 3;        // e.g. three candidate steps from the policy
//!         }
//!     }
//!     forest.expand(&children)?;                // fresh children start at their initial value
//!     let values = Backup { values: vec![0.5; 4], mask: vec![1; 4] };
//!     forest.backup(&values)?;                  // add the value along each path, drop virtual loss
//! }
//! let snap = forest.read_back()?;
//! assert_eq!(snap.node(0, 0).visits, 7);        // 1 + 2 + 2 + 2 backed-up paths through root 0
//! # Ok::<(), rstar_gpu::ForestError>(())
//! ```

pub mod forest;

pub use forest::{
    BackendKind, Backup, Expansion, Forest, ForestBackend, ForestConfig, ForestError,
    ForestSnapshot, Input, Node, NodeId, Rule, Selection, NONE,
};
