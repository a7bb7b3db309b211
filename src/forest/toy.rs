//! The toy workload of `reference/toy_forest.c`, driven through the step-synchronous batched API
//! the LLM search uses: per simulation step one `select` for all trees, the evaluator for all
//! leaves, one `expand` and one `backup` for all trees.
//!
//! Mapping of toy_forest.c onto the forest: the toy's edge (node, a) statistics `n[a]`, `w[a]` are the
//! visits and value sum of child `a` of `node`; "the child exists" is "the child has been
//! evaluated (expanded)"; the toy's `nvis[node]` is the node's visit count, the root's starting at
//! 1 (a setup step evaluates and expands every root before the timed simulations, as mctx's root
//! evaluation does). Evaluator, identical at every node:
//! * prior `p[a] = softmax(-1.5·a)`;
//! * state: root of tree b is `b`; child `a` of a node is `(state·1103515245 + a·12345 + 1) & 0x7fffffff`
//!   (u32 wrapping);
//! * value `v = 0.1·sin(state·1e-3)` in f32.

use super::backend::{Input, ToyParams, ToyStats};
use super::{Forest, ForestConfig, ForestError, Rule, NONE};
use serde::Serialize;
use std::time::Instant;

/// Toy priors: softmax(-1.5·a) over `branching` actions, computed as toy_forest.c does (f32).
pub fn priors(branching: usize) -> Vec<f32> {
    let mut p: Vec<f32> = (0..branching).map(|a| (-1.5f32 * a as f32).exp()).collect();
    let z: f32 = p.iter().fold(0.0f32, |z, &x| z + x);
    for x in &mut p {
        *x /= z;
    }
    p
}

#[inline]
pub fn child_state(parent_state: u32, action: u32) -> u32 {
    (parent_state
        .wrapping_mul(1103515245)
        .wrapping_add(action.wrapping_mul(12345))
        .wrapping_add(1))
        & 0x7fff_ffff
}

#[inline]
pub fn value(state: u32) -> f32 {
    0.1f32 * (state as f32 * 1e-3f32).sin()
}

/// Node capacity that `sims` simulations with `branching` children per expansion need: the root,
/// and one expansion per simulation plus the setup step.
pub fn capacity(sims: usize, branching: usize) -> usize {
    1 + branching.saturating_mul(sims.saturating_add(1))
}

/// The forest of the toy workload as toy_forest.c shapes it (A = 8, D = 16, virtual loss 1),
/// with exactly the capacity it needs and up to `k` leaves per step.
pub fn config(trees: usize, sims: usize, rule: Rule, k: usize) -> ForestConfig {
    ForestConfig {
        trees,
        capacity: capacity(sims, 8),
        max_children: 8,
        max_depth: 16,
        max_leaves: k,
        rule,
        virtual_loss: 1.0,
    }
}

pub fn params(branching: usize) -> ToyParams {
    ToyParams {
        branching,
        priors: priors(branching),
    }
}

/// What `rstar-gpu bench forest` prints (besides the run's arguments).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ToyReport {
    /// Leaf evaluations per second of the best repetition.
    pub sims_per_sec: f64,
    /// Wall time of one whole search (all trees, all simulations), best repetition.
    pub ms_per_search: f64,
    pub mean_depth: f64,
    pub max_depth_seen: u32,
    pub checksum: u64,
    pub root_visits_tree0: Vec<u32>,
    /// Leaf evaluations in one search (B·S when K = 1; collisions excluded when K > 1).
    pub leaves: u64,
}

/// Run the toy workload `reps` times on `forest` and report the fastest repetition.
///
/// `sims` simulations per tree are done in `ceil(sims / k)` steps of up to `k` leaves per tree.
pub fn run(
    forest: &mut Forest,
    sims: usize,
    k: usize,
    branching: usize,
    reps: usize,
) -> Result<ToyReport, ForestError> {
    let cfg = forest.config().clone();
    if branching == 0 || branching > cfg.max_children {
        return Err(ForestError::InvalidInput(format!(
            "branching {branching} must be in 1..={}",
            cfg.max_children
        )));
    }
    if sims == 0 {
        return Err(ForestError::InvalidInput("sims must be at least 1".into()));
    }
    let needed = capacity(sims, branching);
    if cfg.capacity < needed {
        return Err(ForestError::InvalidInput(format!(
            "capacity {} is too small for {sims} simulations with branching {branching}: need {needed}",
            cfg.capacity
        )));
    }
    let toy = params(branching);
    let mut best = f64::INFINITY;
    let mut stats = ToyStats::default();
    for _ in 0..reps.max(1) {
        let dt = search(forest, &toy, sims, k)?;
        tracing::debug!(ms = dt * 1e3, "toy search repetition");
        best = best.min(dt);
        stats = forest.backend_mut().toy_stats()?;
    }
    let snap = forest.read_back()?;
    let mut checksum = 0u64;
    let mut tree0 = Vec::new();
    for b in 0..cfg.trees {
        let root = snap.node(b, 0);
        if root.first_child == NONE {
            continue;
        }
        for (a, c) in snap.children(b, 0).enumerate() {
            let v = snap.node(b, c).visits;
            checksum += (a as u64 + 1) * v as u64;
            if b == 0 {
                tree0.push(v);
            }
        }
    }
    Ok(ToyReport {
        sims_per_sec: stats.leaves as f64 / best,
        ms_per_search: best * 1e3,
        mean_depth: if stats.leaves == 0 {
            0.0
        } else {
            stats.depth_sum as f64 / stats.leaves as f64
        },
        max_depth_seen: stats.max_depth,
        checksum,
        root_visits_tree0: tree0,
        leaves: stats.leaves,
    })
}

/// One whole toy search from fresh roots: returns the seconds spent on the `sims` simulations
/// (the setup step that evaluates and expands every root is not timed).
pub fn search(
    forest: &mut Forest,
    toy: &ToyParams,
    sims: usize,
    k: usize,
) -> Result<f64, ForestError> {
    let trees = forest.config().trees;
    forest.reset(&vec![0.0; trees], 0)?;
    forest.backend_mut().toy_reset(toy)?;
    // Setup: evaluate and expand every root (the toy's roots start evaluated, N = 1).
    step(forest, 1, false)?;
    forest.sync()?;
    let t0 = Instant::now();
    let mut done = 0;
    while done < sims {
        let kk = k.min(sims - done);
        step(forest, kk, true)?;
        done += kk;
    }
    forest.sync()?;
    Ok(t0.elapsed().as_secs_f64())
}

/// One simulation step for all trees: select → evaluate → expand → backup.
pub fn step(forest: &mut Forest, k: usize, record: bool) -> Result<(), ForestError> {
    forest.select(k)?;
    forest.backend_mut().toy_evaluate(k, record)?;
    forest.expand_from(Input::Staged)?;
    forest.backup_from(Input::Staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priors_sum_to_one_and_decrease() {
        let p = priors(8);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn state_hash_wraps_like_c() {
        let s = child_state(0x7fff_ffff, 7);
        let want = ((0x7fff_ffffu64 * 1103515245 + 7 * 12345 + 1) & 0x7fff_ffff) as u32;
        assert_eq!(s, want);
    }
}
