//! Criterion benches of the forest: one whole toy search (B trees × S simulations, select →
//! evaluate → expand → backup per step) on every backend that can start here, plus the LLM-style
//! host path (selection read back, host expansion and backup every step).
//!
//! `cargo bench --bench forest` (add `-- cpu` to filter). Throughput is in simulations.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rstar_gpu::forest::{toy, BackendKind, Backup, Expansion, Forest, ForestConfig, Rule};
use std::time::Duration;

fn config(trees: usize, sims: usize, rule: Rule) -> ForestConfig {
    toy::config(trees, sims, rule, 1)
}

fn pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .build()
            .expect("thread pool")
    })
}

fn available() -> Vec<BackendKind> {
    [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda]
        .into_iter()
        .filter(|&k| match Forest::new(config(1, 1, Rule::MCTX_PUCT), k) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("skip {k}: {e}");
                false
            }
        })
        .collect()
}

fn toy_search(c: &mut Criterion) {
    let mut g = c.benchmark_group("toy_search");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for kind in available() {
        for &(trees, sims) in &[(64usize, 64usize), (1024, 64), (4096, 64)] {
            for rule in [Rule::MCTX_PUCT, Rule::RSTAR_UCT] {
                let mut f = Forest::new(config(trees, sims, rule), kind).unwrap();
                g.throughput(Throughput::Elements((trees * sims) as u64));
                let id = BenchmarkId::new(
                    format!("{kind}/{}", rule.name()),
                    format!("B{trees}xS{sims}"),
                );
                // Run from inside the pool (as the CLI does): a parallel call made from outside
                // pays rayon's cross-thread injection and wake-up every step.
                let params = toy::params(8);
                // Time only the simulations (toy::search), as `bench forest` does.
                g.bench_function(id, |b| {
                    pool().install(|| {
                        b.iter_custom(|iters| {
                            let secs: f64 = (0..iters)
                                .map(|_| toy::search(&mut f, &params, sims, 1).unwrap())
                                .sum();
                            Duration::from_secs_f64(secs)
                        })
                    })
                });
            }
        }
    }
    g.finish();
}

/// The path an LLM search takes: every step reads the selection back and gives host arrays.
fn host_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("host_step");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for kind in available() {
        let (trees, k, a) = (1024usize, 4usize, 8usize);
        let cfg = ForestConfig {
            trees,
            capacity: 256,
            max_children: a,
            max_depth: 16,
            max_leaves: k,
            rule: Rule::RSTAR_UCT,
            virtual_loss: 1.0,
        };
        let mut f = match Forest::new(cfg, kind) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("skip {kind}: {e}");
                continue;
            }
        };
        let mut e = Expansion::zeros(trees, k, a);
        for (i, v) in e.values.iter_mut().enumerate() {
            *v = ((i * 7919) % 200) as f32 / 100.0 - 1.0;
        }
        let bk = Backup {
            values: (0..trees * k)
                .map(|i| if i % 3 == 0 { 1.0 } else { -1.0 })
                .collect(),
            mask: vec![1; trees * k],
        };
        g.throughput(Throughput::Elements((16 * trees * k) as u64));
        g.bench_function(
            BenchmarkId::new(kind.name(), format!("B{trees}xK{k}")),
            |b| {
                b.iter(|| {
                    f.reset(&vec![0.0; trees], 0).unwrap();
                    for _ in 0..16 {
                        f.select(k).unwrap();
                        let sel = f.selection().unwrap();
                        for (i, l) in sel.leaves.iter().enumerate() {
                            e.counts[i] = if *l == rstar_gpu::NONE { 0 } else { 3 };
                        }
                        f.expand(&e).unwrap();
                        f.backup(&bk).unwrap();
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, toy_search, host_path);
criterion_main!(benches);
