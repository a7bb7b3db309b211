//! N independent solutions per problem, the raw material of self-consistency (majority vote) and
//! Best-of-N (the PPM picks).
//!
//! With the code prompt a solution is made as rStar's greedy evaluation config makes it
//! (`sft_eval_greedy.yaml`: stop at `<end_of_code>` / `<end_of_answer>`): one sampled generation
//! writes the whole code block, the sandboxed executor runs its program, the output is appended as
//! `<output>…<end_of_output>`, and one more generation writes the `<answer>`. A solution whose code
//! fails has no answer (rStar drops it). With the plain prompt a solution is one generation.

use serde::{Deserialize, Serialize};

use super::prompt::{render, PromptStyle};
use crate::exec::{ExecPool, Snippet};
use crate::grade::extract_answer;
use crate::model::tokenizer::Tokenizer;
use crate::model::{FinishReason, ModelError, Policy, SamplingParams};
use crate::step::{parse_solution, program_of, END_OF_ANSWER, END_OF_CODE, END_OF_OUTPUT, OUTPUT};

/// How samples are drawn.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleConfig {
    pub style: PromptStyle,
    /// Solutions per problem.
    pub n: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Most tokens of the code block (code prompt) or of the whole solution (plain prompt).
    pub solution_tokens: usize,
    /// Most tokens of the answer after the output (code prompt).
    pub answer_tokens: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            style: PromptStyle::Code,
            n: 8,
            temperature: 0.7,
            top_p: 1.0,
            seed: 0,
            solution_tokens: 768,
            answer_tokens: 128,
        }
    }
}

/// One sampled solution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub solution: String,
    /// The program's output (code prompt).
    pub printed: Option<String>,
    /// The extracted final answer.
    pub answer: Option<String>,
    /// Policy tokens generated for this solution.
    pub tokens: usize,
    /// The program's error, when it failed.
    pub error: Option<String>,
}

static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `cfg.n` solutions for each question; `exec` is required for the code prompt.
pub fn sample(
    policy: &mut dyn Policy,
    tokenizer: Option<&Tokenizer>,
    exec: Option<&mut ExecPool>,
    questions: &[&str],
    cfg: &SampleConfig,
) -> Result<Vec<Vec<Sample>>, ModelError> {
    if cfg.n == 0 {
        return Err(ModelError::Request(
            "samples per problem must be at least 1".into(),
        ));
    }
    let prompts: Vec<String> = questions
        .iter()
        .map(|q| render(tokenizer, cfg.style, q))
        .collect();
    let params = |max_tokens| SamplingParams {
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        top_k: None,
        max_tokens,
        seed: cfg.seed,
    };
    if cfg.style == PromptStyle::Plain {
        let out = policy.generate(&prompts, cfg.n, &params(cfg.solution_tokens), &[])?;
        return Ok(out
            .into_iter()
            .map(|cands| {
                cands
                    .into_iter()
                    .map(|c| Sample {
                        answer: extract_answer(&c.text, None).map(|e| e.answer),
                        solution: c.text,
                        printed: None,
                        tokens: c.tokens,
                        error: None,
                    })
                    .collect()
            })
            .collect());
    }
    let exec =
        exec.ok_or_else(|| ModelError::Request("code-style sampling needs the executor".into()))?;
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stops = [END_OF_CODE.to_string(), END_OF_ANSWER.to_string()];
    let out = policy.generate(&prompts, cfg.n, &params(cfg.solution_tokens), &stops)?;
    let mut samples: Vec<Vec<Sample>> = Vec::with_capacity(out.len());
    // (problem, sample) of each program to run.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut snippets = Vec::new();
    for (p, cands) in out.into_iter().enumerate() {
        let mut row = Vec::with_capacity(cands.len());
        for (j, c) in cands.into_iter().enumerate() {
            let mut text = c.text;
            if let FinishReason::Stop(s) = &c.finish {
                if !text.ends_with(s.as_str()) {
                    text.push_str(s);
                }
            }
            let code_done = matches!(&c.finish, FinishReason::Stop(s) if s == END_OF_CODE);
            if code_done {
                let program = program_of(&parse_solution(&text));
                snippets.push(Snippet::new(format!("s{run}-{p}-{j}"), program, None));
                runs.push((p, j));
            }
            let answer = if code_done {
                None
            } else {
                // Stopped at the answer (or ran out): take a boxed answer if there is one.
                crate::grade::last_boxed(&text)
            };
            row.push(Sample {
                solution: text,
                printed: None,
                answer,
                tokens: c.tokens,
                error: None,
            });
        }
        samples.push(row);
    }
    let results = exec.run_batch(&snippets);
    let mut follow: Vec<(usize, usize)> = Vec::new();
    let mut follow_prompts: Vec<String> = Vec::new();
    for ((p, j), r) in runs.into_iter().zip(results) {
        let s = &mut samples[p][j];
        if !r.ok {
            s.error = Some(r.error.unwrap_or_else(|| "the program failed".into()));
            continue;
        }
        s.solution
            .push_str(&format!("\n{OUTPUT}{}{END_OF_OUTPUT}", r.stdout));
        s.printed = Some(r.stdout);
        follow_prompts.push(format!("{}{}", prompts[p], s.solution));
        follow.push((p, j));
    }
    if !follow.is_empty() {
        let stops = [END_OF_ANSWER.to_string()];
        let out = policy.generate(&follow_prompts, 1, &params(cfg.answer_tokens), &stops)?;
        for ((p, j), mut c) in follow.into_iter().zip(out) {
            let c = c.remove(0);
            let s = &mut samples[p][j];
            s.solution.push_str(&c.text);
            if let FinishReason::Stop(stop) = &c.finish {
                if !s.solution.ends_with(stop.as_str()) {
                    s.solution.push_str(stop);
                }
            }
            s.tokens += c.tokens;
            s.answer = extract_answer(&s.solution, s.printed.as_deref()).map(|e| e.answer);
        }
    }
    Ok(samples)
}
