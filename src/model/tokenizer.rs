//! Text ⇄ token ids for the policy and the PPM: a [`tokenizers`] BPE tokenizer built from GGUF
//! metadata (or loaded from a Hugging Face `tokenizer.json`), the ids that end generation, the
//! chat prompt, and per-sequence incremental detokenisation.
//!
//! # What this module owns
//!
//! - [`Tokenizer`]: the wrapped `tokenizers::Tokenizer` (shared behind an `Arc`, so cloning is
//!   cheap), the BOS id and whether to prepend it, the end-of-generation ids, and the chat
//!   template kind ([`ChatTemplate`]). [`Tokenizer::encode`] turns special tokens written in the
//!   text (`<|im_start|>`) into their ids; [`Tokenizer::decode`] is lossless (it keeps special
//!   tokens), [`Tokenizer::decode_skip_special`] drops them.
//! - [`IncrementalDecoder`]: one per generated sequence; [`IncrementalDecoder::push`] returns only
//!   the text completed by the new token and holds back bytes of a UTF-8 character split across
//!   byte-level tokens. It decodes a window of a few tokens (the prefix-offset / read-offset
//!   technique of Hugging Face text-generation-inference), never the whole output. The
//!   concatenation of every `push` and the final [`IncrementalDecoder::finish`] equals
//!   `decode` of all the ids.
//!
//! # GGUF metadata → tokenizer
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is built, matching llama.cpp and the
//! models' own Hugging Face `tokenizer.json`:
//!
//! | GGUF key | use |
//! | --- | --- |
//! | `tokenizer.ggml.model` | must be `"gpt2"`; `"llama"` (SentencePiece) and others are [`ModelError::Unsupported`] |
//! | `tokenizer.ggml.tokens` | the vocabulary: token `i` has id `i`, in byte-level spelling (`Ġ` = space) |
//! | `tokenizer.ggml.merges` | the BPE merges, `"left right"`, in rank order |
//! | `tokenizer.ggml.token_type` | 3 (control) and 2 (unknown) → special added tokens (matched in text, dropped by `decode_skip_special`); 4 (user-defined) → non-special added tokens (matched in text, always decoded); 1, 5 (unused), 6 → ordinary BPE entries |
//! | `tokenizer.ggml.pre` | the pre-tokenizer (below) |
//! | `tokenizer.ggml.bos_token_id`, `add_bos_token` | [`Tokenizer::bos_id`]; prepended by `encode` only when `add_bos_token` is true (default false, as llama.cpp for BPE) |
//! | `tokenizer.ggml.eos_token_id`, `eot_token_id`, `eom_token_id` | first entries of [`Tokenizer::eos_ids`] |
//! | `tokenizer.chat_template` | [`ChatTemplate`] detection and the default system prompt |
//!
//! `padding_token_id` and `unknown_token_id` are not needed (no padding here; byte-level BPE
//! has no unknown token).
//!
//! Pre-tokenizers (the regexes are those of the models' `tokenizer.json`, which llama.cpp
//! reimplements for the same `pre` names):
//!
//! - `qwen2` (also `deepseek-r1-qwen`, `megrez`, `stablelm2`): split with
//!   `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//!   (each digit alone), then byte-level without a prefix space.
//! - `smollm` (also `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`, `minerva-7b`):
//!   every digit split off alone (llama.cpp's `\p{N}` pass, HF's `Digits(individual_digits)`),
//!   then the GPT-2 regex `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//!   and byte-level without a prefix space.
//! - `gpt-2` (also `phi-2`, `mpt`, `olmo`): the GPT-2 regex alone.
//!
//! Any other `pre` (`llama-bpe`, `deepseek-llm`, …) or a missing one is
//! [`ModelError::Unsupported`]: a wrong split would silently change the ids.
//!
//! No normalizer is applied, as in llama.cpp. (Qwen's `tokenizer.json` has an NFC normalizer;
//! for NFC input — nearly all text — the ids are the same, and skipping it keeps
//! `decode(encode(x)) == x` for every input.)
//!
//! The end-of-generation ids follow llama.cpp: the eos/eot/eom ids from the metadata plus the
//! tokens spelled like an end of turn (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, …) or the
//! FIM pad / repo / file-separator tokens, which llama.cpp also treats as end of generation.
//!
//! # Chat prompts
//!
//! Both shipped models (Qwen2.5, SmolLM2) use ChatML. A template is taken for ChatML when it
//! writes `<|im_start|>` and `<|im_end|>`; its default system prompt (Qwen's "You are Qwen,
//! created by Alibaba Cloud. …", SmolLM2's "You are a helpful AI assistant named SmolLM, …") is
//! read from the literal `'<|im_start|>system\n…<|im_end|>'` in the template text. Any other
//! template, or none, renders the plain fallback `Question: …\nAnswer:` (see
//! [`Tokenizer::chat_prompt`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::ModelError;

/// Qwen2's split regex, as in its `tokenizer.json` (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end a turn (llama.cpp's end-of-generation list, the parts that apply to
/// byte-level BPE models).
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    // FIM pad / repo / file separator: llama.cpp ends generation on these too.
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<reponame>",
    "<|file_sep|>",
    "<file_sep>",
    "<fim-sep>",
];

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The pre-tokenizer families this module can build (from `tokenizer.ggml.pre`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// Qwen2's regex (single digits, letters with one leading non-letter), byte-level.
    Qwen2,
    /// Single digits, then the GPT-2 regex, byte-level (SmolLM, StarCoder).
    SmolLm,
    /// The GPT-2 regex, byte-level.
    Gpt2,
}

impl PreTokenizerKind {
    /// The kind for a GGUF `tokenizer.ggml.pre` value, as llama.cpp maps them.
    pub fn from_gguf_pre(pre: &str) -> Option<Self> {
        match pre {
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => Some(Self::Qwen2),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => Some(Self::SmolLm),
            "gpt-2" | "phi-2" | "mpt" | "olmo" => Some(Self::Gpt2),
            _ => None,
        }
    }

    fn build(self) -> Result<PreTokenizerWrapper, ModelError> {
        Ok(match self {
            Self::Qwen2 => {
                let split = Split::new(
                    SplitPattern::Regex(QWEN2_REGEX.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| ModelError::Tokenizer(format!("qwen2 split regex: {e}")))?;
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, false, false).into(),
                ]))
            }
            Self::SmolLm => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])),
            Self::Gpt2 => ByteLevel::new(false, true, true).into(),
        })
    }
}

/// How [`Tokenizer::chat_prompt`] renders a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// ChatML (`<|im_start|>role\n…<|im_end|>\n`). `default_system` is the system turn the
    /// template inserts when the conversation has none (None: it inserts nothing).
    ChatMl { default_system: Option<String> },
    /// No template, or one that is not ChatML: `Question: …\nAnswer:` (after the system text
    /// and a blank line, when a system text is given).
    Plain,
}

impl ChatTemplate {
    /// Detects the kind from a Jinja chat template's text (see the module docs).
    pub fn from_template(template: &str) -> ChatTemplate {
        if !(template.contains("<|im_start|>") && template.contains("<|im_end|>")) {
            return ChatTemplate::Plain;
        }
        ChatTemplate::ChatMl {
            default_system: default_system_prompt(template),
        }
    }
}

/// The default system prompt of a ChatML template: the first string literal
/// `'<|im_start|>system\n…<|im_end|>'` whose content is plain text (no Jinja expression, no
/// closing quote), with the Jinja string escapes undone.
fn default_system_prompt(template: &str) -> Option<String> {
    const OPEN: &str = "<|im_start|>system";
    let mut from = 0;
    while let Some(at) = template[from..].find(OPEN) {
        let start = from + at + OPEN.len();
        from = start;
        let rest = &template[start..];
        let Some(rest) = rest.strip_prefix("\\n").or_else(|| rest.strip_prefix('\n')) else {
            continue;
        };
        let Some(end) = rest.find("<|im_end|>") else {
            continue;
        };
        let content = &rest[..end];
        if content.contains('{') || content.contains('}') || has_unescaped_quote(content) {
            continue;
        }
        return Some(unescape_jinja(content));
    }
    None
}

fn has_unescaped_quote(s: &str) -> bool {
    let mut escaped = false;
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' | '"' => return true,
            _ => {}
        }
    }
    false
}

fn unescape_jinja(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// A tokenizer with what generation needs around it: BOS, end-of-generation ids and the chat
/// template. Cheap to clone (the vocabulary is shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    bos_id: Option<u32>,
    add_bos: bool,
    eos_ids: Vec<u32>,
    chat: ChatTemplate,
    chat_template_source: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("add_bos", &self.add_bos)
            .field("eos_ids", &self.eos_ids)
            .field("chat", &self.chat)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

fn meta_u32(content: &gguf_file::Content, key: &str) -> Result<Option<u32>, ModelError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(v) => value_as_i64(v)
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| ModelError::Tokenizer(format!("GGUF {key}: not a token id: {v:?}"))),
    }
}

fn value_as_i64(v: &gguf_file::Value) -> Option<i64> {
    use gguf_file::Value as V;
    Some(match v {
        V::U8(x) => i64::from(*x),
        V::I8(x) => i64::from(*x),
        V::U16(x) => i64::from(*x),
        V::I16(x) => i64::from(*x),
        V::U32(x) => i64::from(*x),
        V::I32(x) => i64::from(*x),
        V::U64(x) => i64::try_from(*x).ok()?,
        V::I64(x) => *x,
        _ => return None,
    })
}

fn meta_string_array<'a>(
    content: &'a gguf_file::Content,
    key: &str,
) -> Result<Option<Vec<&'a str>>, ModelError> {
    let Some(v) = content.metadata.get(key) else {
        return Ok(None);
    };
    let gguf_file::Value::Array(items) = v else {
        return Err(ModelError::Tokenizer(format!(
            "GGUF {key}: expected an array of strings"
        )));
    };
    items
        .iter()
        .map(|item| match item {
            gguf_file::Value::String(s) => Ok(s.as_str()),
            other => Err(ModelError::Tokenizer(format!(
                "GGUF {key}: expected strings, found {:?}",
                other.value_type()
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// End-of-generation ids: `first` (eos, eot, eom in that order, the first present is the
/// primary) then every token spelled like an end of turn, deduplicated.
fn end_of_generation_ids(
    first: impl IntoIterator<Item = Option<u32>>,
    lookup: impl Fn(&str) -> Option<u32>,
) -> Vec<u32> {
    let mut ids: Vec<u32> = first.into_iter().flatten().collect();
    let mut by_text: Vec<u32> = END_OF_TURN.iter().filter_map(|t| lookup(t)).collect();
    by_text.sort_unstable();
    ids.extend(by_text);
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    ids
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata (see the module docs for the mapping).
    ///
    /// Errors: [`ModelError::Unsupported`] for a tokenizer model other than byte-level BPE
    /// (`"gpt2"`) or an unknown/missing `tokenizer.ggml.pre`; [`ModelError::Tokenizer`] for missing
    /// or malformed tokenizer metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, ModelError> {
        let model = match content.metadata.get("tokenizer.ggml.model") {
            None => {
                return Err(ModelError::Tokenizer(
                    "GGUF has no tokenizer.ggml.model: the file carries no tokenizer; \
                     load a tokenizer.json with Tokenizer::from_file"
                        .into(),
                ))
            }
            Some(gguf_file::Value::String(s)) => s.as_str(),
            Some(v) => {
                return Err(ModelError::Tokenizer(format!(
                    "GGUF tokenizer.ggml.model is not a string: {v:?}"
                )))
            }
        };
        match model {
            "gpt2" => {}
            "llama" => {
                return Err(ModelError::Unsupported(
                    "GGUF tokenizer model 'llama' (SentencePiece) is not supported; only \
                     byte-level BPE ('gpt2'), as in Qwen2 and SmolLM2 GGUFs, or a tokenizer.json"
                        .into(),
                ))
            }
            other => {
                return Err(ModelError::Unsupported(format!(
                    "GGUF tokenizer model '{other}' is not supported; only byte-level BPE \
                     ('gpt2'), or a tokenizer.json"
                )))
            }
        }
        let pre_name = match content.metadata.get("tokenizer.ggml.pre") {
            Some(gguf_file::Value::String(s)) => s.as_str(),
            None => {
                return Err(ModelError::Unsupported(
                    "GGUF has no tokenizer.ggml.pre: the pre-tokenizer is unknown (llama.cpp \
                     would guess); supported: qwen2, smollm, gpt-2 families"
                        .into(),
                ))
            }
            Some(v) => {
                return Err(ModelError::Tokenizer(format!(
                    "GGUF tokenizer.ggml.pre is not a string: {v:?}"
                )))
            }
        };
        let pre = PreTokenizerKind::from_gguf_pre(pre_name).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "GGUF pre-tokenizer '{pre_name}' is not supported; supported: qwen2 \
                 (deepseek-r1-qwen, megrez, stablelm2), smollm (starcoder, refact, command-r, \
                 codeshell, exaone, minerva-7b), gpt-2 (phi-2, mpt, olmo)"
            ))
        })?;

        let tokens = meta_string_array(content, "tokenizer.ggml.tokens")?.ok_or_else(|| {
            ModelError::Tokenizer("GGUF has no tokenizer.ggml.tokens (the vocabulary)".into())
        })?;
        if tokens.is_empty() {
            return Err(ModelError::Tokenizer(
                "GGUF tokenizer.ggml.tokens is empty".into(),
            ));
        }
        let merges = meta_string_array(content, "tokenizer.ggml.merges")?.ok_or_else(|| {
            ModelError::Tokenizer("GGUF has no tokenizer.ggml.merges (needed for BPE)".into())
        })?;
        let types: Vec<i64> = match content.metadata.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(gguf_file::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    value_as_i64(v).ok_or_else(|| {
                        ModelError::Tokenizer(format!(
                            "GGUF tokenizer.ggml.token_type: not an integer: {v:?}"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(ModelError::Tokenizer(format!(
                    "GGUF tokenizer.ggml.token_type is not an array: {:?}",
                    v.value_type()
                )))
            }
        };
        if types.len() != tokens.len() {
            return Err(ModelError::Tokenizer(format!(
                "GGUF tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }

        // Every token is a BPE vocabulary entry with its GGUF id; the special and user-defined
        // ones are then registered as added tokens, which find those same ids. A duplicated
        // spelling keeps its last id, as llama.cpp's text → id map does.
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, tok)| ((*tok).to_string(), id as u32))
            .collect();
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first character.
            let split = m
                .char_indices()
                .skip(1)
                .find(|(_, c)| *c == ' ')
                .map(|(i, _)| i);
            let Some(i) = split else {
                return Err(ModelError::Tokenizer(format!(
                    "GGUF tokenizer.ggml.merges[{rank}] = {m:?} is not 'left right'"
                )));
            };
            merge_pairs.push((m[..i].to_string(), m[i + 1..].to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merge_pairs)
            .build()
            .map_err(|e| ModelError::Tokenizer(format!("GGUF BPE vocabulary/merges: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre.build()?));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (tok, ty) in tokens.iter().zip(&types) {
            match *ty {
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => {
                    special.push(AddedToken::from(*tok, true).normalized(false))
                }
                TOKEN_TYPE_USER_DEFINED => {
                    user.push(AddedToken::from(*tok, false).normalized(false))
                }
                _ => {}
            }
        }
        inner.add_special_tokens(special).map_err(tok_err)?;
        inner.add_tokens(user).map_err(tok_err)?;

        let n = tokens.len() as u32;
        let checked = |key: &str| -> Result<Option<u32>, ModelError> {
            match meta_u32(content, key)? {
                Some(id) if id >= n => Err(ModelError::Tokenizer(format!(
                    "GGUF {key} = {id} is outside the vocabulary of {n} tokens"
                ))),
                other => Ok(other),
            }
        };
        let bos_id = checked("tokenizer.ggml.bos_token_id")?;
        let eos_id = checked("tokenizer.ggml.eos_token_id")?;
        let eot_id = checked("tokenizer.ggml.eot_token_id")?;
        let eom_id = checked("tokenizer.ggml.eom_token_id")?;
        let add_bos = match content.metadata.get("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(gguf_file::Value::Bool(b)) => *b,
            Some(v) => {
                return Err(ModelError::Tokenizer(format!(
                    "GGUF tokenizer.ggml.add_bos_token is not a bool: {v:?}"
                )))
            }
        };
        if add_bos && bos_id.is_none() {
            return Err(ModelError::Tokenizer(
                "GGUF says add_bos_token but has no tokenizer.ggml.bos_token_id".into(),
            ));
        }
        let eos_ids = {
            let special_ids: HashMap<&str, u32> = tokens
                .iter()
                .zip(&types)
                .enumerate()
                .filter(|(_, (_, ty))| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
                .map(|(id, (tok, _))| (*tok, id as u32))
                .collect();
            end_of_generation_ids([eos_id, eot_id, eom_id], |t| special_ids.get(t).copied())
        };
        let chat_template_source = match content.metadata.get("tokenizer.chat_template") {
            Some(gguf_file::Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let chat = chat_template_source
            .as_deref()
            .map_or(ChatTemplate::Plain, ChatTemplate::from_template);
        Ok(Tokenizer {
            inner: Arc::new(inner),
            bos_id,
            add_bos,
            eos_ids,
            chat,
            chat_template_source,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. A `tokenizer_config.json` next to it supplies
    /// `bos_token`, `eos_token`, `add_bos_token` and `chat_template`; a `generation_config.json`
    /// next to it adds its `eos_token_id`(s). Without a config, BOS is taken from the
    /// tokenizer's post-processor (when it prepends one) and the end-of-generation ids from the
    /// added tokens spelled like an end of turn.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let file_err = |p: &Path, msg: String| ModelError::File {
            path: p.display().to_string(),
            msg,
        };
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| file_err(path, format!("not a tokenizer.json: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let read_json = |name: &str| -> Result<Option<serde_json::Value>, ModelError> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(text) => serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| file_err(&p, format!("bad JSON: {e}"))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(file_err(&p, e.to_string())),
            }
        };
        let config = read_json("tokenizer_config.json")?.unwrap_or(serde_json::Value::Null);
        let generation = read_json("generation_config.json")?.unwrap_or(serde_json::Value::Null);

        // `"<s>"` or `{"content": "<s>", …}`.
        let token_field = |key: &str| -> Option<String> {
            match config.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let id_of = |name: &str, key: &str| -> Result<u32, ModelError> {
            inner.token_to_id(name).ok_or_else(|| {
                file_err(
                    &dir.join("tokenizer_config.json"),
                    format!("{key} {name:?} is not in the vocabulary"),
                )
            })
        };
        let config_bos = token_field("bos_token")
            .map(|t| id_of(&t, "bos_token"))
            .transpose()?;
        let config_eos = token_field("eos_token")
            .map(|t| id_of(&t, "eos_token"))
            .transpose()?;

        // BOS the post-processor prepends, if any.
        let probe_with = inner.encode_fast("a", true).map_err(tok_err)?;
        let probe_without = inner.encode_fast("a", false).map_err(tok_err)?;
        let post_bos = (probe_with.get_ids().len() > probe_without.get_ids().len()
            && probe_with.get_ids().first() != probe_without.get_ids().first())
        .then(|| probe_with.get_ids()[0]);
        let bos_id = config_bos.or(post_bos);
        let add_bos = match config.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(b) => b && bos_id.is_some(),
            None => post_bos.is_some(),
        };

        let mut first = vec![config_eos];
        match generation.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => first.push(n.as_u64().map(|x| x as u32)),
            Some(serde_json::Value::Array(a)) => {
                first.extend(a.iter().map(|v| v.as_u64().map(|x| x as u32)))
            }
            _ => {}
        }
        let added = inner.get_added_tokens_decoder();
        let added_ids: HashMap<&str, u32> = added
            .iter()
            .map(|(id, t)| (t.content.as_str(), *id))
            .collect();
        let eos_ids = end_of_generation_ids(first, |t| added_ids.get(t).copied());

        let chat_template_source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => {
                let named = |want: &str| {
                    list.iter()
                        .find(|e| e.get("name").and_then(|n| n.as_str()) == Some(want))
                };
                named("default")
                    .or_else(|| list.first())
                    .and_then(|e| e.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            }
            _ => None,
        };
        let chat = chat_template_source
            .as_deref()
            .map_or(ChatTemplate::Plain, ChatTemplate::from_template);
        Ok(Tokenizer {
            inner: Arc::new(inner),
            bos_id,
            add_bos,
            eos_ids,
            chat,
            chat_template_source,
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their
    /// ids; BOS is prepended only when the model asks for it ([`Tokenizer::adds_bos`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self.inner.encode_fast(text, false).map_err(tok_err)?;
        let ids = enc.get_ids();
        match (self.add_bos, self.bos_id) {
            (true, Some(bos)) => {
                let mut out = Vec::with_capacity(ids.len() + 1);
                out.push(bos);
                out.extend_from_slice(ids);
                Ok(out)
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// The text of `ids`, special tokens included (`decode(encode(x)) == x` for any `x`
    /// when no BOS is added). Invalid UTF-8 (a character cut off by the ids) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// The text of `ids` without special (control) tokens: what a generation shows.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// A detokeniser for one generated sequence; `skip_special` as in
    /// [`Tokenizer::decode_skip_special`].
    pub fn incremental_decoder(&self, skip_special: bool) -> IncrementalDecoder {
        IncrementalDecoder::new(self, skip_special)
    }

    /// The ids that end generation: the model's EOS first, then end-of-turn ids (see the
    /// module docs). May be empty for a tokenizer.json with no config and no such tokens.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The beginning-of-sequence id, if the model has one (whether or not it is prepended).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether [`Tokenizer::encode`] prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of token ids, added tokens included. For a GGUF this is the length of
    /// `tokenizer.ggml.tokens` (the model's embedding rows); a `tokenizer.json` may have fewer
    /// ids than the model has rows (Qwen2.5: 151665 of 151936).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token spelled as in the vocabulary (byte-level: `"Ġthe"`) or of an added
    /// token (`"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary spelling of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The detected chat template kind.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat
    }

    /// The chat template's Jinja text, if the model has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template_source.as_deref()
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// A one-turn prompt, ready for generation (ends where the assistant's answer starts).
    ///
    /// ChatML templates render
    /// `<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`,
    /// where `system = None` takes the template's default system prompt (Qwen's "You are Qwen,
    /// …", SmolLM2's "You are a helpful AI assistant named SmolLM, …") and drops the system turn
    /// when the template has none; `Some("")` writes an empty system turn.
    ///
    /// [`ChatTemplate::Plain`] (no template, or not ChatML) renders `Question: {user}\nAnswer:`,
    /// preceded by `{system}\n\n` when a system text is given.
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> String {
        match &self.chat {
            ChatTemplate::ChatMl { default_system } => {
                let mut s = String::with_capacity(user.len() + 128);
                if let Some(sys) = system.or(default_system.as_deref()) {
                    s.push_str("<|im_start|>system\n");
                    s.push_str(sys);
                    s.push_str("<|im_end|>\n");
                }
                s.push_str("<|im_start|>user\n");
                s.push_str(user);
                s.push_str("<|im_end|>\n<|im_start|>assistant\n");
                s
            }
            ChatTemplate::Plain => match system {
                Some(sys) => format!("{sys}\n\nQuestion: {user}\nAnswer:"),
                None => format!("Question: {user}\nAnswer:"),
            },
        }
    }
}

/// Detokenises one generated sequence token by token (see the module docs).
///
/// It keeps a window of ids: those already emitted that give context (`ids[..read]`, whose text
/// is `prefix`) and those not yet emitted (`ids[read..]`). A push decodes only the window; when
/// its text grows past `prefix` and does not end in U+FFFD (an incomplete UTF-8 character), the
/// growth is returned and the window slides to the not-yet-context ids.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    inner: Arc<tokenizers::Tokenizer>,
    skip_special: bool,
    ids: Vec<u32>,
    read: usize,
    prefix: String,
}

impl IncrementalDecoder {
    /// A decoder for `tokenizer`; `skip_special` drops special tokens as
    /// [`Tokenizer::decode_skip_special`] does.
    pub fn new(tokenizer: &Tokenizer, skip_special: bool) -> Self {
        IncrementalDecoder {
            inner: Arc::clone(&tokenizer.inner),
            skip_special,
            ids: Vec::new(),
            read: 0,
            prefix: String::new(),
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, self.skip_special).map_err(tok_err)
    }

    /// Adds one id; returns the text it completes (often empty while a character is split
    /// across tokens).
    pub fn push(&mut self, id: u32) -> Result<String, ModelError> {
        self.ids.push(id);
        let text = self.decode(&self.ids)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = self.emit(text)?;
        // Slide: the ids just emitted become the context of the next push.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix = self.decode(&self.ids)?;
        Ok(new)
    }

    fn emit(&self, text: String) -> Result<String, ModelError> {
        match text.strip_prefix(self.prefix.as_str()) {
            Some(new) => Ok(new.to_string()),
            None => Err(ModelError::Tokenizer(format!(
                "incremental decode: the window text {text:?} does not extend the emitted \
                 prefix {:?}",
                self.prefix
            ))),
        }
    }

    /// Returns the text still held back (an incomplete character at the end becomes U+FFFD, as
    /// in [`Tokenizer::decode`]) and resets the decoder for a new sequence.
    pub fn finish(&mut self) -> Result<String, ModelError> {
        let out = if self.read < self.ids.len() {
            let text = self.decode(&self.ids)?;
            if text.len() > self.prefix.len() {
                self.emit(text)?
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        self.ids.clear();
        self.read = 0;
        self.prefix.clear();
        Ok(out)
    }

    /// Ids held in the window (context plus not yet emitted); stays small.
    pub fn window_len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf_file::Value;

    /// GPT-2's byte ↔ printable-char table (the byte-level alphabet).
    fn byte_char(b: u8) -> char {
        let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for x in 0..=255u32 {
            if !bs.contains(&x) {
                bs.push(x);
                cs.push(256 + n);
                n += 1;
            }
        }
        let i = bs.iter().position(|&x| x == b as u32).unwrap();
        char::from_u32(cs[i]).unwrap()
    }

    /// A small GGUF-like content: 3 control tokens, the 256 byte tokens, a few merges.
    fn toy_content(pre: &str) -> gguf_file::Content {
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        let mut types = vec![3i32, 3, 3];
        for b in 0..=255u8 {
            tokens.push(byte_char(b).to_string());
            types.push(1);
        }
        let merges = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "r l", "Ġwo rl", "Ġworl d",
        ];
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(1);
        }
        tokens.push("<tool>".into());
        types.push(4);
        let mut metadata = HashMap::new();
        let s = |x: &str| Value::String(x.to_string());
        metadata.insert("tokenizer.ggml.model".into(), s("gpt2"));
        metadata.insert("tokenizer.ggml.pre".into(), s(pre));
        metadata.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        );
        metadata.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        );
        metadata.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.iter().map(|m| s(m)).collect()),
        );
        metadata.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
        metadata.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(0));
        metadata.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
        metadata.insert(
            "tokenizer.chat_template".into(),
            s("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a toy.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"),
        );
        gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn unwrap_err(r: Result<Tokenizer, ModelError>) -> ModelError {
        match r {
            Ok(t) => panic!("expected an error, got {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn toy_gguf_encodes_merges_specials_and_round_trips() {
        for pre in ["qwen2", "smollm", "gpt-2"] {
            let tok = Tokenizer::from_gguf(&toy_content(pre)).unwrap();
            assert_eq!(tok.vocab_size(), 3 + 256 + 9 + 1);
            let hello = tok.token_to_id("hello").unwrap();
            let world = tok.token_to_id("Ġworld").unwrap();
            let ids = tok.encode("<|im_start|>hello world<|im_end|>").unwrap();
            assert_eq!(ids, vec![1, hello, world, 2], "pre {pre}");
            assert_eq!(
                tok.encode("<tool>").unwrap(),
                vec![tok.token_to_id("<tool>").unwrap()]
            );
            for text in [
                "hello world",
                "héllo 12 wörld π 🙂\n\tx",
                "<|im_end|>a<tool>",
                "",
            ] {
                let ids = tok.encode(text).unwrap();
                assert_eq!(tok.decode(&ids).unwrap(), text, "pre {pre}");
            }
            assert_eq!(
                tok.decode_skip_special(&tok.encode("<|im_start|>hello<tool><|im_end|>").unwrap())
                    .unwrap(),
                "hello<tool>"
            );
            assert_eq!(tok.eos_ids(), &[2, 0]);
            assert!(tok.is_eos(2) && tok.is_eos(0) && !tok.is_eos(1));
            assert_eq!(tok.bos_id(), Some(0));
            assert!(!tok.adds_bos());
        }
    }

    #[test]
    fn pre_tokenizers_split_digits_as_llama_cpp() {
        // Every digit is alone for qwen2 and smollm; GPT-2 keeps runs of digits together.
        let qwen = Tokenizer::from_gguf(&toy_content("qwen2")).unwrap();
        let smol = Tokenizer::from_gguf(&toy_content("smollm")).unwrap();
        let gpt2 = Tokenizer::from_gguf(&toy_content("gpt-2")).unwrap();
        let pieces = |tok: &Tokenizer, s: &str| -> Vec<String> {
            let pre = tok.inner().get_pre_tokenizer().unwrap();
            let mut p = tokenizers::PreTokenizedString::from(s);
            tokenizers::PreTokenizer::pre_tokenize(pre, &mut p).unwrap();
            p.get_splits(
                tokenizers::OffsetReferential::Original,
                tokenizers::OffsetType::Byte,
            )
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect()
        };
        assert_eq!(pieces(&qwen, "a 123"), ["a", "Ġ", "1", "2", "3"]);
        assert_eq!(pieces(&smol, "a 123"), ["a", "Ġ", "1", "2", "3"]);
        assert_eq!(pieces(&gpt2, "a 123"), ["a", "Ġ123"]);
        // qwen2 keeps a leading punctuation with letters and newlines with punctuation.
        assert_eq!(pieces(&qwen, "x.Hello!\n\ny"), ["x", ".Hello", "!ĊĊ", "y"]);
        assert_eq!(
            pieces(&smol, "x.Hello!\n\ny"),
            ["x", ".", "Hello", "!", "Ċ", "Ċ", "y"]
        );
    }

    #[test]
    fn incremental_decoding_holds_split_characters() {
        let tok = Tokenizer::from_gguf(&toy_content("qwen2")).unwrap();
        // π is two bytes, 🙂 four; the toy has no merges for them, so each byte is one token.
        let text = "aπ🙂 hello<|im_end|>€";
        let ids = tok.encode(text).unwrap();
        for skip in [false, true] {
            let mut dec = tok.incremental_decoder(skip);
            let mut parts = Vec::new();
            for &id in &ids {
                parts.push(dec.push(id).unwrap());
                assert!(dec.window_len() <= 6, "window grew to {}", dec.window_len());
            }
            parts.push(dec.finish().unwrap());
            let whole = if skip {
                tok.decode_skip_special(&ids)
            } else {
                tok.decode(&ids)
            };
            assert_eq!(parts.concat(), whole.unwrap());
            // The first byte of π yields nothing; the second completes it.
            assert_eq!(parts[1], "");
            assert_eq!(parts[2], "π");
        }
        // A dangling half character is flushed by finish() as U+FFFD, like decode().
        let mut dec = tok.incremental_decoder(false);
        let pi = tok.encode("π").unwrap();
        assert_eq!(dec.push(pi[0]).unwrap(), "");
        assert_eq!(dec.finish().unwrap(), "\u{FFFD}");
        assert_eq!(tok.decode(&pi[..1]).unwrap(), "\u{FFFD}");
    }

    #[test]
    fn incremental_decoding_of_invalid_byte_runs_matches_decode() {
        let tok = Tokenizer::from_gguf(&toy_content("smollm")).unwrap();
        let byte = |b: u8| tok.token_to_id(&byte_char(b).to_string()).unwrap();
        // A deterministic pseudo-random walk over byte tokens mixing valid and invalid UTF-8.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let interesting = [
            0x61u8, 0x20, 0xCF, 0x80, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x99, 0x82, 0xFF, 0xC0,
        ];
        for _ in 0..200 {
            let mut ids = Vec::new();
            for _ in 0..(x % 12) as usize + 1 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ids.push(if x.is_multiple_of(17) {
                    1
                } else {
                    byte(interesting[(x >> 8) as usize % interesting.len()])
                });
            }
            let mut dec = tok.incremental_decoder(false);
            let mut out = String::new();
            for &id in &ids {
                out += &dec.push(id).unwrap();
            }
            out += &dec.finish().unwrap();
            assert_eq!(out, tok.decode(&ids).unwrap(), "ids {ids:?}");
        }
    }

    #[test]
    fn chat_templates() {
        let tok = Tokenizer::from_gguf(&toy_content("qwen2")).unwrap();
        assert_eq!(
            tok.chat_template(),
            &ChatTemplate::ChatMl {
                default_system: Some("You are a toy.".into())
            }
        );
        assert_eq!(
            tok.chat_prompt(None, "1+1?"),
            "<|im_start|>system\nYou are a toy.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            tok.chat_prompt(Some("Be brief."), "1+1?"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
        );
        // Qwen-style: the default sits in an escaped literal after a concatenated variant.
        let qwen = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}";
        assert_eq!(
            ChatTemplate::from_template(qwen),
            ChatTemplate::ChatMl {
                default_system: Some(
                    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.".into()
                )
            }
        );
        // ChatML without a default system turn.
        let bare = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}";
        assert_eq!(
            ChatTemplate::from_template(bare),
            ChatTemplate::ChatMl {
                default_system: None
            }
        );
        assert_eq!(unescape_jinja(r"it\'s\na \\ b"), "it's\na \\ b");
        // Not ChatML: the plain fallback.
        let llama3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}";
        assert_eq!(ChatTemplate::from_template(llama3), ChatTemplate::Plain);
        let mut content = toy_content("qwen2");
        content.metadata.remove("tokenizer.chat_template");
        let plain = Tokenizer::from_gguf(&content).unwrap();
        assert_eq!(plain.chat_template(), &ChatTemplate::Plain);
        assert_eq!(plain.chat_prompt(None, "1+1?"), "Question: 1+1?\nAnswer:");
        assert_eq!(
            plain.chat_prompt(Some("S"), "1+1?"),
            "S\n\nQuestion: 1+1?\nAnswer:"
        );
    }

    #[test]
    fn bad_metadata_gives_clear_errors() {
        let mut c = toy_content("qwen2");
        c.metadata
            .insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        let e = unwrap_err(Tokenizer::from_gguf(&c));
        assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("SentencePiece"), "{e}");

        let mut c = toy_content("qwen2");
        c.metadata
            .insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
        assert!(matches!(
            unwrap_err(Tokenizer::from_gguf(&c)),
            ModelError::Unsupported(_)
        ));

        let e = unwrap_err(Tokenizer::from_gguf(&toy_content("llama-bpe")));
        assert!(
            matches!(e, ModelError::Unsupported(_)) && e.to_string().contains("llama-bpe"),
            "{e}"
        );

        let mut c = toy_content("qwen2");
        c.metadata.retain(|k, _| !k.starts_with("tokenizer."));
        let e = unwrap_err(Tokenizer::from_gguf(&c));
        assert!(
            matches!(e, ModelError::Tokenizer(_)) && e.to_string().contains("tokenizer.ggml.model"),
            "{e}"
        );

        for key in [
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.pre",
        ] {
            let mut c = toy_content("qwen2");
            c.metadata.remove(key);
            let e = unwrap_err(Tokenizer::from_gguf(&c));
            assert!(e.to_string().contains(key), "{key}: {e}");
        }

        let mut c = toy_content("qwen2");
        c.metadata.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(vec![Value::I32(1)]),
        );
        assert!(unwrap_err(Tokenizer::from_gguf(&c))
            .to_string()
            .contains("entries"));

        let mut c = toy_content("qwen2");
        c.metadata
            .insert("tokenizer.ggml.eos_token_id".into(), Value::U32(1_000_000));
        assert!(unwrap_err(Tokenizer::from_gguf(&c))
            .to_string()
            .contains("outside"));

        let mut c = toy_content("qwen2");
        c.metadata.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String("x zzz".into())]),
        );
        assert!(matches!(
            unwrap_err(Tokenizer::from_gguf(&c)),
            ModelError::Tokenizer(_)
        ));
    }

    #[test]
    fn add_bos_prepends() {
        let mut c = toy_content("smollm");
        c.metadata
            .insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        let tok = Tokenizer::from_gguf(&c).unwrap();
        assert!(tok.adds_bos());
        let ids = tok.encode("hello").unwrap();
        assert_eq!(ids, vec![0, tok.token_to_id("hello").unwrap()]);
    }

    #[test]
    fn from_file_reads_config_next_to_it() {
        let dir = std::env::temp_dir().join(format!("rstar-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = Tokenizer::from_gguf(&toy_content("qwen2")).unwrap();
        let json = dir.join("tokenizer.json");
        tok.inner().save(&json, false).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "<|im_end|>"}, "bos_token": null, "add_bos_token": false,
               "chat_template": "{{'<|im_start|>system\nDefault.<|im_end|>'}}"}"#,
        )
        .unwrap();
        let loaded = Tokenizer::from_file(&json).unwrap();
        let text = "<|im_start|>hello world π<|im_end|>";
        assert_eq!(loaded.encode(text).unwrap(), tok.encode(text).unwrap());
        assert_eq!(loaded.eos_ids(), &[2, 0]);
        assert_eq!(loaded.bos_id(), None);
        assert_eq!(
            loaded.chat_template(),
            &ChatTemplate::ChatMl {
                default_system: Some("Default.".into())
            }
        );
        let e = Tokenizer::from_file(dir.join("missing.json")).unwrap_err();
        assert!(matches!(e, ModelError::File { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
