//! `rstar-gpu eval`: run a method over a data set, grade every answer, write per-problem JSONL,
//! a summary JSON and a markdown report; resumable.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rstar_gpu::data::Problem;
use rstar_gpu::search::greedy;
use rstar_gpu::search::PromptStyle;

use super::method::{Method, MethodArgs, Runner};

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Data set: gsm8k, math, math500, or a path to a JSONL file.
    #[arg(long, default_value = "gsm8k")]
    pub(crate) data: String,
    /// Split of a named data set (train or test).
    #[arg(long, default_value = "test")]
    pub(crate) split: String,
    /// Evaluate only the first N problems.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Method: greedy, sc (self-consistency), bon (Best-of-N with the PPM), mcts.
    #[arg(long, value_enum, default_value_t = Method::Greedy)]
    pub(crate) method: Method,
    #[command(flatten)]
    pub(crate) m: MethodArgs,
    /// Problems solved together (one batched policy call per step for all of them).
    #[arg(long, default_value_t = 16)]
    pub(crate) batch: usize,
    /// Output directory: results.jsonl (one line per problem, appended as batches finish),
    /// trees.jsonl (mcts: one search tree per problem, for `rstar-gpu view` and self-evolution),
    /// summary.json and report.md. An existing results.jsonl is resumed: finished problems are
    /// not redone.
    #[arg(long, default_value = "runs/eval")]
    pub(crate) out: PathBuf,
    /// Print exactly one JSON object (the summary) on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// One line of results.jsonl.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    id: String,
    question: String,
    reference: Option<String>,
    answer: Option<String>,
    correct: bool,
    /// Some trajectory or sample reached a correct answer (coverage / pass@N).
    #[serde(default)]
    covered: bool,
    #[serde(default)]
    method: Option<Method>,
    #[serde(default)]
    end: Option<greedy::End>,
    steps: usize,
    tokens: usize,
    #[serde(default)]
    score: Option<f32>,
    #[serde(default)]
    n_answers: usize,
    /// Trajectories / samples whose answer is correct (for pass@k and coverage).
    #[serde(default)]
    n_correct: usize,
    solution: String,
    error: Option<String>,
    /// `sc` with `--ppm`: the Best-of-N answer on the same samples, and its grade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bon_answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bon_correct: Option<bool>,
    /// The PPM score of the Best-of-N pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bon_score: Option<f32>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    run_eval(&a, false).map(|_| ())
}

/// Runs (or resumes) one evaluation and returns its summary. `quiet` prints nothing on stdout
/// (evolve runs evaluations as stages of its own).
pub(crate) fn run_eval(a: &EvalArgs, quiet: bool) -> Result<serde_json::Value> {
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    let mut problems =
        rstar_gpu::data::load(&a.data, &a.split).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(n) = a.limit {
        problems.truncate(n);
    }
    anyhow::ensure!(!problems.is_empty(), "no problems to evaluate");
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let results_path = a.out.join("results.jsonl");
    let trees_path = a.out.join("trees.jsonl");
    let mut records = read_done(&results_path)?;
    let done: std::collections::HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
    keep_trees(&trees_path, &done)?;
    let todo: Vec<&Problem> = problems.iter().filter(|p| !done.contains(&p.id)).collect();
    if !done.is_empty() {
        tracing::info!(
            done = done.len(),
            left = todo.len(),
            "resuming {}",
            results_path.display()
        );
    }

    let mut runner = Runner::new(a.method, a.m.clone())?;
    let grader = runner.grader.clone();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)
        .with_context(|| format!("opening {}", results_path.display()))?;
    let mut trees_file = match a.method {
        Method::Mcts => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&trees_path)
                .with_context(|| format!("opening {}", trees_path.display()))?,
        ),
        _ => None,
    };
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
        let outcomes = runner.run(chunk)?;
        let mut tree_lines = String::new();
        let mut lines = String::new();
        for (p, o) in chunk.iter().zip(outcomes) {
            let reference = p.reference_answer();
            let (correct, n_correct) = match &reference {
                Some(r) => {
                    let pairs: Vec<(&str, &str)> = o
                        .all_answers
                        .iter()
                        .map(|x| (x.as_str(), r.as_str()))
                        .collect();
                    let n_correct = grader
                        .equiv_many(&pairs)
                        .iter()
                        .filter(|x| x.equivalent)
                        .count();
                    let correct = o
                        .answer
                        .as_deref()
                        .is_some_and(|x| grader.equiv(x, r).equivalent);
                    (correct, n_correct)
                }
                None => (false, 0),
            };
            let covered = n_correct > 0;
            let (bon_answer, bon_correct, bon_score) = match &o.bon {
                Some((ans, score)) => (
                    ans.clone(),
                    Some(match (ans, &reference) {
                        (Some(x), Some(r)) => grader.equiv(x, r).equivalent,
                        _ => false,
                    }),
                    *score,
                ),
                None => (None, None, None),
            };
            new_tokens += o.tokens;
            if let Some(t) = &o.tree {
                tree_lines.push_str(&t.to_json_line().map_err(|e| anyhow::anyhow!("{e}"))?);
                tree_lines.push('\n');
            }
            let rec = Record {
                id: p.id.clone(),
                question: p.question.clone(),
                reference: p.answer.clone(),
                answer: o.answer,
                correct,
                covered,
                method: Some(a.method),
                end: o.end,
                steps: o.steps,
                tokens: o.tokens,
                score: o.score,
                n_answers: o.n_answers,
                n_correct,
                solution: o.solution,
                error: o.error,
                bon_answer,
                bon_correct,
                bon_score,
            };
            lines.push_str(&serde_json::to_string(&rec)?);
            lines.push('\n');
            records.push(rec);
        }
        // Trees first, then the records that mark the problems done: a run killed in between
        // redoes the batch, and the resume drops the trees of problems without a record.
        if let Some(f) = trees_file.as_mut() {
            f.write_all(tree_lines.as_bytes())?;
            f.flush()?;
        }
        file.write_all(lines.as_bytes())?;
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
    let covered = records.iter().filter(|r| r.covered).count();
    let ends = |e: greedy::End| records.iter().filter(|r| r.end == Some(e)).count();
    let policy_tokens: usize = records.iter().map(|r| r.tokens).sum();
    let solved_now = todo.len();
    let st = &runner.stats;
    let share = |x: f64| {
        if st.total_secs > 0.0 {
            (x / st.total_secs * 1e4).round() / 1e4
        } else {
            0.0
        }
    };
    let mut summary = serde_json::json!({
        "data": &a.data,
        "split": &a.split,
        "n_problems": n,
        "method": a.method,
        "prompt": if a.method == Method::Mcts { PromptStyle::Code } else { a.m.prompt },
        "model": &a.m.model,
        "accuracy": correct as f64 / n.max(1) as f64,
        "correct": correct,
        "coverage": covered as f64 / n.max(1) as f64,
        "covered": covered,
        "policy_tokens": policy_tokens,
        "tokens_per_problem": policy_tokens as f64 / n.max(1) as f64,
        "wall_s": (wall_s * 10.0).round() / 10.0,
        "problems_per_hour": if wall_s > 0.0 { (solved_now as f64 * 3600.0 / wall_s * 10.0).round() / 10.0 } else { 0.0 },
        "new_tokens_this_run": new_tokens,
    });
    match a.method {
        Method::Greedy => {
            summary["ends"] = serde_json::json!({
                "answer": ends(greedy::End::Answer),
                "code_error": ends(greedy::End::CodeError),
                "truncated": ends(greedy::End::Truncated),
                "eos": ends(greedy::End::Eos),
                "max_depth": ends(greedy::End::MaxDepth),
            });
        }
        Method::Sc | Method::Bon => {
            summary["samples"] = serde_json::json!(a.m.samples);
            // Unbiased pass@k over the n samples per problem (Chen et al. 2021), and the tokens
            // a sample costs, so sampling can be compared with MCTS at equal token budgets.
            let n = a.m.samples;
            let mut pass = serde_json::Map::new();
            let mut k = 1;
            while k <= n {
                let p = records
                    .iter()
                    .map(|r| pass_at_k(n, r.n_correct.min(n), k))
                    .sum::<f64>()
                    / records.len().max(1) as f64;
                pass.insert(k.to_string(), serde_json::json!(p));
                k = if k * 2 > n && k < n { n } else { k * 2 };
            }
            summary["pass_at_k"] = serde_json::Value::Object(pass);
            summary["tokens_per_sample"] =
                serde_json::json!(policy_tokens as f64 / (n * records.len()).max(1) as f64);
            let bon: Vec<bool> = records.iter().filter_map(|r| r.bon_correct).collect();
            if !bon.is_empty() {
                summary["bon_accuracy"] =
                    serde_json::json!(bon.iter().filter(|&&c| c).count() as f64 / bon.len() as f64);
                summary["bon_n"] = serde_json::json!(bon.len());
            }
        }
        Method::Mcts => {
            summary["search"] = serde_json::to_value(&runner.search)?;
            summary["backend"] = serde_json::json!(runner.backend.name());
            summary["time_share"] = serde_json::json!({
                "forest": share(st.forest_secs),
                "policy": share(st.policy_secs),
                "exec": share(st.exec_secs),
                "ppm": share(st.ppm_secs),
                "grade": share(st.grade_secs),
            });
            summary["search_stats"] = serde_json::to_value(st)?;
            if let Some(ppm) = &runner.ppm {
                // This run's PPM work: texts, tokens, and tokens served by its prefix cache.
                summary["ppm_stats"] = serde_json::to_value(ppm.stats())?;
            }
        }
    }
    write_atomic(
        &a.out.join("summary.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    let mut report = format!(
        "# Evaluation\n\n| data | split | problems | method | model | accuracy | coverage | policy tokens / problem | wall s |\n|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {:?} | {} | {:.1}% ({}/{}) | {:.1}% | {:.0} | {:.0} |\n",
        a.data, a.split, n, a.method, a.m.model,
        100.0 * correct as f64 / n.max(1) as f64, correct, n,
        100.0 * covered as f64 / n.max(1) as f64,
        policy_tokens as f64 / n.max(1) as f64, wall_s,
    );
    if a.method == Method::Greedy {
        report.push_str(&format!(
            "\nEnds: {} answers, {} code errors, {} truncated, {} ended without an answer step, {} at max depth.\n",
            ends(greedy::End::Answer), ends(greedy::End::CodeError), ends(greedy::End::Truncated), ends(greedy::End::Eos), ends(greedy::End::MaxDepth),
        ));
    }
    if let (Some(acc), Some(n)) = (summary["bon_accuracy"].as_f64(), summary["bon_n"].as_u64()) {
        report.push_str(&format!(
            "\nBest-of-{} by the PPM on the same samples: {:.1}% ({n} problems).\n",
            a.m.samples,
            100.0 * acc
        ));
    }
    if let Some(p) = summary["pass_at_k"].as_object() {
        let parts: Vec<String> = p
            .iter()
            .map(|(k, v)| format!("pass@{k} {:.1}%", 100.0 * v.as_f64().unwrap_or(0.0)))
            .collect();
        report.push_str(&format!(
            "\n{} (unbiased, over the {} samples per problem; {:.0} policy tokens per sample).\n",
            parts.join(", "),
            a.m.samples,
            summary["tokens_per_sample"].as_f64().unwrap_or(0.0)
        ));
    }
    if a.method == Method::Mcts && st.total_secs > 0.0 {
        report.push_str(&format!(
            "\nSearch time ({:.0} s, this run): policy {:.1}%, executor {:.1}%, PPM {:.1}%, grading {:.1}%, forest {:.3}% ({} backend).\n",
            st.total_secs,
            100.0 * st.policy_secs / st.total_secs,
            100.0 * st.exec_secs / st.total_secs,
            100.0 * st.ppm_secs / st.total_secs,
            100.0 * st.grade_secs / st.total_secs,
            100.0 * st.forest_secs / st.total_secs,
            runner.backend.name(),
        ));
    }
    write_atomic(&a.out.join("report.md"), &report)?;
    if quiet {
    } else if a.json {
        println!("{summary}");
    } else {
        print!("{report}");
        println!("(per-problem results: {})", results_path.display());
    }
    Ok(summary)
}

/// The probability that at least one of k samples drawn without replacement from n, c of them
/// correct, is correct: `1 − C(n−c, k) / C(n, k)`.
fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k > n || n == 0 {
        return 0.0;
    }
    if n - c < k {
        return 1.0;
    }
    let mut miss = 1.0;
    for i in (n - c + 1)..=n {
        miss *= 1.0 - k as f64 / i as f64;
    }
    1.0 - miss
}

trait ReferenceAnswer {
    fn reference_answer(&self) -> Option<String>;
}

impl ReferenceAnswer for Problem {
    fn reference_answer(&self) -> Option<String> {
        self.answer.clone().filter(|a| !a.trim().is_empty())
    }
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

/// Keeps only the trees of finished problems (a run killed after writing a batch's trees but
/// before its records redoes that batch) and drops a torn last line.
fn keep_trees(path: &Path, done: &std::collections::HashSet<String>) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut kept = String::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        if let Ok(t) = serde_json::from_str::<Id>(line) {
            if done.contains(&t.id) && seen.insert(t.id) {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    write_atomic(path, &kept)
}

pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pass_at_k;

    #[test]
    fn pass_at_k_matches_the_closed_form() {
        // n = 8, c = 2, k = 4: 1 − C(6,4)/C(8,4) = 1 − 15/70.
        assert!((pass_at_k(8, 2, 4) - (1.0 - 15.0 / 70.0)).abs() < 1e-12);
        assert_eq!(pass_at_k(8, 0, 8), 0.0);
        assert_eq!(pass_at_k(8, 1, 8), 1.0);
        // pass@1 is the fraction correct.
        assert!((pass_at_k(8, 3, 1) - 3.0 / 8.0).abs() < 1e-12);
    }
}
