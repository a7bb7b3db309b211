//! `rstar-gpu exec`: run JSONL snippets in the sandboxed executor (DESIGN §6).

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use rstar_gpu::exec::{ExecConfig, ExecPool, Keep, Snippet};
use serde_json::Value;

#[derive(Args, Debug)]
#[command(
    long_about = "Reads JSONL snippets {\"id\": str, \"code\": str, \"parent\": str|null} and writes one \
    JSONL result per snippet, in input order: {\"id\", \"ok\", \"stdout\", \"error\", \"elapsed_ms\"}.\n\n\
    A snippet with a parent continues from the interpreter state its parent left (the parent must be an \
    earlier line). Failing snippets are results (ok: false), not errors. A malformed line stops the \
    reading: the results of the lines before it are written, then the error names the line.\n\n\
    Each snippet runs sandboxed: wall/CPU/memory/file-size limits, no new processes, no signals, no \
    network, writes only in a scratch directory, a scrubbed environment. `-v` logs which layers this \
    machine granted."
)]
pub struct ExecArgs {
    /// JSONL input file; `-` (the default) reads stdin.
    #[arg(default_value = "-")]
    input: String,
    /// Wall-clock limit per snippet, ms (the CPU limit is the same, rounded up to seconds).
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Address-space limit per snippet, MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mb: u64,
    /// Worker processes (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Snippets running at once per worker.
    #[arg(long, default_value_t = 2)]
    max_running: usize,
    /// Round a purely numeric output to 4 decimals when shorter (rStar's rule).
    #[arg(long)]
    round_floats: bool,
    /// Keep the whole captured output instead of rStar's 1024-character truncation.
    #[arg(long)]
    no_truncate: bool,
    /// The Python interpreter (default: what `python3` reports as sys.executable).
    #[arg(long, env = "RSTAR_PYTHON")]
    python: Option<PathBuf>,
}

/// One parsed input line.
struct Line {
    id: String,
    code: String,
    parent: Option<String>,
}

fn parse_line(v: Value) -> Result<Line, String> {
    let Value::Object(m) = v else {
        return Err("expected a JSON object".into());
    };
    let id = match m.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("\"id\" must be a string".into()),
        None => return Err("missing \"id\"".into()),
    };
    let code = match m.get("code") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("\"code\" must be a string".into()),
        None => return Err("missing \"code\"".into()),
    };
    let parent = match m.get("parent") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err("\"parent\" must be a string or null".into()),
    };
    Ok(Line { id, code, parent })
}

pub fn run(a: ExecArgs) -> Result<()> {
    let reader: Box<dyn BufRead> = if a.input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&a.input).with_context(|| format!("opening {}", a.input))?;
        Box::new(std::io::BufReader::new(f))
    };
    // Read up to the first malformed line; its error is raised after the earlier results.
    let mut lines = Vec::new();
    let mut bad: Option<String> = None;
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.with_context(|| format!("reading {}", a.input))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = std::str::from_utf8(&line)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|s| serde_json::from_str::<Value>(s).map_err(|e| e.to_string()))
            .and_then(parse_line);
        match parsed {
            Ok(l) => lines.push(l),
            Err(e) => {
                bad = Some(format!("{} line {}: {e}", a.input, n + 1));
                break;
            }
        }
    }
    let mut children: HashMap<&str, u32> = HashMap::new();
    for l in &lines {
        if let Some(p) = &l.parent {
            *children.entry(p.as_str()).or_default() += 1;
        }
    }
    let batch: Vec<Snippet> = lines
        .iter()
        .map(|l| {
            let keep = match children.get(l.id.as_str()) {
                Some(&n) => Keep::Children(n),
                None => Keep::No,
            };
            Snippet::new(l.id.clone(), l.code.clone(), l.parent.as_deref()).keep(keep)
        })
        .collect();
    let mut cfg = ExecConfig {
        timeout: Duration::from_millis(a.timeout_ms),
        memory_mb: a.memory_mb,
        max_running: a.max_running,
        round_floats: a.round_floats,
        python: a.python.clone(),
        ..ExecConfig::default()
    };
    if a.no_truncate {
        cfg.truncate_chars = 0;
    }
    if let Some(w) = a.workers {
        cfg.workers = w;
    }
    if !batch.is_empty() {
        let mut pool = ExecPool::new(cfg).context("starting the executor")?;
        tracing::debug!(sandbox = %pool.sandbox(), python = pool.python_version(), "executor ready");
        let bar = indicatif::ProgressBar::new(batch.len() as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} exec {pos}/{len} snippets [{elapsed_precise}] {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        if batch.len() < 64 {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let results = pool.run_batch_with(&batch, &mut |done| bar.set_position(done as u64));
        bar.finish_and_clear();
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        for r in &results {
            serde_json::to_writer(&mut out, r).context("writing results")?;
            out.write_all(b"\n").context("writing results")?;
        }
        out.flush().context("writing results")?;
    }
    if let Some(e) = bad {
        anyhow::bail!("malformed input at {e} (results for the lines before it were written)");
    }
    Ok(())
}
