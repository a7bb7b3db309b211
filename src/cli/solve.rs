//! `rstar-gpu solve "QUESTION"`: answer one problem with any method and print the chosen
//! solution, step by step, with its code outputs and scores.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use rstar_gpu::data::Problem;

use super::method::{Method, MethodArgs, Runner};

#[derive(Args, Debug)]
pub struct SolveArgs {
    /// The problem, in plain text (LaTeX allowed).
    question: String,
    /// Method: mcts (rStar-Math's search), greedy, sc (self-consistency) or bon (Best-of-N).
    #[arg(long, value_enum, default_value_t = Method::Mcts)]
    method: Method,
    #[command(flatten)]
    m: MethodArgs,
    /// A known answer: reported as correct / wrong, and needed by `--mode terminal-guided` and
    /// `--mode ppm-augmented`. Test mode (the default) never reads it during the search.
    #[arg(long)]
    reference: Option<String>,
    /// Write the MCTS tree here (one JSON line; read it with `rstar-gpu view`).
    #[arg(long)]
    tree_out: Option<PathBuf>,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: SolveArgs) -> Result<()> {
    anyhow::ensure!(!a.question.trim().is_empty(), "the question is empty");
    let problem = Problem {
        id: "question".into(),
        question: a.question.clone(),
        answer: a.reference.clone(),
    };
    let mut runner = Runner::new(a.method, a.m.clone())?;
    let t = std::time::Instant::now();
    let mut outs = runner.run(&[&problem])?;
    let o = outs.pop().context("no result")?;
    let correct = match (&a.reference, &o.answer) {
        (Some(r), Some(x)) => Some(runner.grader.equiv(x, r).equivalent),
        (Some(_), None) => Some(false),
        _ => None,
    };
    if let (Some(path), Some(tree)) = (&a.tree_out, &o.tree) {
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        writeln!(
            f,
            "{}",
            tree.to_json_line().map_err(|e| anyhow::anyhow!("{e}"))?
        )?;
    }
    // The chosen trajectory's steps with their values (MCTS), or the solution text.
    let steps: Vec<serde_json::Value> = match &o.tree {
        Some(tree) => tree
            .pick(
                &runner.grader,
                runner.search.answer_rule,
                runner.search.vote_top_k,
            )
            .map(|c| {
                tree.path(c.node)
                    .iter()
                    .map(|n| {
                        serde_json::json!({"node": n.id, "text": n.text, "output": n.output,
                            "visits": n.visits, "q": n.q, "init_value": n.init_value})
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "question": a.question, "method": a.method, "answer": o.answer,
                "correct": correct, "score": o.score, "solution": o.solution,
                "steps": steps, "answers_found": o.n_answers, "policy_tokens": o.tokens,
                "wall_s": (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            })
        );
        return Ok(());
    }
    let mut out = String::new();
    if steps.is_empty() {
        out.push_str(&o.solution);
        out.push('\n');
    } else {
        for (i, s) in steps.iter().enumerate() {
            out.push_str(&format!(
                "── step {} (N={} Q={:+.3} q0={:+.3})\n{}\n",
                i + 1,
                s["visits"],
                s["q"].as_f64().unwrap_or(0.0),
                s["init_value"].as_f64().unwrap_or(0.0),
                s["text"].as_str().unwrap_or("").trim_end()
            ));
            if let Some(o) = s["output"].as_str() {
                out.push_str(&format!("   output: {}\n", o.trim_end()));
            }
        }
    }
    out.push_str(&format!(
        "\nanswer: {}{}   (method {:?}, {} answers found, score {}, {} policy tokens, {:.1} s)\n",
        o.answer.as_deref().unwrap_or("(none)"),
        match correct {
            Some(true) => " ✓ correct",
            Some(false) => " ✗ wrong",
            None => "",
        },
        a.method,
        o.n_answers,
        o.score.map_or("-".into(), |s| format!("{s:.3}")),
        o.tokens,
        t.elapsed().as_secs_f64()
    ));
    if let Some(e) = &o.error {
        out.push_str(&format!("error: {e}\n"));
    }
    print!("{out}");
    Ok(())
}
