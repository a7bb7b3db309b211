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
//! use rstar_gpu::forest::{flags, ChildInit};
//! use rstar_gpu::{Backup, BackendKind, Expansion, Forest, ForestConfig, Rule, NONE};
//!
//! let cfg = ForestConfig { trees: 2, capacity: 64, max_children: 3, max_leaves: 2, rule: Rule::RSTAR_UCT, ..ForestConfig::default() };
//! let mut forest = Forest::new(cfg, BackendKind::Cpu)?;
//! for _step in 0..4 {
//!     forest.select(2)?;                        // up to K = 2 leaves per tree, virtual loss between them
//!     let sel = forest.selection()?;            // leaves [B, K] and their paths, on the host
//!     let mut children = Expansion::zeros(2, 2, 3);
//!     let mut values = Backup::none(4);
//!     for (i, &leaf) in sel.leaves.iter().enumerate() {
//!         if leaf != NONE {
//!             // e.g. three candidate steps from the policy, scored by the PPM (one counted visit)
//!             let step = ChildInit { value: 0.1, prior: 0.0, flags: flags::COUNT_INIT };
//!             children.set(i, &[step; 3])?;
//!             values.set(i, 0.5);               // e.g. an answer's reward, backed up the path
//!         }
//!     }
//!     forest.expand(&children)?;
//!     forest.backup(&values)?;                  // add the value along each path, drop virtual loss
//! }
//! let snap = forest.read_back()?;
//! assert_eq!(snap.node(0, 0).visits, 7);        // 1 + 2 + 2 + 2 backed-up paths through root 0
//! # Ok::<(), rstar_gpu::ForestError>(())
//! ```

pub mod assets;
pub mod data;
pub mod evolve;
pub mod exec;
pub mod forest;
pub mod grade;
pub mod model;
pub mod report;
pub mod rng;
pub mod search;
pub mod step;
pub mod train;

pub use forest::{
    BackendKind, Backup, ChildInit, Expansion, Forest, ForestBackend, ForestConfig, ForestError,
    ForestSnapshot, Input, Node, NodeId, Rule, Selection, NONE,
};
