//! `rstar-gpu eval`: run a method over a data set, grade every answer, write per-problem JSONL,
//! a summary JSON and a markdown report; resumable.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rstar_gpu::data::Problem;
use rstar_gpu::exec::{ExecConfig, ExecPool};
use rstar_gpu::grade::Grader;
use rstar_gpu::model::generate::LocalPolicy;
use rstar_gpu::model::openai::OpenAiPolicy;
use rstar_gpu::model::tokenizer::Tokenizer;
use rstar_gpu::model::transformer::WeightMode;
use rstar_gpu::model::Policy;
use rstar_gpu::search::greedy::{self, GreedyConfig};
use rstar_gpu::search::PromptStyle;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Data set: gsm8k, math, math500, or a path to a JSONL file.
    #[arg(long, default_value = "gsm8k")]
    data: String,
    /// Split of a named data set (train or test).
    #[arg(long, default_value = "test")]
    split: String,
    /// Evaluate only the first N problems.
    #[arg(long)]
    limit: Option<usize>,
    /// Method. This build has `greedy` (one candidate per step); search methods come with the
    /// MCTS driver.
    #[arg(long, default_value = "greedy", value_parser = ["greedy"])]
    method: String,
    /// Prompt: `code` (rStar's code-augmented steps, executed in the sandbox) or `plain`
    /// (step-by-step text, final answer in \boxed{}).
    #[arg(long, value_enum, default_value_t = PromptStyle::Code)]
    prompt: PromptStyle,
    /// Policy: an asset name, a .gguf file, a Hugging Face directory, or an OpenAI-compatible
    /// server URL (http://host:port/v1[#model]).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Weights in memory for local models: as stored (`quantized`) or f32 (`dense`).
    #[arg(long, default_value = "quantized", value_parser = ["quantized", "dense"])]
    weights: String,
    /// Problems solved together (one batched policy call per step for all of them).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Most steps per solution (code prompt).
    #[arg(long, default_value_t = 16)]
    max_depth: usize,
    /// Most new tokens per step (code prompt) or per solution (plain prompt).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Output directory: results.jsonl (one line per problem, appended as batches finish),
    /// summary.json and report.md. An existing results.jsonl is resumed: finished problems are
    /// not redone.
    #[arg(long, default_value = "runs/eval")]
    out: PathBuf,
    /// Print exactly one JSON object (the summary) on stdout.
    #[arg(long)]
    json: bool,
}

/// One line of results.jsonl.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    id: String,
    question: String,
    reference: Option<String>,
    answer: Option<String>,
    correct: bool,
    end: greedy::End,
    steps: usize,
    tokens: usize,
    solution: String,
    error: Option<String>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    let mut problems =
        rstar_gpu::data::load(&a.data, &a.split).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(n) = a.limit {
        problems.truncate(n);
    }
    anyhow::ensure!(!problems.is_empty(), "no problems to evaluate");
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let results_path = a.out.join("results.jsonl");
    let mut records = read_done(&results_path)?;
    let done: std::collections::HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
    let todo: Vec<&Problem> = problems.iter().filter(|p| !done.contains(&p.id)).collect();
    if !done.is_empty() {
        tracing::info!(
            done = done.len(),
            left = todo.len(),
            "resuming {}",
            results_path.display()
        );
    }

    let (mut policy, tokenizer) = load_policy(&a.model, &a.weights)?;
    let mut exec = match a.prompt {
        PromptStyle::Code => {
            Some(ExecPool::new(ExecConfig::default()).context("starting the Python executor")?)
        }
        PromptStyle::Plain => None,
    };
    let mut cfg = GreedyConfig {
        style: a.prompt,
        max_depth: a.max_depth,
        ..GreedyConfig::default()
    };
    if let Some(t) = a.max_tokens {
        cfg.step_tokens = t;
        cfg.plain_tokens = t;
    }
    let grader = Grader::with_sympy();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)
        .with_context(|| format!("opening {}", results_path.display()))?;
    let bar = indicatif::ProgressBar::new(problems.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} problems  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(done.len() as u64);
    let t0 = Instant::now();
    let mut new_tokens = 0usize;
    for chunk in todo.chunks(a.batch) {
        let questions: Vec<&str> = chunk.iter().map(|p| p.question.as_str()).collect();
        let solved = greedy::solve(
            policy.as_mut(),
            tokenizer.as_ref(),
            exec.as_mut(),
            &questions,
            &cfg,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (p, s) in chunk.iter().zip(solved) {
            let (answer, correct) = match &p.reference_answer() {
                Some(reference) => {
                    let g = grader.grade(&s.solution, s.printed.as_deref(), reference);
                    (g.extracted.as_ref().map(|e| e.answer.clone()), g.correct())
                }
                None => {
                    let e = rstar_gpu::grade::extract::extract_answer(
                        &s.solution,
                        s.printed.as_deref(),
                    );
                    (e.map(|e| e.answer), false)
                }
            };
            new_tokens += s.tokens;
            let rec = Record {
                id: p.id.clone(),
                question: p.question.clone(),
                reference: p.answer.clone(),
                answer,
                correct,
                end: s.end,
                steps: s.steps,
                tokens: s.tokens,
                solution: s.solution,
                error: s.error,
            };
            // One whole line per write: a killed run leaves complete lines only (a torn last
            // line is dropped on resume).
            let mut line = serde_json::to_string(&rec)?;
            line.push('\n');
            file.write_all(line.as_bytes())?;
            records.push(rec);
        }
        file.flush()?;
        let correct = records.iter().filter(|r| r.correct).count();
        bar.set_position(records.len() as u64);
        bar.set_message(format!(
            "accuracy {:.1}%  {:.1} tok/s",
            100.0 * correct as f64 / records.len().max(1) as f64,
            new_tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9)
        ));
    }
    bar.finish_and_clear();
    let wall_s = t0.elapsed().as_secs_f64();
    let n = records.len();
    let correct = records.iter().filter(|r| r.correct).count();
    let ends = |e: greedy::End| records.iter().filter(|r| r.end == e).count();
    let summary = serde_json::json!({
        "data": a.data,
        "split": a.split,
        "n_problems": n,
        "method": a.method,
        "prompt": a.prompt,
        "model": a.model,
        "accuracy": correct as f64 / n.max(1) as f64,
        "correct": correct,
        "policy_tokens": records.iter().map(|r| r.tokens).sum::<usize>(),
        "wall_s": (wall_s * 10.0).round() / 10.0,
        "new_tokens_this_run": new_tokens,
        "ends": {
            "answer": ends(greedy::End::Answer),
            "code_error": ends(greedy::End::CodeError),
            "truncated": ends(greedy::End::Truncated),
            "eos": ends(greedy::End::Eos),
            "max_depth": ends(greedy::End::MaxDepth),
        },
    });
    write_atomic(
        &a.out.join("summary.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    let report = format!(
        "# Evaluation\n\n| data | split | problems | method | prompt | model | accuracy | policy tokens | wall s |\n|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {:?} | {} | {:.1}% ({}/{}) | {} | {:.0} |\n\nEnds: {} answers, {} code errors, {} truncated, {} ended without an answer step, {} at max depth.\n",
        a.data, a.split, n, a.method, a.prompt, a.model,
        100.0 * correct as f64 / n.max(1) as f64, correct, n,
        summary["policy_tokens"], wall_s,
        ends(greedy::End::Answer), ends(greedy::End::CodeError), ends(greedy::End::Truncated), ends(greedy::End::Eos), ends(greedy::End::MaxDepth),
    );
    write_atomic(&a.out.join("report.md"), &report)?;
    if a.json {
        println!("{summary}");
    } else {
        print!("{report}");
        println!("(per-problem results: {})", results_path.display());
    }
    Ok(())
}

trait ReferenceAnswer {
    fn reference_answer(&self) -> Option<String>;
}

impl ReferenceAnswer for Problem {
    fn reference_answer(&self) -> Option<String> {
        self.answer.clone().filter(|a| !a.trim().is_empty())
    }
}

/// Loads a policy from a spec; local models also return their tokenizer (for chat templates).
pub fn load_policy(spec: &str, weights: &str) -> Result<(Box<dyn Policy>, Option<Tokenizer>)> {
    if spec.starts_with("http://") || spec.starts_with("https://") {
        let mut p = OpenAiPolicy::from_url(spec).map_err(|e| anyhow::anyhow!("{e}"))?;
        if p.model().is_none() {
            p.resolve_model().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        return Ok((Box::new(p), None));
    }
    let path = rstar_gpu::assets::model_path(spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mode = if weights == "dense" {
        WeightMode::Dequantized
    } else {
        WeightMode::Quantized
    };
    let t = Instant::now();
    let p = LocalPolicy::load(&path, mode, &candle_core::Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(model = %path.display(), secs = t.elapsed().as_secs_f64(), "policy loaded");
    let tok = p.tokenizer().clone();
    Ok((Box::new(p), Some(tok)))
}

/// Complete records of an earlier run (a torn last line from a killed run is ignored).
fn read_done(path: &Path) -> Result<Vec<Record>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = Vec::new();
    let lines: Vec<String> = std::io::BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()?;
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == n => {
                tracing::warn!("ignoring a torn last line in {}", path.display())
            }
            Err(e) => anyhow::bail!(
                "{}:{}: not a result record ({e}); move the file away to start over",
                path.display(),
                i + 1
            ),
        }
    }
    // Rewrite without the torn line so appends start on a fresh line.
    let mut text = String::new();
    for r in &out {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    write_atomic(path, &text)?;
    Ok(out)
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
