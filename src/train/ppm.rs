//! Training the PPM's value head with the Bradley–Terry loss on preference pairs.
//!
//! The backbone is frozen: every distinct `(question, partial solution)` text of the pairs goes
//! through it once ([`pair_features`], batched through [`Ppm::hidden`]), and the head
//! `z = w·h + b` is trained on those final-norm hidden states with AdamW (candle autograd). On a
//! CPU this is what makes PPM training feasible every round: the backbone pass is the whole cost,
//! and it is the same pass the search makes. The official code trains on the raw linear output
//! and squashes at inference; so do we (the saved head is read by [`Ppm::head_value`] as
//! `tanh(w·h + b)`, which keeps the ranking the loss learned).
//!
//! Features are standardised per dimension for training (hidden states have a few large
//! dimensions, which slows AdamW) and the scaling is folded back into `w` and `b`, so the saved
//! head reads raw hidden states. Pairs are split into train and held-out sets **by problem**, so
//! held-out accuracy measures ranking on unseen problems, not on siblings of training pairs.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::loss::bt_loss;
use super::model::{GradAccumulator, TrainModel};
use super::pairs::Pair;
use super::TrainError;
use crate::model::ppm::Ppm;

/// One pair as the head sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PairFeatures {
    /// The problem the pair comes from (the held-out split is by problem).
    pub problem: String,
    /// Hidden state of the chosen partial solution, `[d_model]`.
    pub pos: Vec<f32>,
    /// Hidden state of the rejected partial solution, `[d_model]`.
    pub neg: Vec<f32>,
    /// Loss weight (> 0).
    pub weight: f32,
}

/// Settings of one head training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadTrainConfig {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Pairs per optimiser step.
    pub batch_size: usize,
    /// Fraction of problems whose pairs are held out, in [0, 1).
    pub holdout: f64,
    /// Shuffling and split seed.
    pub seed: u64,
    /// Weight each pair by `1/(pos_count·neg_count)` (the official code) instead of 1.
    pub count_weights: bool,
}

impl Default for HeadTrainConfig {
    fn default() -> Self {
        HeadTrainConfig {
            epochs: 30,
            lr: 1e-2,
            weight_decay: 1e-2,
            batch_size: 64,
            holdout: 0.1,
            seed: 0,
            count_weights: true,
        }
    }
}

/// Loss and pairwise accuracy after one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// `None` when nothing is held out.
    pub heldout_loss: Option<f64>,
    pub heldout_accuracy: Option<f64>,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadTrainReport {
    pub train_pairs: usize,
    pub heldout_pairs: usize,
    pub train_problems: usize,
    pub heldout_problems: usize,
    /// Held-out pairwise accuracy of the initial head (before any step).
    pub initial_heldout_accuracy: Option<f64>,
    pub epochs: Vec<EpochStats>,
    pub secs: f64,
}

impl HeadTrainReport {
    /// The last epoch's stats, if any.
    pub fn last(&self) -> Option<&EpochStats> {
        self.epochs.last()
    }
}

/// A trained head: `z = w·h + b` on raw hidden states.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub w: Vec<f32>,
    pub b: f32,
}

impl Head {
    pub fn logit(&self, h: &[f32]) -> f32 {
        h.iter().zip(&self.w).map(|(a, b)| a * b).sum::<f32>() + self.b
    }
}

/// A stable hash of a problem id and a seed (FNV-1a: the same across runs and platforms, unlike
/// std's hasher).
fn problem_hash(problem: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in problem.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The held-out problems: of the distinct `problems`, the `round(fraction · n)` with the smallest
/// hashes (at least one when `fraction > 0` and there are two or more problems, never all of
/// them). The split depends only on the set of ids and the seed, not on their order or on how
/// many pairs each problem has, and is by problem, so held-out numbers measure unseen problems.
pub fn heldout_problems<'a>(
    problems: impl IntoIterator<Item = &'a str>,
    seed: u64,
    fraction: f64,
) -> std::collections::HashSet<String> {
    let mut ids: Vec<&str> = problems.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let n = ids.len();
    if fraction.is_nan() || fraction <= 0.0 || n < 2 {
        return Default::default();
    }
    let k = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
    ids.sort_by_key(|p| (problem_hash(p, seed), *p));
    ids.into_iter().take(k).map(str::to_string).collect()
}

/// Trains a head from `init` on `pairs` (all of width `d`). `on_epoch` sees each epoch's stats
/// (for a progress bar). Errors on empty or ragged input, non-finite features, or a bad config.
pub fn train_head(
    pairs: &[PairFeatures],
    init: &Head,
    cfg: &HeadTrainConfig,
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<(Head, HeadTrainReport), TrainError> {
    let t0 = std::time::Instant::now();
    let d = init.w.len();
    validate(pairs, d, cfg)?;
    let held_ids = heldout_problems(
        pairs.iter().map(|p| p.problem.as_str()),
        cfg.seed,
        cfg.holdout,
    );
    let (train, held): (Vec<&PairFeatures>, Vec<&PairFeatures>) =
        pairs.iter().partition(|p| !held_ids.contains(&p.problem));
    if train.is_empty() {
        return Err(TrainError::Data(format!(
            "all {} pairs fell in the held-out split; lower --holdout or add problems",
            pairs.len()
        )));
    }
    let problems = |v: &[&PairFeatures]| {
        v.iter()
            .map(|p| p.problem.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let (mean, scale) = standardise(&train, d);
    let dev = Device::Cpu;
    let to_rows = |v: &[&PairFeatures], pos: bool| -> Result<Tensor, TrainError> {
        let mut flat = Vec::with_capacity(v.len() * d);
        for p in v {
            let h = if pos { &p.pos } else { &p.neg };
            flat.extend(h.iter().enumerate().map(|(i, x)| (x - mean[i]) * scale[i]));
        }
        Ok(Tensor::from_vec(flat, (v.len(), d), &dev)?)
    };
    let weights = |v: &[&PairFeatures]| -> Result<Tensor, TrainError> {
        Ok(Tensor::from_vec(
            v.iter().map(|p| p.weight).collect::<Vec<_>>(),
            v.len(),
            &dev,
        )?)
    };
    let (tp, tn, tw) = (
        to_rows(&train, true)?,
        to_rows(&train, false)?,
        weights(&train)?,
    );
    let held_t = if held.is_empty() {
        None
    } else {
        Some((
            to_rows(&held, true)?,
            to_rows(&held, false)?,
            weights(&held)?,
        ))
    };
    // In standardised coordinates: w' = w / scale, b' = b + Σ w·mean.
    let w0: Vec<f32> = init.w.iter().zip(&scale).map(|(w, s)| w / s).collect();
    let b0 = init.b + init.w.iter().zip(&mean).map(|(w, m)| w * m).sum::<f32>();
    let w = Var::from_vec(w0, (d, 1), &dev)?;
    let b = Var::from_vec(vec![b0], 1, &dev)?;
    let mut opt = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let eval = |p: &Tensor, n: &Tensor, wt: &Tensor| -> Result<(f64, f64), TrainError> {
        let rp = score(p, &w, &b)?;
        let rn = score(n, &w, &b)?;
        let loss = bt_loss(&rp, &rn, wt)?.to_scalar::<f32>()? as f64;
        let right = rp
            .gt(&rn)?
            .to_dtype(DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()?;
        Ok((loss, right as f64))
    };
    let initial_heldout_accuracy = match &held_t {
        Some((p, n, wt)) => Some(eval(p, n, wt)?.1),
        None => None,
    };
    let mut order: Vec<u32> = (0..train.len() as u32).collect();
    let mut rng = cfg.seed ^ 0xA076_1D64_78BD_642F;
    let mut epochs = Vec::with_capacity(cfg.epochs);
    for epoch in 1..=cfg.epochs {
        crate::rng::shuffle(&mut order, &mut rng);
        for batch in order.chunks(cfg.batch_size) {
            let idx = Tensor::from_vec(batch.to_vec(), batch.len(), &dev)?;
            let rp = score(&tp.index_select(&idx, 0)?, &w, &b)?;
            let rn = score(&tn.index_select(&idx, 0)?, &w, &b)?;
            let loss = bt_loss(&rp, &rn, &tw.index_select(&idx, 0)?)?;
            opt.backward_step(&loss)?;
        }
        let (train_loss, train_accuracy) = eval(&tp, &tn, &tw)?;
        if !train_loss.is_finite() {
            return Err(TrainError::Data(format!(
                "the training loss became {train_loss} at epoch {epoch}; lower --lr"
            )));
        }
        let (heldout_loss, heldout_accuracy) = match &held_t {
            Some((p, n, wt)) => {
                let (l, a) = eval(p, n, wt)?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let st = EpochStats {
            epoch,
            train_loss,
            train_accuracy,
            heldout_loss,
            heldout_accuracy,
        };
        on_epoch(&st);
        epochs.push(st);
    }
    // Fold the standardisation back so the head reads raw hidden states.
    let ws = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let bs = b.as_tensor().to_vec1::<f32>()?[0];
    let head = Head {
        w: ws.iter().zip(&scale).map(|(w, s)| w * s).collect(),
        b: bs
            - ws.iter()
                .zip(&scale)
                .zip(&mean)
                .map(|((w, s), m)| w * s * m)
                .sum::<f32>(),
    };
    let report = HeadTrainReport {
        train_pairs: train.len(),
        heldout_pairs: held.len(),
        train_problems: problems(&train),
        heldout_problems: problems(&held),
        initial_heldout_accuracy,
        epochs,
        secs: t0.elapsed().as_secs_f64(),
    };
    Ok((head, report))
}

/// `z = X·w + b` for rows `X` `[n, d]`: `[n]`.
fn score(x: &Tensor, w: &Var, b: &Var) -> candle_core::Result<Tensor> {
    x.matmul(w.as_tensor())?
        .flatten_all()?
        .broadcast_add(b.as_tensor())
}

fn validate(pairs: &[PairFeatures], d: usize, cfg: &HeadTrainConfig) -> Result<(), TrainError> {
    if pairs.is_empty() {
        return Err(TrainError::Data(
            "no preference pairs to train on (the trees need problems with both correct and \
             wrong answers)"
                .into(),
        ));
    }
    if d == 0 {
        return Err(TrainError::Data("the head has width 0".into()));
    }
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(TrainError::Data(
            "epochs and batch size must be >= 1".into(),
        ));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(TrainError::Data(
            "the learning rate must be > 0 and finite".into(),
        ));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return Err(TrainError::Data(
            "the weight decay must be >= 0 and finite".into(),
        ));
    }
    if !(0.0..1.0).contains(&cfg.holdout) {
        return Err(TrainError::Data("holdout must be in [0, 1)".into()));
    }
    for (i, p) in pairs.iter().enumerate() {
        if p.pos.len() != d || p.neg.len() != d {
            return Err(TrainError::Data(format!(
                "pair {i} has features of width {} / {}; the head is {d} wide",
                p.pos.len(),
                p.neg.len()
            )));
        }
        if !(p.weight.is_finite() && p.weight > 0.0) {
            return Err(TrainError::Data(format!(
                "pair {i} has weight {}",
                p.weight
            )));
        }
        if p.pos.iter().chain(&p.neg).any(|x| !x.is_finite()) {
            return Err(TrainError::Data(format!(
                "pair {i} (problem {}) has non-finite features",
                p.problem
            )));
        }
    }
    Ok(())
}

/// Per-dimension mean and 1/std over both sides of the training pairs.
fn standardise(train: &[&PairFeatures], d: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (2 * train.len()) as f64;
    let mut sum = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for p in train {
        for h in [&p.pos, &p.neg] {
            for (i, &x) in h.iter().enumerate() {
                sum[i] += x as f64;
                sq[i] += (x as f64) * (x as f64);
            }
        }
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let scale = sum
        .iter()
        .zip(&sq)
        .map(|(s, q)| {
            let var = (q / n - (s / n).powi(2)).max(0.0);
            // Constant dimensions keep scale 1 (they cancel in every pair anyway).
            if var > 1e-12 {
                (1.0 / var.sqrt()) as f32
            } else {
                1.0
            }
        })
        .collect();
    (mean, scale)
}

/// Runs every distinct text of `pairs` through the PPM's backbone once and returns the pairs'
/// features. `on_progress(done, total)` is called after each chunk of texts.
pub fn pair_features(
    ppm: &Ppm,
    pairs: &[Pair],
    count_weights: bool,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<Vec<PairFeatures>, TrainError> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut texts: Vec<String> = Vec::new();
    let mut ids = Vec::with_capacity(pairs.len());
    for p in pairs {
        let mut id = |side: &str| {
            let text = ppm.input_text(&p.question, &format!("{}{}", p.prefix, side));
            let next = texts.len();
            *index.entry(text.clone()).or_insert_with(|| {
                texts.push(text);
                next
            })
        };
        let pos = id(&p.chosen);
        let neg = id(&p.rejected);
        ids.push((pos, neg));
    }
    let mut hidden: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
    // Chunks keep memory flat and let the caller show progress.
    for chunk in texts.chunks(16) {
        hidden.extend(ppm.hidden(chunk)?);
        on_progress(hidden.len(), texts.len());
    }
    Ok(pairs
        .iter()
        .zip(ids)
        .map(|(p, (a, b))| PairFeatures {
            problem: p.problem.clone(),
            pos: hidden[a].clone(),
            neg: hidden[b].clone(),
            weight: if count_weights {
                1.0 / (p.pos_count.max(1) * p.neg_count.max(1)) as f32
            } else {
                1.0
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussian draws from a seed.
    fn normals(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| crate::rng::gaussian(&mut s) as f32)
            .collect()
    }

    /// Pairs separable along a hidden direction `u`, in a space with large, uneven offsets and
    /// scales per dimension (like real hidden states): chosen − rejected has a positive
    /// component along `u`, swamped per dimension by noise.
    fn synthetic(n_problems: usize, per: usize, d: usize, seed: u64) -> Vec<PairFeatures> {
        let u = normals(d, seed);
        let norm = u.iter().map(|x| x * x).sum::<f32>().sqrt();
        let offs = normals(d, seed + 1);
        let mut out = Vec::new();
        for p in 0..n_problems {
            for k in 0..per {
                let s = seed + 100 + (p * per + k) as u64 * 7;
                let base = normals(d, s);
                let noise = normals(d, s + 3);
                let margin = 1.0 + (k % 3) as f32;
                let mk = |sign: f32| -> Vec<f32> {
                    (0..d)
                        .map(|i| {
                            let scale = 1.0 + 9.0 * (i % 5) as f32;
                            (offs[i] * 20.0
                                + base[i]
                                + 0.3 * noise[i] * sign
                                + sign * margin * u[i] / norm)
                                * scale
                        })
                        .collect()
                };
                out.push(PairFeatures {
                    problem: format!("p{p}"),
                    pos: mk(1.0),
                    neg: mk(-1.0),
                    weight: 1.0 / (1 + k % 2) as f32,
                });
            }
        }
        out
    }

    #[test]
    fn learns_a_separable_pair_set() {
        let d = 48;
        let pairs = synthetic(120, 6, d, 11);
        let init = Head {
            w: normals(d, 5).iter().map(|x| x * 0.01).collect(),
            b: 0.0,
        };
        let cfg = HeadTrainConfig {
            epochs: 40,
            holdout: 0.2,
            ..HeadTrainConfig::default()
        };
        let mut seen = 0;
        let (head, report) = train_head(&pairs, &init, &cfg, |_| seen += 1).unwrap();
        assert_eq!(seen, 40);
        assert!(report.heldout_pairs > 0 && report.train_pairs > report.heldout_pairs);
        let last = report.last().unwrap();
        let acc = last.heldout_accuracy.unwrap();
        assert!(acc >= 0.95, "held-out pairwise accuracy {acc}");
        assert!(last.train_loss < report.epochs[0].train_loss + 1e-9);
        // The folded head ranks raw features exactly as training measured.
        let held: Vec<&PairFeatures> = pairs
            .iter()
            .filter(|p| {
                heldout_problems(
                    pairs.iter().map(|p| p.problem.as_str()),
                    cfg.seed,
                    cfg.holdout,
                )
                .contains(&p.problem)
            })
            .collect();
        let right = held
            .iter()
            .filter(|p| head.logit(&p.pos) > head.logit(&p.neg))
            .count() as f64
            / held.len() as f64;
        assert!(
            (right - acc).abs() < 0.02,
            "raw {right} vs standardised {acc}"
        );
    }

    #[test]
    fn split_is_by_problem_and_stable() {
        let ids: Vec<String> = (0..2000).map(|i| format!("gsm8k-train-{i}")).collect();
        let held = heldout_problems(ids.iter().map(String::as_str), 0, 0.1);
        assert_eq!(held.len(), 200);
        // Order and repetition (several pairs per problem) do not change the split.
        let shuffled: Vec<&str> = ids
            .iter()
            .rev()
            .chain(ids.iter())
            .map(String::as_str)
            .collect();
        assert_eq!(heldout_problems(shuffled, 0, 0.1), held);
        assert_ne!(
            heldout_problems(ids.iter().map(String::as_str), 1, 0.1),
            held
        );
        assert!(heldout_problems(ids.iter().map(String::as_str), 0, 0.0).is_empty());
        // Few problems: at least one held out, never all.
        assert_eq!(heldout_problems(["a", "b"], 0, 0.1).len(), 1);
        assert_eq!(heldout_problems(["a", "b"], 0, 0.9).len(), 1);
        assert!(heldout_problems(["a", "a"], 0, 0.5).is_empty());
    }

    #[test]
    fn bad_input_is_an_error() {
        let init = Head {
            w: vec![0.0; 4],
            b: 0.0,
        };
        let cfg = HeadTrainConfig::default();
        let pf = |pos: Vec<f32>, weight: f32| PairFeatures {
            problem: "a".into(),
            pos,
            neg: vec![0.0; 4],
            weight,
        };
        assert!(train_head(&[], &init, &cfg, |_| {}).is_err());
        let e = train_head(&[pf(vec![0.0; 3], 1.0)], &init, &cfg, |_| {}).unwrap_err();
        assert!(e.to_string().contains("width 3"), "{e}");
        let e = train_head(&[pf(vec![f32::NAN; 4], 1.0)], &init, &cfg, |_| {}).unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
        assert!(train_head(&[pf(vec![1.0; 4], 0.0)], &init, &cfg, |_| {}).is_err());
        let bad = HeadTrainConfig {
            lr: f64::NAN,
            ..HeadTrainConfig::default()
        };
        assert!(train_head(&[pf(vec![1.0; 4], 1.0)], &init, &bad, |_| {}).is_err());
    }
}

/// Settings of the backbone stage of PPM training ([`finetune_backbone`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackboneTrainConfig {
    /// Epochs over the training pairs.
    pub epochs: usize,
    /// AdamW learning rate of the backbone weights (or adapters).
    pub lr: f64,
    /// AdamW learning rate of the value head.
    pub head_lr: f64,
    /// Pairs per optimiser step (gradients accumulated one pair at a time).
    pub batch_size: usize,
    /// Global gradient-norm clip (0: off).
    pub clip_norm: f64,
    /// Held-out fraction and split seed: use the head stage's, so both report on the same split.
    pub holdout: f64,
    pub seed: u64,
    /// Weight each pair by `1/(pos_count·neg_count)`.
    pub count_weights: bool,
}

impl Default for BackboneTrainConfig {
    fn default() -> Self {
        BackboneTrainConfig {
            epochs: 1,
            lr: 1e-4,
            head_lr: 1e-3,
            batch_size: 8,
            clip_norm: 1.0,
            holdout: 0.1,
            seed: 0,
            count_weights: true,
        }
    }
}

/// The second stage of PPM training when backbone layers train (`--layers top:K|lora:R|all`):
/// starting from `head` (the head stage's result, on the same backbone), the backbone's
/// trainable part and the head train together with the Bradley–Terry loss on each pair's two
/// texts (the last token's final hidden state, as the PPM scores). `model` is the trainable copy
/// of `ppm`'s backbone; texts are formatted by `ppm`. `on_step(step, total, loss)` sees every
/// optimiser step. Returns the new head and a report whose epochs hold pairwise accuracies.
pub fn finetune_backbone(
    model: &TrainModel,
    ppm: &Ppm,
    pairs: &[Pair],
    head: &Head,
    cfg: &BackboneTrainConfig,
    mut on_step: impl FnMut(usize, usize, f64),
) -> Result<(Head, HeadTrainReport), TrainError> {
    let t0 = std::time::Instant::now();
    if pairs.is_empty() {
        return Err(TrainError::Data("no preference pairs to train on".into()));
    }
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(TrainError::Data(
            "epochs and batch size must be >= 1".into(),
        ));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0 && cfg.head_lr.is_finite() && cfg.head_lr > 0.0) {
        return Err(TrainError::Data(
            "learning rates must be > 0 and finite".into(),
        ));
    }
    let d = model.config().d_model;
    if head.w.len() != d {
        return Err(TrainError::Data(format!(
            "the head is {} wide; the backbone is {d}",
            head.w.len()
        )));
    }
    let backbone_vars = model.trainable_vars();
    if backbone_vars.is_empty() {
        return Err(TrainError::Data(format!(
            "layers `{}` leaves no backbone weight to train",
            model.layers()
        )));
    }
    // Distinct texts, tokenised once; frozen lower layers run once per text.
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut tokens: Vec<Vec<u32>> = Vec::new();
    let mut ids = Vec::with_capacity(pairs.len());
    for p in pairs {
        let mut id = |side: &str| -> Result<usize, TrainError> {
            let text = ppm.input_text(&p.question, &format!("{}{}", p.prefix, side));
            if let Some(&i) = index.get(&text) {
                return Ok(i);
            }
            tokens.push(ppm.tokenizer().encode(&text)?);
            index.insert(text, tokens.len() - 1);
            Ok(tokens.len() - 1)
        };
        let pos = id(&p.chosen)?;
        let neg = id(&p.rejected)?;
        ids.push((pos, neg));
    }
    let from = model.first_trainable_layer();
    // With every weight training the embeddings change each step: nothing can be cached.
    let cache = model.layers() != super::model::Layers::All;
    let prefixes: Vec<Tensor> = if cache {
        tokens
            .iter()
            .map(|t| model.frozen_prefix(t))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let dev = model.device().clone();
    let w = Var::from_vec(head.w.clone(), (d, 1), &dev)?;
    let b = Var::from_vec(vec![head.b], 1, &dev)?;
    let reward = |i: usize| -> Result<Tensor, TrainError> {
        let x = if cache {
            prefixes[i].clone()
        } else {
            model.frozen_prefix(&tokens[i])?
        };
        let h = model.hidden_from(x, from)?;
        let last = h.narrow(0, h.dim(0)? - 1, 1)?;
        Ok(last
            .matmul(w.as_tensor())?
            .flatten_all()?
            .broadcast_add(b.as_tensor())?)
    };
    let weight = |p: &Pair| {
        if cfg.count_weights {
            1.0 / (p.pos_count.max(1) * p.neg_count.max(1)) as f64
        } else {
            1.0
        }
    };
    let held_ids = heldout_problems(
        pairs.iter().map(|p| p.problem.as_str()),
        cfg.seed,
        cfg.holdout,
    );
    let (train, held): (Vec<usize>, Vec<usize>) =
        (0..pairs.len()).partition(|&i| !held_ids.contains(&pairs[i].problem));
    if train.is_empty() {
        return Err(TrainError::Data(
            "all pairs fell in the held-out split; lower the held-out fraction".into(),
        ));
    }
    // Pairwise accuracy and weighted loss over `set`, without gradients.
    let evaluate = |set: &[usize]| -> Result<Option<(f64, f64)>, TrainError> {
        if set.is_empty() {
            return Ok(None);
        }
        let mut cache: HashMap<usize, f32> = HashMap::new();
        let mut r = |i: usize| -> Result<f32, TrainError> {
            if let Some(&v) = cache.get(&i) {
                return Ok(v);
            }
            let v = reward(i)?.detach().to_vec1::<f32>()?[0];
            cache.insert(i, v);
            Ok(v)
        };
        let (mut loss, mut wsum, mut right) = (0f64, 0f64, 0usize);
        for &k in set {
            let (rp, rn) = (r(ids[k].0)?, r(ids[k].1)?);
            let wt = weight(&pairs[k]);
            let z = (rn - rp) as f64;
            loss += wt * (z.max(0.0) + (-z.abs()).exp().ln_1p());
            wsum += wt;
            right += (rp > rn) as usize;
        }
        Ok(Some((
            loss / wsum.max(1e-12),
            right as f64 / set.len() as f64,
        )))
    };
    let initial_heldout_accuracy = evaluate(&held)?.map(|x| x.1);
    let params = |lr| ParamsAdamW {
        lr,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    let mut opt_backbone = AdamW::new(backbone_vars.clone(), params(cfg.lr))?;
    let mut opt_head = AdamW::new(vec![w.clone(), b.clone()], params(cfg.head_lr))?;
    let mut all_vars = backbone_vars;
    all_vars.push(w.clone());
    all_vars.push(b.clone());
    let total = train.len().div_ceil(cfg.batch_size) * cfg.epochs;
    let mut order: Vec<u32> = (0..train.len() as u32).collect();
    let mut rng = cfg.seed ^ 0xB4C4_0FF1_CE00_7E57;
    let mut epochs = Vec::with_capacity(cfg.epochs);
    let mut step = 0;
    for epoch in 1..=cfg.epochs {
        crate::rng::shuffle(&mut order, &mut rng);
        let (mut run_loss, mut run_w, mut run_right) = (0f64, 0f64, 0usize);
        for batch in order.chunks(cfg.batch_size) {
            let wsum: f64 = batch
                .iter()
                .map(|&k| weight(&pairs[train[k as usize]]))
                .sum();
            let mut acc = GradAccumulator::new(all_vars.clone());
            let mut batch_loss = 0f64;
            for &k in batch {
                let k = train[k as usize];
                let (rp, rn) = (reward(ids[k].0)?, reward(ids[k].1)?);
                let wt = weight(&pairs[k]);
                let one = Tensor::ones(1, DType::F32, &dev)?;
                let loss = (bt_loss(&rp, &rn, &one)? * (wt / wsum))?;
                let (vp, vn) = (rp.to_vec1::<f32>()?[0], rn.to_vec1::<f32>()?[0]);
                run_right += (vp > vn) as usize;
                let l = loss.to_scalar::<f32>()? as f64;
                batch_loss += l;
                run_loss += l * wsum;
                run_w += wt;
                acc.add(loss.backward()?)?;
            }
            let Some(grads) = acc.finish(cfg.clip_norm, &format!("epoch {epoch}"))? else {
                continue;
            };
            opt_backbone.step(&grads)?;
            opt_head.step(&grads)?;
            step += 1;
            on_step(step, total, batch_loss);
        }
        let held_stats = evaluate(&held)?;
        epochs.push(EpochStats {
            epoch,
            // Running values over the epoch (each pair scored just before its update).
            train_loss: run_loss / run_w.max(1e-12),
            train_accuracy: run_right as f64 / train.len() as f64,
            heldout_loss: held_stats.map(|x| x.0),
            heldout_accuracy: held_stats.map(|x| x.1),
        });
    }
    let problems = |set: &[usize]| {
        set.iter()
            .map(|&k| pairs[k].problem.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let head = Head {
        w: w.as_tensor().flatten_all()?.to_vec1::<f32>()?,
        b: b.as_tensor().to_vec1::<f32>()?[0],
    };
    if !head.b.is_finite() || head.w.iter().any(|x| !x.is_finite()) {
        return Err(TrainError::Data(
            "the value head became non-finite; lower the learning rates".into(),
        ));
    }
    Ok((
        head,
        HeadTrainReport {
            train_pairs: train.len(),
            heldout_pairs: held.len(),
            train_problems: problems(&train),
            heldout_problems: problems(&held),
            initial_heldout_accuracy,
            epochs,
            secs: t0.elapsed().as_secs_f64(),
        },
    ))
}
