//! The CPU backend: rayon over trees. This is the reference the CUDA and wgpu backends must match
//! node for node; each phase below is the specification of the matching kernel in
//! `kernels/forest.cu` and entry point in `shaders/forest.wgsl`.
//!
//! One worker owns a tree for the whole of a phase and handles its K slots in order, so no
//! atomics are needed and float sums are added in the same order on every backend.
//!
//! Selection interleaves a group of trees per worker, advancing each one level per round and
//! prefetching the chosen child's children block before moving to the next tree: a lone
//! descent is a chain of dependent cache misses, and interleaving keeps several in flight.

use super::backend::{BackendKind, ForestBackend, Input, ToyParams, ToyStats};
use super::rules::{select_child, Choice};
use super::{
    flags, status, status_error, toy, Backup, Expansion, ForestConfig, ForestError, ForestSnapshot,
    Node, Rule, Selection, NONE,
};
use rayon::prelude::*;

/// Per-tree bookkeeping `[B]`.
#[derive(Clone, Copy, Debug, Default)]
struct TreeMeta {
    n_nodes: u32,
    status: u32,
    // Toy evaluator statistics.
    depth_sum: u64,
    leaves: u64,
    max_depth: u32,
}

pub struct CpuForest {
    cfg: ForestConfig,
    /// `[B, N]`.
    nodes: Vec<Node>,
    /// `[B]`.
    meta: Vec<TreeMeta>,
    /// `[B, K]` (stride = the current K).
    leaves: Vec<u32>,
    /// `[B, K]`.
    path_len: Vec<u32>,
    /// `[B, K, D+1]`.
    paths: Vec<u32>,
    /// Staged expansion / backup written by the toy evaluator, same shapes as the host inputs.
    staged_exp: Expansion,
    staged_bk: Backup,
    /// `[B, N]` toy state of each evaluated node.
    toy_state: Vec<u32>,
    toy: Option<ToyParams>,
}

impl CpuForest {
    pub fn new(cfg: &ForestConfig) -> Result<CpuForest, ForestError> {
        cfg.validate()?;
        let (b, n, k, a) = (cfg.trees, cfg.capacity, cfg.max_leaves, cfg.max_children);
        let mut nodes = Vec::new();
        nodes.try_reserve_exact(b * n).map_err(|_| {
            ForestError::InvalidConfig(format!(
                "cannot allocate {} bytes for the forest",
                cfg.forest_bytes()
            ))
        })?;
        nodes.resize(b * n, Node::default());
        Ok(CpuForest {
            cfg: cfg.clone(),
            nodes,
            meta: vec![TreeMeta::default(); b],
            leaves: vec![NONE; b * k],
            path_len: vec![0; b * k],
            paths: vec![NONE; b * k * cfg.path_stride()],
            staged_exp: Expansion::zeros(b, k, a),
            staged_bk: Backup {
                values: vec![0.0; b * k],
                mask: vec![0; b * k],
            },
            toy_state: Vec::new(),
            toy: None,
        })
    }

    fn n(&self) -> usize {
        self.cfg.capacity
    }

    fn take_status(&mut self) -> Result<(), ForestError> {
        let st: Vec<u32> = self.meta.iter().map(|m| m.status).collect();
        for m in &mut self.meta {
            m.status = status::OK;
        }
        status_error(&st, self.cfg.capacity)
    }
}

/// Trees handled together by one selection worker (memory-level parallelism).
const GROUP: usize = 8;

/// Per-tree selection cursor.
#[derive(Clone, Copy)]
struct Cursor {
    node: u32,
    len: u32,
    /// 0 = descending, 1 = done.
    done: bool,
    leaf: u32,
}

#[inline(always)]
fn prefetch(p: *const Node) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        // SAFETY: prefetch is a hint; it never faults, whatever the address.
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
        std::arch::x86_64::_mm_prefetch(
            (p as *const i8).wrapping_add(64),
            std::arch::x86_64::_MM_HINT_T0,
        );
        std::arch::x86_64::_mm_prefetch(
            (p as *const i8).wrapping_add(128),
            std::arch::x86_64::_MM_HINT_T0,
        );
        std::arch::x86_64::_mm_prefetch(
            (p as *const i8).wrapping_add(192),
            std::arch::x86_64::_MM_HINT_T0,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Select `k` leaves in each tree of a group (`arenas[g]` is tree g's arena).
#[allow(clippy::too_many_arguments)]
fn select_group(
    rule: Rule,
    vl: f32,
    max_depth: u32,
    stride: usize,
    k: usize,
    arenas: &mut [&mut [Node]],
    leaves: &mut [u32],
    path_len: &mut [u32],
    paths: &mut [u32],
) {
    let g = arenas.len();
    for slot in 0..k {
        let mut cur = [Cursor {
            node: 0,
            len: 0,
            done: false,
            leaf: NONE,
        }; GROUP];
        // Start every tree's descent at its root.
        for t in 0..g {
            let path = &mut paths[(t * k + slot) * stride..(t * k + slot + 1) * stride];
            start(&arenas[t][..], &mut cur[t], path);
        }
        loop {
            let mut active = false;
            for t in 0..g {
                if cur[t].done {
                    continue;
                }
                active = true;
                let path = &mut paths[(t * k + slot) * stride..(t * k + slot + 1) * stride];
                advance(rule, vl, max_depth, &mut arenas[t][..], &mut cur[t], path);
            }
            if !active {
                break;
            }
        }
        for t in 0..g {
            let i = t * k + slot;
            let c = cur[t];
            leaves[i] = c.leaf;
            if c.leaf == NONE {
                path_len[i] = 0;
                continue;
            }
            path_len[i] = c.len;
            let arena = &mut arenas[t][..];
            for &id in &paths[i * stride..i * stride + c.len as usize] {
                arena[id as usize].vloss += 1;
            }
            arena[c.leaf as usize].meta |= flags::PENDING;
        }
    }
}

#[inline]
fn start(arena: &[Node], c: &mut Cursor, path: &mut [u32]) {
    if arena[0].is(flags::TERMINAL) {
        *c = Cursor {
            node: 0,
            len: 0,
            done: true,
            leaf: NONE,
        };
        return;
    }
    *c = Cursor {
        node: 0,
        len: 1,
        done: false,
        leaf: NONE,
    };
    path[0] = 0;
    let r = &arena[0];
    if r.first_child != NONE {
        prefetch(&arena[r.first_child as usize]);
    }
}

/// One level of one tree's descent.
#[inline]
fn advance(
    rule: Rule,
    vl: f32,
    max_depth: u32,
    arena: &mut [Node],
    c: &mut Cursor,
    path: &mut [u32],
) {
    let x = arena[c.node as usize];
    if !x.is(flags::EXPANDED) || x.depth() >= max_depth {
        c.done = true;
        c.leaf = if x.is(flags::PENDING) { NONE } else { c.node };
        return;
    }
    let first = x.first_child as usize;
    let nc = x.n_children() as usize;
    match select_child(rule, x.visits + x.vloss, &arena[first..first + nc], vl) {
        Choice::Child(j) => {
            let id = first as u32 + j;
            path[c.len as usize] = id;
            c.len += 1;
            c.node = id;
            let ch = &arena[id as usize];
            if ch.first_child != NONE {
                prefetch(&arena[ch.first_child as usize]);
            }
        }
        Choice::AllTerminal => {
            arena[c.node as usize].meta |= flags::TERMINAL;
            start(arena, c, path);
        }
        Choice::Blocked => {
            c.done = true;
            c.leaf = NONE;
        }
    }
}

/// Expansion of one tree, all-or-nothing. Returns the tree's new status.
#[allow(clippy::too_many_arguments)]
fn expand_tree(
    arena: &mut [Node],
    n_nodes: &mut u32,
    a: usize,
    leaves: &[u32],
    counts: &[u32],
    values: &[f32],
    priors: &[f32],
    fl: &[u32],
) -> u32 {
    let mut need = 0u64;
    for (slot, &leaf) in leaves.iter().enumerate() {
        let c = counts[slot];
        if c == 0 {
            continue;
        }
        if leaf == NONE || arena[leaf as usize].is(flags::EXPANDED) {
            return status::INVALID_EXPAND;
        }
        need += c as u64;
    }
    if *n_nodes as u64 + need > arena.len() as u64 {
        return status::CAPACITY;
    }
    for (slot, &leaf) in leaves.iter().enumerate() {
        if leaf == NONE || arena[leaf as usize].is(flags::EXPANDED) {
            continue;
        }
        let c = counts[slot];
        let first = *n_nodes;
        *n_nodes += c;
        let l = &mut arena[leaf as usize];
        let depth = l.depth() + 1;
        l.first_child = first;
        l.meta = Node::pack_meta(l.flags() | flags::EXPANDED, c, depth - 1);
        for j in 0..c as usize {
            let i = slot * a + j;
            let f = fl[i];
            let v = values[i];
            let counted = f & flags::COUNT_INIT != 0;
            arena[first as usize + j] = Node {
                visits: counted as u32,
                vloss: 0,
                value_sum: if counted { v } else { 0.0 },
                init_value: v,
                prior: priors[i],
                first_child: NONE,
                parent: leaf,
                meta: Node::pack_meta(f & flags::CHILD_STORED_MASK, 0, depth),
            };
        }
    }
    status::OK
}

fn backup_tree(
    arena: &mut [Node],
    stride: usize,
    leaves: &[u32],
    path_len: &[u32],
    paths: &[u32],
    values: &[f32],
    mask: &[u8],
) {
    for (slot, &leaf) in leaves.iter().enumerate() {
        if leaf == NONE {
            continue;
        }
        let counted = mask[slot] != 0;
        let v = values[slot];
        for &id in &paths[slot * stride..slot * stride + path_len[slot] as usize] {
            let n = &mut arena[id as usize];
            n.vloss -= 1;
            if counted {
                n.visits += 1;
                n.value_sum += v;
            }
        }
        arena[leaf as usize].meta &= !flags::PENDING;
    }
}

/// Breadth-first copy of the subtree under `r` into a fresh arena (children stay contiguous).
fn reroot_tree(arena: &mut [Node], n_nodes: &mut u32, r: u32) -> u32 {
    if r == 0 || r == NONE {
        return status::OK;
    }
    if r >= *n_nodes {
        return status::INVALID_REROOT;
    }
    let mut out: Vec<Node> = Vec::with_capacity(*n_nodes as usize);
    let d0 = arena[r as usize].depth();
    let mut root = arena[r as usize];
    root.parent = NONE;
    out.push(root);
    let mut i = 0;
    while i < out.len() {
        let x = out[i];
        if x.first_child != NONE {
            let new_first = out.len() as u32;
            for j in 0..x.n_children() {
                let mut c = arena[(x.first_child + j) as usize];
                c.parent = i as u32;
                out.push(c);
            }
            out[i].first_child = new_first;
        }
        let d = out[i].depth() - d0;
        out[i].meta = Node::pack_meta(out[i].flags(), out[i].n_children(), d);
        i += 1;
    }
    arena[..out.len()].copy_from_slice(&out);
    *n_nodes = out.len() as u32;
    status::OK
}

impl ForestBackend for CpuForest {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn description(&self) -> String {
        format!("cpu (rayon, {} threads)", rayon::current_num_threads())
    }

    fn reset(&mut self, root_values: &[f32], root_visits: u32) -> Result<(), ForestError> {
        let n = self.n();
        self.nodes
            .par_chunks_mut(n)
            .zip(self.meta.par_iter_mut())
            .zip(root_values.par_iter())
            .for_each(|((arena, m), &v)| {
                arena[0] = Node::root(v, root_visits);
                *m = TreeMeta::default();
                m.n_nodes = 1;
            });
        Ok(())
    }

    fn select(&mut self, k: usize) -> Result<(), ForestError> {
        let (n, stride) = (self.n(), self.cfg.path_stride());
        let (rule, vl, d) = (
            self.cfg.rule,
            self.cfg.virtual_loss,
            self.cfg.max_depth as u32,
        );
        let b = self.cfg.trees;
        self.nodes
            .par_chunks_mut(n * GROUP)
            .zip(self.leaves[..b * k].par_chunks_mut(k * GROUP))
            .zip(self.path_len[..b * k].par_chunks_mut(k * GROUP))
            .zip(self.paths[..b * k * stride].par_chunks_mut(k * stride * GROUP))
            .for_each(|(((group, leaves), plen), paths)| {
                let mut arenas: Vec<&mut [Node]> = group.chunks_mut(n).collect();
                select_group(rule, vl, d, stride, k, &mut arenas, leaves, plen, paths);
            });
        Ok(())
    }

    fn selection(&mut self, k: usize) -> Result<Selection, ForestError> {
        let (b, stride) = (self.cfg.trees, self.cfg.path_stride());
        Ok(Selection {
            trees: b,
            k,
            path_stride: stride,
            leaves: self.leaves[..b * k].to_vec(),
            path_len: self.path_len[..b * k].to_vec(),
            paths: self.paths[..b * k * stride].to_vec(),
        })
    }

    fn expand(&mut self, input: Input<'_, Expansion>, k: usize) -> Result<(), ForestError> {
        let (n, a) = (self.n(), self.cfg.max_children);
        let e = match input {
            Input::Host(e) => e,
            Input::Staged => &self.staged_exp,
        };
        let b = self.cfg.trees;
        self.nodes
            .par_chunks_mut(n)
            .zip(self.meta.par_iter_mut())
            .zip(self.leaves[..b * k].par_chunks(k))
            .zip(e.counts[..b * k].par_chunks(k))
            .zip(e.values[..b * k * a].par_chunks(k * a))
            .zip(e.priors[..b * k * a].par_chunks(k * a))
            .zip(e.flags[..b * k * a].par_chunks(k * a))
            .with_min_len(32)
            .for_each(|((((((arena, m), leaves), counts), values), priors), fl)| {
                let s = expand_tree(arena, &mut m.n_nodes, a, leaves, counts, values, priors, fl);
                if s != status::OK && m.status == status::OK {
                    m.status = s;
                }
            });
        self.take_status()
    }

    fn backup(&mut self, input: Input<'_, Backup>, k: usize) -> Result<(), ForestError> {
        let (n, stride) = (self.n(), self.cfg.path_stride());
        let bk = match input {
            Input::Host(bk) => bk,
            Input::Staged => &self.staged_bk,
        };
        let b = self.cfg.trees;
        self.nodes
            .par_chunks_mut(n)
            .zip(self.leaves[..b * k].par_chunks(k))
            .zip(self.path_len[..b * k].par_chunks(k))
            .zip(self.paths[..b * k * stride].par_chunks(k * stride))
            .zip(bk.values[..b * k].par_chunks(k))
            .zip(bk.mask[..b * k].par_chunks(k))
            .with_min_len(32)
            .for_each(|(((((arena, leaves), plen), paths), values), mask)| {
                backup_tree(arena, stride, leaves, plen, paths, values, mask);
            });
        Ok(())
    }

    fn reroot(&mut self, new_roots: &[u32]) -> Result<(), ForestError> {
        let n = self.n();
        self.nodes
            .par_chunks_mut(n)
            .zip(self.meta.par_iter_mut())
            .zip(new_roots.par_iter())
            .for_each(|((arena, m), &r)| {
                let s = reroot_tree(arena, &mut m.n_nodes, r);
                if s != status::OK && m.status == status::OK {
                    m.status = s;
                }
            });
        self.take_status()
    }

    fn read_back(&mut self) -> Result<ForestSnapshot, ForestError> {
        Ok(ForestSnapshot {
            trees: self.cfg.trees,
            capacity: self.cfg.capacity,
            n_nodes: self.meta.iter().map(|m| m.n_nodes).collect(),
            nodes: self.nodes.clone(),
        })
    }

    fn sync(&mut self) -> Result<(), ForestError> {
        self.take_status()
    }

    fn toy_reset(&mut self, toy: &ToyParams) -> Result<(), ForestError> {
        let n = self.n();
        if self.toy_state.len() != self.nodes.len() {
            self.toy_state = vec![0; self.nodes.len()];
        }
        self.toy_state
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(b, s)| s[0] = b as u32);
        for m in &mut self.meta {
            m.depth_sum = 0;
            m.leaves = 0;
            m.max_depth = 0;
        }
        self.toy = Some(toy.clone());
        Ok(())
    }

    fn toy_evaluate(&mut self, k: usize, record: bool) -> Result<(), ForestError> {
        let toy = self
            .toy
            .as_ref()
            .ok_or_else(|| ForestError::PhaseOrder("toy_evaluate before toy_reset".into()))?;
        let (n, a, b) = (self.n(), self.cfg.max_children, self.cfg.trees);
        let e = &mut self.staged_exp;
        let bk = &mut self.staged_bk;
        self.nodes
            .par_chunks(n)
            .zip(self.toy_state.par_chunks_mut(n))
            .zip(self.meta.par_iter_mut())
            .zip(self.leaves[..b * k].par_chunks(k))
            .zip(e.counts[..b * k].par_chunks_mut(k))
            .zip(e.priors[..b * k * a].par_chunks_mut(k * a))
            .zip(bk.values[..b * k].par_chunks_mut(k))
            .zip(bk.mask[..b * k].par_chunks_mut(k))
            .with_min_len(32)
            .for_each(
                |(((((((arena, state), m), leaves), counts), priors), values), mask)| {
                    for (slot, &leaf) in leaves.iter().enumerate() {
                        if leaf == NONE {
                            counts[slot] = 0;
                            mask[slot] = 0;
                            continue;
                        }
                        let x = &arena[leaf as usize];
                        if leaf != 0 {
                            let p = x.parent as usize;
                            state[leaf as usize] =
                                toy::child_state(state[p], leaf - arena[p].first_child);
                        }
                        values[slot] = toy::value(state[leaf as usize]);
                        mask[slot] = 1;
                        counts[slot] = if x.is(flags::EXPANDED) {
                            0
                        } else {
                            toy.branching as u32
                        };
                        priors[slot * a..slot * a + toy.branching].copy_from_slice(&toy.priors);
                        if record {
                            let d = x.depth();
                            m.depth_sum += d as u64;
                            m.leaves += 1;
                            m.max_depth = m.max_depth.max(d);
                        }
                    }
                },
            );
        Ok(())
    }

    fn toy_stats(&mut self) -> Result<ToyStats, ForestError> {
        Ok(self.meta.iter().fold(ToyStats::default(), |s, m| ToyStats {
            depth_sum: s.depth_sum + m.depth_sum,
            leaves: s.leaves + m.leaves,
            max_depth: s.max_depth.max(m.max_depth),
        }))
    }
}
