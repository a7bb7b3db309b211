//! One decoder-only transformer for the `llama` and `qwen2` architectures that runs many
//! sequences, each at its own position and with its own KV cache, in one forward pass.
//!
//! candle's stock quantized models keep one KV cache per model and one position per batch, so
//! they cannot decode eight different sequences at eight different lengths together. Here every
//! forward call takes a list of *segments* — (new tokens, the sequence's cache) — and:
//!
//! - stacks all new tokens of all segments into one `[N, d_model]` matrix, so every projection and
//!   MLP matmul reads each weight once per call (row-tiled quantized matmul in candle), whether the
//!   rows are one prompt's prefill, 32 sequences' decode steps, or both at once;
//! - applies RoPE with each token's own position and appends K/V to its segment's cache;
//! - runs attention per (segment, token, head) on the host over the cache, which may start with a
//!   frozen, shared prefix ([`KvCache::fork`]): the `n` samples of one prompt share the prompt's
//!   keys and values instead of copying them.
//!
//! Rows never mix: a sequence's logits are bit-identical whether it is computed alone or in a batch
//! (candle quantizes and dots each activation row separately; attention is per segment). The
//! generation tests rely on this.
//!
//! Weights come from a GGUF file (quantized, as stored: [`Transformer::from_gguf`]), from the same
//! GGUF dequantized to f32 ([`WeightMode::Dequantized`], the float model training needs), or from a
//! Hugging Face safetensors directory ([`Transformer::from_safetensors_dir`]).
//!
//! Attention runs on the host; with the `cuda` feature the projections and MLPs run on the GPU and
//! the per-layer Q/K/V round-trip to the host (correct, not yet fast: see the closing notes).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use super::qmatmul::{self, Q8Matrix};
use super::ModelError;

/// The architectures this transformer implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama family (SmolLM2, Llama 2/3): no attention biases.
    Llama,
    /// Qwen2 family (Qwen2, Qwen2.5, Qwen2.5-Coder): biases on Q, K and V.
    Qwen2,
}

impl Arch {
    fn gguf_prefix(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Shape and numerics of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    /// RoPE pairing: `true` rotates (i, i + head_dim/2) (Hugging Face, Qwen GGUF); `false`
    /// rotates (2i, 2i + 1) (llama GGUF files, whose Q/K rows llama.cpp's converter permuted).
    pub rope_neox: bool,
    /// Longest sequence (prompt + generated tokens) the position tables cover.
    pub context_length: usize,
}

/// How GGUF weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMode {
    /// As stored in the file (Q4_K, Q6_K, …), except formats candle has no SIMD kernel for
    /// (Q4_1, Q5_0, Q5_1), which are re-quantized to Q8_0: the fast inference path.
    #[default]
    Quantized,
    /// Exactly as stored, no re-quantization (slow for Q4_1/Q5_x; for checks against other
    /// implementations of the same file).
    Stored,
    /// Dequantized to f32: the float model that fine-tuning starts from.
    Dequantized,
}

/// A linear layer's weight `[n_out, k]`: candle's matmul (quantized or float), or our Q8 matmul
/// ([`Q8Matrix`], VNNI/AVX2 register-tiled kernels; rows bit-identical whatever the batch).
enum Linear {
    Candle(QMatMul),
    Q8(Q8Matrix),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Candle(m) => m.forward(x),
            Linear::Q8(q) => {
                let (m, k) = x.dims2()?;
                let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; m * q.n_out()];
                q.matmul(&xs, m, &mut out)
                    .map_err(candle_core::Error::wrap)?;
                debug_assert_eq!(k, q.k());
                Tensor::from_vec(out, (m, q.n_out()), x.device())
            }
        }
    }

    /// The weight as an f32 tensor `[n_out, k]`.
    fn dense(&self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Linear::Candle(QMatMul::QTensor(q)) => q.dequantize(device),
            Linear::Candle(QMatMul::Tensor(t)) | Linear::Candle(QMatMul::TensorF16(t)) => {
                t.to_dtype(DType::F32)
            }
            Linear::Q8(q) => Tensor::from_vec(q.to_f32(), (q.n_out(), q.k()), device),
        }
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// The keys and values of one sequence, all layers. Positions `[0, prefix_len)` live in a frozen
/// shared prefix (itself possibly forked from another), the rest in this cache's own buffers.
///
/// Own buffers: `k[layer]`, `v[layer]` of shape `[len_own, n_kv_head, head_dim]`, f32, row-major;
/// keys are stored after RoPE.
#[derive(Debug, Clone)]
pub struct KvCache {
    prefix: Option<Arc<KvCache>>,
    prefix_len: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    own_len: usize,
}

impl KvCache {
    /// An empty cache for a model with `n_layer` layers.
    pub fn new(n_layer: usize) -> Self {
        KvCache {
            prefix: None,
            prefix_len: 0,
            k: vec![Vec::new(); n_layer],
            v: vec![Vec::new(); n_layer],
            own_len: 0,
        }
    }

    /// Positions held (shared prefix included).
    pub fn len(&self) -> usize {
        self.prefix_len + self.own_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new cache that continues `shared`: it sees all of `shared`'s positions without copying
    /// them and appends its own after them.
    pub fn fork(shared: &Arc<KvCache>) -> KvCache {
        KvCache {
            prefix: Some(shared.clone()),
            prefix_len: shared.len(),
            k: vec![Vec::new(); shared.k.len()],
            v: vec![Vec::new(); shared.v.len()],
            own_len: 0,
        }
    }

    /// A new cache that continues the first `len` positions of `shared` (all of them if `len`
    /// is larger): reuse of a cached prefix that only partly matches a new prompt.
    pub fn fork_prefix(shared: &Arc<KvCache>, len: usize) -> KvCache {
        let mut c = KvCache::fork(shared);
        c.prefix_len = len.min(shared.len());
        c
    }

    /// Bytes held by this cache's own buffers (not its shared prefix).
    pub fn own_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.len() * 4).sum()
    }

    /// The key/value blocks of `layer` covering positions `[0, limit)`, oldest first; `row` =
    /// floats per position (`n_kv_head * head_dim`). Counts what the buffers hold, which during a
    /// forward call includes the new tokens of layers already run.
    fn blocks(&self, layer: usize, row: usize, limit: usize) -> Vec<KvBlock<'_>> {
        let mut out = match &self.prefix {
            Some(p) => p.blocks(layer, row, self.prefix_len.min(limit)),
            None => Vec::new(),
        };
        let own = (self.k[layer].len() / row).min(limit.saturating_sub(self.prefix_len));
        if own > 0 {
            out.push((
                &self.k[layer][..own * row],
                &self.v[layer][..own * row],
                own,
            ));
        }
        out
    }
}

/// One contiguous run of cached positions: (keys, values, positions), each buffer
/// `[positions, n_kv_head, head_dim]`.
type KvBlock<'a> = (&'a [f32], &'a [f32], usize);

/// New tokens of one sequence for a forward call; they take positions `cache.len()..`.
pub struct Segment<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// What a forward call returns for the last token of each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Next-token logits `[segments, vocab]`, f32.
    Logits,
    /// Final-norm hidden states `[segments, d_model]`, f32 (the PPM's value-head input).
    Hidden,
}

/// A loaded model. Immutable: all per-sequence state lives in [`KvCache`]s, so one model serves
/// any number of sequences.
pub struct Transformer {
    cfg: TransformerConfig,
    device: Device,
    /// Token embeddings `[vocab, d_model]`, f32.
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// RoPE tables `[context_length, head_dim / 2]`, f32, row-major.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

fn file_err(path: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::File {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Reads the header of a GGUF file, with errors that name the file.
pub fn read_gguf(path: &Path) -> Result<(gguf_file::Content, std::fs::File), ModelError> {
    let mut file = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        file_err(
            path,
            format!("not a readable GGUF file ({e}); re-fetch it with `rstar-gpu assets fetch`"),
        )
    })?;
    Ok((content, file))
}

/// Quantized formats without a SIMD CPU kernel in candle, re-quantized to Q8_0 at load.
fn needs_requant(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

fn md<'a>(
    ct: &'a gguf_file::Content,
    key: &str,
    path: &Path,
) -> Result<&'a gguf_file::Value, ModelError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| file_err(path, format!("GGUF metadata has no `{key}`")))
}

fn md_usize(ct: &gguf_file::Content, key: &str, path: &Path) -> Result<usize, ModelError> {
    let v = md(ct, key, path)?;
    v.to_u32()
        .map(|v| v as usize)
        .or_else(|_| v.to_u64().map(|v| v as usize))
        .map_err(|e| file_err(path, format!("`{key}`: {e}")))
}

fn md_f64(ct: &gguf_file::Content, key: &str, path: &Path) -> Result<f64, ModelError> {
    md(ct, key, path)?
        .to_f32()
        .map(|v| v as f64)
        .map_err(|e| file_err(path, format!("`{key}`: {e}")))
}

impl Transformer {
    /// Loads a `llama` or `qwen2` GGUF file.
    pub fn from_gguf(path: &Path, mode: WeightMode, device: &Device) -> Result<Self, ModelError> {
        let (ct, mut file) = read_gguf(path)?;
        Self::from_gguf_content(&ct, &mut file, path, mode, device)
    }

    /// Loads from an already-read GGUF header (`file` positioned anywhere).
    pub fn from_gguf_content<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        file: &mut R,
        path: &Path,
        mode: WeightMode,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let arch_name = md(ct, "general.architecture", path)?
            .to_string()
            .map_err(|e| file_err(path, e))?
            .clone();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{}: architecture `{other}` (supported: llama, qwen2)",
                    path.display()
                )))
            }
        };
        let p = arch.gguf_prefix();
        let n_head = md_usize(ct, &format!("{p}.attention.head_count"), path)?;
        let n_kv_head = md_usize(ct, &format!("{p}.attention.head_count_kv"), path)?;
        let d_model = md_usize(ct, &format!("{p}.embedding_length"), path)?;
        let n_layer = md_usize(ct, &format!("{p}.block_count"), path)?;
        let context_length = md_usize(ct, &format!("{p}.context_length"), path)?;
        let rms_eps = md_f64(ct, &format!("{p}.attention.layer_norm_rms_epsilon"), path)?;
        let rope_theta = md_f64(ct, &format!("{p}.rope.freq_base"), path).unwrap_or(10_000.0);
        let head_dim = d_model / n_head.max(1);
        if let Ok(rope_dim) = md_usize(ct, &format!("{p}.rope.dimension_count"), path) {
            if rope_dim != head_dim {
                return Err(ModelError::Unsupported(format!(
                    "{}: partial RoPE (rope dims {rope_dim} < head dim {head_dim})",
                    path.display()
                )));
            }
        }
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || d_model % n_head != 0 {
            return Err(file_err(
                path,
                format!(
                    "inconsistent heads: {n_head} heads, {n_kv_head} kv heads, d_model {d_model}"
                ),
            ));
        }
        let load = |file: &mut R, name: &str| -> Result<QTensor, ModelError> {
            ct.tensor(file, name, device)
                .map_err(|e| file_err(path, format!("tensor `{name}`: {e}")))
        };
        let q8 = device.is_cpu() && qmatmul::Kernel::best() != qmatmul::Kernel::Scalar;
        let mat = |q: QTensor| -> Result<Linear, ModelError> {
            let k = q.shape().dims().last().copied().unwrap_or(0);
            match mode {
                // Our Q8 kernels beat candle's on every format here (its Q8_0/Q5_x dot products
                // are one row × column at a time, or scalar), and keep rows batch-independent.
                WeightMode::Quantized if q8 && k % qmatmul::QK == 0 => {
                    Ok(Linear::Q8(Q8Matrix::from_tensor(&q.dequantize(device)?)?))
                }
                WeightMode::Quantized if needs_requant(q.dtype()) => {
                    // No SIMD dot product in candle for these formats; Q8_0 has one.
                    let f = q.dequantize(device)?;
                    Ok(Linear::Candle(QMatMul::from_qtensor(QTensor::quantize(
                        &f,
                        GgmlDType::Q8_0,
                    )?)?))
                }
                WeightMode::Quantized | WeightMode::Stored => {
                    Ok(Linear::Candle(QMatMul::from_qtensor(q)?))
                }
                WeightMode::Dequantized => {
                    Ok(Linear::Candle(QMatMul::Tensor(q.dequantize(device)?)))
                }
            }
        };
        let embed_q = load(file, "token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let vocab = embed.dim(0)?;
        let lm_head = match ct.tensor_infos.contains_key("output.weight") {
            true => mat(load(file, "output.weight")?)?,
            false => mat(embed_q)?, // tied embeddings
        };
        let norm = load(file, "output_norm.weight")?.dequantize(device)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let mut t = |name: &str| load(file, &format!("blk.{i}.{name}"));
            let bias = |t: &mut dyn FnMut(&str) -> Result<QTensor, ModelError>,
                        name: &str|
             -> Result<Option<Tensor>, ModelError> {
                match arch {
                    Arch::Qwen2 => Ok(Some(t(name)?.dequantize(device)?)),
                    Arch::Llama => Ok(None),
                }
            };
            let layer = Layer {
                attn_norm: t("attn_norm.weight")?.dequantize(device)?,
                wq: mat(t("attn_q.weight")?)?,
                wk: mat(t("attn_k.weight")?)?,
                wv: mat(t("attn_v.weight")?)?,
                wo: mat(t("attn_output.weight")?)?,
                bq: bias(&mut t, "attn_q.bias")?,
                bk: bias(&mut t, "attn_k.bias")?,
                bv: bias(&mut t, "attn_v.bias")?,
                ffn_norm: t("ffn_norm.weight")?.dequantize(device)?,
                w_gate: mat(t("ffn_gate.weight")?)?,
                w_up: mat(t("ffn_up.weight")?)?,
                w_down: mat(t("ffn_down.weight")?)?,
            };
            layers.push(layer);
        }
        let cfg = TransformerConfig {
            arch,
            n_layer,
            d_model,
            n_head,
            n_kv_head,
            head_dim,
            vocab,
            rms_eps,
            rope_theta,
            // llama.cpp's converter permutes llama Q/K rows for the interleaved rotation; Qwen2
            // GGUFs keep the Hugging Face (NeoX) layout.
            rope_neox: arch == Arch::Qwen2,
            context_length,
        };
        Ok(Self::assemble(
            cfg,
            device.clone(),
            embed,
            layers,
            norm,
            lm_head,
        ))
    }

    /// Loads a Hugging Face directory (`config.json` + `*.safetensors`) of a Llama or Qwen2 model
    /// as f32 weights.
    pub fn from_safetensors_dir(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| file_err(&cfg_path, e))?;
        let hf: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| file_err(&cfg_path, e))?;
        let get = |k: &str| -> Result<usize, ModelError> {
            hf.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| file_err(&cfg_path, format!("missing integer `{k}`")))
        };
        let model_type = hf.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let arch = match model_type {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{}: model_type `{other}` (supported: llama, qwen2)",
                    cfg_path.display()
                )))
            }
        };
        let d_model = get("hidden_size")?;
        let n_head = get("num_attention_heads")?;
        let n_kv_head = get("num_key_value_heads").unwrap_or(n_head);
        let head_dim = hf
            .get("head_dim")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(d_model / n_head.max(1));
        let cfg = TransformerConfig {
            arch,
            n_layer: get("num_hidden_layers")?,
            d_model,
            n_head,
            n_kv_head,
            head_dim,
            vocab: get("vocab_size")?,
            rms_eps: hf
                .get("rms_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-6),
            rope_theta: hf
                .get("rope_theta")
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0),
            rope_neox: true,
            context_length: get("max_position_embeddings").unwrap_or(4096).min(32_768),
        };
        let tied = hf
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| file_err(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(file_err(dir, "no *.safetensors files in the directory"));
        }
        let mut tensors = std::collections::HashMap::new();
        for f in &files {
            let loaded = candle_core::safetensors::load(f, device).map_err(|e| file_err(f, e))?;
            tensors.extend(loaded);
        }
        let mut take = |name: &str| -> Result<Tensor, ModelError> {
            tensors
                .remove(name)
                .ok_or_else(|| file_err(dir, format!("no tensor `{name}`")))?
                .to_dtype(DType::F32)
                .map_err(ModelError::from)
        };
        let embed = take("model.embed_tokens.weight")?;
        let lm_head = if tied {
            Linear::Candle(QMatMul::Tensor(embed.clone()))
        } else {
            Linear::Candle(QMatMul::Tensor(take("lm_head.weight")?))
        };
        let norm = take("model.norm.weight")?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("model.layers.{i}");
            let bias =
                |take: &mut dyn FnMut(&str) -> Result<Tensor, ModelError>, n: &str| match arch {
                    Arch::Qwen2 => take(&format!("{p}.self_attn.{n}.bias")).map(Some),
                    Arch::Llama => Ok(None),
                };
            layers.push(Layer {
                attn_norm: take(&format!("{p}.input_layernorm.weight"))?,
                wq: Linear::Candle(QMatMul::Tensor(take(&format!(
                    "{p}.self_attn.q_proj.weight"
                ))?)),
                wk: Linear::Candle(QMatMul::Tensor(take(&format!(
                    "{p}.self_attn.k_proj.weight"
                ))?)),
                wv: Linear::Candle(QMatMul::Tensor(take(&format!(
                    "{p}.self_attn.v_proj.weight"
                ))?)),
                wo: Linear::Candle(QMatMul::Tensor(take(&format!(
                    "{p}.self_attn.o_proj.weight"
                ))?)),
                bq: bias(&mut take, "q_proj")?,
                bk: bias(&mut take, "k_proj")?,
                bv: bias(&mut take, "v_proj")?,
                ffn_norm: take(&format!("{p}.post_attention_layernorm.weight"))?,
                w_gate: Linear::Candle(QMatMul::Tensor(take(&format!(
                    "{p}.mlp.gate_proj.weight"
                ))?)),
                w_up: Linear::Candle(QMatMul::Tensor(take(&format!("{p}.mlp.up_proj.weight"))?)),
                w_down: Linear::Candle(QMatMul::Tensor(take(&format!(
                    "{p}.mlp.down_proj.weight"
                ))?)),
            });
        }
        Ok(Self::assemble(
            cfg,
            device.clone(),
            embed,
            layers,
            norm,
            lm_head,
        ))
    }

    fn assemble(
        cfg: TransformerConfig,
        device: Device,
        embed: Tensor,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Linear,
    ) -> Self {
        let (rope_cos, rope_sin) = rope_tables(&cfg);
        Transformer {
            cfg,
            device,
            embed,
            layers,
            norm,
            lm_head,
            rope_cos,
            rope_sin,
        }
    }

    /// Writes the model as a Hugging Face directory: `config.json` and `model.safetensors` (f32,
    /// Hugging Face tensor names). Quantized weights are dequantized; a llama GGUF's permuted Q/K
    /// rows are put back in Hugging Face order, so the directory loads in any HF-layout reader.
    pub fn save_safetensors_dir(&self, dir: &Path) -> Result<(), ModelError> {
        let (map, hf) = self.hf_tensors()?;
        write_hf_weights(dir, &map, &hf)
    }

    /// Every weight as an f32 tensor under its Hugging Face name, in Hugging Face row order (Q/K
    /// rows of a llama GGUF un-permuted, so RoPE pairs (i, i + head_dim/2)), and the matching
    /// `config.json` object. The training model ([`crate::train::model`]) starts from these.
    pub fn hf_tensors(&self) -> Result<(HashMap<String, Tensor>, serde_json::Value), ModelError> {
        let cfg = &self.cfg;
        let dense = |m: &Linear| -> Result<Tensor, ModelError> { Ok(m.dense(&self.device)?) };
        // GGUF row (head, i, j) of [heads, hd/2, 2] is HF row (head, j, i) of [heads, 2, hd/2].
        let unpermute = |t: Tensor, heads: usize| -> Result<Tensor, ModelError> {
            if cfg.rope_neox {
                return Ok(t);
            }
            let (hd, half) = (cfg.head_dim, cfg.head_dim / 2);
            let mut idx = Vec::with_capacity(heads * hd);
            for h in 0..heads {
                for j in 0..2 {
                    for i in 0..half {
                        idx.push((h * hd + 2 * i + j) as u32);
                    }
                }
            }
            let idx = Tensor::from_vec(idx, heads * hd, &self.device)?;
            Ok(t.index_select(&idx, 0)?)
        };
        let mut map: HashMap<String, Tensor> = HashMap::new();
        map.insert("model.embed_tokens.weight".into(), self.embed.clone());
        map.insert("model.norm.weight".into(), self.norm.clone());
        map.insert("lm_head.weight".into(), dense(&self.lm_head)?);
        let mut intermediate = 0;
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            map.insert(format!("{p}.input_layernorm.weight"), l.attn_norm.clone());
            map.insert(
                format!("{p}.post_attention_layernorm.weight"),
                l.ffn_norm.clone(),
            );
            map.insert(
                format!("{p}.self_attn.q_proj.weight"),
                unpermute(dense(&l.wq)?, cfg.n_head)?,
            );
            map.insert(
                format!("{p}.self_attn.k_proj.weight"),
                unpermute(dense(&l.wk)?, cfg.n_kv_head)?,
            );
            map.insert(format!("{p}.self_attn.v_proj.weight"), dense(&l.wv)?);
            map.insert(format!("{p}.self_attn.o_proj.weight"), dense(&l.wo)?);
            for (name, b) in [("q_proj", &l.bq), ("k_proj", &l.bk), ("v_proj", &l.bv)] {
                if let Some(b) = b {
                    map.insert(format!("{p}.self_attn.{name}.bias"), b.clone());
                }
            }
            let gate = dense(&l.w_gate)?;
            intermediate = gate.dim(0)?;
            map.insert(format!("{p}.mlp.gate_proj.weight"), gate);
            map.insert(format!("{p}.mlp.up_proj.weight"), dense(&l.w_up)?);
            map.insert(format!("{p}.mlp.down_proj.weight"), dense(&l.w_down)?);
        }
        let hf = serde_json::json!({
            "architectures": [match cfg.arch { Arch::Llama => "LlamaForCausalLM", Arch::Qwen2 => "Qwen2ForCausalLM" }],
            "model_type": match cfg.arch { Arch::Llama => "llama", Arch::Qwen2 => "qwen2" },
            "hidden_size": cfg.d_model,
            "intermediate_size": intermediate,
            "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab,
            "rms_norm_eps": cfg.rms_eps,
            "rope_theta": cfg.rope_theta,
            "max_position_embeddings": cfg.context_length,
            "tie_word_embeddings": false,
            "torch_dtype": "float32",
        });
        Ok((map, hf))
    }

    /// The same model with every f32 projection re-quantized to Q8_0 ([`Q8Matrix`]): a float
    /// checkpoint (a fine-tuned policy) then decodes at the quantized path's speed. Embeddings and
    /// norms stay f32; weights that are already quantized are kept as they are.
    pub fn into_q8(mut self) -> Result<Self, ModelError> {
        fn q8(l: &mut Linear) -> Result<(), ModelError> {
            if let Linear::Candle(QMatMul::Tensor(t)) | Linear::Candle(QMatMul::TensorF16(t)) = l {
                *l = Linear::Q8(Q8Matrix::from_tensor(&t.to_dtype(DType::F32)?)?);
            }
            Ok(())
        }
        for layer in &mut self.layers {
            for l in [
                &mut layer.wq,
                &mut layer.wk,
                &mut layer.wv,
                &mut layer.wo,
                &mut layer.w_gate,
                &mut layer.w_up,
                &mut layer.w_down,
            ] {
                q8(l)?;
            }
        }
        q8(&mut self.lm_head)?;
        Ok(self)
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layer)
    }

    /// Runs the new tokens of every segment through the model, appends their keys and values to
    /// the segments' caches, and returns `[segments, vocab]` logits or `[segments, d_model]`
    /// hidden states for each segment's last token.
    pub fn forward(
        &self,
        segments: &mut [Segment<'_>],
        output: Output,
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        if segments.is_empty() {
            return Err(ModelError::Request("forward with no segments".into()));
        }
        let mut ids = Vec::new();
        // Per token: (segment index, absolute position).
        let mut rows: Vec<(usize, usize)> = Vec::new();
        let mut last_row = Vec::with_capacity(segments.len());
        for (s, seg) in segments.iter().enumerate() {
            if seg.tokens.is_empty() {
                return Err(ModelError::Request(format!("segment {s} has no tokens")));
            }
            let start = seg.cache.len();
            if start + seg.tokens.len() > cfg.context_length {
                return Err(ModelError::Request(format!(
                    "sequence of {} tokens exceeds the model's context length {}",
                    start + seg.tokens.len(),
                    cfg.context_length
                )));
            }
            for (t, &id) in seg.tokens.iter().enumerate() {
                if id as usize >= cfg.vocab {
                    return Err(ModelError::Request(format!(
                        "token id {id} out of vocabulary ({})",
                        cfg.vocab
                    )));
                }
                ids.push(id);
                rows.push((s, start + t));
            }
            last_row.push(ids.len() - 1);
        }
        let n = ids.len();
        let ids_t = Tensor::from_vec(ids, n, &self.device)?;
        let mut x = self.embed.index_select(&ids_t, 0)?; // [N, d]
        let eps = cfg.rms_eps as f32;
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let mut q = layer.wq.forward(&h)?;
            let mut k = layer.wk.forward(&h)?;
            let mut v = layer.wv.forward(&h)?;
            if let (Some(bq), Some(bk), Some(bv)) = (&layer.bq, &layer.bk, &layer.bv) {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let mut q = q.flatten_all()?.to_vec1::<f32>()?; // [N, nh, hd]
            let mut k = k.flatten_all()?.to_vec1::<f32>()?; // [N, nkv, hd]
            let v = v.flatten_all()?.to_vec1::<f32>()?; // [N, nkv, hd]
            for (r, &(_, pos)) in rows.iter().enumerate() {
                self.rope(&mut q[r * nh * hd..(r + 1) * nh * hd], pos);
                self.rope(&mut k[r * nkv * hd..(r + 1) * nkv * hd], pos);
            }
            for (r, &(s, _)) in rows.iter().enumerate() {
                let cache = &mut *segments[s].cache;
                cache.k[li].extend_from_slice(&k[r * nkv * hd..(r + 1) * nkv * hd]);
                cache.v[li].extend_from_slice(&v[r * nkv * hd..(r + 1) * nkv * hd]);
            }
            let attn = self.attention(li, segments, &rows, &q);
            let attn = Tensor::from_vec(attn, (n, nh * hd), &self.device)?;
            x = (layer.wo.forward(&attn)? + x)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = candle_nn::ops::silu(&layer.w_gate.forward(&h)?)?;
            let up = layer.w_up.forward(&h)?;
            x = (layer.w_down.forward(&(gate * up)?)? + x)?;
        }
        // The new tokens are now in every layer's cache.
        for seg in segments.iter_mut() {
            seg.cache.own_len += seg.tokens.len();
        }
        let last: Vec<u32> = last_row.iter().map(|&r| r as u32).collect();
        let last = Tensor::from_vec(last, segments.len(), &self.device)?;
        let x = x.index_select(&last, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        Ok(match output {
            Output::Hidden => x,
            Output::Logits => self.lm_head.forward(&x)?,
        })
    }

    /// Rotates every head of one token's Q or K (`[heads, head_dim]`) to position `pos`.
    fn rope(&self, x: &mut [f32], pos: usize) {
        let hd = self.cfg.head_dim;
        let half = hd / 2;
        let cos = &self.rope_cos[pos * half..(pos + 1) * half];
        let sin = &self.rope_sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(hd) {
            if self.cfg.rope_neox {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * cos[i] - x1 * sin[i];
                    b[i] = x0 * sin[i] + x1 * cos[i];
                }
            } else {
                for i in 0..half {
                    let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = x0 * cos[i] - x1 * sin[i];
                    head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }

    /// Causal attention of every new token over its own sequence's cache (which already holds
    /// the new tokens' keys and values). Returns `[N, n_head * head_dim]`, f32.
    fn attention(
        &self,
        layer: usize,
        segments: &[Segment<'_>],
        rows: &[(usize, usize)],
        q: &[f32],
    ) -> Vec<f32> {
        let (nh, nkv, hd) = (self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let blocks: Vec<Vec<KvBlock<'_>>> = segments
            .iter()
            .map(|s| s.cache.blocks(layer, nkv * hd, usize::MAX))
            .collect();
        let mut out = vec![0f32; rows.len() * nh * hd];
        let items = rows.len() * nh;
        let out_ptr = SendPtr(out.as_mut_ptr());
        let work = |range: std::ops::Range<usize>| {
            let out_ptr = &out_ptr;
            let mut scores: Vec<f32> = Vec::new();
            for item in range {
                let (r, h) = (item / nh, item % nh);
                let (s, pos) = rows[r];
                let g = h / group;
                let qh = &q[(r * nh + h) * hd..(r * nh + h + 1) * hd];
                let visible = pos + 1;
                scores.clear();
                let mut seen = 0;
                for &(kb, _, len) in &blocks[s] {
                    let take = len.min(visible - seen);
                    for j in 0..take {
                        let kj = &kb[(j * nkv + g) * hd..(j * nkv + g + 1) * hd];
                        scores.push(dot(qh, kj) * scale);
                    }
                    seen += take;
                    if seen == visible {
                        break;
                    }
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let inv = 1.0 / sum;
                // SAFETY: item (r, h) owns out[(r*nh + h)*hd .. +hd]; items are disjoint.
                let o =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((r * nh + h) * hd), hd) };
                let mut idx = 0;
                for &(_, vb, len) in &blocks[s] {
                    let take = len.min(visible - idx);
                    for j in 0..take {
                        let w = scores[idx + j] * inv;
                        let vj = &vb[(j * nkv + g) * hd..(j * nkv + g + 1) * hd];
                        for (o, &vv) in o.iter_mut().zip(vj) {
                            *o += w * vv;
                        }
                    }
                    idx += take;
                    if idx == visible {
                        break;
                    }
                }
            }
        };
        // candle's own worker pool: its matmul threads are already spinning up around this call,
        // so a second pool (rayon) would only fight them for the cores.
        if items >= 64 {
            candle_core::utils::barrier_pool().execute_chunked(items, work);
        } else {
            work(0..items);
        }
        out
    }
}

struct SendPtr(*mut f32);
// SAFETY: the attention workers write disjoint ranges through it.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociating one sum.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// Writes `model.safetensors` (the tensors) and `config.json` (`hf`) into `dir`, created if
/// missing.
pub fn write_hf_weights(
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    hf: &serde_json::Value,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let weights = dir.join("model.safetensors");
    candle_core::safetensors::save(tensors, &weights).map_err(|e| file_err(&weights, e))?;
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(hf).unwrap_or_default())
        .map_err(|e| file_err(&path, e))?;
    Ok(())
}

/// RoPE tables `[context_length, head_dim / 2]` (cos, sin), f32, row-major: the angle of pair `i`
/// at position `pos` is `pos · θ^(−2i / head_dim)`. The inference and training models share them.
pub(crate) fn rope_tables(cfg: &TransformerConfig) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let mut cos = Vec::with_capacity(cfg.context_length * half);
    let mut sin = Vec::with_capacity(cfg.context_length * half);
    for pos in 0..cfg.context_length {
        for i in 0..half {
            let freq = cfg.rope_theta.powf(-((2 * i) as f64) / cfg.head_dim as f64);
            let angle = pos as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}
