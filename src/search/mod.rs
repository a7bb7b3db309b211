//! The LLM-level search over solutions: prompts, and the methods that answer problems with the
//! policy, the executor and (later) the PPM. This part is [`greedy`], the baseline.

pub mod greedy;
pub mod prompt;

pub use greedy::{GreedyConfig, Solved};
pub use prompt::PromptStyle;
