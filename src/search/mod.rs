//! The LLM-level search over solutions: prompts, the batched MCTS driver and the baselines that
//! answer problems with the policy, the executor and the PPM.
//!
//! - [`mcts`]: rStar-Math's search over a batch of problems on the [`crate::forest`] (any backend),
//!   writing [`tree::SearchTree`]s.
//! - [`greedy`]: one candidate per step, the baseline.
//! - [`sample`]: N independent solutions per problem, for self-consistency and Best-of-N.
//! - [`vote`]: picking one answer from many (best, weighted top-K vote, majority).
//! - [`config`]: the search settings, TOML-loadable.

pub mod config;
pub mod greedy;
pub mod mcts;
pub mod prompt;
pub mod sample;
pub mod tree;
pub mod vote;

pub use config::{AnswerRule, Mode, SearchConfig};
pub use greedy::{GreedyConfig, Solved};
pub use mcts::{search, Engines, Scorer, SearchProblem, SearchStats};
pub use prompt::PromptStyle;
pub use tree::{read_trees, SearchTree, Terminal, TreeNode};

use crate::forest::ForestError;
use crate::model::ModelError;

/// Why a search could not run or finish. Problems already finished by the caller are not lost:
/// the driver returns per batch.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search configuration: {0}")]
    Config(String),
    #[error(
        "problem {0} has no reference answer, which the terminal-guided and PPM-augmented modes \
         need; use --mode test"
    )]
    NoReference(String),
    #[error("policy: {0}")]
    Model(#[from] ModelError),
    #[error("forest: {0}")]
    Forest(#[from] ForestError),
    #[error("PPM: {0}")]
    Score(String),
}
