//! Self-evolution's data step: turning finished MCTS search trees ([`crate::search::SearchTree`])
//! into training data for the next round's models.
//!
//! - [`pairs`]: step-level preference pairs for the process preference model (PPM), with
//!   rStar-Math's selection rules (top-Q correct vs bottom-Q wrong siblings, final-answer pairs).
//! - [`sft`]: the policy's SFT trajectories (the best correct root→answer paths per problem).
//! - [`export`]: JSONL files in the formats TRL and LLaMA-Factory read, written atomically.
//! - [`loss`]: the Bradley–Terry pairwise loss of the PPM.
//! - [`ppm`]: training the PPM's value head on the pairs (frozen backbone, AdamW).
//! - [`model`]: the differentiable transformer training runs on (all / top-K / LoRA weights).
//! - [`policy`]: policy SFT with the next-token loss on the selected trajectories.
//!
//! The data step is pure over the trees (no model, no GPU), deterministic, and never panics on
//! odd values (non-finite Q values are skipped).

pub mod export;
pub mod loss;
pub mod model;
pub mod pairs;
pub mod policy;
pub mod ppm;
pub mod sft;

use std::path::PathBuf;

/// Why training data could not be written or read. Every variant names the file, and the 1-based
/// line where there is one, so a bad line in a large JSONL file can be found.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Opening, writing, syncing or renaming a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line could not be read (an I/O error or invalid UTF-8 mid-file).
    #[error("{}:{line}: cannot read the line: {source}", .path.display())]
    Read {
        path: PathBuf,
        line: usize,
        source: std::io::Error,
    },
    /// A line is not the JSON record expected (or a record could not be serialised).
    #[error("{}:{line}: {source}", .path.display())]
    Json {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    /// The training data or settings cannot be used (empty, ragged, non-finite, out of range).
    #[error("{0}")]
    Data(String),
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
}
