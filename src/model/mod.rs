//! Language models: the policy that writes steps and the process preference model (PPM) that
//! scores partial solutions.
//!
//! - [`Policy`] is the one trait the search calls: many prompts × `n` samples in one batched call.
//! - Backends: candle over GGUF (quantized) or safetensors (float) weights, in one batched
//!   transformer ([`transformer`]) for the `llama` and `qwen2` architectures; and an
//!   OpenAI-compatible HTTP client ([`openai`]) for vLLM / SGLang / llama.cpp servers.
//! - [`tokenizer`] builds a `tokenizers` BPE tokenizer from GGUF metadata (or loads a
//!   `tokenizer.json`), renders chat templates and detokenises incrementally.

pub mod generate;
pub mod openai;
pub mod ppm;
pub mod prefix_cache;
pub mod qmatmul;
pub mod tokenizer;
pub mod transformer;

use serde::{Deserialize, Serialize};

/// Errors from loading or running a model. One line each, naming the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model or tokenizer file could not be read or is not what it claims to be.
    #[error("model file {path}: {msg}")]
    File { path: String, msg: String },
    /// A model architecture or feature this crate does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A bad argument from the caller (shapes, empty batches, out-of-range sampling values).
    #[error("invalid request: {0}")]
    Request(String),
    /// An HTTP backend failed (connection refused, non-2xx status, malformed reply).
    #[error("server {url}: {msg}")]
    Http { url: String, msg: String },
    /// An error inside candle while running a forward pass.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// How to pick the next token. `temperature == 0` is greedy (arg-max), whatever the other fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`
    /// (1.0 = off).
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (None = off).
    pub top_k: Option<usize>,
    /// Most new tokens per sequence.
    pub max_tokens: usize,
    /// Seed of the sampler; sample `j` of a prompt uses a seed derived from (seed, the prompt's
    /// text, j), so results depend neither on how the batch is split nor on a prompt's place
    /// in it.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: None,
            max_tokens: 256,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks the values every backend relies on (and `n`, the samples per prompt).
    pub fn validate(&self, n: usize) -> Result<(), ModelError> {
        if n == 0 {
            return Err(ModelError::Request("n must be at least 1".into()));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(ModelError::Request(format!(
                "temperature {} must be a finite number ≥ 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::Request(format!(
                "top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        if self.top_k == Some(0) {
            return Err(ModelError::Request("top_k must be at least 1".into()));
        }
        Ok(())
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// One of the stop strings appeared; `text` ends just before it.
    Stop(String),
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_tokens` new tokens were generated.
    Length,
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated text, cut just before the stop string (the stop string is in `finish`).
    pub text: String,
    /// New tokens generated for this continuation (including the tokens of a matched stop string).
    pub tokens: usize,
    pub finish: FinishReason,
}

/// A text generator the search can call: prompts × `n` samples per prompt, in one batched call.
pub trait Policy: Send {
    /// Generate `n` continuations of each prompt. Returns `[prompts.len()][n]` completions.
    /// The prompts are raw text (already rendered through a chat template where one is wanted).
    fn generate(
        &mut self,
        prompts: &[String],
        n: usize,
        sampling: &SamplingParams,
        stop: &[String],
    ) -> Result<Vec<Vec<Completion>>, ModelError>;

    /// A short name for logs and reports (a file stem or the server's model name).
    fn name(&self) -> String;
}
