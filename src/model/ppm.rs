//! The process preference model (PPM): a policy-sized backbone plus a scalar value head on the
//! last token's hidden state, squashed by `tanh` into [-1, 1].
//!
//! `score(question, partial_solution)` renders the question with the backbone's chat template
//! (the same prompt the policy continues from) followed by the steps so far, runs all items of a
//! batch through the backbone together ([`Transformer::forward`] with [`Output::Hidden`]), and
//! applies the head. A batch scores exactly as its items one by one (rows never mix).
//!
//! On disk a PPM is a directory: `ppm.json` (format, version, the backbone as a model spec — an
//! asset name, a GGUF path or a Hugging Face directory — and the head's width) and
//! `value_head.safetensors` (`value_head.weight` `[1, d_model]`, `value_head.bias` `[1]`, f32),
//! and `backbone/` (a Hugging Face checkpoint) when training updated backbone layers.
//! Training ([`crate::train::ppm`]) fits the head on frozen features, then optionally the top
//! backbone layers or adapters together with it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::prefix_cache::PrefixCache;
use super::tokenizer::Tokenizer;
use super::transformer::{KvCache, Output, Segment, Transformer};
use super::ModelError;

const FORMAT: &str = "rstar-gpu-ppm";
const VERSION: u32 = 1;
const HEAD_FILE: &str = "value_head.safetensors";

/// `ppm.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpmConfig {
    pub format: String,
    pub version: u32,
    /// The backbone as a model spec: an asset name, a `.gguf` path or a Hugging Face directory;
    /// a relative directory that exists inside the PPM directory (`backbone`, written when
    /// backbone layers were trained) is read from there.
    pub backbone: String,
    /// Width of the backbone's hidden state (the head's input).
    pub d_model: usize,
}

/// A process preference model ready to score.
pub struct Ppm {
    backbone: Arc<Transformer>,
    tokenizer: Tokenizer,
    cfg: PpmConfig,
    /// Value head weight `[d_model]`, f32.
    head_w: Vec<f32>,
    /// Value head bias.
    head_b: f32,
    /// Most tokens per forward call while scoring.
    pub chunk_tokens: usize,
    /// Keys and values of recently scored texts: a partial solution that extends a scored one
    /// (a new node under its scored parent, a question already seen) runs only its new tokens.
    prefix_cache: Mutex<PrefixCache>,
    stats: Mutex<PpmStats>,
}

/// What scoring has cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PpmStats {
    /// Texts run through the backbone (a new question's prompt, warmed alone, included).
    pub texts: usize,
    /// Their tokens, all of them.
    pub tokens: usize,
    /// Tokens whose keys and values came from the prefix cache instead of the backbone.
    pub reused_tokens: usize,
}

impl Ppm {
    /// A PPM over `backbone` with a freshly initialised head: weights ~ N(0, 1/d_model) from
    /// `seed`, bias 0. `backbone_spec` is recorded so that [`Ppm::load`] can find it again.
    pub fn new(
        backbone: Arc<Transformer>,
        tokenizer: Tokenizer,
        backbone_spec: &str,
        seed: u64,
    ) -> Self {
        let d = backbone.config().d_model;
        let std = 1.0 / (d as f64).sqrt();
        let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
        let head_w = (0..d)
            .map(|_| (crate::rng::gaussian(&mut state) * std) as f32)
            .collect();
        Ppm {
            backbone,
            tokenizer,
            cfg: PpmConfig {
                format: FORMAT.into(),
                version: VERSION,
                backbone: backbone_spec.into(),
                d_model: d,
            },
            head_w,
            head_b: 0.0,
            chunk_tokens: 2048,
            prefix_cache: Mutex::new(PrefixCache::new(1 << 30)),
            stats: Mutex::new(PpmStats::default()),
        }
    }

    /// A PPM from its parts (a trained head).
    pub fn with_head(
        backbone: Arc<Transformer>,
        tokenizer: Tokenizer,
        backbone_spec: &str,
        head_w: Vec<f32>,
        head_b: f32,
    ) -> Result<Self, ModelError> {
        let d = backbone.config().d_model;
        if head_w.len() != d {
            return Err(ModelError::Request(format!(
                "value head has {} weights; the backbone's width is {d}",
                head_w.len()
            )));
        }
        if !head_b.is_finite() || head_w.iter().any(|w| !w.is_finite()) {
            return Err(ModelError::Request(
                "value head has non-finite weights".into(),
            ));
        }
        let mut p = Ppm::new(backbone, tokenizer, backbone_spec, 0);
        p.head_w = head_w;
        p.head_b = head_b;
        Ok(p)
    }

    /// Reads `dir/ppm.json` and the head; the backbone is loaded by `load_backbone(spec)`
    /// (the caller resolves asset names and shares an already-loaded policy model when the spec
    /// matches).
    pub fn load(
        dir: &Path,
        load_backbone: impl FnOnce(&str) -> Result<(Arc<Transformer>, Tokenizer), ModelError>,
    ) -> Result<Self, ModelError> {
        let cfg = Self::read_config(dir)?;
        let head_path = dir.join(HEAD_FILE);
        let tensors = candle_core::safetensors::load(&head_path, &Device::Cpu).map_err(|e| {
            ModelError::File {
                path: head_path.display().to_string(),
                msg: format!("cannot read the value head ({e})"),
            }
        })?;
        let get = |name: &str| -> Result<Vec<f32>, ModelError> {
            let t = tensors.get(name).ok_or_else(|| ModelError::File {
                path: head_path.display().to_string(),
                msg: format!("no tensor `{name}`"),
            })?;
            Ok(t.flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?)
        };
        let w = get("value_head.weight")?;
        let b = get("value_head.bias")?;
        if w.len() != cfg.d_model || b.len() != 1 {
            return Err(ModelError::File {
                path: head_path.display().to_string(),
                msg: format!(
                    "value head shapes [{}] and [{}]; expected [{}] and [1]",
                    w.len(),
                    b.len(),
                    cfg.d_model
                ),
            });
        }
        // A backbone saved inside the PPM directory (backbone layers trained) is named relative
        // to it.
        let spec = if Path::new(&cfg.backbone).is_relative() && dir.join(&cfg.backbone).is_dir() {
            dir.join(&cfg.backbone).to_string_lossy().into_owned()
        } else {
            cfg.backbone.clone()
        };
        let (backbone, tokenizer) = load_backbone(&spec)?;
        if backbone.config().d_model != cfg.d_model {
            return Err(ModelError::File {
                path: dir.join("ppm.json").display().to_string(),
                msg: format!(
                    "the head is {} wide but backbone `{}` is {} wide",
                    cfg.d_model,
                    cfg.backbone,
                    backbone.config().d_model
                ),
            });
        }
        Self::with_head(backbone, tokenizer, &cfg.backbone, w, b[0])
    }

    /// Reads and checks `dir/ppm.json` only.
    pub fn read_config(dir: &Path) -> Result<PpmConfig, ModelError> {
        let path = dir.join("ppm.json");
        let err = |msg: String| ModelError::File {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(format!("{e} (a PPM is a directory holding ppm.json)")))?;
        let cfg: PpmConfig =
            serde_json::from_str(&text).map_err(|e| err(format!("not a PPM config: {e}")))?;
        if cfg.format != FORMAT || cfg.version != VERSION {
            return Err(err(format!(
                "format {} v{}; expected {FORMAT} v{VERSION}",
                cfg.format, cfg.version
            )));
        }
        Ok(cfg)
    }

    /// Writes `dir/ppm.json` and `dir/value_head.safetensors` (each replaced atomically).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let io = |p: &Path, e: std::io::Error| ModelError::File {
            path: p.display().to_string(),
            msg: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let head_path = dir.join(HEAD_FILE);
        let tmp = dir.join(format!(".{HEAD_FILE}.tmp"));
        let mut map = HashMap::new();
        map.insert(
            "value_head.weight".to_string(),
            Tensor::from_vec(self.head_w.clone(), (1, self.cfg.d_model), &Device::Cpu)?,
        );
        map.insert(
            "value_head.bias".to_string(),
            Tensor::from_vec(vec![self.head_b], 1, &Device::Cpu)?,
        );
        candle_core::safetensors::save(&map, &tmp)?;
        std::fs::rename(&tmp, &head_path).map_err(|e| io(&head_path, e))?;
        let cfg_path = dir.join("ppm.json");
        let tmp = dir.join(".ppm.json.tmp");
        let text = serde_json::to_string_pretty(&self.cfg)
            .map_err(|e| ModelError::Request(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &cfg_path).map_err(|e| io(&cfg_path, e))?;
        Ok(())
    }

    pub fn config(&self) -> &PpmConfig {
        &self.cfg
    }

    pub fn backbone(&self) -> &Arc<Transformer> {
        &self.backbone
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The value head: (weights `[d_model]`, bias).
    pub fn head(&self) -> (&[f32], f32) {
        (&self.head_w, self.head_b)
    }

    /// The text the backbone reads for (question, partial solution).
    pub fn input_text(&self, question: &str, partial_solution: &str) -> String {
        let mut s = self.tokenizer.chat_prompt(None, question);
        s.push_str(partial_solution);
        s
    }

    /// Sets the prefix cache's budget in bytes of KV (0 turns reuse off); default 1 GiB.
    pub fn set_prefix_cache_bytes(&self, bytes: usize) {
        lock(&self.prefix_cache).set_budget(bytes);
    }

    /// Texts, tokens and reused tokens scored so far.
    pub fn stats(&self) -> PpmStats {
        *lock(&self.stats)
    }

    /// Final-norm hidden states of the last token of each text, `[texts, d_model]` f32. Each
    /// text continues the longest cached prefix of its tokens, so only its new tokens run.
    pub fn hidden(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let ctx = self.backbone.config().context_length;
        let mut ids = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let tok = self.tokenizer.encode(t)?;
            if tok.is_empty() || tok.len() > ctx {
                return Err(ModelError::Request(format!(
                    "PPM input {i} has {} tokens (must be 1..={ctx})",
                    tok.len()
                )));
            }
            ids.push(tok);
        }
        let mut caches: Vec<KvCache> = Vec::with_capacity(ids.len());
        let mut from = Vec::with_capacity(ids.len());
        {
            let mut pc = lock(&self.prefix_cache);
            for tokens in &ids {
                match pc.lookup(tokens) {
                    Some((shared, len)) => {
                        caches.push(KvCache::fork_prefix(&shared, len));
                        from.push(len);
                    }
                    None => {
                        caches.push(self.backbone.new_cache());
                        from.push(0);
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(texts.len());
        let mut start = 0;
        while start < ids.len() {
            // As many items' new tokens per call as fit in `chunk_tokens` (at least one item).
            let mut end = start;
            let mut total = 0;
            while end < ids.len()
                && (end == start || total + ids[end].len() - from[end] <= self.chunk_tokens)
            {
                total += ids[end].len() - from[end];
                end += 1;
            }
            let mut segs: Vec<Segment<'_>> = caches[start..end]
                .iter_mut()
                .zip(&ids[start..end])
                .zip(&from[start..end])
                .map(|((cache, tokens), &f)| Segment {
                    tokens: &tokens[f..],
                    cache,
                })
                .collect();
            let h = self.backbone.forward(&mut segs, Output::Hidden)?;
            for row in h.to_vec2::<f32>()? {
                out.push(row);
            }
            start = end;
        }
        let mut pc = lock(&self.prefix_cache);
        let mut st = lock(&self.stats);
        for ((tokens, cache), f) in ids.into_iter().zip(caches).zip(from) {
            st.texts += 1;
            st.tokens += tokens.len();
            st.reused_tokens += f;
            pc.insert(tokens, Arc::new(cache));
        }
        Ok(out)
    }

    /// Scores `(question, partial_solution)` pairs in one batch; each score is in [-1, 1].
    pub fn score(&self, items: &[(&str, &str)]) -> Result<Vec<f32>, ModelError> {
        // A question not seen before: its prompt runs once, alone, so that every item of it
        // continues the prompt's cache instead of each recomputing it.
        if lock(&self.prefix_cache).budget() > 0 {
            let mut questions: Vec<&str> = items.iter().map(|(q, _)| *q).collect();
            questions.sort_unstable();
            questions.dedup();
            let mut fresh: Vec<String> = Vec::new();
            for q in questions {
                let prompt = self.input_text(q, "");
                let tokens = self.tokenizer.encode(&prompt)?;
                let covered = lock(&self.prefix_cache)
                    .lookup(&tokens)
                    .map_or(0, |(_, l)| l);
                if tokens.len() >= 16 && covered + 1 < tokens.len() {
                    fresh.push(prompt);
                }
            }
            if !fresh.is_empty() {
                self.hidden(&fresh)?;
            }
        }
        let texts: Vec<String> = items.iter().map(|(q, p)| self.input_text(q, p)).collect();
        let hidden = self.hidden(&texts)?;
        Ok(hidden.iter().map(|h| self.head_value(h)).collect())
    }

    /// `tanh(w · h + b)` for one hidden state.
    pub fn head_value(&self, h: &[f32]) -> f32 {
        let z: f32 = h.iter().zip(&self.head_w).map(|(a, b)| a * b).sum::<f32>() + self.head_b;
        z.tanh()
    }
}

/// A poisoned lock only means another thread panicked mid-update of a cache or counters; both
/// stay usable (a cache entry is inserted whole or not at all).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
