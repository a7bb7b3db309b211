//! Greedy solving, batched over problems: the baseline every search method must beat.
//!
//! - [`PromptStyle::Plain`]: one greedy generation per problem (no code), graded on its
//!   `\boxed{}` answer.
//! - [`PromptStyle::Code`]: rStar's code-augmented CoT with one candidate per step. Step by
//!   step for all unfinished problems at once: one batched policy call (stop strings of
//!   [`crate::step::STOP_STRINGS`]), parse, run each step's code in the sandboxed executor as a
//!   continuation of the problem's previous step (incremental state), attach the program's output
//!   after `<end_of_code>`, and continue until an answer step, a code error, a truncated step or
//!   the depth limit.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::prompt::{render, PromptStyle};
use crate::exec::{ExecPool, Keep, Snippet};
use crate::model::tokenizer::Tokenizer;
use crate::model::{ModelError, Policy, SamplingParams};
use crate::step::{parse_step, render_solution, Step, StopReason, STOP_STRINGS};

/// Limits of a greedy run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GreedyConfig {
    pub style: PromptStyle,
    /// Most steps per solution (code style).
    pub max_depth: usize,
    /// Most new tokens per step (code style).
    pub step_tokens: usize,
    /// Most new tokens of a plain solution.
    pub plain_tokens: usize,
}

impl Default for GreedyConfig {
    fn default() -> Self {
        GreedyConfig {
            style: PromptStyle::Code,
            max_depth: 16,
            step_tokens: 256,
            plain_tokens: 768,
        }
    }
}

/// How a greedy solution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// An answer step (`\boxed{}`) or, in plain style, the end of the generation.
    Answer,
    /// A step's code failed.
    CodeError,
    /// A step hit the token limit without a stop string.
    Truncated,
    /// The model ended its turn (end-of-sequence) before an answer step; the answer, if any,
    /// comes from the last program output.
    Eos,
    /// `max_depth` steps without an answer.
    MaxDepth,
}

/// One problem's greedy solution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Solved {
    /// The solution text (steps with their outputs, as the policy saw them).
    pub solution: String,
    /// The last program output shown to the policy (code style), for answer extraction.
    pub printed: Option<String>,
    pub end: End,
    /// Steps generated (1 for plain style).
    pub steps: usize,
    /// Policy tokens generated.
    pub tokens: usize,
    /// The failing step's error (code style).
    pub error: Option<String>,
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// Solves `questions` greedily; `exec` is required for [`PromptStyle::Code`].
pub fn solve(
    policy: &mut dyn Policy,
    tokenizer: Option<&Tokenizer>,
    exec: Option<&mut ExecPool>,
    questions: &[&str],
    cfg: &GreedyConfig,
) -> Result<Vec<Solved>, ModelError> {
    match cfg.style {
        PromptStyle::Plain => solve_plain(policy, tokenizer, questions, cfg),
        PromptStyle::Code => {
            let exec = exec.ok_or_else(|| {
                ModelError::Request("code-style solving needs the executor".into())
            })?;
            solve_code(policy, tokenizer, exec, questions, cfg)
        }
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

fn solve_plain(
    policy: &mut dyn Policy,
    tokenizer: Option<&Tokenizer>,
    questions: &[&str],
    cfg: &GreedyConfig,
) -> Result<Vec<Solved>, ModelError> {
    let prompts: Vec<String> = questions
        .iter()
        .map(|q| render(tokenizer, PromptStyle::Plain, q))
        .collect();
    let out = policy.generate(&prompts, 1, &greedy(cfg.plain_tokens), &[])?;
    Ok(out
        .into_iter()
        .map(|mut c| {
            let c = c.remove(0);
            let end = match c.finish {
                crate::model::FinishReason::Length => End::Truncated,
                _ => End::Answer,
            };
            Solved {
                solution: c.text,
                printed: None,
                end,
                steps: 1,
                tokens: c.tokens,
                error: None,
            }
        })
        .collect())
}

struct State {
    prompt: String,
    steps: Vec<Step>,
    /// Executor id of the last step that ran code (the state the next step continues from).
    last_exec: Option<String>,
    executed: Vec<String>,
    printed: Option<String>,
    tokens: usize,
    end: Option<End>,
    error: Option<String>,
}

fn solve_code(
    policy: &mut dyn Policy,
    tokenizer: Option<&Tokenizer>,
    exec: &mut ExecPool,
    questions: &[&str],
    cfg: &GreedyConfig,
) -> Result<Vec<Solved>, ModelError> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let stops: Vec<String> = STOP_STRINGS.iter().map(|s| s.to_string()).collect();
    let mut states: Vec<State> = questions
        .iter()
        .map(|q| State {
            prompt: render(tokenizer, PromptStyle::Code, q),
            steps: Vec::new(),
            last_exec: None,
            executed: Vec::new(),
            printed: None,
            tokens: 0,
            end: None,
            error: None,
        })
        .collect();
    for depth in 0..cfg.max_depth {
        let live: Vec<usize> = (0..states.len())
            .filter(|&i| states[i].end.is_none())
            .collect();
        if live.is_empty() {
            break;
        }
        let prompts: Vec<String> = live
            .iter()
            .map(|&i| {
                let s = &states[i];
                format!("{}{}", s.prompt, crate::step::render_prefix(&s.steps))
            })
            .collect();
        let out = policy.generate(&prompts, 1, &greedy(cfg.step_tokens), &stops)?;
        let mut snippets = Vec::new();
        let mut owners = Vec::new();
        for (k, &i) in live.iter().enumerate() {
            let c = &out[k][0];
            let stop = match &c.finish {
                crate::model::FinishReason::Stop(s) => Some(s.as_str()),
                _ => None,
            };
            let step = parse_step(&c.text, stop);
            let st = &mut states[i];
            st.tokens += c.tokens;
            let eos = c.finish == crate::model::FinishReason::Eos;
            if step.needs_execution() {
                let id = format!("greedy{run}-{i}-{depth}");
                snippets.push(Snippet {
                    id: id.clone(),
                    code: step.code.clone(),
                    parent: st.last_exec.clone(),
                    keep: Keep::UntilReleased,
                });
                owners.push((i, id));
            }
            if step.is_final() || step.stop == StopReason::EndOfAnswer {
                st.end = Some(End::Answer);
            } else if eos {
                st.end = Some(End::Eos);
            } else if step.stop == StopReason::Length {
                st.end = Some(End::Truncated);
            }
            // An empty final generation (the model just ended its turn) is not a step.
            if st.end.is_some() && step.raw.trim().is_empty() {
                continue;
            }
            st.steps.push(step);
        }
        let results = exec.run_batch(&snippets);
        for ((i, id), r) in owners.into_iter().zip(results) {
            let st = &mut states[i];
            st.executed.push(id.clone());
            if !r.ok {
                st.end = Some(End::CodeError);
                st.error = r.error.clone().or(Some("the code failed".into()));
                continue;
            }
            st.last_exec = Some(id);
            if let Some(step) = st.steps.last_mut() {
                if step.ends_code {
                    step.output = Some(r.stdout.clone());
                    st.printed = Some(r.stdout.clone());
                }
            }
        }
    }
    let mut solved = Vec::with_capacity(states.len());
    for st in states {
        exec.release(&st.executed);
        solved.push(Solved {
            solution: render_solution(&st.steps, None),
            printed: st.printed,
            end: st.end.unwrap_or(End::MaxDepth),
            steps: st.steps.len(),
            tokens: st.tokens,
            error: st.error,
        });
    }
    Ok(solved)
}
