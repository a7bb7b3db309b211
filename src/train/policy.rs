//! Policy SFT: next-token loss on the selected trajectories ([`super::sft`]), in candle.
//!
//! Each example is the prompt the search continues from (the question rendered with the
//! code-augmented prompt, [`crate::search::prompt::render`]) followed by the trajectory; the loss
//! is the mean negative log-likelihood of the trajectory's tokens only (the prompt is context).
//! Sequences run one at a time; their gradients are summed over `batch_size` sequences before an
//! AdamW step (gradient accumulation: memory stays at one sequence's graph), with global-norm
//! clipping. Which weights train is [`Layers`]: on a CPU, `lora:R` or `top:K` keep a step cheap;
//! with `top:K` the frozen lower layers run once per example, not once per epoch.
//!
//! The paper fine-tunes from the base model every round; so does `evolve` (the caller passes the
//! base model). Held-out examples (by problem) report loss and next-token accuracy per epoch.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::model::{GradAccumulator, Layers, TrainModel};
use super::ppm::heldout_problems;
use super::TrainError;
use crate::model::tokenizer::Tokenizer;

/// Settings of one SFT run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftTrainConfig {
    pub layers: Layers,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Sequences per optimiser step (gradients accumulated).
    pub batch_size: usize,
    /// Global gradient-norm clip (0: off).
    pub clip_norm: f64,
    /// Longest training sequence in tokens (prompt + trajectory); longer trajectories are cut.
    pub max_tokens: usize,
    /// Fraction of problems held out for the loss check, in [0, 1).
    pub holdout: f64,
    pub seed: u64,
}

impl Default for SftTrainConfig {
    fn default() -> Self {
        SftTrainConfig {
            layers: Layers::Lora {
                rank: 8,
                alpha: 16.0,
            },
            epochs: 2,
            lr: 2e-4,
            weight_decay: 0.0,
            batch_size: 4,
            clip_norm: 1.0,
            max_tokens: 2048,
            holdout: 0.0,
            seed: 0,
        }
    }
}

/// One training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SftSequence {
    pub problem: String,
    /// Prompt + target token ids.
    pub tokens: Vec<u32>,
    /// Tokens `[0, target_start)` are context; the loss covers the rest.
    pub target_start: usize,
}

/// Tokenises `(problem id, prompt text, target text)` triples. The prompt and target are encoded
/// separately so the boundary is exact; the target gets the tokenizer's end-of-sequence token and
/// is cut to fit `max_tokens`.
pub fn tokenize(
    tokenizer: &Tokenizer,
    items: &[(String, String, String)],
    max_tokens: usize,
) -> Result<Vec<SftSequence>, TrainError> {
    let mut out = Vec::with_capacity(items.len());
    for (problem, prompt, target) in items {
        let mut tokens = tokenizer.encode(prompt)?;
        let target_start = tokens.len();
        let mut target_ids = tokenizer.encode(target)?;
        if target_ids.is_empty() {
            continue;
        }
        // The trajectory ends the turn: the model learns to stop after it (chat SFT does the
        // same with the template's end-of-turn token).
        if let Some(&eos) = tokenizer.eos_ids().first() {
            target_ids.push(eos);
        }
        tokens.extend(target_ids);
        if target_start + 1 >= max_tokens {
            return Err(TrainError::Data(format!(
                "problem {problem}: the prompt alone has {target_start} tokens; --max-tokens {max_tokens} leaves no room for the solution"
            )));
        }
        tokens.truncate(max_tokens);
        out.push(SftSequence {
            problem: problem.clone(),
            tokens,
            target_start,
        });
    }
    Ok(out)
}

/// Loss and accuracy after one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftEpoch {
    pub epoch: usize,
    /// Mean token NLL over the training targets during the epoch.
    pub train_loss: f64,
    /// After the epoch, on held-out sequences (`None` when nothing is held out).
    pub heldout_loss: Option<f64>,
    pub heldout_token_accuracy: Option<f64>,
}

/// What an SFT run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftReport {
    pub layers: Layers,
    pub trainable_params: usize,
    pub train_sequences: usize,
    pub heldout_sequences: usize,
    pub target_tokens: usize,
    pub steps: usize,
    /// Held-out loss before training.
    pub initial_heldout_loss: Option<f64>,
    pub epochs: Vec<SftEpoch>,
    pub secs: f64,
}

/// Progress after each optimiser step.
#[derive(Debug, Clone, Copy)]
pub struct SftProgress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Mean token loss of this step's batch.
    pub loss: f64,
}

/// Sum of NLL over the target tokens of one sequence and the number of target tokens and
/// correct argmax predictions. `prefix` is the cached frozen part, if any.
fn sequence_nll(
    model: &TrainModel,
    seq: &SftSequence,
    prefix: Option<&Tensor>,
) -> Result<(Tensor, usize, usize), TrainError> {
    let from = model.first_trainable_layer();
    let x = match prefix {
        Some(p) => p.clone(),
        None => model.frozen_prefix(&seq.tokens)?,
    };
    let hidden = model.hidden_from(x, from)?;
    // Position i predicts token i + 1: rows [target_start - 1, T - 1).
    let first = seq.target_start.saturating_sub(1);
    let rows = seq.tokens.len() - 1 - first;
    let logits = model.logits(&hidden.narrow(0, first, rows)?)?;
    let targets: Vec<u32> = seq.tokens[first + 1..].to_vec();
    let tgt = Tensor::from_vec(targets.clone(), rows, model.device())?;
    let logp = candle_nn::ops::log_softmax(&logits, 1)?;
    let picked = logp.gather(&tgt.unsqueeze(1)?, 1)?.squeeze(1)?;
    let nll = picked.sum_all()?.neg()?;
    let argmax: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    let correct = argmax.iter().zip(&targets).filter(|(a, b)| a == b).count();
    Ok((nll, rows, correct))
}

/// Mean token loss and accuracy over `seqs` (no gradients kept).
fn evaluate(
    model: &TrainModel,
    seqs: &[&SftSequence],
    prefixes: &HashMap<usize, Tensor>,
    index: &HashMap<*const SftSequence, usize>,
) -> Result<Option<(f64, f64)>, TrainError> {
    if seqs.is_empty() {
        return Ok(None);
    }
    let (mut nll, mut n, mut ok) = (0f64, 0usize, 0usize);
    for s in seqs {
        let p = index
            .get(&(*s as *const SftSequence))
            .and_then(|i| prefixes.get(i));
        let (l, rows, c) = sequence_nll(model, s, p)?;
        nll += l.detach().to_scalar::<f32>()? as f64;
        n += rows;
        ok += c;
    }
    Ok(Some((nll / n.max(1) as f64, ok as f64 / n.max(1) as f64)))
}

/// Trains `model` (its trainable part, as built) on `seqs`. `on_step` sees every step.
pub fn train_sft(
    model: &TrainModel,
    seqs: &[SftSequence],
    cfg: &SftTrainConfig,
    mut on_step: impl FnMut(&SftProgress),
) -> Result<SftReport, TrainError> {
    let t0 = std::time::Instant::now();
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(TrainError::Data(
            "epochs and batch size must be at least 1".into(),
        ));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0 && (0.0..1.0).contains(&cfg.holdout)) {
        return Err(TrainError::Data(
            "the learning rate must be > 0 and the held-out fraction in [0, 1)".into(),
        ));
    }
    let vars: Vec<Var> = model.trainable_vars();
    if vars.is_empty() {
        return Err(TrainError::Data(format!(
            "layers `{}` leaves nothing to train in the policy",
            model.layers()
        )));
    }
    let held_ids = heldout_problems(
        seqs.iter().map(|s| s.problem.as_str()),
        cfg.seed,
        cfg.holdout,
    );
    let (train, heldout): (Vec<&SftSequence>, Vec<&SftSequence>) = seqs
        .iter()
        .filter(|s| s.tokens.len() > s.target_start)
        .partition(|s| !held_ids.contains(&s.problem));
    if train.is_empty() {
        return Err(TrainError::Data(
            "no training sequences (all held out or empty)".into(),
        ));
    }
    // Frozen prefixes once per sequence when the lower layers do not train.
    let index: HashMap<*const SftSequence, usize> = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| (s as *const SftSequence, i))
        .collect();
    let mut prefixes: HashMap<usize, Tensor> = HashMap::new();
    if model.first_trainable_layer() > 0 {
        for (i, s) in seqs.iter().enumerate() {
            prefixes.insert(i, model.frozen_prefix(&s.tokens)?);
        }
    }
    let initial_heldout_loss = evaluate(model, &heldout, &prefixes, &index)?.map(|x| x.0);
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut state = cfg.seed ^ 0x5F7_5EED;
    let mut report = SftReport {
        layers: model.layers(),
        trainable_params: model.trainable_params(),
        train_sequences: train.len(),
        heldout_sequences: heldout.len(),
        target_tokens: train.iter().map(|s| s.tokens.len() - s.target_start).sum(),
        steps: 0,
        initial_heldout_loss,
        epochs: Vec::new(),
        secs: 0.0,
    };
    for epoch in 1..=cfg.epochs {
        // Fisher–Yates with SplitMix64: a seeded, platform-independent order.
        for i in (1..order.len()).rev() {
            let j = (crate::rng::uniform(&mut state) * (i + 1) as f64) as usize;
            order.swap(i, j.min(i));
        }
        let (mut epoch_nll, mut epoch_tokens) = (0f64, 0usize);
        for batch in order.chunks(cfg.batch_size) {
            let tokens: usize = batch
                .iter()
                .map(|&i| train[i].tokens.len() - train[i].target_start)
                .sum();
            let mut acc = GradAccumulator::new(vars.clone());
            let mut batch_nll = 0f64;
            for &i in batch {
                let s = train[i];
                let p = index
                    .get(&(s as *const SftSequence))
                    .and_then(|k| prefixes.get(k));
                let (nll, _, _) = sequence_nll(model, s, p)?;
                batch_nll += nll.to_scalar::<f32>()? as f64;
                let loss = (nll / tokens as f64)?;
                acc.add(loss.backward()?)?;
            }
            let Some(grads) = acc.finish(cfg.clip_norm, &format!("epoch {epoch}"))? else {
                continue;
            };
            opt.step(&grads)?;
            report.steps += 1;
            epoch_nll += batch_nll;
            epoch_tokens += tokens;
            on_step(&SftProgress {
                step: report.steps,
                total_steps,
                epoch,
                loss: batch_nll / tokens.max(1) as f64,
            });
        }
        let held = evaluate(model, &heldout, &prefixes, &index)?;
        report.epochs.push(SftEpoch {
            epoch,
            train_loss: epoch_nll / epoch_tokens.max(1) as f64,
            heldout_loss: held.map(|h| h.0),
            heldout_token_accuracy: held.map(|h| h.1),
        });
    }
    report.secs = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes `model` (adapters merged) as a Hugging Face directory with `tokenizer`'s files: a
/// checkpoint [`crate::model::generate::LocalPolicy::load`] reads back (re-quantized to Q8_0 for
/// decoding unless f32 is asked for). Written to `dir.partial` and renamed, so a killed run never
/// leaves a half-written checkpoint under `dir`.
pub fn save_checkpoint(
    model: &TrainModel,
    tokenizer: &Tokenizer,
    dir: &std::path::Path,
) -> Result<(), TrainError> {
    let io = |path: &std::path::Path, source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    let tensors = model.merged_tensors()?;
    crate::model::transformer::write_hf_weights(&tmp, &tensors, model.hf_config())?;
    crate::model::generate::save_tokenizer_files(tokenizer, &tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
    Ok(())
}
