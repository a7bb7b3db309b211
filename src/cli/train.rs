//! `rstar-gpu train data|ppm`: the self-evolution steps one at a time — search trees into
//! preference pairs and SFT data, and pairs into a trained PPM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rstar_gpu::model::generate::LocalPolicy;
use rstar_gpu::model::ppm::Ppm;
use rstar_gpu::model::transformer::WeightMode;
use rstar_gpu::search::prompt::render;
use rstar_gpu::search::PromptStyle;
use rstar_gpu::train::export::{read_pairs, read_sft, write_pairs, write_sft_messages, Role};
use rstar_gpu::train::model::TrainModel;
use rstar_gpu::train::pairs::{pairs, PairConfig, PairKind};
use rstar_gpu::train::policy::{save_checkpoint, tokenize, train_sft, SftTrainConfig};
use rstar_gpu::train::ppm::{
    finetune_backbone, pair_features, train_head, BackboneTrainConfig, Head, HeadTrainConfig,
};
use rstar_gpu::train::sft::{select, SftConfig};

use super::method::load_policy;

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Turn search trees (`trees.jsonl` of `eval --method mcts --mode terminal-guided`) into
    /// PPM preference pairs (`pairs.jsonl`: prompt/chosen/rejected, as TRL reads them) and policy
    /// SFT data (`sft.jsonl`: chat `messages`, as TRL and LLaMA-Factory read them).
    Data(DataArgs),
    /// Train a PPM's value head on preference pairs with the Bradley–Terry loss (AdamW; the
    /// backbone is frozen, so this runs on a CPU), and write the PPM directory that
    /// `eval --ppm DIR` and `solve --ppm DIR` load.
    Ppm(PpmArgs),
    /// Fine-tune the policy on SFT trajectories (`sft.jsonl` of `train data`, or any chat
    /// `messages` JSONL: the last user turn is the question, the last assistant turn the
    /// solution) with the next-token loss, in candle, and write a Hugging Face checkpoint that
    /// `--model DIR` loads. The question is rendered with the search's code-augmented prompt, so
    /// the tuned policy continues exactly the text the search gives it.
    Policy(PolicyArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PolicyArgs {
    /// SFT file (JSONL of `{"messages": [...]}`).
    #[arg(long)]
    pub sft: PathBuf,
    /// The model to fine-tune: an asset name, a .gguf file or a Hugging Face directory (the
    /// paper restarts from the base model every round).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    pub model: String,
    /// Output checkpoint directory (Hugging Face layout, f32 safetensors + tokenizer files +
    /// train_report.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Which weights train: `lora:R[:ALPHA]` (adapters on every projection, merged on save),
    /// `top:K` (the last K layers and the final norm), or `all`.
    #[arg(long, default_value = "lora:8")]
    pub layers: rstar_gpu::train::model::Layers,
    /// Epochs over the SFT examples (paper: 2).
    #[arg(long, default_value_t = SftTrainConfig::default().epochs)]
    pub epochs: usize,
    /// AdamW learning rate (LoRA wants ~1e-4..1e-3; full or top-K fine-tuning ~1e-5).
    #[arg(long, default_value_t = SftTrainConfig::default().lr)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = SftTrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Sequences per optimiser step (gradients accumulated one sequence at a time).
    #[arg(long, default_value_t = SftTrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// Longest training sequence in tokens (prompt + solution).
    #[arg(long, default_value_t = SftTrainConfig::default().max_tokens)]
    pub max_tokens: usize,
    /// Fraction of problems held out for the loss check.
    #[arg(long, default_value_t = 0.0)]
    pub holdout: f64,
    /// Seed of the shuffles, the held-out split and fresh weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print exactly one JSON object (the training report) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print nothing on stdout (set by `evolve`).
    #[arg(skip)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Trees files (JSONL, one tree per line); several are merged.
    #[arg(long, required = true, num_args = 1..)]
    pub trees: Vec<PathBuf>,
    /// Output directory for pairs.jsonl and sft.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Positives and negatives per node (paper: 2).
    #[arg(long, default_value_t = 2)]
    pub per_side: usize,
    /// Drop step pairs whose Q margin is below this (official code: 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub min_margin: f32,
    /// Drop pairs whose texts are within this Levenshtein distance (official code: 20).
    #[arg(long, default_value_t = 20)]
    pub min_edit_distance: usize,
    /// Keep step pairs even when the positive's greedy continuation has a lower average Q.
    #[arg(long)]
    pub no_greedy_check: bool,
    /// SFT trajectories per problem (paper: 2).
    #[arg(long, default_value_t = 2)]
    pub sft_per_problem: usize,
    /// Keep SFT trajectories that contain a code error.
    #[arg(long)]
    pub keep_errors: bool,
    /// A system message for every SFT example.
    #[arg(long)]
    pub system: Option<String>,
    /// Print exactly one JSON object (the counts) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print nothing on stdout (set by `evolve`).
    #[arg(skip)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PpmArgs {
    /// Pairs file written by `train data`.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Backbone: an asset name, a .gguf file or a Hugging Face directory (the policy of this
    /// round).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    pub model: String,
    /// Start from this PPM's head (a directory) instead of a fresh one.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Output PPM directory (ppm.json, value_head.safetensors, train_report.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Epochs of the value head's training (on features computed once).
    #[arg(long, default_value_t = HeadTrainConfig::default().epochs)]
    pub epochs: usize,
    /// AdamW learning rate of the value head.
    #[arg(long, default_value_t = HeadTrainConfig::default().lr)]
    pub lr: f64,
    /// AdamW weight decay of the value head.
    #[arg(long, default_value_t = HeadTrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Pairs per optimiser step.
    #[arg(long, default_value_t = HeadTrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// Fraction of problems held out for the pairwise-accuracy check.
    #[arg(long, default_value_t = HeadTrainConfig::default().holdout)]
    pub holdout: f64,
    /// Seed of the shuffles, the held-out split and fresh weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight every pair 1 instead of 1/(positives·negatives) of its node.
    #[arg(long)]
    pub uniform_weights: bool,
    /// Which backbone weights train after the head: `head` (none: the backbone stays the
    /// policy's, shared with it at search time), `top:K`, `lora:R[:ALPHA]` or `all`. With
    /// backbone layers the PPM directory gets its own `backbone/` checkpoint.
    #[arg(long, default_value = "head")]
    pub layers: rstar_gpu::train::model::Layers,
    /// Epochs of the backbone stage (with --layers other than head).
    #[arg(long, default_value_t = BackboneTrainConfig::default().epochs)]
    pub backbone_epochs: usize,
    /// Learning rate of the backbone stage's backbone weights (its head uses --lr / 10).
    #[arg(long, default_value_t = BackboneTrainConfig::default().lr)]
    pub backbone_lr: f64,
    /// Print exactly one JSON object (the training report) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print nothing on stdout (set by `evolve`).
    #[arg(skip)]
    pub quiet: bool,
}

pub fn run(c: TrainCommand) -> Result<()> {
    match c {
        TrainCommand::Data(a) => data(&a).map(|_| ()),
        TrainCommand::Ppm(a) => ppm(&a).map(|_| ()),
        TrainCommand::Policy(a) => policy(&a).map(|_| ()),
    }
}

/// `train data`: returns the counts.
pub(crate) fn data(a: &DataArgs) -> Result<serde_json::Value> {
    let pcfg = PairConfig {
        per_side: a.per_side,
        min_margin: a.min_margin,
        min_edit_distance: a.min_edit_distance,
        greedy_path_check: !a.no_greedy_check,
    };
    anyhow::ensure!(a.per_side >= 1, "--per-side must be at least 1");
    let scfg = SftConfig {
        per_problem: a.sft_per_problem,
        drop_errors: !a.keep_errors,
    };
    let mut all_pairs = Vec::new();
    let mut sft = Vec::new();
    let (mut trees, mut covered, mut with_pairs) = (0usize, 0usize, 0usize);
    for path in &a.trees {
        let ts = rstar_gpu::search::read_trees(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        for t in &ts {
            trees += 1;
            if t.nodes.iter().any(|n| n.correct == Some(true)) {
                covered += 1;
            }
            let p = pairs(t, &pcfg);
            if !p.is_empty() {
                with_pairs += 1;
            }
            all_pairs.extend(p);
            sft.extend(select(t, &scfg));
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let pairs_path = a.out.join("pairs.jsonl");
    let sft_path = a.out.join("sft.jsonl");
    write_pairs(&pairs_path, &all_pairs)?;
    write_sft_messages(&sft_path, &sft, a.system.as_deref())?;
    let steps = all_pairs
        .iter()
        .filter(|p| p.kind == PairKind::Step)
        .count();
    let summary = serde_json::json!({
        "trees": trees,
        "covered": covered,
        "problems_with_pairs": with_pairs,
        "pairs": all_pairs.len(),
        "step_pairs": steps,
        "final_pairs": all_pairs.len() - steps,
        "sft_examples": sft.len(),
        "pairs_file": pairs_path,
        "sft_file": sft_path,
    });
    if a.quiet {
    } else if a.json {
        println!("{summary}");
    } else {
        println!(
            "{trees} trees ({covered} with a correct answer): {} pairs ({steps} step, {} final) from {with_pairs} problems -> {}; {} SFT examples -> {}",
            all_pairs.len(),
            all_pairs.len() - steps,
            pairs_path.display(),
            sft.len(),
            sft_path.display()
        );
    }
    Ok(summary)
}

/// `train ppm`: returns the training report (also written as `train_report.json`).
pub(crate) fn ppm(a: &PpmArgs) -> Result<serde_json::Value> {
    let cfg = HeadTrainConfig {
        epochs: a.epochs,
        lr: a.lr,
        weight_decay: a.weight_decay,
        batch_size: a.batch_size,
        holdout: a.holdout,
        seed: a.seed,
        count_weights: !a.uniform_weights,
    };
    let pairs = read_pairs(&a.pairs)?;
    anyhow::ensure!(
        !pairs.is_empty(),
        "{} holds no pairs; search more problems (pairs need both a correct and a wrong answer \
         in one tree) or relax --min-margin / --min-edit-distance in `train data`",
        a.pairs.display()
    );
    let loaded = load_policy(&a.model, "quantized")?;
    let (Some(model), Some(tok)) = (loaded.model, loaded.tokenizer) else {
        anyhow::bail!("--model must be a local model (a PPM backbone), not a server URL");
    };
    let start = match &a.init {
        Some(dir) => Ppm::load(dir, |_| Ok((model.clone(), tok.clone())))
            .map_err(|e| anyhow::anyhow!("loading the initial PPM from {}: {e}", dir.display()))?,
        None => Ppm::new(model.clone(), tok.clone(), &a.model, a.seed),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("texts through the backbone");
    let t0 = std::time::Instant::now();
    let feats = pair_features(&start, &pairs, cfg.count_weights, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    let feature_secs = t0.elapsed().as_secs_f64();
    bar.set_length(cfg.epochs as u64);
    bar.set_position(0);
    bar.set_message("epochs");
    let (w, b) = start.head();
    let init = Head { w: w.to_vec(), b };
    let (head, report) = train_head(&feats, &init, &cfg, |e| {
        bar.set_position(e.epoch as u64);
        bar.set_message(format!(
            "loss {:.4}  held-out acc {}",
            e.train_loss,
            e.heldout_accuracy
                .map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x))
        ));
    })?;
    bar.finish_and_clear();
    let head_report = report.clone();
    let (head, report, backbone_spec) = if a.layers == rstar_gpu::train::model::Layers::Head {
        (head, report, a.model.clone())
    } else {
        // The head stage's head on the same (float) backbone, then both together.
        let path = rstar_gpu::assets::model_path(&a.model).map_err(|e| anyhow::anyhow!("{e}"))?;
        let dense = LocalPolicy::load(&path, WeightMode::Dequantized, &train_device()?)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let tm = TrainModel::new(dense.model(), a.layers, a.seed)?;
        drop(dense);
        let bcfg = BackboneTrainConfig {
            epochs: a.backbone_epochs,
            lr: a.backbone_lr,
            head_lr: a.lr / 10.0,
            holdout: a.holdout,
            seed: a.seed,
            count_weights: !a.uniform_weights,
            ..BackboneTrainConfig::default()
        };
        let bar = step_bar();
        let t1 = std::time::Instant::now();
        let (head, report) = finetune_backbone(&tm, &start, &pairs, &head, &bcfg, |s, n, l| {
            bar.set_length(n as u64);
            bar.set_position(s as u64);
            bar.set_message(format!(
                "backbone {}  loss {l:.4}  {:.2} steps/s",
                a.layers,
                s as f64 / t1.elapsed().as_secs_f64().max(1e-9)
            ));
        })?;
        bar.finish_and_clear();
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
        save_checkpoint(&tm, &tok, &a.out.join("backbone"))?;
        (head, report, "backbone".to_string())
    };
    let trained = Ppm::with_head(model, tok, &backbone_spec, head.w, head.b)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    trained.save(&a.out).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut summary = serde_json::to_value(&report)?;
    summary["layers"] = serde_json::json!(a.layers.to_string());
    if a.layers != rstar_gpu::train::model::Layers::Head {
        summary["head_stage"] = serde_json::to_value(&head_report)?;
    }
    summary["pairs_file"] = serde_json::json!(a.pairs);
    summary["ppm_dir"] = serde_json::json!(a.out);
    summary["backbone"] = serde_json::json!(a.model);
    summary["config"] = serde_json::to_value(&cfg)?;
    summary["feature_secs"] = serde_json::json!(feature_secs);
    super::eval::write_atomic(
        &a.out.join("train_report.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    if a.quiet {
    } else if a.json {
        println!("{summary}");
    } else {
        let last = report.last();
        let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
        println!(
            "PPM head trained on {} pairs ({} problems), {} held out ({} problems): held-out pairwise accuracy {} (untrained {}), train loss {:.4}; saved {}",
            report.train_pairs,
            report.train_problems,
            report.heldout_pairs,
            report.heldout_problems,
            pct(last.and_then(|e| e.heldout_accuracy)),
            pct(report.initial_heldout_accuracy),
            last.map_or(f64::NAN, |e| e.train_loss),
            a.out.display()
        );
    }
    Ok(summary)
}

/// `train policy`: returns the training report (also written as `train_report.json`).
pub(crate) fn policy(a: &PolicyArgs) -> Result<serde_json::Value> {
    let cfg = SftTrainConfig {
        layers: a.layers,
        epochs: a.epochs,
        lr: a.lr,
        weight_decay: a.weight_decay,
        batch_size: a.batch_size,
        max_tokens: a.max_tokens,
        holdout: a.holdout,
        seed: a.seed,
        ..SftTrainConfig::default()
    };
    anyhow::ensure!(
        !matches!(a.layers, rstar_gpu::train::model::Layers::Head),
        "--layers head trains nothing in a policy; use lora:R, top:K or all"
    );
    let records = read_sft(&a.sft)?;
    let mut items = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let last = |role: Role| {
            r.messages
                .iter()
                .rev()
                .find(|m| m.role == role)
                .map(|m| m.content.clone())
        };
        let (Some(q), Some(sol)) = (last(Role::User), last(Role::Assistant)) else {
            anyhow::bail!(
                "{}:{}: an SFT record needs a user and an assistant message",
                a.sft.display(),
                i + 1
            );
        };
        items.push((q, sol));
    }
    anyhow::ensure!(
        !items.is_empty(),
        "{} holds no SFT examples; search more problems (SFT keeps correct, error-free trajectories)",
        a.sft.display()
    );
    let path = rstar_gpu::assets::model_path(&a.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t0 = std::time::Instant::now();
    let base = LocalPolicy::load(&path, WeightMode::Dequantized, &train_device()?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tok = base.tokenizer().clone();
    let model = TrainModel::new(base.model(), a.layers, a.seed)?;
    drop(base);
    let triples: Vec<(String, String, String)> = items
        .iter()
        .map(|(q, sol)| {
            (
                q.clone(),
                render(Some(&tok), PromptStyle::Code, q),
                sol.clone(),
            )
        })
        .collect();
    let seqs = tokenize(&tok, &triples, a.max_tokens)?;
    let bar = step_bar();
    let t1 = std::time::Instant::now();
    let report = train_sft(&model, &seqs, &cfg, |p| {
        bar.set_length(p.total_steps as u64);
        bar.set_position(p.step as u64);
        bar.set_message(format!(
            "epoch {}  loss {:.4}  {:.2} steps/s",
            p.epoch,
            p.loss,
            p.step as f64 / t1.elapsed().as_secs_f64().max(1e-9)
        ));
    })?;
    bar.finish_and_clear();
    save_checkpoint(&model, &tok, &a.out)?;
    let mut summary = serde_json::to_value(&report)?;
    summary["sft_file"] = serde_json::json!(a.sft);
    summary["base_model"] = serde_json::json!(a.model);
    summary["checkpoint"] = serde_json::json!(a.out);
    summary["config"] = serde_json::to_value(&cfg)?;
    summary["total_secs"] = serde_json::json!(t0.elapsed().as_secs_f64());
    super::eval::write_atomic(
        &a.out.join("train_report.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    if a.quiet {
    } else if a.json {
        println!("{summary}");
    } else {
        let last = report.epochs.last();
        println!(
            "policy tuned ({}, {} trainable parameters) on {} sequences ({} target tokens), {} steps: train loss {:.4}{}; saved {}",
            report.layers,
            report.trainable_params,
            report.train_sequences,
            report.target_tokens,
            report.steps,
            last.map_or(f64::NAN, |e| e.train_loss),
            last.and_then(|e| e.heldout_loss)
                .map_or(String::new(), |l| format!(", held-out loss {l:.4} (before {:.4})", report.initial_heldout_loss.unwrap_or(f64::NAN))),
            a.out.display()
        );
    }
    Ok(summary)
}

/// Where training runs: the first CUDA GPU when the binary is built with the `cuda` feature and
/// one is present, else the CPU.
fn train_device() -> Result<candle_core::Device> {
    let d = candle_core::Device::cuda_if_available(0).context("opening the CUDA device")?;
    if d.is_cuda() {
        tracing::info!("training on CUDA device 0");
    }
    Ok(d)
}

/// A progress bar over optimiser steps (length set by the first report).
fn step_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} step {pos}/{len}  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
