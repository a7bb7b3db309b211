//! The local policy and the PPM on the real SmolLM2-135M-Instruct GGUF (fetched through the assets
//! code): determinism, batched = one by one, exact stop strings, sampling seeds, the PPM's
//! batching and save/load, the safetensors round trip, and clear errors on bad model files.
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::Device;
use rstar_gpu::model::generate::LocalPolicy;
use rstar_gpu::model::ppm::Ppm;
use rstar_gpu::model::transformer::WeightMode;
use rstar_gpu::model::{FinishReason, ModelError, Policy, SamplingParams};

fn model_path() -> PathBuf {
    rstar_gpu::assets::model_path("smollm2-135m").unwrap_or_else(|e| panic!("{e}"))
}

/// One loaded policy shared by the tests (loading is the slow part).
fn policy() -> &'static Mutex<LocalPolicy> {
    static P: OnceLock<Mutex<LocalPolicy>> = OnceLock::new();
    P.get_or_init(|| {
        Mutex::new(LocalPolicy::load(&model_path(), WeightMode::Quantized, &Device::Cpu).unwrap())
    })
}

fn questions(n: usize) -> Vec<String> {
    let problems = rstar_gpu::data::load("gsm8k", "test").unwrap();
    problems[..n].iter().map(|p| p.question.clone()).collect()
}

fn chat(p: &LocalPolicy, qs: &[String]) -> Vec<String> {
    qs.iter()
        .map(|q| p.tokenizer().chat_prompt(None, q))
        .collect()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

#[test]
fn greedy_decoding_is_deterministic() {
    let mut p = policy().lock().unwrap();
    let prompts = chat(&p, &questions(2));
    let a = p.generate(&prompts, 1, &greedy(24), &[]).unwrap();
    let b = p.generate(&prompts, 1, &greedy(24), &[]).unwrap();
    assert_eq!(a, b);
    assert!(!a[0][0].text.is_empty(), "the model produced no text");
    assert_ne!(
        a[0][0].text, a[1][0].text,
        "two questions gave the same answer text"
    );
}

#[test]
fn batched_generation_equals_one_by_one() {
    let mut p = policy().lock().unwrap();
    let prompts = chat(&p, &questions(4));
    let batched = p.generate(&prompts, 2, &greedy(20), &[]).unwrap();
    assert_eq!(batched.len(), 4);
    for (i, prompt) in prompts.iter().enumerate() {
        assert_eq!(batched[i].len(), 2);
        let alone = p
            .generate(std::slice::from_ref(prompt), 1, &greedy(20), &[])
            .unwrap();
        for (j, c) in batched[i].iter().enumerate() {
            assert_eq!(
                *c, alone[0][0],
                "prompt {i} sample {j}: batched differs from alone"
            );
        }
    }
    // A prompt's prefill split over several forward calls changes nothing either.
    p.prefill_chunk = 7;
    let chunked = p.generate(&prompts[..2], 2, &greedy(20), &[]).unwrap();
    p.prefill_chunk = 512;
    assert_eq!(&chunked[..], &batched[..2]);
}

#[test]
fn stop_strings_cut_exactly() {
    let mut p = policy().lock().unwrap();
    let prompts = chat(&p, &questions(3));
    let free = p.generate(&prompts, 1, &greedy(48), &[]).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let text = &free[i][0].text;
        // A stop string taken from the middle of the free text, spanning several tokens.
        let chars: Vec<char> = text.chars().collect();
        assert!(chars.len() > 20, "too little text to cut: {text:?}");
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 5].iter().collect();
        let cut = &text[..text.find(&stop).unwrap()];
        let stops = vec!["<never-emitted>".to_string(), stop.clone()];
        let got = p
            .generate(std::slice::from_ref(prompt), 1, &greedy(48), &stops)
            .unwrap();
        assert_eq!(got[0][0].text, cut, "prompt {i}, stop {stop:?}");
        assert_eq!(got[0][0].finish, FinishReason::Stop(stop.clone()));
        assert!(got[0][0].tokens < free[i][0].tokens || free[i][0].finish != FinishReason::Length);
    }
}

#[test]
fn max_tokens_and_eos_finish() {
    let mut p = policy().lock().unwrap();
    let prompts = chat(&p, &["Say hi.".to_string()]);
    let short = p.generate(&prompts, 1, &greedy(3), &[]).unwrap();
    assert_eq!(short[0][0].tokens, 3);
    assert_eq!(short[0][0].finish, FinishReason::Length);
    // A short chat answer ends with <|im_end|> well within 200 tokens.
    let long = p.generate(&prompts, 1, &greedy(200), &[]).unwrap();
    assert_eq!(long[0][0].finish, FinishReason::Eos, "{:?}", long[0][0]);
    assert!(!long[0][0].text.contains("<|im_end|>"));
}

#[test]
fn sampling_is_seeded_per_sequence() {
    let mut p = policy().lock().unwrap();
    let prompts = chat(&p, &questions(2));
    let s = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        max_tokens: 16,
        seed: 7,
        ..SamplingParams::default()
    };
    let a = p.generate(&prompts, 3, &s, &[]).unwrap();
    let b = p.generate(&prompts, 3, &s, &[]).unwrap();
    assert_eq!(a, b, "same seed, different samples");
    let distinct: std::collections::HashSet<_> = a[0].iter().map(|c| c.text.clone()).collect();
    assert!(
        distinct.len() >= 2,
        "three samples at temperature 1 were identical: {:?}",
        a[0]
    );
    // A prompt's samples do not depend on the other prompts in the batch.
    let alone = p
        .generate(&prompts[1..], 3, &SamplingParams { ..s.clone() }, &[])
        .unwrap();
    // Seeds come from the prompt's tokens, not its position, and rows never mix: the search's
    // batch isolation (a tree is the same alone as in a batch of 64) rests on this.
    assert_eq!(alone[0], a[1], "a prompt's samples changed with its batch");
    // Two different prompts do not share a sample stream.
    assert_ne!(a[0], a[1]);
    let other = SamplingParams { seed: 8, ..s };
    assert_ne!(p.generate(&prompts, 3, &other, &[]).unwrap(), a);
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let mut p = policy().lock().unwrap();
    let prompts = vec!["hello".to_string()];
    let bad = SamplingParams {
        temperature: -1.0,
        ..SamplingParams::default()
    };
    assert!(matches!(
        p.generate(&prompts, 1, &bad, &[]),
        Err(ModelError::Request(_))
    ));
    assert!(matches!(
        p.generate(&prompts, 0, &greedy(4), &[]),
        Err(ModelError::Request(_))
    ));
    assert!(matches!(
        p.generate(&[String::new()], 1, &greedy(4), &[]),
        Err(ModelError::Request(_))
    ));
    assert_eq!(p.generate(&[], 2, &greedy(4), &[]).unwrap().len(), 0);
}

#[test]
fn ppm_scores_a_batch_as_one_by_one_and_round_trips() {
    let p = policy().lock().unwrap();
    let ppm = Ppm::new(p.model().clone(), p.tokenizer().clone(), "smollm2-135m", 3);
    let qs = questions(3);
    let partials = [
        "",
        "Janet's ducks lay 16 eggs per day.\n```python\neggs = 16\n```\n",
        "Let's compute.\n```python\nprint(2 * 3)\n```\n```output\n6\n```\n",
        "The answer is \\boxed{18}.",
    ];
    let items: Vec<(&str, &str)> = qs
        .iter()
        .flat_map(|q| partials.iter().map(move |s| (q.as_str(), *s)))
        .collect();
    let batch = ppm.score(&items).unwrap();
    assert_eq!(batch.len(), items.len());
    for (i, item) in items.iter().enumerate() {
        let alone = ppm.score(std::slice::from_ref(item)).unwrap();
        assert_eq!(alone[0], batch[i], "item {i}");
        assert!((-1.0..=1.0).contains(&batch[i]));
    }
    let distinct: std::collections::HashSet<u32> = batch.iter().map(|x| x.to_bits()).collect();
    assert!(
        distinct.len() > items.len() / 2,
        "the PPM gives (nearly) constant scores: {batch:?}"
    );
    // Small forward calls give the same scores.
    let mut small = Ppm::new(p.model().clone(), p.tokenizer().clone(), "smollm2-135m", 3);
    small.chunk_tokens = 1;
    assert_eq!(small.score(&items).unwrap(), batch);

    let dir = tempdir("ppm");
    ppm.save(&dir).unwrap();
    let loaded = Ppm::load(&dir, |spec| {
        assert_eq!(spec, "smollm2-135m");
        Ok((p.model().clone(), p.tokenizer().clone()))
    })
    .unwrap();
    assert_eq!(loaded.score(&items).unwrap(), batch);
    // A head for another width is refused with a clear error.
    std::fs::write(
        dir.join("ppm.json"),
        r#"{"format":"rstar-gpu-ppm","version":1,"backbone":"smollm2-135m","d_model":7}"#,
    )
    .unwrap();
    let err = Ppm::load(&dir, |_| Ok((p.model().clone(), p.tokenizer().clone())))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("value_head.safetensors") && err.contains("expected [7]"),
        "{err}"
    );
    std::fs::write(dir.join("ppm.json"), "{not json").unwrap();
    let err = Ppm::load(&dir, |_| unreachable!())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("ppm.json") && err.contains("not a PPM config"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// GGUF → dequantized f32 → Hugging Face safetensors directory → loaded back: the same logits as
/// the dequantized GGUF model, and the same greedy text.
#[test]
fn safetensors_directory_round_trip() {
    let dense = LocalPolicy::load(&model_path(), WeightMode::Dequantized, &Device::Cpu).unwrap();
    let dir = tempdir("hf");
    dense.save_hf_dir(&dir).unwrap();
    let mut hf = LocalPolicy::load(&dir, WeightMode::Dequantized, &Device::Cpu).unwrap();
    assert!(
        hf.model().config().rope_neox,
        "HF layout uses the NeoX rotation"
    );
    let mut dense = dense;
    let prompts = chat(&dense, &questions(2));
    let a = dense.generate(&prompts, 1, &greedy(24), &[]).unwrap();
    let b = hf.generate(&prompts, 1, &greedy(24), &[]).unwrap();
    assert_eq!(a, b);
    // And the logits agree closely (only the summation order inside a head differs).
    use rstar_gpu::model::transformer::{Output, Segment};
    let ids = dense.tokenizer().encode(&prompts[0]).unwrap();
    let la = {
        let mut c = dense.model().new_cache();
        dense
            .model()
            .forward(
                &mut [Segment {
                    tokens: &ids,
                    cache: &mut c,
                }],
                Output::Logits,
            )
            .unwrap()
    };
    let lb = {
        let mut c = hf.model().new_cache();
        hf.model()
            .forward(
                &mut [Segment {
                    tokens: &ids,
                    cache: &mut c,
                }],
                Output::Logits,
            )
            .unwrap()
    };
    let diff = (la - lb)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-3, "logits differ by {diff}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_and_corrupt_model_files_are_clear_errors() {
    let dir = tempdir("bad");
    let missing = dir.join("nope.gguf");
    let err = LocalPolicy::load(&missing, WeightMode::Quantized, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("nope.gguf") && err.contains("no such file"),
        "{err}"
    );
    // Truncated: a real header cut short.
    let bytes = std::fs::read(model_path()).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let err = LocalPolicy::load(&cut, WeightMode::Quantized, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cut.gguf"), "{err}");
    // Not a GGUF at all.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap();
    let err = LocalPolicy::load(&junk, WeightMode::Quantized, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("junk.gguf") && err.contains("GGUF"), "{err}");
    // A directory without config.json.
    let err = LocalPolicy::load(&dir, WeightMode::Quantized, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn tempdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "rstar-model-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[allow(dead_code)]
fn _assert_send(p: LocalPolicy) -> Arc<Mutex<dyn Policy>> {
    Arc::new(Mutex::new(p))
}

#[test]
fn ppm_prefix_cache_reuses_scored_parents_and_scores_the_same() {
    let p = policy().lock().unwrap();
    let cached = Ppm::new(p.model().clone(), p.tokenizer().clone(), "smollm2-135m", 5);
    let plain = Ppm::new(p.model().clone(), p.tokenizer().clone(), "smollm2-135m", 5);
    plain.set_prefix_cache_bytes(0);
    let qs = questions(2);
    // A search's pattern: each round scores the children of nodes scored the round before.
    let steps = [
        "Let's count the eggs.\n```python\neggs = 16\n```\n```output\n\n```\n",
        "She eats three.\n```python\nleft = eggs - 3\nprint(left)\n```\n```output\n13\n```\n",
        "The answer is \\boxed{13}.",
    ];
    let mut partial = vec![String::new(); qs.len()];
    for step in steps {
        let mut texts = Vec::new();
        for sibling in ["", "Alternatively, "] {
            for (qi, q) in qs.iter().enumerate() {
                texts.push((q.clone(), format!("{}{sibling}{step}", partial[qi])));
            }
        }
        let items: Vec<(&str, &str)> = texts
            .iter()
            .map(|(q, t)| (q.as_str(), t.as_str()))
            .collect();
        let a = cached.score(&items).unwrap();
        let b = plain.score(&items).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "cached {a:?} vs plain {b:?}");
        }
        for (qi, _) in qs.iter().enumerate() {
            partial[qi].push_str(step);
        }
    }
    let (c, n) = (cached.stats(), plain.stats());
    assert_eq!(n.reused_tokens, 0);
    assert!(
        c.reused_tokens * 2 > c.tokens,
        "the cache should serve most tokens of a growing search: {c:?}"
    );
}
