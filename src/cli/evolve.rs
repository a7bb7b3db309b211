//! `rstar-gpu evolve`: rStar-Math's self-evolution rounds, resumable after any kill.
//!
//! Round 0 evaluates the base policy. Each round r ≥ 1 then:
//! 1. `search`: MCTS over the training slice with policy_{r−1} — terminal-guided, or
//!    PPM-augmented with PPM_{r−1} from `--ppm-from-round` on (paper: round 3); round 1 may
//!    search with a stronger `--bootstrap-model`, as the paper bootstraps with a 236B model;
//! 2. `data`: preference pairs and SFT trajectories from every round's trees so far (and any
//!    `--bootstrap-trees`);
//! 3. `policy`: SFT from the *base* model on those trajectories (as the paper restarts each round);
//! 4. `ppm`: the PPM's value head on the pairs, over the new policy's backbone;
//! 5. `eval-greedy`, `eval-mcts`: the evaluation slice with the new policy (greedy) and with
//!    test-mode MCTS guided by the new PPM.
//!
//! The manifest and resume rules are in [`rstar_gpu::evolve`]. The report (`report.md`) and the
//! chart (`accuracy.png`) are rewritten after every round.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rstar_gpu::evolve::{markdown, series, stages, Manifest};
use rstar_gpu::forest::BackendKind;
use rstar_gpu::search::{Mode, PromptStyle};
use rstar_gpu::train::model::Layers;

use super::eval::{run_eval, EvalArgs};
use super::method::{Method, MethodArgs};
use super::train::{DataArgs, PolicyArgs, PpmArgs};

#[derive(Args, Debug)]
pub struct EvolveArgs {
    /// Self-evolution rounds after the baseline (paper: 4). A resumed run may ask for more.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Base policy: an asset name, a .gguf file or a Hugging Face directory.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Training problems (searched every round): gsm8k, math, math500 or a JSONL path.
    #[arg(long, default_value = "gsm8k")]
    train_data: String,
    /// Split of a named training data set.
    #[arg(long, default_value = "train")]
    train_split: String,
    /// The first N training problems.
    #[arg(long, default_value_t = 40)]
    train_limit: usize,
    /// Evaluation problems (held out from training).
    #[arg(long, default_value = "gsm8k")]
    eval_data: String,
    /// Split of a named evaluation data set.
    #[arg(long, default_value = "test")]
    eval_split: String,
    /// The first N evaluation problems.
    #[arg(long, default_value_t = 20)]
    eval_limit: usize,
    /// Output directory: manifest.json, report.md, accuracy.png and round-R/STAGE folders.
    #[arg(long, default_value = "runs/evolve")]
    out: PathBuf,
    /// Continue the run in --out (finished stages and problems are kept, not redone).
    #[arg(long)]
    resume: bool,
    /// MCTS rollouts per problem (training search and MCTS evaluation; paper: 16).
    #[arg(long, default_value_t = 4)]
    rollouts: usize,
    /// MCTS candidate steps per expansion (paper: 8).
    #[arg(long, default_value_t = 4)]
    candidates: usize,
    /// Most steps per solution.
    #[arg(long, default_value_t = 8)]
    max_depth: usize,
    /// Most new tokens per step.
    #[arg(long, default_value_t = 256)]
    step_tokens: usize,
    /// Problems searched together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// First round whose search is PPM-augmented (with the previous round's PPM); earlier rounds
    /// are terminal-guided (paper: 3).
    #[arg(long, default_value_t = 3)]
    ppm_from_round: usize,
    /// Round 1's search policy (the paper bootstraps round 1 with a much larger model): an asset
    /// name, a .gguf file, a Hugging Face directory or an OpenAI-compatible server URL. Default:
    /// the base policy.
    #[arg(long)]
    bootstrap_model: Option<String>,
    /// Search trees from elsewhere (`trees.jsonl` of `eval --method mcts --mode terminal-guided`,
    /// e.g. a larger model's search) added to every round's pairs and SFT data.
    #[arg(long, num_args = 1..)]
    bootstrap_trees: Vec<PathBuf>,
    /// Skip round 0 (the base policy's evaluation).
    #[arg(long)]
    no_baseline: bool,
    /// Which policy weights SFT trains: lora:R[:ALPHA], top:K or all.
    #[arg(long, default_value = "lora:8")]
    sft_layers: Layers,
    /// SFT epochs over the round's trajectories (paper: 2).
    #[arg(long, default_value_t = 2)]
    sft_epochs: usize,
    /// SFT AdamW learning rate (LoRA ~1e-4..1e-3; top-K or all ~1e-5..5e-5).
    #[arg(long, default_value_t = 2e-4)]
    sft_lr: f64,
    /// SFT sequences per optimiser step.
    #[arg(long, default_value_t = 4)]
    sft_batch: usize,
    /// Longest SFT sequence in tokens (prompt + trajectory).
    #[arg(long, default_value_t = 2048)]
    sft_max_tokens: usize,
    /// Epochs of the PPM's value-head training.
    #[arg(long, default_value_t = 30)]
    ppm_epochs: usize,
    /// AdamW learning rate of the PPM's value head.
    #[arg(long, default_value_t = 1e-2)]
    ppm_lr: f64,
    /// Which PPM backbone weights train after its head: head (none; the PPM shares the policy's
    /// backbone), top:K, lora:R or all.
    #[arg(long, default_value = "head")]
    ppm_layers: Layers,
    /// Fraction of problems whose pairs are held out to measure the PPM's pairwise accuracy.
    #[arg(long, default_value_t = 0.2)]
    ppm_holdout: f64,
    /// Forest backend for the searches (default: the best available).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Seed of the searches (round r uses seed + r) and of training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print exactly one JSON object (the per-round rows) on stdout.
    #[arg(long)]
    json: bool,
}

impl EvolveArgs {
    /// The settings that decide the results (a resumed run must match them).
    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "rounds": self.rounds,
            "model": self.model,
            "train_data": self.train_data,
            "train_split": self.train_split,
            "train_limit": self.train_limit,
            "eval_data": self.eval_data,
            "eval_split": self.eval_split,
            "eval_limit": self.eval_limit,
            "rollouts": self.rollouts,
            "candidates": self.candidates,
            "max_depth": self.max_depth,
            "step_tokens": self.step_tokens,
            "ppm_from_round": self.ppm_from_round,
            "baseline": !self.no_baseline,
            "bootstrap_model": self.bootstrap_model,
            "bootstrap_trees": self.bootstrap_trees,
            "sft_layers": self.sft_layers.to_string(),
            "sft_epochs": self.sft_epochs,
            "sft_lr": self.sft_lr,
            "sft_batch": self.sft_batch,
            "sft_max_tokens": self.sft_max_tokens,
            "ppm_epochs": self.ppm_epochs,
            "ppm_lr": self.ppm_lr,
            "ppm_holdout": self.ppm_holdout,
            "ppm_layers": self.ppm_layers.to_string(),
            "seed": self.seed,
        })
    }

    fn method_args(
        &self,
        model: &str,
        ppm: Option<&str>,
        mode: Option<Mode>,
        seed: u64,
    ) -> MethodArgs {
        MethodArgs {
            prompt: PromptStyle::Code,
            model: model.to_string(),
            weights: "quantized".into(),
            ppm: ppm.map(str::to_string),
            samples: 8,
            temperature: None,
            seed: Some(seed),
            config: None,
            mode,
            rollouts: Some(self.rollouts),
            candidates: Some(self.candidates),
            max_depth: Some(self.max_depth),
            answer_only: None,
            leaves_per_step: None,
            c: None,
            answer_rule: None,
            vote_top_k: None,
            backend: self.backend,
            max_tokens: Some(self.step_tokens),
        }
    }

    fn eval_args(&self, method: Method, m: MethodArgs, train: bool, out: PathBuf) -> EvalArgs {
        let (data, split, limit) = if train {
            (&self.train_data, &self.train_split, self.train_limit)
        } else {
            (&self.eval_data, &self.eval_split, self.eval_limit)
        };
        EvalArgs {
            data: data.clone(),
            split: split.clone(),
            limit: Some(limit),
            method,
            m,
            batch: self.batch,
            out,
            json: false,
        }
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs stage `name` of round `r` unless the manifest says it is done, then records it.
fn stage(
    m: &mut Manifest,
    manifest_path: &Path,
    r: usize,
    name: &str,
    f: impl FnOnce() -> Result<serde_json::Value>,
) -> Result<serde_json::Value> {
    if let Some(s) = m
        .rounds
        .iter()
        .find(|x| x.round == r)
        .and_then(|x| x.stage(name))
        .filter(|s| s.done)
    {
        return Ok(s.summary.clone());
    }
    tracing::info!(round = r, stage = name, "starting");
    eprintln!("[evolve] round {r}: {name}");
    let t = Instant::now();
    let summary = f().with_context(|| format!("round {r}, stage {name}"))?;
    let round = m
        .rounds
        .iter_mut()
        .find(|x| x.round == r)
        .context("round record missing")?;
    round.finish(name, t.elapsed().as_secs_f64(), summary.clone());
    m.write(manifest_path)?;
    Ok(summary)
}

/// Moves a finished `DIR.partial` into place as `DIR`.
fn promote(partial: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::rename(partial, dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))
}

fn write_report(m: &Manifest, out: &Path) -> Result<()> {
    super::eval::write_atomic(&out.join("report.md"), &markdown(m))?;
    let png = out.join("accuracy.png");
    let tmp = out.join("accuracy.tmp.png");
    match rstar_gpu::report::line_chart_png(
        &tmp,
        "rstar-gpu self-evolution",
        "round",
        &series(m),
        (900, 560),
    ) {
        Ok(()) => {
            std::fs::rename(&tmp, &png).with_context(|| format!("replacing {}", png.display()))?
        }
        // Nothing measured yet (a run killed before its first evaluation).
        Err(rstar_gpu::report::ReportError::Empty(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

pub fn run(a: EvolveArgs) -> Result<()> {
    anyhow::ensure!(a.train_limit >= 1, "--train-limit must be at least 1");
    anyhow::ensure!(a.eval_limit >= 1, "--eval-limit must be at least 1");
    for t in &a.bootstrap_trees {
        anyhow::ensure!(
            t.is_file(),
            "--bootstrap-trees {}: no such file (a trees.jsonl of an MCTS search)",
            t.display()
        );
    }
    // Both problem sets load before any model does: a typo costs a second, not a baseline run.
    for (what, data, split) in [
        ("training", &a.train_data, &a.train_split),
        ("evaluation", &a.eval_data, &a.eval_split),
    ] {
        let problems = rstar_gpu::data::load(data, split)
            .map_err(|e| anyhow::anyhow!("{what} problems: {e}"))?;
        anyhow::ensure!(
            !problems.is_empty(),
            "{what} problems: {data} ({split}) holds no problems"
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = a
        .out
        .canonicalize()
        .with_context(|| format!("resolving {}", a.out.display()))?;
    let manifest_path = out.join("manifest.json");
    let config = a.config();
    let mut m = match Manifest::read(&manifest_path)? {
        Some(old) if a.resume => {
            old.check_config(&config)?;
            let mut old = old;
            old.config = config.clone();
            old
        }
        Some(_) => anyhow::bail!(
            "{} already holds an evolve run; add --resume to continue it, or choose another --out",
            out.display()
        ),
        None => {
            let busy = std::fs::read_dir(&out)
                .with_context(|| format!("reading {}", out.display()))?
                .any(|e| e.is_ok());
            anyhow::ensure!(
                !busy || a.resume,
                "{} is not empty and holds no evolve manifest; choose an empty --out",
                out.display()
            );
            Manifest::new(config.clone())
        }
    };
    m.write(&manifest_path)?;
    let base = a.model.clone();
    let t0 = Instant::now();

    if !a.no_baseline {
        let dir = out.join("round-0");
        m.round_mut(0, &base, None);
        stage(&mut m, &manifest_path, 0, stages::EVAL_GREEDY, || {
            let ma = a.method_args(&base, None, None, a.seed);
            run_eval(
                &a.eval_args(Method::Greedy, ma, false, dir.join(stages::EVAL_GREEDY)),
                true,
            )
        })?;
        stage(&mut m, &manifest_path, 0, stages::EVAL_MCTS, || {
            let ma = a.method_args(&base, None, Some(Mode::Test), a.seed);
            run_eval(
                &a.eval_args(Method::Mcts, ma, false, dir.join(stages::EVAL_MCTS)),
                true,
            )
        })?;
        write_report(&m, &out)?;
    }

    let mut policy = base.clone();
    let mut ppm: Option<String> = None;
    for r in 1..=a.rounds {
        let dir = out.join(format!("round-{r}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // A resumed round keeps the models it started with.
        let rec = m.round_mut(r, &policy, ppm.as_deref()).clone();
        policy = rec.policy_in.clone();
        ppm = rec.ppm_in.clone();
        m.write(&manifest_path)?;
        let seed = a.seed.wrapping_add(r as u64);

        let augmented = r >= a.ppm_from_round && ppm.is_some();
        let search_dir = dir.join(stages::SEARCH);
        stage(&mut m, &manifest_path, r, stages::SEARCH, || {
            let mode = if augmented {
                Mode::PpmAugmented
            } else {
                Mode::TerminalGuided
            };
            let ppm_in = if augmented { ppm.as_deref() } else { None };
            let searcher = match (&a.bootstrap_model, r) {
                (Some(b), 1) => b.as_str(),
                _ => policy.as_str(),
            };
            let ma = a.method_args(searcher, ppm_in, Some(mode), seed);
            run_eval(
                &a.eval_args(Method::Mcts, ma, true, search_dir.clone()),
                true,
            )
        })?;

        let data_dir = dir.join(stages::DATA);
        let data = stage(&mut m, &manifest_path, r, stages::DATA, || {
            // Every round's trees so far: small CPU runs need all the data they can get.
            let mut trees: Vec<PathBuf> = a.bootstrap_trees.clone();
            trees.extend(
                (1..=r)
                    .map(|k| {
                        out.join(format!("round-{k}"))
                            .join(stages::SEARCH)
                            .join("trees.jsonl")
                    })
                    .filter(|p| p.exists()),
            );
            super::train::data(&DataArgs {
                trees,
                out: data_dir.clone(),
                per_side: 2,
                min_margin: 0.5,
                min_edit_distance: 20,
                no_greedy_check: false,
                sft_per_problem: 2,
                keep_errors: false,
                system: None,
                json: false,
                quiet: true,
            })
        })?;
        let sft_examples = data["sft_examples"].as_u64().unwrap_or(0);
        let pairs = data["pairs"].as_u64().unwrap_or(0);

        let policy_dir = dir.join(stages::POLICY);
        let trained = stage(&mut m, &manifest_path, r, stages::POLICY, || {
            if sft_examples == 0 {
                return Ok(
                    serde_json::json!({"skipped": "no SFT examples (no correct, error-free trajectory)"}),
                );
            }
            let partial = dir.join("policy.train");
            let s = super::train::policy(&PolicyArgs {
                sft: data_dir.join("sft.jsonl"),
                model: base.clone(),
                out: partial.clone(),
                layers: a.sft_layers,
                epochs: a.sft_epochs,
                lr: a.sft_lr,
                weight_decay: 0.0,
                batch_size: a.sft_batch,
                max_tokens: a.sft_max_tokens,
                holdout: 0.0,
                seed,
                json: false,
                quiet: true,
            })?;
            promote(&partial, &policy_dir)?;
            Ok(s)
        })?;
        if trained.get("skipped").is_none() {
            policy = path_str(&policy_dir);
        }

        let ppm_dir = dir.join(stages::PPM);
        let ppm_report = stage(&mut m, &manifest_path, r, stages::PPM, || {
            if pairs == 0 {
                return Ok(
                    serde_json::json!({"skipped": "no preference pairs (no tree with both a correct and a wrong answer)"}),
                );
            }
            let partial = dir.join("ppm.train");
            if partial.exists() {
                std::fs::remove_dir_all(&partial)?;
            }
            let s = super::train::ppm(&PpmArgs {
                pairs: data_dir.join("pairs.jsonl"),
                model: policy.clone(),
                init: None,
                out: partial.clone(),
                epochs: a.ppm_epochs,
                lr: a.ppm_lr,
                weight_decay: 1e-2,
                batch_size: 64,
                holdout: a.ppm_holdout,
                seed,
                uniform_weights: false,
                layers: a.ppm_layers,
                backbone_epochs: rstar_gpu::train::ppm::BackboneTrainConfig::default().epochs,
                backbone_lr: rstar_gpu::train::ppm::BackboneTrainConfig::default().lr,
                json: false,
                quiet: true,
            })?;
            promote(&partial, &ppm_dir)?;
            Ok(s)
        })?;
        if ppm_report.get("skipped").is_none() {
            ppm = Some(path_str(&ppm_dir));
        }
        if let Some(rec) = m.rounds.iter_mut().find(|x| x.round == r) {
            rec.policy_out = (trained.get("skipped").is_none()).then(|| policy.clone());
            rec.ppm_out = (ppm_report.get("skipped").is_none()).then(|| path_str(&ppm_dir));
        }
        m.write(&manifest_path)?;

        stage(&mut m, &manifest_path, r, stages::EVAL_GREEDY, || {
            let ma = a.method_args(&policy, None, None, seed);
            run_eval(
                &a.eval_args(Method::Greedy, ma, false, dir.join(stages::EVAL_GREEDY)),
                true,
            )
        })?;
        stage(&mut m, &manifest_path, r, stages::EVAL_MCTS, || {
            let ma = a.method_args(&policy, ppm.as_deref(), Some(Mode::Test), seed);
            run_eval(
                &a.eval_args(Method::Mcts, ma, false, dir.join(stages::EVAL_MCTS)),
                true,
            )
        })?;
        write_report(&m, &out)?;
    }
    write_report(&m, &out)?;
    let rows = rstar_gpu::evolve::rows(&m);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "out": out,
                "rounds": rows,
                "report": out.join("report.md"),
                "plot": out.join("accuracy.png"),
                "wall_s": t0.elapsed().as_secs_f64(),
            })
        );
    } else {
        print!("{}", markdown(&m));
        println!(
            "(report: {}, plot: {})",
            out.join("report.md").display(),
            out.join("accuracy.png").display()
        );
    }
    Ok(())
}
