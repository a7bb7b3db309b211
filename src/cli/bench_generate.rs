//! `rstar-gpu bench generate`: prefill and batched-decode throughput of the local policy on the
//! first GSM8K test questions, optionally side by side with llama.cpp (llama-cpp-python's
//! low-level batched API) on the same GGUF, threads and prompts, in the same run.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rstar_gpu::model::generate::LocalPolicy;
use rstar_gpu::model::transformer::WeightMode;
use rstar_gpu::model::{Policy, SamplingParams};

/// The llama.cpp side of the comparison, embedded so the installed binary needs no checkout.
const LLAMACPP_BENCH: &str = include_str!("../../scripts/llamacpp_bench.py");

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a name from `rstar-gpu assets list`, a .gguf file or a Hugging Face directory.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Prompts: the first N GSM8K test questions, in the model's chat template.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Samples per prompt; they share the prompt's prefill and KV cache.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// New tokens per sequence (end-of-sequence tokens are ignored so every sequence runs the
    /// same length).
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    /// CPU threads for the model's matmuls (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Also run llama.cpp (PyPI llama-cpp-python) on the same model, threads and prompts, and
    /// report both. Its single-sequence and S-sequence decode use `--prompts × --samples`
    /// sequences.
    #[arg(long)]
    compare_llamacpp: bool,
    /// Weights in memory: as stored in the GGUF (`quantized`) or dequantized to f32 (`dense`).
    #[arg(long, default_value = "quantized", value_parser = ["quantized", "dense"])]
    weights: String,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    anyhow::ensure!(
        a.prompts >= 1 && a.samples >= 1,
        "--prompts and --samples must be at least 1"
    );
    anyhow::ensure!(a.new_tokens >= 1, "--new-tokens must be at least 1");
    if let Some(t) = a.threads {
        anyhow::ensure!(t >= 1, "--threads must be at least 1");
        // candle sizes its matmul pool from this on first use, which has not happened yet.
        std::env::set_var("CANDLE_NUM_THREADS", t.to_string());
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let path = rstar_gpu::assets::model_path(&a.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let problems = rstar_gpu::data::load("gsm8k", "test").map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        problems.len() >= a.prompts,
        "GSM8K test has only {} questions",
        problems.len()
    );
    let t_load = Instant::now();
    let mode = if a.weights == "dense" {
        WeightMode::Dequantized
    } else {
        WeightMode::Quantized
    };
    let mut policy = LocalPolicy::load(&path, mode, &candle_core::Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(model = %path.display(), secs = t_load.elapsed().as_secs_f64(), "model loaded");
    policy.ignore_eos = true;
    // Every prompt is prefilled from scratch (no reuse of the warm-up's keys and values).
    policy.set_prefix_cache_bytes(0);
    policy.max_batch = policy.max_batch.max(a.prompts * a.samples);
    let prompts: Vec<String> = problems[..a.prompts]
        .iter()
        .map(|p| policy.tokenizer().chat_prompt(None, &p.question))
        .collect();
    let sampling = SamplingParams {
        temperature: 0.0,
        max_tokens: a.new_tokens,
        ..SamplingParams::default()
    };
    // Warm-up: page the weights in and size the scratch buffers.
    policy
        .generate(
            &prompts[..1],
            1,
            &SamplingParams {
                max_tokens: 2,
                ..sampling.clone()
            },
            &[],
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    policy.reset_stats();
    tracing::info!(
        prompts = a.prompts,
        samples = a.samples,
        new_tokens = a.new_tokens,
        "generating"
    );
    let out = policy
        .generate(&prompts, a.samples, &sampling, &[])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let st = policy.stats().clone();
    let sequences = a.prompts * a.samples;
    let new_tokens: usize = out.iter().flatten().map(|c| c.tokens).sum();
    let prefill_tok_s = st.prefill_tokens as f64 / st.prefill_secs.max(1e-9);
    let decode_tok_s = st.decode_tokens as f64 / st.decode_secs.max(1e-9);
    let mut report = serde_json::json!({
        "bench": "generate",
        "model": a.model,
        "prompts": a.prompts,
        "samples": a.samples,
        "prefill_tok_s": round2(prefill_tok_s),
        "decode_tok_s": round2(decode_tok_s),
        "sequences": sequences,
        "new_tokens": new_tokens,
        "prompt_tokens": st.prefill_tokens,
        "threads": threads,
        "engine": if a.weights == "dense" { "rstar-gpu (f32 weights, candle gemm)" } else { "rstar-gpu (Q8 VNNI matmuls)" },
    });
    if a.compare_llamacpp {
        let theirs = llamacpp(&path, threads, a.prompts * a.samples, a.new_tokens)?;
        let get = |k: &str| theirs.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        report["llamacpp"] = theirs.clone();
        report["prefill_vs_llamacpp"] = round2(prefill_tok_s / get("prefill_tok_s")).into();
        report["decode_vs_llamacpp_batch"] =
            round2(decode_tok_s / get("decode_tok_s_batch")).into();
    }
    if a.json {
        println!("{report}");
    } else {
        let mut o = std::io::stdout().lock();
        writeln!(o, "model {} ({} threads)", a.model, threads)?;
        writeln!(
            o,
            "prefill: {} prompt tokens, {:.1} tok/s",
            st.prefill_tokens, prefill_tok_s
        )?;
        writeln!(
            o,
            "decode: {sequences} sequences ({} prompts × {} samples), {new_tokens} new tokens, {:.1} tok/s aggregate",
            a.prompts, a.samples, decode_tok_s
        )?;
        if let Some(t) = report.get("llamacpp") {
            writeln!(o, "llama.cpp: {t}")?;
        }
    }
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Runs the embedded llama.cpp benchmark script and returns its JSON object.
fn llamacpp(
    model: &std::path::Path,
    threads: usize,
    sequences: usize,
    new_tokens: usize,
) -> Result<serde_json::Value> {
    let python = rstar_gpu::grade::python_interpreter().map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("rstar-llamacpp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("llamacpp_bench.py");
    std::fs::write(&script, LLAMACPP_BENCH)?;
    let questions = rstar_gpu::assets::data_root()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .join("gsm8k")
        .join("test.jsonl");
    tracing::info!("running llama.cpp on the same model");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg("--model")
        .arg(model)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--prompts")
        .arg(sequences.to_string())
        .arg("--new-tokens")
        .arg(new_tokens.to_string())
        .arg("--questions")
        .arg(&questions)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running llama.cpp's benchmark (is llama-cpp-python installed? `pip install llama-cpp-python`)")?;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        out.status.success(),
        "llama.cpp's benchmark failed ({}); install it with `python3 -m pip install llama-cpp-python`",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line)
        .with_context(|| format!("llama.cpp's benchmark printed no JSON: {text}"))
}
