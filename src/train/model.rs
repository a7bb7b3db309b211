//! The trainable transformer: the inference model's weights in a differentiable forward pass.
//!
//! [`crate::model::transformer::Transformer`] is built for decoding (quantized weights, host
//! attention over KV caches, no autograd). Training needs a forward pass made of candle tensor ops
//! so that `loss.backward()` reaches the weights. [`TrainModel`] takes the inference model's
//! weights in Hugging Face layout ([`Transformer::hf_tensors`], f32), runs one sequence at a time
//! with full causal attention, and keeps each weight either frozen (a plain tensor: no gradient
//! is computed for it) or trainable (a [`Var`]), as [`Layers`] says:
//!
//! - `all`: every weight (embeddings, norms, projections, LM head);
//! - `top:K`: the last K transformer layers and the final norm (the lower layers are frozen, so
//!   their activations can be computed once and reused every epoch: [`TrainModel::frozen_prefix`]);
//! - `lora:R`: every projection gets a rank-R adapter `W + (α/R)·B·A` (B starts at zero, so the
//!   adapted model starts equal to the base); the base weights stay frozen;
//! - `head`: no backbone weight (the PPM trains only its value head).
//!
//! [`TrainModel::merged_tensors`] folds adapters into the weights and returns the Hugging Face
//! tensors, which [`crate::model::transformer::write_hf_weights`] writes as a checkpoint that
//! [`crate::model::generate::LocalPolicy::load`] reads back.
//!
//! Arrays: token ids `[T]`; activations `[T, d_model]` f32; attention `[n_head, T, T]`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::model::transformer::{Transformer, TransformerConfig};

/// Which weights a training run updates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layers {
    /// Nothing in the backbone (the PPM's value head only).
    Head,
    /// Every weight.
    All,
    /// The last `k` transformer layers and the final norm.
    Top { k: usize },
    /// Rank-`rank` adapters on every projection, scaled by `alpha / rank`.
    Lora { rank: usize, alpha: f64 },
}

impl fmt::Display for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layers::Head => write!(f, "head"),
            Layers::All => write!(f, "all"),
            Layers::Top { k } => write!(f, "top:{k}"),
            Layers::Lora { rank, alpha } => write!(f, "lora:{rank}:{alpha}"),
        }
    }
}

impl FromStr for Layers {
    type Err = String;
    /// `head`, `all`, `top:K`, `lora:R` (α = 2R) or `lora:R:ALPHA`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected head, all, top:K, lora:R or lora:R:ALPHA");
        let parts: Vec<&str> = s.trim().split(':').collect();
        let num = |p: &str| p.parse::<usize>().ok().filter(|&v| v > 0).ok_or_else(bad);
        match parts.as_slice() {
            ["head"] => Ok(Layers::Head),
            ["all"] => Ok(Layers::All),
            ["top", k] => Ok(Layers::Top { k: num(k)? }),
            ["lora", r] => {
                let rank = num(r)?;
                Ok(Layers::Lora {
                    rank,
                    alpha: 2.0 * rank as f64,
                })
            }
            ["lora", r, a] => Ok(Layers::Lora {
                rank: num(r)?,
                alpha: a
                    .parse::<f64>()
                    .ok()
                    .filter(|a| a.is_finite() && *a > 0.0)
                    .ok_or_else(bad)?,
            }),
            _ => Err(bad()),
        }
    }
}

/// The projections of one layer, by Hugging Face name suffix.
const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// A low-rank adapter: `y += scale · (x Aᵀ) Bᵀ`.
struct Lora {
    /// `[rank, k]`, small random.
    a: Var,
    /// `[n_out, rank]`, zero at the start.
    b: Var,
    scale: f64,
}

/// A differentiable Llama/Qwen2 transformer over Hugging Face tensors.
pub struct TrainModel {
    cfg: TransformerConfig,
    device: Device,
    layers: Layers,
    /// Every base weight by Hugging Face name (trainable ones are the tensors of `vars`).
    weights: HashMap<String, Tensor>,
    /// Trainable full weights, by name.
    vars: Vec<(String, Var)>,
    /// Adapters by projection name (`model.layers.{i}.self_attn.q_proj`).
    lora: HashMap<String, Lora>,
    /// `config.json` of the checkpoint this model writes.
    hf_config: serde_json::Value,
    /// RoPE tables `[context_length, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
}

fn data_err(msg: impl Into<String>) -> TrainError {
    TrainError::Data(msg.into())
}

impl TrainModel {
    /// The trainable copy of `model`, with `layers` trainable. `seed` initialises adapters.
    pub fn new(model: &Transformer, layers: Layers, seed: u64) -> Result<Self, TrainError> {
        let (weights, hf_config) = model.hf_tensors()?;
        let mut cfg = model.config().clone();
        // Hugging Face row order: RoPE pairs (i, i + head_dim/2).
        cfg.rope_neox = true;
        let device = model.device().clone();
        let n = cfg.n_layer;
        if let Layers::Top { k } = layers {
            if k > n {
                return Err(data_err(format!(
                    "top:{k} asks for more layers than the model has ({n})"
                )));
            }
        }
        let trainable = |name: &str| -> bool {
            match layers {
                Layers::All => true,
                Layers::Top { k } => {
                    name == "model.norm.weight"
                        || name
                            .strip_prefix("model.layers.")
                            .and_then(|r| r.split('.').next())
                            .and_then(|i| i.parse::<usize>().ok())
                            .is_some_and(|i| i + k >= n)
                }
                Layers::Head | Layers::Lora { .. } => false,
            }
        };
        let mut names: Vec<String> = weights.keys().cloned().collect();
        names.sort();
        let mut weights = weights;
        let mut vars = Vec::new();
        for name in names {
            if trainable(&name) {
                let var = Var::from_tensor(&weights[&name])?;
                weights.insert(name.clone(), var.as_tensor().clone());
                vars.push((name, var));
            }
        }
        let mut lora = HashMap::new();
        if let Layers::Lora { rank, alpha } = layers {
            let mut state = seed ^ 0x1ED0_5EED_0BAD_CAFE;
            for i in 0..n {
                for p in PROJECTIONS {
                    let name = format!("model.layers.{i}.{p}");
                    let w = &weights[&format!("{name}.weight")];
                    let (n_out, k) = w.dims2()?;
                    // Kaiming-uniform-like scale for A, as PEFT does; B = 0.
                    let bound = 1.0 / (k as f64).sqrt();
                    let a: Vec<f32> = (0..rank * k)
                        .map(|_| ((crate::rng::uniform(&mut state) * 2.0 - 1.0) * bound) as f32)
                        .collect();
                    let a = Var::from_tensor(&Tensor::from_vec(a, (rank, k), &device)?)?;
                    let b = Var::zeros((n_out, rank), DType::F32, &device)?;
                    lora.insert(
                        name,
                        Lora {
                            a,
                            b,
                            scale: alpha / rank as f64,
                        },
                    );
                }
            }
        }
        let half = cfg.head_dim / 2;
        let (cos, sin) = crate::model::transformer::rope_tables(&cfg);
        let cos = Tensor::from_vec(cos, (cfg.context_length, half), &device)?;
        let sin = Tensor::from_vec(sin, (cfg.context_length, half), &device)?;
        Ok(TrainModel {
            cfg,
            device,
            layers,
            weights,
            vars,
            lora,
            hf_config,
            cos,
            sin,
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    pub fn layers(&self) -> Layers {
        self.layers
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every trainable variable (full weights and adapters), for the optimiser.
    pub fn trainable_vars(&self) -> Vec<Var> {
        let mut out: Vec<Var> = self.vars.iter().map(|(_, v)| v.clone()).collect();
        let mut names: Vec<&String> = self.lora.keys().collect();
        names.sort();
        for n in names {
            let l = &self.lora[n];
            out.push(l.a.clone());
            out.push(l.b.clone());
        }
        out
    }

    /// Number of trainable scalars.
    pub fn trainable_params(&self) -> usize {
        self.trainable_vars()
            .iter()
            .map(|v| v.as_tensor().elem_count())
            .sum()
    }

    /// The first layer that has trainable weights or adapters (layers below it are frozen, so
    /// their output is a constant that can be cached: [`TrainModel::frozen_prefix`]).
    pub fn first_trainable_layer(&self) -> usize {
        match self.layers {
            Layers::Top { k } => self.cfg.n_layer - k,
            Layers::Head => self.cfg.n_layer,
            Layers::All | Layers::Lora { .. } => 0,
        }
    }

    fn w(&self, name: &str) -> Result<&Tensor, TrainError> {
        self.weights
            .get(name)
            .ok_or_else(|| data_err(format!("the model has no tensor `{name}`")))
    }

    /// `x Wᵀ (+ bias) (+ LoRA)`, for the projection `name` (without `.weight`).
    fn linear(&self, name: &str, x: &Tensor) -> Result<Tensor, TrainError> {
        let w = self.w(&format!("{name}.weight"))?;
        let mut y = x.matmul(&w.t()?)?;
        if let Some(b) = self.weights.get(&format!("{name}.bias")) {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = self.lora.get(name) {
            let d = x
                .matmul(&l.a.as_tensor().t()?)?
                .matmul(&l.b.as_tensor().t()?)?;
            y = (y + (d * l.scale)?)?;
        }
        Ok(y)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), TrainError> {
        if tokens.is_empty() {
            return Err(data_err("a training sequence has no tokens"));
        }
        if tokens.len() > self.cfg.context_length {
            return Err(data_err(format!(
                "a training sequence of {} tokens exceeds the context length {}",
                tokens.len(),
                self.cfg.context_length
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(data_err(format!(
                "token id {t} out of vocabulary ({})",
                self.cfg.vocab
            )));
        }
        Ok(())
    }

    /// Token embeddings `[T, d_model]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor, TrainError> {
        self.check_tokens(tokens)?;
        let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), &self.device)?;
        Ok(self.w("model.embed_tokens.weight")?.index_select(&ids, 0)?)
    }

    /// The residual stream entering layer [`TrainModel::first_trainable_layer`], detached: the
    /// part of the forward pass that no gradient reaches, computed once per sequence.
    pub fn frozen_prefix(&self, tokens: &[u32]) -> Result<Tensor, TrainError> {
        let x = self.embed(tokens)?;
        if self.layers == Layers::All {
            // The embeddings themselves train.
            return Ok(x);
        }
        let x = self.layers_forward(x, 0, self.first_trainable_layer())?;
        Ok(x.detach())
    }

    /// Layers `[from, to)` on the residual stream `x` `[T, d_model]`.
    pub fn layers_forward(&self, x: Tensor, from: usize, to: usize) -> Result<Tensor, TrainError> {
        let mut x = x;
        if from >= to.min(self.cfg.n_layer) {
            return Ok(x);
        }
        // Causal mask `[1, T, T]`: -inf above the diagonal.
        let t = x.dim(0)?;
        let mask: Vec<f32> = (0..t * t)
            .map(|j| {
                if j % t > j / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, t, t), &self.device)?;
        for i in from..to.min(self.cfg.n_layer) {
            x = self.layer(i, &x, &mask)?;
        }
        Ok(x)
    }

    /// The final-norm hidden states `[T, d_model]` of layers `[from, n_layer)` on `x`.
    pub fn hidden_from(&self, x: Tensor, from: usize) -> Result<Tensor, TrainError> {
        let x = self.layers_forward(x, from, self.cfg.n_layer)?;
        self.rms_norm(&x, "model.norm.weight")
    }

    /// Final-norm hidden states `[T, d_model]` of a whole sequence.
    pub fn hidden(&self, tokens: &[u32]) -> Result<Tensor, TrainError> {
        let from = self.first_trainable_layer();
        let x = self.frozen_prefix(tokens)?;
        self.hidden_from(x, from)
    }

    /// Next-token logits `[rows, vocab]` for hidden states `[rows, d_model]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, TrainError> {
        Ok(hidden.matmul(&self.w("lm_head.weight")?.t()?)?)
    }

    fn rms_norm(&self, x: &Tensor, name: &str) -> Result<Tensor, TrainError> {
        Ok(candle_nn::ops::rms_norm_slow(
            x,
            self.w(name)?,
            self.cfg.rms_eps as f32,
        )?)
    }

    /// Rotates `x` `[heads, T, head_dim]` (positions 0..T) in Hugging Face (NeoX) pairing.
    fn rope(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        let (_, t, hd) = x.dims3()?;
        let half = hd / 2;
        let cos = self.cos.narrow(0, 0, t)?.unsqueeze(0)?;
        let sin = self.sin.narrow(0, 0, t)?.unsqueeze(0)?;
        let x1 = x.narrow(2, 0, half)?;
        let x2 = x.narrow(2, half, half)?;
        let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let b = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
        Ok(Tensor::cat(&[a, b], 2)?)
    }

    fn layer(&self, i: usize, x: &Tensor, mask: &Tensor) -> Result<Tensor, TrainError> {
        let cfg = &self.cfg;
        let (t, _) = x.dims2()?;
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
        let p = format!("model.layers.{i}");
        let h = self.rms_norm(x, &format!("{p}.input_layernorm.weight"))?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor, TrainError> {
            Ok(y.reshape((t, n, hd))?.transpose(0, 1)?.contiguous()?)
        };
        let q = self.rope(&heads(
            self.linear(&format!("{p}.self_attn.q_proj"), &h)?,
            nh,
        )?)?;
        let k = self.rope(&heads(
            self.linear(&format!("{p}.self_attn.k_proj"), &h)?,
            nkv,
        )?)?;
        let v = heads(self.linear(&format!("{p}.self_attn.v_proj"), &h)?, nkv)?;
        // Grouped-query attention: each K/V head serves n_head / n_kv_head query heads.
        let group = nh / nkv.max(1);
        let expand = |y: Tensor| -> Result<Tensor, TrainError> {
            if group == 1 {
                return Ok(y);
            }
            Ok(y.unsqueeze(1)?
                .expand((nkv, group, t, hd))?
                .reshape((nh, t, hd))?)
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let scores = scores.broadcast_add(mask)?;
        // Softmax with the row maximum as a constant (the result does not depend on it).
        let max = scores.max_keepdim(D::Minus1)?.detach();
        let e = scores.broadcast_sub(&max)?.exp()?;
        let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let attn = probs
            .matmul(&v)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, nh * hd))?;
        let x = (x + self.linear(&format!("{p}.self_attn.o_proj"), &attn)?)?;
        let h = self.rms_norm(&x, &format!("{p}.post_attention_layernorm.weight"))?;
        let gate = self.linear(&format!("{p}.mlp.gate_proj"), &h)?.silu()?;
        let up = self.linear(&format!("{p}.mlp.up_proj"), &h)?;
        let down = self.linear(&format!("{p}.mlp.down_proj"), &(gate * up)?)?;
        Ok((x + down)?)
    }

    /// The Hugging Face tensors with adapters merged (`W + scale·B·A`), detached copies.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut out = HashMap::with_capacity(self.weights.len());
        for (name, w) in &self.weights {
            let base = name.strip_suffix(".weight").unwrap_or(name);
            let w = match self.lora.get(base) {
                Some(l) => {
                    let d = (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?;
                    (w + d)?
                }
                None => w.copy()?,
            };
            out.insert(name.clone(), w.detach());
        }
        Ok(out)
    }

    /// `config.json` of the checkpoint.
    pub fn hf_config(&self) -> &serde_json::Value {
        &self.hf_config
    }
}

/// Sums the gradients of `vars` over several backward passes (one per sequence, so memory
/// holds one sequence's graph at a time) and turns them into one clipped optimiser step.
pub(crate) struct GradAccumulator {
    vars: Vec<Var>,
    sum: Vec<Option<Tensor>>,
    last: Option<candle_core::backprop::GradStore>,
}

impl GradAccumulator {
    pub(crate) fn new(vars: Vec<Var>) -> Self {
        let sum = vec![None; vars.len()];
        GradAccumulator {
            vars,
            sum,
            last: None,
        }
    }

    /// Adds the gradients of one backward pass.
    pub(crate) fn add(
        &mut self,
        grads: candle_core::backprop::GradStore,
    ) -> Result<(), TrainError> {
        for (acc, v) in self.sum.iter_mut().zip(&self.vars) {
            if let Some(g) = grads.get(v.as_tensor()) {
                *acc = Some(match acc.take() {
                    Some(a) => (a + g)?,
                    None => g.clone(),
                });
            }
        }
        self.last = Some(grads);
        Ok(())
    }

    /// The summed gradients, scaled so their global norm is at most `clip_norm` (0: no clip),
    /// ready for `Optimizer::step`; `None` when nothing was added. A non-finite gradient is an
    /// error naming `what`.
    pub(crate) fn finish(
        self,
        clip_norm: f64,
        what: &str,
    ) -> Result<Option<candle_core::backprop::GradStore>, TrainError> {
        let Some(mut grads) = self.last else {
            return Ok(None);
        };
        let mut sq = 0f64;
        for g in self.sum.iter().flatten() {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        if !sq.is_finite() {
            return Err(data_err(format!(
                "{what}: the gradient is not finite (lower the learning rate)"
            )));
        }
        let scale = if clip_norm > 0.0 && sq.sqrt() > clip_norm {
            clip_norm / sq.sqrt()
        } else {
            1.0
        };
        for (g, v) in self.sum.into_iter().zip(&self.vars) {
            if let Some(g) = g {
                grads.insert(v.as_tensor(), if scale != 1.0 { (g * scale)? } else { g });
            }
        }
        Ok(Some(grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_parse_and_print() {
        for (s, l) in [
            ("head", Layers::Head),
            ("all", Layers::All),
            ("top:2", Layers::Top { k: 2 }),
            (
                "lora:8",
                Layers::Lora {
                    rank: 8,
                    alpha: 16.0,
                },
            ),
            (
                "lora:4:4",
                Layers::Lora {
                    rank: 4,
                    alpha: 4.0,
                },
            ),
        ] {
            assert_eq!(s.parse::<Layers>().unwrap(), l);
            assert_eq!(l.to_string().parse::<Layers>().unwrap(), l);
        }
        for bad in ["", "top", "top:0", "top:x", "lora:0", "lora:2:-1", "some"] {
            assert!(bad.parse::<Layers>().is_err(), "{bad}");
        }
    }
}
