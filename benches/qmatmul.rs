//! Criterion benches of [`Q8Matrix`] (this crate's Q8_0-style matmul) against candle's
//! `QMatMul` over Q8_0 weights, on the linear layers of Qwen2.5-0.5B (d_model 896, 14 heads of
//! 64 with 2 kv heads, MLP 4864, vocabulary 151936) at m = 1, 8, 32 and 256 activation rows.
//!
//! `cargo bench --bench qmatmul` (add e.g. `-- k896_n896` to filter; `RSTAR_QMATMUL_BENCH_M=1,8`
//! to pick the m values). Throughput is reported in multiply-adds (elements = m·n·k), so
//! "Gelem/s" reads as GMAC/s. Threads: candle's pool (`CANDLE_NUM_THREADS`/`RAYON_NUM_THREADS`).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use rstar_gpu::model::qmatmul::{Kernel, Q8Matrix};
use std::time::Duration;

/// (name, n_out, k) of the Qwen2.5-0.5B projections.
const SHAPES: &[(&str, usize, usize)] = &[
    ("k896_n896", 896, 896),       // q_proj, o_proj
    ("k896_n128", 128, 896),       // k_proj, v_proj
    ("k896_n4864", 4864, 896),     // gate_proj, up_proj
    ("k4864_n896", 896, 4864),     // down_proj
    ("k896_n151936", 151936, 896), // lm_head
];

fn ms() -> Vec<usize> {
    std::env::var("RSTAR_QMATMUL_BENCH_M")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32, 256])
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn qmatmul(c: &mut Criterion) {
    eprintln!(
        "kernel {:?}, {} threads",
        Kernel::best(),
        candle_core::utils::barrier_pool().n_workers() + 1
    );
    for &(name, n, k) in SHAPES {
        let w = values(n * k, 1);
        let ours = Q8Matrix::from_f32(&w, n, k).expect("quantize");
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("tensor");
        let theirs = QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q8_0).expect("q8_0"))
            .expect("qmatmul");
        drop(wt);
        let mut g = c.benchmark_group(format!("qmatmul/{name}"));
        let big = n * k >= 1 << 24;
        g.sample_size(if big { 10 } else { 20 })
            .warm_up_time(Duration::from_millis(if big { 500 } else { 300 }))
            .measurement_time(Duration::from_secs(if big { 3 } else { 2 }));
        for m in ms() {
            let x = values(m * k, 2 + m as u64);
            g.throughput(Throughput::Elements((m * n * k) as u64));
            let mut out = vec![0f32; m * n];
            g.bench_with_input(BenchmarkId::new("q8matrix", m), &m, |b, &m| {
                b.iter(|| ours.matmul(&x, m, &mut out).expect("matmul"))
            });
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).expect("tensor");
            g.bench_with_input(BenchmarkId::new("candle_q8_0", m), &m, |b, _| {
                b.iter(|| theirs.forward(&xt).expect("forward"))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, qmatmul);

fn main() {
    if std::env::var_os("RSTAR_QMATMUL_TUNE").is_some() {
        tune();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// Quick tuning mode (`RSTAR_QMATMUL_TUNE=1`): best-of-N wall times, robust to a busy machine.
#[allow(dead_code)]
fn tune() {
    let kernel = match std::env::var("RSTAR_QMATMUL_KERNEL").as_deref() {
        Ok("scalar") => Kernel::Scalar,
        Ok("avx2") => Kernel::Avx2,
        Ok("avxvnni") => Kernel::AvxVnni,
        Ok("avx512") => Kernel::Avx512Vnni,
        _ => Kernel::best(),
    };
    println!("kernel {kernel:?}");
    for &(name, n, k) in SHAPES {
        if n > 10000 {
            continue;
        }
        let w = values(n * k, 1);
        let ours = Q8Matrix::from_f32(&w, n, k).expect("quantize");
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("tensor");
        let theirs = QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q8_0).expect("q8_0"))
            .expect("qmatmul");
        for m in ms() {
            let x = values(m * k, 2 + m as u64);
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).expect("tensor");
            let mut out = vec![0f32; m * n];
            let macs = (m * n * k) as f64;
            let reps = ((2e8 / macs) as usize).clamp(3, 2000);
            let best = |f: &mut dyn FnMut()| {
                let mut best = f64::INFINITY;
                for _ in 0..reps {
                    let t = std::time::Instant::now();
                    f();
                    best = best.min(t.elapsed().as_secs_f64());
                }
                best
            };
            let a = best(&mut || ours.matmul_with(kernel, &x, m, &mut out).expect("matmul"));
            let b = best(&mut || drop(theirs.forward(&xt).expect("forward")));
            println!(
                "{name:14} m={m:4}: ours {:7.1} GMAC/s ({:8.1} us)  candle {:7.1} GMAC/s  x{:.2}",
                macs / a / 1e9,
                a * 1e6,
                macs / b / 1e9,
                b / a
            );
        }
    }
}
