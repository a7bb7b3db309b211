//! The CPU backend: rayon over trees. This is the reference the CUDA and wgpu backends must match
//! node for node; each phase below is the specification of the matching kernel in
//! `kernels/forest.cu` and entry point in `shaders/forest.wgsl`.
//!
//! One worker owns a tree for the whole of a phase and handles its K slots in order, so no
//! atomics are needed and float sums are added in the same order on every backend.
//!
//! Three things make it fast without changing any result:
//! * **Interleaved descent.** Selection advances a group of trees one level per round and
//!   prefetches the chosen child's children block before turning to the next tree: a lone descent
//!   is a chain of dependent cache misses, and interleaving keeps several in flight. Children are
//!   scored four at a time with SSE2, or a block of eight at once with AVX2 where the CPU has it
//!   (the same operations lane by lane, so the same bits), and the argmax is branch-free.
//! * **Cached parent terms.** ln N and sqrt N for parent counts below 4096 come from a table
//!   computed once with the same operations.
//! * **Phase fusion.** Inputs already on the backend (the built-in evaluator's staged expansion,
//!   and any backup, whose host values are copied in) are not applied at once: they are applied
//!   tree by tree in the same pass as the next `select` (or at the next read or sync), while each
//!   tree's nodes are still in cache — one pass over the forest per step instead of four. Trees are
//!   independent, so the order of work across trees never changes a result. Host expansions run
//!   at once, so their per-tree errors are reported by `expand` itself; errors of deferred work
//!   are reported at the next read or sync, exactly as on the device backends.

use super::backend::{BackendKind, ForestBackend, Input, ToyParams, ToyStats};
#[cfg(target_arch = "x86_64")]
use super::rules::simd::Lanes;
use super::rules::{Choice, ParentTerms, Scorer};
use super::{
    flags, status, status_error, toy, Backup, Expansion, ForestConfig, ForestError, ForestSnapshot,
    Node, Selection, NONE,
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

/// Work accepted but not yet applied (see the module docs), in phase order.
#[derive(Clone, Copy, Debug, Default)]
struct Deferred {
    /// K of the selection the work applies to.
    k: usize,
    /// Toy evaluation pending; `Some(record)`.
    toy_eval: Option<bool>,
    expand: bool,
    backup: bool,
}

impl Deferred {
    fn any(&self) -> bool {
        self.toy_eval.is_some() || self.expand || self.backup
    }
}

/// All arrays are strided by `km` = max_leaves per tree (not by the current K), so a fused pass
/// can write tree t's new selection while a later tree still holds its previous one.
pub struct CpuForest {
    cfg: ForestConfig,
    km: usize,
    /// `[B, N]`.
    nodes: Vec<Node>,
    /// `[B]`.
    meta: Vec<TreeMeta>,
    /// `[B, KM]`.
    leaves: Vec<u32>,
    /// `[B, KM]`.
    path_len: Vec<u32>,
    /// `[B, KM, D+1]`.
    paths: Vec<u32>,
    /// Staged expansion: counts `[B, KM]`, values/priors/flags `[B, KM, A]`.
    exp: Expansion,
    /// Staged backup `[B, KM]`.
    bk: Backup,
    /// `[B, N]` toy state of each evaluated node (allocated by `toy_reset`).
    toy_state: Vec<u32>,
    toy: Option<ToyParams>,
    deferred: Deferred,
    /// Parent terms of the rule for parent counts below [`LUT_SIZE`] (same bits as computing them).
    lut: Vec<ParentTerms>,
    /// Run the AVX2 selection path (detected at construction; `RSTAR_CPU_NO_AVX2=1` turns it off).
    avx2: bool,
}

/// One rayon task's share: `GROUP` consecutive trees and their slices of every array.
struct Group<'a> {
    first_tree: usize,
    nodes: &'a mut [Node],
    meta: &'a mut [TreeMeta],
    leaves: &'a mut [u32],
    path_len: &'a mut [u32],
    paths: &'a mut [u32],
    counts: &'a mut [u32],
    values: &'a [f32],
    priors: &'a mut [f32],
    flags: &'a [u32],
    bk_values: &'a mut [f32],
    bk_mask: &'a mut [u8],
    toy_state: Option<&'a mut [u32]>,
}

impl CpuForest {
    pub fn new(cfg: &ForestConfig) -> Result<CpuForest, ForestError> {
        cfg.validate()?;
        let (b, n, km, a) = (cfg.trees, cfg.capacity, cfg.max_leaves, cfg.max_children);
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
            km,
            nodes,
            meta: vec![TreeMeta::default(); b],
            leaves: vec![NONE; b * km],
            path_len: vec![0; b * km],
            paths: vec![NONE; b * km * cfg.path_stride()],
            exp: Expansion::zeros(b, km, a),
            bk: Backup {
                values: vec![0.0; b * km],
                mask: vec![0; b * km],
            },
            toy_state: Vec::new(),
            toy: None,
            deferred: Deferred::default(),
            avx2: use_avx2() && std::env::var_os("RSTAR_CPU_NO_AVX2").is_none(),
            lut: (0..LUT_SIZE as u32)
                .map(|np| super::rules::parent_terms(cfg.rule, np))
                .collect(),
        })
    }

    fn take_status(&mut self) -> Result<(), ForestError> {
        let st: Vec<u32> = self.meta.iter().map(|m| m.status).collect();
        for m in &mut self.meta {
            m.status = status::OK;
        }
        status_error(&st, self.cfg.capacity)
    }

    /// One pass over the forest: apply the deferred work of each tree, then (if `select` is
    /// given) select that many leaves in it.
    fn pass(&mut self, select: Option<usize>) {
        let d = std::mem::take(&mut self.deferred);
        if !d.any() && select.is_none() {
            return;
        }
        let cfg = self.cfg.clone();
        let toy = self.toy.clone();
        let lut = &self.lut[..];
        let avx2 = self.avx2;
        let (n, km, a, st) = (cfg.capacity, self.km, cfg.max_children, cfg.path_stride());
        let groups = groups(
            &cfg,
            km,
            &mut self.nodes,
            &mut self.meta,
            &mut self.leaves,
            &mut self.path_len,
            &mut self.paths,
            &mut self.exp,
            &mut self.bk,
            &mut self.toy_state,
        );
        groups.into_par_iter().for_each(|mut gr| {
            let gt = gr.meta.len();
            if d.any() {
                // Issue every tree's loads before using any (memory-level parallelism): the
                // recorded paths (backup), the arena's bump region (expansion), toy states.
                for t in 0..gt {
                    let arena = &gr.nodes[t * n..(t + 1) * n];
                    for slot in 0..d.k {
                        let i = t * km + slot;
                        let len = gr.path_len[i] as usize;
                        for &id in &gr.paths[i * st..i * st + len] {
                            prefetch_line(&arena[id as usize] as *const Node as *const u8);
                        }
                        if let (Some(state), true) = (gr.toy_state.as_deref(), len > 0) {
                            let leaf = gr.paths[i * st + len - 1] as usize;
                            prefetch_line(&state[t * n + leaf] as *const u32 as *const u8);
                        }
                    }
                    let bump = gr.meta[t].n_nodes as usize;
                    if d.expand && bump < n {
                        prefetch_block(&arena[bump], a.min(n - bump));
                    }
                }
                for t in 0..gt {
                    let k = d.k;
                    let arena = &mut gr.nodes[t * n..(t + 1) * n];
                    let m = &mut gr.meta[t];
                    let slots = t * km..t * km + k;
                    let cells = t * km * a..(t * km + k) * a;
                    let paths = &gr.paths[t * km * st..(t * km + k) * st];
                    if let (Some(record), Some(toy), Some(state)) =
                        (d.toy_eval, toy.as_ref(), gr.toy_state.as_deref_mut())
                    {
                        toy_eval_tree(
                            arena,
                            &mut state[t * n..(t + 1) * n],
                            m,
                            gr.first_tree + t,
                            record,
                            toy,
                            a,
                            &gr.leaves[slots.clone()],
                            &mut gr.counts[slots.clone()],
                            &mut gr.priors[cells.clone()],
                            &mut gr.bk_values[slots.clone()],
                            &mut gr.bk_mask[slots.clone()],
                        );
                    }
                    if d.expand {
                        let s = expand_tree(
                            arena,
                            &mut m.n_nodes,
                            a,
                            &gr.leaves[slots.clone()],
                            &gr.counts[slots.clone()],
                            &gr.values[cells.clone()],
                            &gr.priors[cells.clone()],
                            &gr.flags[cells.clone()],
                        );
                        if s != status::OK && m.status == status::OK {
                            m.status = s;
                        }
                    }
                    if d.backup {
                        backup_tree(
                            arena,
                            st,
                            &gr.leaves[slots.clone()],
                            &gr.path_len[slots.clone()],
                            paths,
                            &gr.bk_values[slots.clone()],
                            &gr.bk_mask[slots],
                        );
                    }
                }
            }
            if let Some(k) = select {
                let (vl, d) = (cfg.virtual_loss, cfg.max_depth as u32);
                crate::with_scorer!(cfg.rule, |s| {
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: `avx2` is the runtime check of `use_avx2`.
                        unsafe {
                            select_group_avx2(
                                s,
                                lut,
                                vl,
                                d,
                                n,
                                st,
                                km,
                                k,
                                gr.nodes,
                                gr.leaves,
                                gr.path_len,
                                gr.paths,
                            )
                        };
                        return;
                    }
                    select_group::<_, false>(
                        s,
                        lut,
                        vl,
                        d,
                        n,
                        st,
                        km,
                        k,
                        gr.nodes,
                        gr.leaves,
                        gr.path_len,
                        gr.paths,
                    )
                })
            }
        });
    }

    /// Apply all deferred work now.
    fn flush(&mut self) {
        self.pass(None)
    }
}

/// Split every array into per-group slices.
#[allow(clippy::too_many_arguments)]
fn groups<'a>(
    cfg: &ForestConfig,
    km: usize,
    nodes: &'a mut [Node],
    meta: &'a mut [TreeMeta],
    leaves: &'a mut [u32],
    path_len: &'a mut [u32],
    paths: &'a mut [u32],
    exp: &'a mut Expansion,
    bk: &'a mut Backup,
    toy_state: &'a mut [u32],
) -> Vec<Group<'a>> {
    let (n, a, st) = (cfg.capacity, cfg.max_children, cfg.path_stride());
    let g = GROUP;
    let toy: Box<dyn Iterator<Item = Option<&mut [u32]>>> = if toy_state.is_empty() {
        Box::new(std::iter::repeat_with(|| None))
    } else {
        Box::new(toy_state.chunks_mut(g * n).map(Some))
    };
    nodes
        .chunks_mut(g * n)
        .zip(meta.chunks_mut(g))
        .zip(leaves.chunks_mut(g * km))
        .zip(path_len.chunks_mut(g * km))
        .zip(paths.chunks_mut(g * km * st))
        .zip(exp.counts.chunks_mut(g * km))
        .zip(exp.values.chunks(g * km * a))
        .zip(exp.priors.chunks_mut(g * km * a))
        .zip(exp.flags.chunks(g * km * a))
        .zip(bk.values.chunks_mut(g * km))
        .zip(bk.mask.chunks_mut(g * km))
        .zip(toy)
        .enumerate()
        .map(
            |(
                i,
                (
                    (
                        (
                            (
                                (
                                    (
                                        (((((nodes, meta), leaves), path_len), paths), counts),
                                        values,
                                    ),
                                    priors,
                                ),
                                flags,
                            ),
                            bk_values,
                        ),
                        bk_mask,
                    ),
                    toy_state,
                ),
            )| Group {
                first_tree: i * g,
                nodes,
                meta,
                leaves,
                path_len,
                paths,
                counts,
                values,
                priors,
                flags,
                bk_values,
                bk_mask,
                toy_state,
            },
        )
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn toy_eval_tree(
    arena: &[Node],
    state: &mut [u32],
    m: &mut TreeMeta,
    tree: usize,
    record: bool,
    toy: &ToyParams,
    a: usize,
    leaves: &[u32],
    counts: &mut [u32],
    priors: &mut [f32],
    values: &mut [f32],
    mask: &mut [u8],
) {
    for (slot, &leaf) in leaves.iter().enumerate() {
        if leaf == NONE {
            counts[slot] = 0;
            mask[slot] = 0;
            continue;
        }
        let x = &arena[leaf as usize];
        if leaf == 0 {
            state[0] = tree as u32;
        } else {
            let p = x.parent as usize;
            state[leaf as usize] = toy::child_state(state[p], leaf - arena[p].first_child);
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
}

/// Parent counts with precomputed rule terms (ln, sqrt): most nodes of a search are below it.
const LUT_SIZE: usize = 4096;

/// Trees handled together by one selection worker (memory-level parallelism).
const GROUP: usize = 16;

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
fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetch every cache line of a children block of `nc` nodes starting at `p` (blocks start at
/// odd node ids, so an 8-child block of 256 bytes straddles five 64-byte lines).
#[inline(always)]
fn prefetch_block(p: *const Node, nc: usize) {
    let start = p as usize & !63;
    let end = p as usize + nc * Node::BYTES;
    let mut line = start;
    while line < end {
        prefetch_line(line as *const u8);
        line += 64;
    }
}

/// Select `k` leaves in each tree of a group. `group` holds the group's arenas back to back
/// (`[G, N]`), so tree t's node `id` is `group[t * n + id]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn select_group<S: Scorer, const AVX2: bool>(
    s: S,
    lut: &[ParentTerms],
    vl: f32,
    max_depth: u32,
    n: usize,
    stride: usize,
    km: usize,
    k: usize,
    group: &mut [Node],
    leaves: &mut [u32],
    path_len: &mut [u32],
    paths: &mut [u32],
) {
    let g = group.len() / n;
    for slot in 0..k {
        let mut cur = [Cursor {
            node: 0,
            len: 0,
            done: true,
            leaf: NONE,
        }; GROUP];
        for (t, c) in cur.iter_mut().enumerate().take(g) {
            let path = &mut paths[(t * km + slot) * stride..(t * km + slot + 1) * stride];
            start(&group[t * n..(t + 1) * n], c, path);
        }
        // Advance every unfinished tree one level per round.
        loop {
            let mut active = false;
            for (t, c) in cur.iter_mut().enumerate().take(g) {
                if c.done {
                    continue;
                }
                active = true;
                let path = &mut paths[(t * km + slot) * stride..(t * km + slot + 1) * stride];
                advance::<S, AVX2>(
                    s,
                    lut,
                    vl,
                    max_depth,
                    &mut group[t * n..(t + 1) * n],
                    c,
                    path,
                );
            }
            if !active {
                break;
            }
        }
        for (t, c) in cur.iter().enumerate().take(g) {
            let i = t * km + slot;
            leaves[i] = c.leaf;
            if c.leaf == NONE {
                path_len[i] = 0;
                continue;
            }
            path_len[i] = c.len;
            let arena = &mut group[t * n..(t + 1) * n];
            for &id in &paths[i * stride..i * stride + c.len as usize] {
                arena[id as usize].vloss += 1;
            }
            arena[c.leaf as usize].meta |= flags::PENDING;
        }
    }
}

/// [`select_group`] compiled with AVX2 enabled, for eight-child blocks.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn select_group_avx2<S: Scorer>(
    s: S,
    lut: &[ParentTerms],
    vl: f32,
    max_depth: u32,
    n: usize,
    stride: usize,
    km: usize,
    k: usize,
    group: &mut [Node],
    leaves: &mut [u32],
    path_len: &mut [u32],
    paths: &mut [u32],
) {
    select_group::<S, true>(
        s, lut, vl, max_depth, n, stride, km, k, group, leaves, path_len, paths,
    )
}

/// Whether this CPU runs the AVX2 selection path.
fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
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
        prefetch_block(
            arena.as_ptr().wrapping_add(r.first_child as usize),
            r.n_children() as usize,
        );
    }
}

/// One level of one tree's descent.
#[inline(always)]
fn advance<S: Scorer, const AVX2: bool>(
    s: S,
    lut: &[ParentTerms],
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
    let np = x.visits + x.vloss;
    let pt = match lut.get(np as usize) {
        Some(&pt) => pt,
        None => s.parent(np),
    };
    let kids = &arena[first..first + nc];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 is only true when the CPU was found to support AVX2 (see `select_group_avx2`).
    let choice = if AVX2 && nc == 8 {
        unsafe { choose8_avx2(s, pt, kids, vl) }
    } else {
        choose_fast(s, pt, kids, vl)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let choice = choose_fast(s, pt, kids, vl);
    match choice {
        Choice::Child(j) => {
            let id = first as u32 + j;
            path[c.len as usize] = id;
            c.len += 1;
            c.node = id;
            let ch = &arena[id as usize];
            if ch.first_child != NONE {
                prefetch_block(
                    arena.as_ptr().wrapping_add(ch.first_child as usize),
                    ch.n_children() as usize,
                );
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

/// [`rules::choose`](super::rules::choose) with the scores of four children computed at once
/// (x86_64 SSE2; the same operations lane by lane, so the same bits) and a branch-free argmax:
/// the maximum over selectable children, then the lowest index holding it — what the sequential
/// scan with strict `>` picks.
#[inline(always)]
fn choose_fast<S: Scorer>(s: S, pt: ParentTerms, children: &[Node], vl: f32) -> Choice {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let nc = children.len();
        if nc > 64 {
            return super::rules::choose_with(s, pt, children, vl);
        }
        let blocks = nc / 4;
        // Bit j set: child j is not terminal / is selectable / holds the maximum.
        let mut open_bits = 0u64;
        let mut free_bits = 0u64;
        // SAFETY: SSE is part of the x86_64 baseline.
        let mut masked = [unsafe { _mm_setzero_ps() }; 16];
        // SAFETY: SSE2 is part of the x86_64 baseline; each load reads 16 bytes inside `children`
        // (4 × 32-byte plain u32/f32 records), unaligned loads.
        unsafe {
            let neg = _mm_set1_ps(f32::NEG_INFINITY);
            let mut vmax = neg;
            for (blk, slot) in masked.iter_mut().enumerate().take(blocks) {
                let p = children.as_ptr().add(blk * 4) as *const f32;
                let mut lo = [
                    _mm_loadu_ps(p),
                    _mm_loadu_ps(p.add(8)),
                    _mm_loadu_ps(p.add(16)),
                    _mm_loadu_ps(p.add(24)),
                ];
                let mut hi = [
                    _mm_loadu_ps(p.add(4)),
                    _mm_loadu_ps(p.add(12)),
                    _mm_loadu_ps(p.add(20)),
                    _mm_loadu_ps(p.add(28)),
                ];
                transpose(&mut lo);
                transpose(&mut hi);
                // lo = [visits, vloss, value_sum, init_value], hi = [prior, first_child, parent, meta]
                let vloss = _mm_castps_si128(lo[1]);
                let lanes = Lanes {
                    n_eff: _mm_add_epi32(_mm_castps_si128(lo[0]), vloss),
                    w_eff: _mm_sub_ps(lo[2], _mm_mul_ps(_mm_set1_ps(vl), _mm_cvtepi32_ps(vloss))),
                    init: lo[3],
                    prior: hi[0],
                };
                let sc = s.score4(pt, &lanes);
                let meta = _mm_castps_si128(hi[3]);
                let zero = _mm_setzero_si128();
                let open = _mm_cmpeq_epi32(
                    _mm_and_si128(meta, _mm_set1_epi32(flags::TERMINAL as i32)),
                    zero,
                );
                let free = _mm_castsi128_ps(_mm_cmpeq_epi32(
                    _mm_and_si128(
                        meta,
                        _mm_set1_epi32((flags::TERMINAL | flags::PENDING) as i32),
                    ),
                    zero,
                ));
                open_bits |= (_mm_movemask_ps(_mm_castsi128_ps(open)) as u64) << (blk * 4);
                free_bits |= (_mm_movemask_ps(free) as u64) << (blk * 4);
                let m = _mm_or_ps(_mm_and_ps(free, sc), _mm_andnot_ps(free, neg));
                *slot = m;
                vmax = _mm_max_ps(vmax, m);
            }
            // The tail (fewer than four children) in scalar code.
            let mut tail_max = f32::NEG_INFINITY;
            let mut tail_scores = [f32::NEG_INFINITY; 4];
            for j in blocks * 4..nc {
                let c = &children[j];
                if c.is(flags::TERMINAL) {
                    continue;
                }
                open_bits |= 1 << j;
                if c.is(flags::PENDING) {
                    continue;
                }
                free_bits |= 1 << j;
                let sc = s.score(
                    pt,
                    c.visits + c.vloss,
                    c.value_sum - vl * c.vloss as f32,
                    c.init_value,
                    c.prior,
                );
                tail_scores[j - blocks * 4] = sc;
                tail_max = tail_max.max(sc);
            }
            if free_bits == 0 {
                return if open_bits != 0 {
                    Choice::Blocked
                } else {
                    Choice::AllTerminal
                };
            }
            let m1 = _mm_max_ps(vmax, _mm_shuffle_ps(vmax, vmax, 0b10_11_00_01));
            let m2 = _mm_max_ps(m1, _mm_shuffle_ps(m1, m1, 0b01_00_11_10));
            let h = _mm_cvtss_f32(m2).max(tail_max);
            let hv = _mm_set1_ps(h);
            let mut eq_bits = 0u64;
            for (blk, m) in masked.iter().enumerate().take(blocks) {
                eq_bits |= (_mm_movemask_ps(_mm_cmpeq_ps(*m, hv)) as u64) << (blk * 4);
            }
            for (t, &sc) in tail_scores.iter().enumerate().take(nc - blocks * 4) {
                eq_bits |= ((sc == h) as u64) << (blocks * 4 + t);
            }
            eq_bits &= free_bits;
            if eq_bits == 0 {
                // Only reachable with NaN scores; let the sequential scan decide.
                return super::rules::choose_with(s, pt, children, vl);
            }
            Choice::Child(eq_bits.trailing_zeros())
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    super::rules::choose_with(s, pt, children, vl)
}

/// [`choose_fast`] for a block of exactly eight children with AVX2: one 8×8 transpose of the
/// eight 32-byte records, the eight scores at once (same operations lane by lane, same bits), and
/// a branch-free argmax.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn choose8_avx2<S: Scorer>(s: S, pt: ParentTerms, children: &[Node], vl: f32) -> Choice {
    use super::rules::simd::Lanes8;
    use std::arch::x86_64::*;
    debug_assert_eq!(children.len(), 8);
    let p = children.as_ptr() as *const f32;
    let r = [0, 1, 2, 3, 4, 5, 6, 7].map(|i| _mm256_loadu_ps(p.add(8 * i)));
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    // Field f of the eight children: visits, vloss, value_sum, init_value, prior, -, -, meta.
    let visits = _mm256_castps_si256(_mm256_permute2f128_ps::<0x20>(s0, s4));
    let vloss = _mm256_castps_si256(_mm256_permute2f128_ps::<0x20>(s1, s5));
    let value_sum = _mm256_permute2f128_ps::<0x20>(s2, s6);
    let init = _mm256_permute2f128_ps::<0x20>(s3, s7);
    let prior = _mm256_permute2f128_ps::<0x31>(s0, s4);
    let meta = _mm256_castps_si256(_mm256_permute2f128_ps::<0x31>(s3, s7));
    let lanes = Lanes8 {
        n_eff: _mm256_add_epi32(visits, vloss),
        w_eff: _mm256_sub_ps(
            value_sum,
            _mm256_mul_ps(_mm256_set1_ps(vl), _mm256_cvtepi32_ps(vloss)),
        ),
        init,
        prior,
    };
    let sc = s.score8(pt, &lanes);
    let zero = _mm256_setzero_si256();
    let open = _mm256_cmpeq_epi32(
        _mm256_and_si256(meta, _mm256_set1_epi32(flags::TERMINAL as i32)),
        zero,
    );
    let free = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
        _mm256_and_si256(
            meta,
            _mm256_set1_epi32((flags::TERMINAL | flags::PENDING) as i32),
        ),
        zero,
    ));
    let free_bits = _mm256_movemask_ps(free);
    if free_bits == 0 {
        return if _mm256_movemask_ps(_mm256_castsi256_ps(open)) != 0 {
            Choice::Blocked
        } else {
            Choice::AllTerminal
        };
    }
    let m = _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), sc, free);
    let m1 = _mm256_max_ps(m, _mm256_permute2f128_ps::<0x01>(m, m));
    let m2 = _mm256_max_ps(m1, _mm256_shuffle_ps::<0b01_00_11_10>(m1, m1));
    let m3 = _mm256_max_ps(m2, _mm256_shuffle_ps::<0b10_11_00_01>(m2, m2));
    let eq = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(m, m3), free));
    if eq == 0 {
        // Only reachable with NaN scores; let the sequential scan decide.
        return super::rules::choose_with(s, pt, children, vl);
    }
    Choice::Child((eq as u32).trailing_zeros())
}

/// 4×4 transpose of f32 lanes (as `_MM_TRANSPOSE4_PS`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose(r: &mut [std::arch::x86_64::__m128; 4]) {
    use std::arch::x86_64::*;
    let t0 = _mm_unpacklo_ps(r[0], r[1]);
    let t1 = _mm_unpacklo_ps(r[2], r[3]);
    let t2 = _mm_unpackhi_ps(r[0], r[1]);
    let t3 = _mm_unpackhi_ps(r[2], r[3]);
    r[0] = _mm_movelh_ps(t0, t1);
    r[1] = _mm_movehl_ps(t1, t0);
    r[2] = _mm_movelh_ps(t2, t3);
    r[3] = _mm_movehl_ps(t3, t2);
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
        self.deferred = Deferred::default();
        let n = self.cfg.capacity;
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
        self.pass(Some(k));
        Ok(())
    }

    fn selection(&mut self, k: usize) -> Result<Selection, ForestError> {
        self.flush();
        let sel = Selection::from_rows(
            self.cfg.trees,
            k,
            self.km,
            self.cfg.path_stride(),
            &self.leaves,
            &self.path_len,
            &self.paths,
        );
        self.take_status()?;
        Ok(sel)
    }

    fn expand(&mut self, input: Input<'_, Expansion>, k: usize) -> Result<(), ForestError> {
        match input {
            Input::Staged => {
                self.deferred.k = k;
                self.deferred.expand = true;
                Ok(())
            }
            Input::Host(e) => {
                self.flush();
                let (n, km, a) = (self.cfg.capacity, self.km, self.cfg.max_children);
                let b = self.cfg.trees;
                self.nodes
                    .par_chunks_mut(n)
                    .zip(self.meta.par_iter_mut())
                    .zip(self.leaves.par_chunks(km))
                    .zip(e.counts[..b * k].par_chunks(k))
                    .zip(e.values[..b * k * a].par_chunks(k * a))
                    .zip(e.priors[..b * k * a].par_chunks(k * a))
                    .zip(e.flags[..b * k * a].par_chunks(k * a))
                    .with_min_len(32)
                    .for_each(|((((((arena, m), leaves), counts), values), priors), fl)| {
                        let s = expand_tree(
                            arena,
                            &mut m.n_nodes,
                            a,
                            &leaves[..k],
                            counts,
                            values,
                            priors,
                            fl,
                        );
                        if s != status::OK && m.status == status::OK {
                            m.status = s;
                        }
                    });
                self.take_status()
            }
        }
    }

    fn backup(&mut self, input: Input<'_, Backup>, k: usize) -> Result<(), ForestError> {
        if let Input::Host(bk) = input {
            // Backup cannot fail once the front type has validated it: copy and defer.
            let km = self.km;
            for t in 0..self.cfg.trees {
                self.bk.values[t * km..t * km + k].copy_from_slice(&bk.values[t * k..(t + 1) * k]);
                self.bk.mask[t * km..t * km + k].copy_from_slice(&bk.mask[t * k..(t + 1) * k]);
            }
        }
        self.deferred.k = k;
        self.deferred.backup = true;
        Ok(())
    }

    fn reroot(&mut self, new_roots: &[u32]) -> Result<(), ForestError> {
        self.flush();
        let n = self.cfg.capacity;
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
        self.flush();
        let snap = ForestSnapshot {
            trees: self.cfg.trees,
            capacity: self.cfg.capacity,
            n_nodes: self.meta.iter().map(|m| m.n_nodes).collect(),
            nodes: self.nodes.clone(),
        };
        self.take_status()?;
        Ok(snap)
    }

    fn sync(&mut self) -> Result<(), ForestError> {
        self.flush();
        self.take_status()
    }

    fn toy_reset(&mut self, toy: &ToyParams) -> Result<(), ForestError> {
        self.flush();
        if self.toy_state.len() != self.nodes.len() {
            self.toy_state = vec![0; self.nodes.len()];
        }
        for m in &mut self.meta {
            m.depth_sum = 0;
            m.leaves = 0;
            m.max_depth = 0;
        }
        self.toy = Some(toy.clone());
        Ok(())
    }

    fn toy_evaluate(&mut self, k: usize, record: bool) -> Result<(), ForestError> {
        if self.toy.is_none() {
            return Err(ForestError::PhaseOrder(
                "toy_evaluate before toy_reset".into(),
            ));
        }
        self.deferred.k = k;
        self.deferred.toy_eval = Some(record);
        Ok(())
    }

    fn toy_stats(&mut self) -> Result<ToyStats, ForestError> {
        self.flush();
        Ok(self.meta.iter().fold(ToyStats::default(), |s, m| ToyStats {
            depth_sum: s.depth_sum + m.depth_sum,
            leaves: s.leaves + m.leaves,
            max_depth: s.max_depth.max(m.max_depth),
        }))
    }
}
