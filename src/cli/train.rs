//! `rstar-gpu train data|ppm`: the self-evolution steps one at a time — search trees into
//! preference pairs and SFT data, and pairs into a trained PPM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rstar_gpu::model::ppm::Ppm;
use rstar_gpu::train::export::{read_pairs, write_pairs, write_sft_messages};
use rstar_gpu::train::pairs::{pairs, PairConfig, PairKind};
use rstar_gpu::train::ppm::{pair_features, train_head, Head, HeadTrainConfig};
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
}

#[derive(Args, Debug)]
pub struct DataArgs {
    /// Trees files (JSONL, one tree per line); several are merged.
    #[arg(long, required = true, num_args = 1..)]
    trees: Vec<PathBuf>,
    /// Output directory for pairs.jsonl and sft.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Positives and negatives per node (paper: 2).
    #[arg(long, default_value_t = 2)]
    per_side: usize,
    /// Drop step pairs whose Q margin is below this (official code: 0.5).
    #[arg(long, default_value_t = 0.5)]
    min_margin: f32,
    /// Drop pairs whose texts are within this Levenshtein distance (official code: 20).
    #[arg(long, default_value_t = 20)]
    min_edit_distance: usize,
    /// Keep step pairs even when the positive's greedy continuation has a lower average Q.
    #[arg(long)]
    no_greedy_check: bool,
    /// SFT trajectories per problem (paper: 2).
    #[arg(long, default_value_t = 2)]
    sft_per_problem: usize,
    /// Keep SFT trajectories that contain a code error.
    #[arg(long)]
    keep_errors: bool,
    /// A system message for every SFT example.
    #[arg(long)]
    system: Option<String>,
    /// Print exactly one JSON object (the counts) on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PpmArgs {
    /// Pairs file written by `train data`.
    #[arg(long)]
    pairs: PathBuf,
    /// Backbone: an asset name, a .gguf file or a Hugging Face directory (the policy of this
    /// round).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Start from this PPM's head (a directory) instead of a fresh one.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Output PPM directory (ppm.json, value_head.safetensors, train_report.json).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = HeadTrainConfig::default().epochs)]
    epochs: usize,
    #[arg(long, default_value_t = HeadTrainConfig::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = HeadTrainConfig::default().weight_decay)]
    weight_decay: f64,
    #[arg(long, default_value_t = HeadTrainConfig::default().batch_size)]
    batch_size: usize,
    /// Fraction of problems held out for the pairwise-accuracy check.
    #[arg(long, default_value_t = HeadTrainConfig::default().holdout)]
    holdout: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight every pair 1 instead of 1/(positives·negatives) of its node.
    #[arg(long)]
    uniform_weights: bool,
    /// Print exactly one JSON object (the training report) on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(c: TrainCommand) -> Result<()> {
    match c {
        TrainCommand::Data(a) => data(a),
        TrainCommand::Ppm(a) => ppm(a),
    }
}

fn data(a: DataArgs) -> Result<()> {
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
    if a.json {
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
    Ok(())
}

fn ppm(a: PpmArgs) -> Result<()> {
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
    let trained =
        Ppm::with_head(model, tok, &a.model, head.w, head.b).map_err(|e| anyhow::anyhow!("{e}"))?;
    trained.save(&a.out).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut summary = serde_json::to_value(&report)?;
    summary["pairs_file"] = serde_json::json!(a.pairs);
    summary["ppm_dir"] = serde_json::json!(a.out);
    summary["backbone"] = serde_json::json!(a.model);
    summary["config"] = serde_json::to_value(&cfg)?;
    summary["feature_secs"] = serde_json::json!(feature_secs);
    super::eval::write_atomic(
        &a.out.join("train_report.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    if a.json {
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
    Ok(())
}
