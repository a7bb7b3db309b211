//! `rstar-gpu bench …`: throughput measurements (DESIGN §6).

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rstar_gpu::forest::{backend, toy, BackendKind, Forest, ForestConfig, Rule};
use serde_json::json;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The toy forest workload of tests/reference/toy_forest.c: B trees × S simulations, PUCT (default)
    /// or UCT selection, a near-free evaluator; prints sims/s and the checksums that must equal
    /// toy_forest.c's for the same arguments.
    Forest(ForestArgs),
    /// The executor: our sandboxed incremental executor against an rStar-style baseline (a pool
    /// of 2 workers re-running every ancestor's code in-process, unsandboxed) on the same
    /// generated trajectories, one round per depth; prints steps/s of both and the speedup, and
    /// the roofline of any incremental executor (the same workers running only each step's own
    /// code, one namespace per path, no sandbox or fork).
    Exec(ExecBenchArgs),
    /// Generation: prefill and batched greedy decode of the local policy on the first GSM8K test
    /// questions (prompts × samples sequences, the samples sharing their prompt's prefill);
    /// `--compare-llamacpp` runs llama.cpp on the same model, threads and prompts alongside.
    Generate(super::bench_generate::GenerateArgs),
}

#[derive(Args, Debug)]
pub struct ExecBenchArgs {
    /// What each step computes.
    #[arg(long, value_enum, default_value_t = WorkloadArg::Trivial)]
    workload: WorkloadArg,
    /// Steps per path.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Paths (trajectories) executed side by side.
    #[arg(long, default_value_t = 64)]
    paths: usize,
    /// Our executor's worker processes (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Snippets running at once per worker.
    #[arg(long, default_value_t = 2)]
    max_running: usize,
    /// The baseline's pool size (rStar's setting in this comparison: 2).
    #[arg(long, default_value_t = 2)]
    baseline_workers: usize,
    /// Repetitions; the fastest of each is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seed of the generated trajectories.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WorkloadArg {
    /// 2–3 arithmetic lines per step.
    Trivial,
    /// As trivial, plus sympy `solve`/`simplify` in one step of four.
    Sympy,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RuleArg {
    /// mctx MuZero PUCT (c1 = 1.25, c2 = 19652), as toy_forest.c.
    Puct,
    /// rStar UCT (c = 2; a fresh node scores its initial value).
    Uct,
    /// Textbook UCT: unvisited children first.
    UctUnvisitedFirst,
}

#[derive(Args, Debug)]
pub struct ForestArgs {
    /// Forest backend. Default: the best available (cuda, then a hardware wgpu adapter, then cpu).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Number of trees B searched together.
    #[arg(long, default_value_t = 4096)]
    trees: usize,
    /// Simulations per tree S.
    #[arg(long, default_value_t = 64)]
    sims: usize,
    /// Actions (children) per node A.
    #[arg(long, default_value_t = 8)]
    branching: usize,
    /// Depth cap D of a selection path.
    #[arg(long, default_value_t = 16)]
    max_depth: usize,
    /// Selection rule.
    #[arg(long, value_enum, default_value_t = RuleArg::Puct)]
    rule: RuleArg,
    /// Leaves selected per tree per step K (virtual loss keeps them apart).
    #[arg(long, default_value_t = 1)]
    leaves_per_step: usize,
    /// Worker threads of the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Node capacity per tree (default: exactly what S simulations need, 1 + A·(S+1)).
    #[arg(long)]
    capacity: Option<usize>,
    /// Virtual loss per in-flight selection.
    #[arg(long, default_value_t = 1.0)]
    virtual_loss: f32,
    /// Repetitions; the fastest is reported (as toy_forest.c does, 3).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Forest(a) => forest(a),
        BenchCommand::Exec(a) => exec(a),
        BenchCommand::Generate(a) => super::bench_generate::run(a),
    }
}

fn exec(a: ExecBenchArgs) -> Result<()> {
    use rstar_gpu::exec::{bench, ExecConfig, ExecPool};
    anyhow::ensure!(
        a.depth >= 1 && a.paths >= 1,
        "--depth and --paths must be at least 1"
    );
    anyhow::ensure!(a.reps >= 1, "--reps must be at least 1");
    let workload = match a.workload {
        WorkloadArg::Trivial => bench::Workload::Trivial,
        WorkloadArg::Sympy => bench::Workload::Sympy,
    };
    let mut cfg = ExecConfig {
        max_running: a.max_running,
        ..ExecConfig::default()
    };
    if let Some(w) = a.workers {
        cfg.workers = w;
    }
    let trajs = bench::trajectories(workload, a.depth, a.paths, a.seed);
    let steps = a.depth * a.paths;
    tracing::info!(steps, workers = cfg.workers, "starting the executor");
    let mut pool = ExecPool::new(cfg).context("starting the executor")?;
    let python = rstar_gpu::grade::python_interpreter()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("finding the Python interpreter")?;
    let (mut best, mut best_base, mut best_roof) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let mut bad = 0;
    let mut failed = 0;
    for rep in 0..a.reps {
        let (secs, rounds) = bench::run_ours(&mut pool, &trajs);
        failed = rounds.iter().flatten().filter(|r| !r.ok).count();
        if let Some(r) = rounds.iter().flatten().find(|r| !r.ok) {
            tracing::warn!(id = %r.id, error = ?r.error, "a benchmark step failed");
        }
        let base = bench::run_baseline(&python, &trajs, a.baseline_workers)
            .map_err(|e| anyhow::anyhow!(e))
            .context("running the rStar-style baseline")?;
        bad = bench::mismatches(&rounds, &base);
        let roof = bench::run_roofline(&python, &trajs, a.baseline_workers)
            .map_err(|e| anyhow::anyhow!(e))
            .context("running the incremental roofline")?;
        bad += bench::roofline_mismatches(&rounds, &roof);
        best_roof = best_roof.min(roof.seconds);
        tracing::info!(
            rep,
            ours_steps_per_sec = (steps as f64 / secs).round(),
            baseline_steps_per_sec = (steps as f64 / base.seconds).round(),
            roofline_steps_per_sec = (steps as f64 / roof.seconds).round(),
            "repetition done"
        );
        best = best.min(secs);
        best_base = best_base.min(base.seconds);
    }
    let ours = steps as f64 / best;
    let theirs = steps as f64 / best_base;
    let roof = steps as f64 / best_roof;
    let out = json!({
        "bench": "exec",
        "workload": format!("{:?}", workload).to_lowercase(),
        "depth": a.depth,
        "paths": a.paths,
        "steps": steps,
        "steps_per_sec": ours.round(),
        "baseline_steps_per_sec": theirs.round(),
        "speedup": (ours / theirs * 1000.0).round() / 1000.0,
        "seconds": (best * 1e4).round() / 1e4,
        "baseline_seconds": (best_base * 1e4).round() / 1e4,
        "roofline_steps_per_sec": roof.round(),
        "roofline_speedup": (roof / theirs * 1000.0).round() / 1000.0,
        "workers": pool.config().workers,
        "max_running": pool.config().max_running,
        "baseline_workers": a.baseline_workers,
        "failed_steps": failed,
        "output_mismatches": bad,
        "python": pool.python_version(),
        "sandbox": pool.sandbox(),
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "exec bench: {} workload, {} paths x depth {}",
            out["workload"].as_str().unwrap_or(""),
            a.paths,
            a.depth
        );
        println!(
            "  ours      {:>8.0} steps/s ({} workers, sandboxed, incremental)",
            ours,
            pool.config().workers
        );
        println!(
            "  baseline  {:>8.0} steps/s (rStar-style: {} workers re-running ancestors)",
            theirs, a.baseline_workers
        );
        println!(
            "  roofline  {:>8.0} steps/s ({:.2}x the baseline: {} unsandboxed workers, each path in \
             its own namespace, no fork)",
            roof,
            roof / theirs,
            a.baseline_workers
        );
        println!("  speedup   {:.2}x", ours / theirs);
        println!("  failed steps {failed}, output mismatches {bad}");
    }
    anyhow::ensure!(
        bad == 0,
        "{bad} steps' outputs differ between our executor and the baseline or the roofline"
    );
    Ok(())
}

fn forest(a: ForestArgs) -> Result<()> {
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(t) = a.threads {
        anyhow::ensure!(t >= 1, "--threads must be at least 1");
        pool = pool.num_threads(t);
    }
    let pool = pool.build().context("starting the thread pool")?;
    pool.install(|| forest_in_pool(a))
}

fn forest_in_pool(a: ForestArgs) -> Result<()> {
    let kind = a.backend.unwrap_or_else(backend::best_available);
    let rule = match a.rule {
        RuleArg::Puct => Rule::MCTX_PUCT,
        RuleArg::Uct => Rule::RSTAR_UCT,
        RuleArg::UctUnvisitedFirst => Rule::UctUnvisitedFirst { c: 2.0 },
    };
    anyhow::ensure!(
        a.branching >= 1 && a.branching <= 255,
        "--branching must be in 1..=255"
    );
    let capacity = a
        .capacity
        .unwrap_or_else(|| toy::capacity(a.sims, a.branching));
    let cfg = ForestConfig {
        trees: a.trees,
        capacity,
        max_children: a.branching,
        max_depth: a.max_depth,
        max_leaves: a.leaves_per_step,
        rule,
        virtual_loss: a.virtual_loss,
    };
    tracing::debug!(
        backend = %kind, trees = a.trees, sims = a.sims, capacity,
        forest_mib = (cfg.forest_bytes() >> 20) as u64, "building forest"
    );
    let mut forest =
        Forest::new(cfg, kind).with_context(|| format!("creating the {kind} forest"))?;
    let device = forest.backend_description();
    tracing::info!(%device, reps = a.reps, "running toy workload");
    let r = toy::run(&mut forest, a.sims, a.leaves_per_step, a.branching, a.reps)?;
    let out = json!({
        "bench": "forest",
        "backend": kind.name(),
        "device": device,
        "trees": a.trees,
        "sims": a.sims,
        "branching": a.branching,
        "max_depth": a.max_depth,
        "rule": rule.name(),
        "leaves_per_step": a.leaves_per_step,
        "threads": rayon::current_num_threads(),
        "capacity": capacity,
        "sims_per_sec": r.sims_per_sec.round(),
        "ms_per_search": (r.ms_per_search * 1e3).round() / 1e3,
        "mean_depth": (r.mean_depth * 1e4).round() / 1e4,
        "max_depth_seen": r.max_depth_seen,
        "checksum": r.checksum,
        "root_visits_tree0": r.root_visits_tree0,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("forest bench on {device}");
        println!(
            "  B={} S={} A={} D={} rule={} K={}",
            a.trees,
            a.sims,
            a.branching,
            a.max_depth,
            rule.name(),
            a.leaves_per_step
        );
        println!("  sims/s         {:.3e}", r.sims_per_sec);
        println!("  ms/search      {:.3}", r.ms_per_search);
        println!(
            "  mean depth     {:.4} (max {})",
            r.mean_depth, r.max_depth_seen
        );
        println!("  checksum       {}", r.checksum);
        println!("  tree 0 root    {:?}", r.root_visits_tree0);
    }
    Ok(())
}
