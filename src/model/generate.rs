//! Batched generation on a local [`Transformer`]: the [`Policy`] backend for GGUF and safetensors
//! models.
//!
//! One `generate` call for `P` prompts × `n` samples:
//! 1. **Prefill** every prompt once, many prompts per forward call (up to `prefill_chunk` tokens
//!    per call; a longer prompt is split across calls). The prompt's KV cache is then frozen and
//!    shared by its `n` samples ([`KvCache::fork`]): no copy, no recomputation.
//! 2. **Decode** all live sequences together, one token each per forward call, each at its own
//!    position, at most `max_batch` sequences per call. A sequence leaves the batch the moment it
//!    hits an end-of-sequence token, a stop string, or `max_tokens`.
//!
//! Sampling is candle-transformers' `LogitsProcessor` (arg-max, temperature, top-k, top-p), one per
//! sequence, seeded from (seed, the prompt's tokens, sample index) so a sequence's tokens depend neither on
//! what else is in the batch nor on where its prompt sits in it (a search over one problem draws
//! the same samples alone as in a batch of hundreds). Text is detokenised incrementally per sequence; stop strings are
//! searched only in the text the last token added (plus the overlap a stop string can span).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use super::prefix_cache::PrefixCache;
use super::tokenizer::{IncrementalDecoder, Tokenizer};
use super::transformer::{read_gguf, KvCache, Output, Segment, Transformer, WeightMode};
use super::{Completion, FinishReason, ModelError, Policy, SamplingParams};

/// Throughput counters of a [`LocalPolicy`], accumulated over its calls.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenStats {
    /// Prompt tokens (including those whose KV came from the prefix cache).
    pub prefill_tokens: usize,
    /// Prompt tokens whose keys and values were reused from the prefix cache, not recomputed.
    pub reused_tokens: usize,
    pub prefill_secs: f64,
    /// Tokens generated (every sequence, stop-string tokens included).
    pub decode_tokens: usize,
    pub decode_secs: f64,
    /// Forward calls made (prefill and decode).
    pub forward_calls: usize,
}

/// A local model with its tokenizer.
pub struct LocalPolicy {
    model: Arc<Transformer>,
    tokenizer: Tokenizer,
    name: String,
    /// Most prompt tokens per prefill forward call.
    pub prefill_chunk: usize,
    /// Most sequences per decode forward call (bounds activation and logits memory).
    pub max_batch: usize,
    /// Most sequences decoded together (their KV caches live at once). A search step's
    /// candidates finish at very different lengths; decoding them all in one group lets the
    /// long ones share forward calls instead of each group of `max_batch` waiting for its own
    /// longest sequence in turn.
    pub max_group: usize,
    /// Keep generating past end-of-sequence tokens (benchmarks that need fixed lengths).
    pub ignore_eos: bool,
    /// KV caches of recent prompts and finished sequences, reused by later prompts that start
    /// with the same tokens (a few-shot prompt shared by every problem; the next step of a
    /// solution, whose prompt is the previous prompt plus the step just generated).
    prefix_cache: PrefixCache,
    stats: GenStats,
}

impl LocalPolicy {
    /// Loads a GGUF file (tokenizer from its metadata) or a Hugging Face directory
    /// (`config.json`, `*.safetensors`, `tokenizer.json`; its f32 projections are re-quantized to
    /// Q8_0 unless `mode` is [`WeightMode::Dequantized`]).
    pub fn load(path: &Path, mode: WeightMode, device: &Device) -> Result<Self, ModelError> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let (model, tokenizer) = if path.is_dir() {
            let mut model = Transformer::from_safetensors_dir(path, device)?;
            // A float checkpoint decodes through the Q8 kernels unless f32 was asked for.
            if mode != WeightMode::Dequantized {
                model = model.into_q8()?;
            }
            let tokenizer = Tokenizer::from_file(path.join("tokenizer.json"))?;
            (model, tokenizer)
        } else {
            if !path.exists() {
                return Err(ModelError::File {
                    path: path.display().to_string(),
                    msg: "no such file; give a .gguf file, a Hugging Face directory, or a name from `rstar-gpu assets list`".into(),
                });
            }
            let (ct, mut file) = read_gguf(path)?;
            let tokenizer = Tokenizer::from_gguf(&ct)?;
            let model = Transformer::from_gguf_content(&ct, &mut file, path, mode, device)?;
            (model, tokenizer)
        };
        Ok(Self::new(Arc::new(model), tokenizer, name))
    }

    pub fn new(model: Arc<Transformer>, tokenizer: Tokenizer, name: String) -> Self {
        LocalPolicy {
            model,
            tokenizer,
            name,
            prefill_chunk: 512,
            max_batch: 64,
            max_group: 512,
            ignore_eos: false,
            prefix_cache: PrefixCache::new(1 << 30),
            stats: GenStats::default(),
        }
    }

    /// Writes the model as a Hugging Face directory (f32 safetensors, `config.json`,
    /// `tokenizer.json`, `tokenizer_config.json` with the EOS token and chat template) that
    /// [`LocalPolicy::load`] and Hugging Face tools read back.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<(), ModelError> {
        self.model.save_safetensors_dir(dir)?;
        save_tokenizer_files(&self.tokenizer, dir)
    }

    pub fn model(&self) -> &Arc<Transformer> {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn stats(&self) -> &GenStats {
        &self.stats
    }

    pub fn reset_stats(&mut self) {
        self.stats = GenStats::default();
    }

    /// Sets the prefix cache's budget in bytes of KV (0 turns reuse off); default 1 GiB.
    pub fn set_prefix_cache_bytes(&mut self, bytes: usize) {
        self.prefix_cache.set_budget(bytes);
    }

    /// Prefills `prompts` (token ids) and returns each prompt's frozen cache and last-token
    /// logits `[vocab]`.
    fn prefill(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<(Arc<KvCache>, Tensor)>, ModelError> {
        let t0 = Instant::now();
        // Prompts of one call often share a long head (a few-shot prompt): compute it once and
        // let every prompt fork it, unless the cache already covers it.
        if prompts.len() > 1 {
            let common = prompts[1..].iter().fold(prompts[0].len(), |l, p| {
                l.min(
                    p.iter()
                        .zip(&prompts[0])
                        .take_while(|(a, b)| a == b)
                        .count(),
                )
            });
            let common = common.min(
                prompts
                    .iter()
                    .map(Vec::len)
                    .min()
                    .unwrap_or(0)
                    .saturating_sub(1),
            );
            let covered = self
                .prefix_cache
                .lookup(&prompts[0][..common + 1])
                .map_or(0, |(_, l)| l);
            if common >= 16 && covered < common && self.prefix_cache.budget() > 0 {
                let mut head = match self.prefix_cache.lookup(&prompts[0][..common]) {
                    Some((shared, len)) => KvCache::fork_prefix(&shared, len),
                    None => self.model.new_cache(),
                };
                let from = head.len();
                for part in prompts[0][from..common].chunks(self.prefill_chunk.max(1)) {
                    self.model.forward(
                        &mut [Segment {
                            tokens: part,
                            cache: &mut head,
                        }],
                        Output::Hidden,
                    )?;
                    self.stats.forward_calls += 1;
                }
                self.prefix_cache
                    .insert(prompts[0][..common].to_vec(), Arc::new(head));
            }
        }
        let mut caches = Vec::with_capacity(prompts.len());
        let mut done = vec![0usize; prompts.len()];
        for (i, p) in prompts.iter().enumerate() {
            match self.prefix_cache.lookup(p) {
                Some((shared, len)) => {
                    caches.push(KvCache::fork_prefix(&shared, len));
                    done[i] = len;
                    self.stats.reused_tokens += len;
                }
                None => caches.push(self.model.new_cache()),
            }
        }
        let mut logits: Vec<Option<Tensor>> = vec![None; prompts.len()];
        let mut next = 0; // first prompt not fully prefilled
        while next < prompts.len() {
            // Fill one call with up to `prefill_chunk` tokens from consecutive prompts.
            let mut budget = self.prefill_chunk.max(1);
            let mut parts: Vec<(usize, usize, usize)> = Vec::new(); // (prompt, from, to)
            let mut i = next;
            while i < prompts.len() && budget > 0 {
                let from = done[i];
                let to = prompts[i].len().min(from + budget);
                parts.push((i, from, to));
                budget -= to - from;
                if to < prompts[i].len() {
                    break;
                }
                i += 1;
            }
            let out = {
                let mut segs: Vec<Segment<'_>> = Vec::with_capacity(parts.len());
                let mut rest: &mut [KvCache] = &mut caches[..];
                let mut offset = 0;
                for &(p, from, to) in &parts {
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut(p - offset);
                    let (cache, tail) = tail.split_first_mut().expect("prompt index in range");
                    rest = tail;
                    offset = p + 1;
                    segs.push(Segment {
                        tokens: &prompts[p][from..to],
                        cache,
                    });
                }
                self.model.forward(&mut segs, Output::Logits)?
            };
            self.stats.forward_calls += 1;
            for (row, &(p, _, to)) in parts.iter().enumerate() {
                done[p] = to;
                if to == prompts[p].len() {
                    logits[p] = Some(out.get(row)?);
                    next = next.max(p + 1);
                }
            }
        }
        self.stats.prefill_tokens += prompts.iter().map(Vec::len).sum::<usize>();
        self.stats.prefill_secs += t0.elapsed().as_secs_f64();
        let mut out = Vec::with_capacity(prompts.len());
        for ((c, l), p) in caches.into_iter().zip(logits).zip(prompts) {
            let c = Arc::new(c);
            self.prefix_cache.insert(p.clone(), c.clone());
            let l = l.ok_or_else(|| {
                ModelError::Request("internal: a prompt was not prefilled".into())
            })?;
            out.push((c, l));
        }
        Ok(out)
    }
}

fn sampler(sampling: &SamplingParams, prompt: u64, sample: usize) -> LogitsProcessor {
    let t = sampling.temperature;
    let mode = if t <= 0.0 {
        Sampling::ArgMax
    } else {
        match (sampling.top_k, sampling.top_p < 1.0) {
            (None, false) => Sampling::All { temperature: t },
            (None, true) => Sampling::TopP {
                p: sampling.top_p,
                temperature: t,
            },
            (Some(k), false) => Sampling::TopK { k, temperature: t },
            (Some(k), true) => Sampling::TopKThenTopP {
                k,
                p: sampling.top_p,
                temperature: t,
            },
        }
    };
    LogitsProcessor::from_sampling(seq_seed(sampling.seed, prompt, sample), mode)
}

/// FNV-1a over a prompt's token ids: the prompt part of a sequence's seed.
fn prompt_key(tokens: &[u32]) -> u64 {
    tokens.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
        (h ^ t as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 of (seed, prompt key, sample): independent streams per sequence.
fn seq_seed(seed: u64, prompt: u64, sample: usize) -> u64 {
    let mut z = seed ^ (prompt.rotate_left(17) ^ sample as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Finds the earliest stop string that ends inside `text[from..]`; returns (byte index, stop).
pub(crate) fn find_stop<'s>(
    text: &str,
    from: usize,
    stops: &'s [String],
) -> Option<(usize, &'s str)> {
    let longest = stops.iter().map(String::len).max().unwrap_or(0);
    let mut start = from.saturating_sub(longest.saturating_sub(1));
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            text[start..]
                .find(s.as_str())
                .map(|i| (start + i, s.as_str()))
        })
        .min_by_key(|&(i, _)| i)
}

struct Seq {
    prompt: usize,
    sample: usize,
    cache: KvCache,
    sampler: LogitsProcessor,
    decoder: IncrementalDecoder,
    text: String,
    tokens: usize,
    /// The token sampled last, not yet run through the model.
    pending: u32,
    /// The prompt followed by every token run through the model so far (the cache's tokens).
    fed: Vec<u32>,
    finish: Option<FinishReason>,
}

impl Policy for LocalPolicy {
    fn generate(
        &mut self,
        prompts: &[String],
        n: usize,
        sampling: &SamplingParams,
        stop: &[String],
    ) -> Result<Vec<Vec<Completion>>, ModelError> {
        sampling.validate(n)?;
        let mut results: Vec<Vec<Completion>> = vec![Vec::with_capacity(n); prompts.len()];
        if prompts.is_empty() {
            return Ok(results);
        }
        let ctx = self.model.config().context_length;
        let mut ids = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let t = self.tokenizer.encode(p)?;
            if t.is_empty() {
                return Err(ModelError::Request(format!(
                    "prompt {i} is empty (no tokens)"
                )));
            }
            if t.len() >= ctx {
                return Err(ModelError::Request(format!(
                    "prompt {i} has {} tokens; the model's context is {ctx}",
                    t.len()
                )));
            }
            ids.push(t);
        }
        // Prompts go through in groups of at most `max_group` sequences, so that memory stays
        // bounded however many prompts a search step sends.
        let per_group = (self.max_group.max(self.max_batch) / n).max(1);
        let mut start = 0;
        while start < prompts.len() {
            let end = (start + per_group).min(prompts.len());
            let group = self.generate_group(&ids[start..end], n, sampling, stop)?;
            for (k, completions) in group.into_iter().enumerate() {
                results[start + k] = completions;
            }
            start = end;
        }
        Ok(results)
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

impl LocalPolicy {
    fn generate_group(
        &mut self,
        prompts: &[Vec<u32>],
        n: usize,
        sampling: &SamplingParams,
        stop: &[String],
    ) -> Result<Vec<Vec<Completion>>, ModelError> {
        let ctx = self.model.config().context_length;
        let prefilled = self.prefill(prompts)?;
        let t0 = Instant::now();
        let mut seqs: Vec<Seq> = Vec::with_capacity(prompts.len() * n);
        for (p, (shared, logits)) in prefilled.iter().enumerate() {
            for j in 0..n {
                let mut sampler = sampler(sampling, prompt_key(&prompts[p]), j);
                let pending = sampler.sample(logits)?;
                seqs.push(Seq {
                    prompt: p,
                    sample: j,
                    cache: KvCache::fork(shared),
                    sampler,
                    decoder: IncrementalDecoder::new(&self.tokenizer, true),
                    text: String::new(),
                    tokens: 0,
                    pending,
                    fed: prompts[p].clone(),
                    finish: None,
                });
            }
        }
        drop(prefilled);
        let max_tokens = sampling.max_tokens;
        loop {
            // Account for each live sequence's pending token; decide who continues.
            let mut live = Vec::new();
            for (i, s) in seqs.iter_mut().enumerate() {
                if s.finish.is_some() {
                    continue;
                }
                if max_tokens == 0 {
                    s.finish = Some(FinishReason::Length);
                    continue;
                }
                if !self.ignore_eos && self.tokenizer.is_eos(s.pending) {
                    s.tokens += 1;
                    s.text.push_str(&s.decoder.finish()?);
                    s.finish = Some(FinishReason::Eos);
                    continue;
                }
                s.tokens += 1;
                let before = s.text.len();
                s.text.push_str(&s.decoder.push(s.pending)?);
                if let Some((at, which)) = find_stop(&s.text, before, stop) {
                    s.text.truncate(at);
                    s.finish = Some(FinishReason::Stop(which.to_string()));
                    continue;
                }
                if s.tokens >= max_tokens || s.cache.len() + 1 >= ctx {
                    s.text.push_str(&s.decoder.finish()?);
                    if let Some((at, which)) = find_stop(&s.text, before, stop) {
                        s.text.truncate(at);
                        s.finish = Some(FinishReason::Stop(which.to_string()));
                    } else {
                        s.finish = Some(FinishReason::Length);
                    }
                    continue;
                }
                live.push(i);
            }
            if live.is_empty() {
                break;
            }
            for chunk in live.chunks(self.max_batch.max(1)) {
                let pending: Vec<u32> = chunk.iter().map(|&i| seqs[i].pending).collect();
                let logits = {
                    let mut segs: Vec<Segment<'_>> = Vec::with_capacity(chunk.len());
                    // `chunk` is increasing, so the caches can be split off in order.
                    let mut rest: &mut [Seq] = &mut seqs[..];
                    let mut offset = 0;
                    for (k, &i) in chunk.iter().enumerate() {
                        let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - offset);
                        let (s, tail) = tail.split_first_mut().expect("live index in range");
                        rest = tail;
                        offset = i + 1;
                        segs.push(Segment {
                            tokens: std::slice::from_ref(&pending[k]),
                            cache: &mut s.cache,
                        });
                    }
                    self.model.forward(&mut segs, Output::Logits)?
                };
                self.stats.forward_calls += 1;
                for (row, &i) in chunk.iter().enumerate() {
                    let l = logits.get(row)?;
                    let s = &mut seqs[i];
                    s.fed.push(s.pending);
                    s.pending = s.sampler.sample(&l)?;
                }
            }
        }
        let mut out: Vec<Vec<Completion>> =
            (0..prompts.len()).map(|_| Vec::with_capacity(n)).collect();
        for s in seqs {
            self.stats.decode_tokens += s.tokens;
            // The finished sequence's cache serves a next prompt that continues its text.
            if s.fed.len() > prompts[s.prompt].len() {
                self.prefix_cache.insert(s.fed, Arc::new(s.cache));
            }
            debug_assert_eq!(out[s.prompt].len(), s.sample);
            out[s.prompt].push(Completion {
                text: s.text,
                tokens: s.tokens,
                finish: s.finish.unwrap_or(FinishReason::Length),
            });
        }
        self.stats.decode_secs += t0.elapsed().as_secs_f64();
        Ok(out)
    }
}

/// Writes `tokenizer.json` and `tokenizer_config.json` (EOS/BOS tokens, chat template) into
/// `dir`, as Hugging Face tools and [`LocalPolicy::load`] read them.
pub fn save_tokenizer_files(tokenizer: &Tokenizer, dir: &Path) -> Result<(), ModelError> {
    let err = |p: &Path, e: &dyn std::fmt::Display| ModelError::File {
        path: p.display().to_string(),
        msg: e.to_string(),
    };
    let tok_path = dir.join("tokenizer.json");
    tokenizer
        .inner()
        .save(&tok_path, false)
        .map_err(|e| err(&tok_path, &e))?;
    let name = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let mut cfg = serde_json::json!({
        "add_bos_token": tokenizer.adds_bos(),
        "eos_token": name(tokenizer.eos_ids().first().copied()),
        "bos_token": name(tokenizer.bos_id()),
    });
    if let Some(t) = tokenizer.chat_template_source() {
        cfg["chat_template"] = t.into();
    }
    let cfg_path = dir.join("tokenizer_config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&cfg).unwrap_or_default(),
    )
    .map_err(|e| err(&cfg_path, &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_search_spans_token_boundaries() {
        let stops = vec!["<end_of_step>".to_string(), "```output".to_string()];
        let text = "x = 1\n<end_of_st";
        assert_eq!(find_stop(text, 6, &stops), None);
        let text = "x = 1\n<end_of_step>";
        // The last token added only "ep>", but the match started earlier.
        assert_eq!(
            find_stop(text, text.len() - 3, &stops),
            Some((6, "<end_of_step>"))
        );
        // Earliest match wins.
        let text = "a```output b<end_of_step>";
        assert_eq!(find_stop(text, 0, &stops), Some((1, "```output")));
        // Multi-byte text before the window start is handled.
        let text = "ππππ<end_of_step>";
        assert_eq!(find_stop(text, 9, &stops), Some((8, "<end_of_step>")));
    }

    #[test]
    fn seeds_differ_per_sequence() {
        assert_ne!(seq_seed(1, 0, 0), seq_seed(1, 0, 1));
        assert_ne!(seq_seed(1, 0, 1), seq_seed(1, 1, 0));
        assert_ne!(prompt_key(&[1, 2]), prompt_key(&[2, 1]));
        assert_eq!(seq_seed(7, 3, 2), seq_seed(7, 3, 2));
    }

    #[test]
    fn bad_sampling_is_rejected() {
        let mut s = SamplingParams::default();
        assert!(s.validate(0).is_err());
        s.temperature = f64::NAN;
        assert!(s.validate(1).is_err());
        s.temperature = 0.5;
        s.top_p = 0.0;
        assert!(s.validate(1).is_err());
        s.top_p = 1.0;
        assert!(s.validate(1).is_ok());
    }
}
