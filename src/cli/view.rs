//! `rstar-gpu view TREES.jsonl`: a search tree as indented text, or as a static HTML page.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct ViewArgs {
    /// A trees file (`trees.jsonl` from `eval --method mcts`, or `solve --tree-out`).
    file: PathBuf,
    /// Which tree: a problem id, or its 0-based line index (default: the first).
    #[arg(long)]
    problem: Option<String>,
    /// Write a static HTML page here instead of printing text.
    #[arg(long)]
    html: Option<PathBuf>,
}

pub fn run(a: ViewArgs) -> Result<()> {
    let trees = rstar_gpu::search::read_trees(&a.file).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(!trees.is_empty(), "{} holds no trees", a.file.display());
    let tree = match &a.problem {
        None => &trees[0],
        Some(p) => trees
            .iter()
            .find(|t| &t.id == p)
            .or_else(|| p.parse::<usize>().ok().and_then(|i| trees.get(i)))
            .with_context(|| {
                format!(
                    "no tree for problem {p:?} in {} ({} trees; ids like {:?})",
                    a.file.display(),
                    trees.len(),
                    trees[0].id
                )
            })?,
    };
    match &a.html {
        Some(path) => {
            std::fs::write(path, tree.render_html())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{}", tree.render_text()),
    }
    Ok(())
}
