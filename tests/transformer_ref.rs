//! Our batched transformer against candle-transformers' stock quantized models (the reference
//! implementation of the same GGUF): same logits for a prompt and for the decode steps after it,
//! and identical rows whether sequences run alone or batched with others.
use candle_core::{Device, Tensor};
use rstar_gpu::model::transformer::{KvCache, Output, Segment, Transformer, WeightMode};
use std::path::PathBuf;
use std::sync::Arc;

fn model(name: &str) -> PathBuf {
    rstar_gpu::assets::model_path(name).unwrap_or_else(|e| panic!("{e}"))
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) },
        )
        .0
}

/// Prefill 24 tokens then decode 6 greedy tokens with both implementations.
/// Both as stored (candle's matmuls) and in the default mode (our Q8 kernels, re-quantized
/// weights), which must stay within the same drift.
fn compare_with_reference(name: &str) {
    for mode in [WeightMode::Stored, WeightMode::Quantized] {
        compare_mode(name, mode);
    }
}

fn compare_mode(name: &str, mode: WeightMode) {
    let path = model(name);
    let dev = Device::Cpu;
    let ours = Transformer::from_gguf(&path, mode, &dev).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let arch = ct.metadata["general.architecture"]
        .to_string()
        .unwrap()
        .clone();
    enum Ref {
        L(candle_transformers::models::quantized_llama::ModelWeights),
        Q(candle_transformers::models::quantized_qwen2::ModelWeights),
    }
    let mut reference = match arch.as_str() {
        "llama" => Ref::L(
            candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
                ct, &mut file, &dev,
            )
            .unwrap(),
        ),
        "qwen2" => Ref::Q(
            candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(
                ct, &mut file, &dev,
            )
            .unwrap(),
        ),
        a => panic!("unexpected arch {a}"),
    };
    let mut ref_fwd = |ids: &[u32], pos: usize| -> Vec<f32> {
        let x = Tensor::new(ids, &dev).unwrap().unsqueeze(0).unwrap();
        let out = match &mut reference {
            Ref::L(m) => m.forward(&x, pos).unwrap(),
            Ref::Q(m) => m.forward(&x, pos).unwrap(),
        };
        out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let plen = 24u32;
    let prompt: Vec<u32> = (0..plen).map(|i| 100 + i * 37).collect();
    let mut cache = ours.new_cache();
    let mut pos = 0;
    let mut ids = prompt.clone();
    for step in 0..7 {
        let a = ours
            .forward(
                &mut [Segment {
                    tokens: &ids,
                    cache: &mut cache,
                }],
                Output::Logits,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = ref_fwd(&ids, pos);
        let d = max_rel_diff(&a, &b);
        // Not bit-equal: the reference's attention is a gemm with another summation order, and
        // the per-layer Q8 quantization of activations turns that into a few 1e-2 of drift over
        // 30 layers (llama.cpp's logits differ from both by more). A wrong rotation, mask or
        // head mapping gives differences of order 1.
        // The default mode re-quantizes the weights (Q4_1 → our Q8) and quantizes activations
        // differently from the reference's kernels: a little more drift, same order.
        let tol = if mode == WeightMode::Stored {
            0.05
        } else {
            0.1
        };
        assert!(
            d < tol,
            "{name} {mode:?} step {step}: logits differ from candle's reference by {d}"
        );
        // The greedy token may flip on a near tie; it must be (near) the reference's best.
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            b[argmax(&a)] >= b[argmax(&b)] - 0.05 * scale,
            "{name} step {step}: greedy token is far from the reference's"
        );
        pos += ids.len();
        ids = vec![argmax(&a) as u32];
    }
}

#[test]
fn smollm2_matches_candle_reference() {
    compare_with_reference("smollm2-135m");
}

#[test]
fn qwen_matches_candle_reference_when_present() {
    if std::env::var("RSTAR_TEST_QWEN").as_deref() != Ok("1") {
        println!("SKIP qwen reference: set RSTAR_TEST_QWEN=1 to fetch and check qwen2.5-coder-0.5b (490 MB)");
        return;
    }
    compare_with_reference("qwen2.5-coder-0.5b");
}

/// Rows never mix: three sequences at different lengths, one sharing a forked prefix, give the same
/// logits batched as alone.
#[test]
fn batched_rows_equal_single_rows() {
    let path = model("smollm2-135m");
    let m = Transformer::from_gguf(&path, WeightMode::Quantized, &Device::Cpu).unwrap();
    let p1: Vec<u32> = (0..9).map(|i| 200 + i).collect();
    let p2: Vec<u32> = (0..17).map(|i| 900 + 3 * i).collect();
    // Alone.
    let mut c1 = m.new_cache();
    let mut c2 = m.new_cache();
    let a1 = m
        .forward(
            &mut [Segment {
                tokens: &p1,
                cache: &mut c1,
            }],
            Output::Logits,
        )
        .unwrap();
    let a2 = m
        .forward(
            &mut [Segment {
                tokens: &p2,
                cache: &mut c2,
            }],
            Output::Logits,
        )
        .unwrap();
    let shared = Arc::new(c2);
    let mut f1 = KvCache::fork(&shared);
    let s1 = m
        .forward(
            &mut [Segment {
                tokens: &[7, 8],
                cache: &mut f1,
            }],
            Output::Logits,
        )
        .unwrap();
    let mut c1b = c1.clone();
    let d1 = m
        .forward(
            &mut [Segment {
                tokens: &[5],
                cache: &mut c1b,
            }],
            Output::Logits,
        )
        .unwrap();
    // Batched: both prompts in one call, then a decode row and a forked row together.
    let mut b1 = m.new_cache();
    let mut b2 = m.new_cache();
    let both = m
        .forward(
            &mut [
                Segment {
                    tokens: &p1,
                    cache: &mut b1,
                },
                Segment {
                    tokens: &p2,
                    cache: &mut b2,
                },
            ],
            Output::Logits,
        )
        .unwrap();
    let shared_b = Arc::new(b2);
    let mut fb = KvCache::fork(&shared_b);
    let step = m
        .forward(
            &mut [
                Segment {
                    tokens: &[5],
                    cache: &mut b1,
                },
                Segment {
                    tokens: &[7, 8],
                    cache: &mut fb,
                },
            ],
            Output::Logits,
        )
        .unwrap();
    let row = |t: &Tensor, i: usize| t.get(i).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(row(&both, 0), row(&a1, 0));
    assert_eq!(row(&both, 1), row(&a2, 0));
    assert_eq!(row(&step, 0), row(&d1, 0));
    assert_eq!(row(&step, 1), row(&s1, 0));
    assert_eq!(fb.len(), 19);
    assert_eq!(b1.len(), 10);
}
