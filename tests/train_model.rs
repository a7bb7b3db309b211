//! The trainable transformer against the inference transformer, and policy SFT end to end on the
//! real SmolLM2 (a llama GGUF, so the Q/K un-permutation into Hugging Face order is exercised):
//! the same logits before training; LoRA and top-K runs change only what they should; a tuned
//! checkpoint, saved and loaded back through `LocalPolicy::load`, continues a prompt with the
//! text it was tuned on.
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use rstar_gpu::model::generate::LocalPolicy;
use rstar_gpu::model::transformer::{Output, Segment, WeightMode};
use rstar_gpu::model::{Policy, SamplingParams};
use rstar_gpu::train::model::{Layers, TrainModel};
use rstar_gpu::train::policy::{save_checkpoint, tokenize, train_sft, SftTrainConfig};

fn dense() -> &'static LocalPolicy {
    static P: OnceLock<LocalPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let path = rstar_gpu::assets::model_path("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
        LocalPolicy::load(&path, WeightMode::Dequantized, &Device::Cpu).unwrap()
    })
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rstar-train-model-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Before any step, the training forward pass computes the inference model's logits at every
/// position (the inference model is fed the sequence one prefix at a time through its cache).
#[test]
fn training_forward_matches_inference_logits() {
    let p = dense();
    let ids = p
        .tokenizer()
        .encode("Question: what is 12 * 7?\nAnswer: 12 * 7 = 84.")
        .unwrap();
    for layers in [
        Layers::Head,
        Layers::Lora {
            rank: 4,
            alpha: 8.0,
        },
        Layers::Top { k: 2 },
    ] {
        let tm = TrainModel::new(p.model(), layers, 1).unwrap();
        let logits = tm.logits(&tm.hidden(&ids).unwrap()).unwrap();
        let mut cache = p.model().new_cache();
        let mut worst = 0f32;
        let mut scale = 0f32;
        for (i, tok) in ids.iter().enumerate() {
            let inf = p
                .model()
                .forward(
                    &mut [Segment {
                        tokens: std::slice::from_ref(tok),
                        cache: &mut cache,
                    }],
                    Output::Logits,
                )
                .unwrap();
            let row = logits.narrow(0, i, 1).unwrap();
            worst = worst.max(max_abs_diff(&row, &inf));
            scale = scale.max(
                inf.abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            );
        }
        assert!(
            worst <= 1e-3 * scale.max(1.0),
            "{layers}: logits differ by {worst} (scale {scale})"
        );
    }
}

/// LoRA tuning on one short example: the loss falls, the base weights are untouched until the
/// merge, and the merged checkpoint — saved, loaded back as a policy — greedily continues the
/// prompt with the tuned text.
#[test]
fn lora_sft_learns_and_round_trips_through_a_checkpoint() {
    let p = dense();
    let tok = p.tokenizer();
    let prompt = "Q: What is the secret number?\nA:";
    let target = " The secret number is 4817.";
    let seqs = tokenize(tok, &[("p1".into(), prompt.into(), target.into())], 512).unwrap();
    let tm = TrainModel::new(
        p.model(),
        Layers::Lora {
            rank: 8,
            alpha: 16.0,
        },
        3,
    )
    .unwrap();
    let before = tm.merged_tensors().unwrap();
    let cfg = SftTrainConfig {
        layers: tm.layers(),
        epochs: 40,
        lr: 3e-3,
        batch_size: 1,
        ..SftTrainConfig::default()
    };
    let mut losses = Vec::new();
    let report = train_sft(&tm, &seqs, &cfg, |s| losses.push(s.loss)).unwrap();
    assert_eq!(report.steps, 40);
    assert!(report.trainable_params > 0);
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        last < 0.2 * first && last < 0.5,
        "loss did not fall enough: {first} -> {last}"
    );
    // The merge changed the projections, not the embeddings or norms.
    let after = tm.merged_tensors().unwrap();
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert!(max_abs_diff(&before[q], &after[q]) > 0.0);
    for same in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        assert_eq!(max_abs_diff(&before[same], &after[same]), 0.0, "{same}");
    }
    let dir = tempdir("lora");
    let ckpt = dir.join("policy");
    save_checkpoint(&tm, tok, &ckpt).unwrap();
    assert!(!dir.join("policy.partial").exists());
    let mut tuned = LocalPolicy::load(&ckpt, WeightMode::Dequantized, &Device::Cpu).unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        max_tokens: 12,
        ..SamplingParams::default()
    };
    let out = tuned
        .generate(&[prompt.to_string()], 1, &greedy, &[])
        .unwrap();
    let text = &out[0][0].text;
    assert!(
        text.starts_with(" The secret number is 4817"),
        "tuned continuation: {text:?}"
    );
    // The Q8 decoding path of the same checkpoint agrees on this memorised text.
    let mut q8 = LocalPolicy::load(&ckpt, WeightMode::Quantized, &Device::Cpu).unwrap();
    let out = q8.generate(&[prompt.to_string()], 1, &greedy, &[]).unwrap();
    assert!(out[0][0].text.contains("4817"), "{:?}", out[0][0].text);
    std::fs::remove_dir_all(&dir).ok();
}

/// `top:1` trains the last layer and the final norm only.
#[test]
fn top_k_trains_only_the_top_layers() {
    let p = dense();
    let tok = p.tokenizer();
    let seqs = tokenize(
        tok,
        &[
            ("a".into(), "2 + 2 =".into(), " 4".into()),
            ("b".into(), "3 + 3 =".into(), " 6".into()),
        ],
        64,
    )
    .unwrap();
    let tm = TrainModel::new(p.model(), Layers::Top { k: 1 }, 0).unwrap();
    let n = tm.config().n_layer;
    assert_eq!(tm.first_trainable_layer(), n - 1);
    let before = tm.merged_tensors().unwrap();
    let cfg = SftTrainConfig {
        layers: tm.layers(),
        epochs: 2,
        lr: 1e-4,
        batch_size: 2,
        ..SftTrainConfig::default()
    };
    train_sft(&tm, &seqs, &cfg, |_| {}).unwrap();
    let after = tm.merged_tensors().unwrap();
    let top = format!("model.layers.{}.mlp.down_proj.weight", n - 1);
    assert!(max_abs_diff(&before[&top], &after[&top]) > 0.0);
    assert!(max_abs_diff(&before["model.norm.weight"], &after["model.norm.weight"]) > 0.0);
    let low = format!("model.layers.{}.mlp.down_proj.weight", n - 2);
    assert_eq!(max_abs_diff(&before[&low], &after[&low]), 0.0);
    assert_eq!(
        max_abs_diff(&before["lm_head.weight"], &after["lm_head.weight"]),
        0.0
    );
}

/// Bad settings are errors, not panics.
#[test]
fn bad_training_input_is_an_error() {
    let p = dense();
    assert!(TrainModel::new(p.model(), Layers::Top { k: 10_000 }, 0).is_err());
    let tm = TrainModel::new(p.model(), Layers::Head, 0).unwrap();
    let seqs = tokenize(p.tokenizer(), &[("a".into(), "x".into(), " y".into())], 64).unwrap();
    let err = train_sft(&tm, &seqs, &SftTrainConfig::default(), |_| {}).unwrap_err();
    assert!(err.to_string().contains("nothing to train"), "{err}");
    let long = "word ".repeat(100);
    assert!(tokenize(p.tokenizer(), &[("a".into(), long, " y".into())], 16).is_err());
    assert!(tm.hidden(&[u32::MAX]).is_err());
}
