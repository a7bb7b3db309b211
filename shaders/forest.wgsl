// forest.wgsl — the batched search forest on wgpu (src/forest/wgpu.rs drives it).
//
// Every entry point mirrors one phase of the CPU reference (src/forest/cpu.rs) node for node:
// ONE THREAD PER TREE (workgroup size 64, tree index b = global id x + global id y · 64 · the
// number of workgroups in x, so a 2-D dispatch covers more than 65535 · 64 trees). The thread owns
// its tree for the whole phase and handles the K slots in order, so no atomics are needed and the
// float sums are formed in exactly the CPU's order. Scoring (rules.rs) is written operation for
// operation in the same f32 order.
//
// Buffers (all u32 words unless said otherwise; B trees, N nodes per tree, A max children,
// D max depth, S = D+1 path stride, Km = ForestConfig::max_leaves, K = the current selection's K).
// The selection arrays are strided by Km per tree, as in cpu.rs (their raw contents are visible
// through `selection()`); the staged expansion and backup use the current K, the stride of the
// host inputs they double as:
//   cfg        uniform Config (below).
//   nodes      [B, N] Node, 32 bytes each, the layout of src/forest/mod.rs `Node`.
//   trees      struct of arrays, each [B]: n_nodes | status (sticky, mod.rs `status`) |
//              toy depth_sum lo | hi | toy leaves lo | hi | toy max_depth.
//   sel        leaves [B, Km] (NONE = empty slot) | path_len [B, Km] | paths [B, Km, S]
//              (offsets cfg.sel_plen, cfg.sel_paths).
//   stage_exp  counts [B, K] | values [B, K, A] f32 bits | priors [B, K, A] f32 bits |
//              flags [B, K, A] (offsets cfg.exp_*, regions sized for Km): the host expansion or
//              the toy's staged one.
//   stage_bk   values [B, K] f32 bits | mask [B, K] (offset cfg.bk_mask): host or staged backup.
//   aux        [B] root values (f32 bits, reset) or new roots (reroot) | [A] toy priors (f32 bits,
//              offset cfg.aux_priors) | [PARENT_LUT, 2] the rule's parent terms (a, b) as f32 bits
//              for parent counts below PARENT_LUT (offset cfg.aux_lut), computed on the host by
//              rules.rs `parent_terms`, as the CPU backend's table is: the same bits, and no
//              log/sqrt per level for most nodes.
//   toy_state  [B, N] toy state of each evaluated node (reference/toy_forest.c).
//   scratch    [B, N] Node, the reroot compaction arena.
//   probe_in / probe_out: only for the diagnostic entry point `toy_value_probe`.

struct Node {
    visits: u32,
    vloss: u32,
    value_sum: f32,
    init_value: f32,
    prior: f32,
    first_child: u32,
    parent: u32,
    // `meta` of mod.rs (a WGSL keyword): bits 0..8 flags, 8..16 number of children, 16..32 depth
    mbits: u32,
}

struct Config {
    trees: u32,
    capacity: u32,
    max_children: u32,
    max_depth: u32,
    k: u32,
    stride: u32,
    // 0 = uct, 1 = uct unvisited-first, 2 = puct (rules.rs `Rule::encode`)
    rule: u32,
    p0: f32,
    p1: f32,
    vloss: f32,
    branching: u32,
    record: u32,
    root_visits: u32,
    sel_plen: u32,
    sel_paths: u32,
    exp_values: u32,
    exp_priors: u32,
    exp_flags: u32,
    bk_mask: u32,
    aux_priors: u32,
    // Km: per-tree stride of the selection arrays
    km: u32,
    aux_lut: u32,
    // step: K of the selection that follows the deferred phases, and the PH_* phases to run
    k_select: u32,
    phases: u32,
}

// step phases, run for each tree in this order (the order of one search step)
const PH_TOY_EVAL: u32 = 1u;
const PH_EXPAND: u32 = 2u;
const PH_BACKUP: u32 = 4u;
const PH_SELECT: u32 = 8u;

const NONE: u32 = 0xffffffffu;
const EXPANDED: u32 = 1u;
const TERMINAL: u32 = 2u;
const PENDING: u32 = 8u;
const COUNT_INIT: u32 = 16u;
const CHILD_STORED_MASK: u32 = 6u;
const ST_OK: u32 = 0u;
const ST_CAPACITY: u32 = 1u;
const ST_INVALID_EXPAND: u32 = 2u;
const ST_INVALID_REROOT: u32 = 3u;
// select_child outcomes besides a child index (< 256)
const CHOICE_ALL_TERMINAL: u32 = 0xfffffffeu;
const CHOICE_BLOCKED: u32 = 0xffffffffu;
// Parent counts with host-computed rule terms (cpu.rs LUT_SIZE).
const PARENT_LUT: u32 = 4096u;
// rows of `trees`
const T_N_NODES: u32 = 0u;
const T_STATUS: u32 = 1u;
const T_DEPTH_LO: u32 = 2u;
const T_DEPTH_HI: u32 = 3u;
const T_LEAVES_LO: u32 = 4u;
const T_LEAVES_HI: u32 = 5u;
const T_MAX_DEPTH: u32 = 6u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read_write> nodes: array<Node>;
@group(0) @binding(2) var<storage, read_write> trees: array<u32>;
@group(0) @binding(3) var<storage, read_write> sel: array<u32>;
@group(0) @binding(4) var<storage, read_write> stage_exp: array<u32>;
@group(0) @binding(5) var<storage, read_write> stage_bk: array<u32>;
@group(0) @binding(6) var<storage, read_write> aux: array<u32>;
@group(0) @binding(7) var<storage, read_write> toy_state: array<u32>;
@group(0) @binding(8) var<storage, read_write> scratch: array<Node>;
@group(0) @binding(10) var<storage, read> probe_in: array<u32>;
@group(0) @binding(11) var<storage, read_write> probe_out: array<u32>;

fn tree_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

fn n_children(m: u32) -> u32 {
    return (m >> 8u) & 0xffu;
}

fn depth_of(m: u32) -> u32 {
    return m >> 16u;
}

fn pack_meta(fl: u32, nc: u32, depth: u32) -> u32 {
    return (fl & 0xffu) | ((nc & 0xffu) << 8u) | (depth << 16u);
}

fn set_status(b: u32, s: u32) {
    let i = T_STATUS * cfg.trees + b;
    if (trees[i] == ST_OK) {
        trees[i] = s;
    }
}

// ---------------------------------------------------------------------------------------------
// Scoring: rules.rs `parent_terms`, `score`, `select_child`, in the same f32 operation order.

// Effective statistics with virtual loss: N' = N + vloss, W' = W - virtual_loss · vloss.
fn score_child(c: Node, pa: f32, pb: f32, parent_n: u32) -> f32 {
    let n_eff = c.visits + c.vloss;
    let w_eff = c.value_sum - cfg.vloss * f32(c.vloss);
    if (cfg.rule == 2u) {
        var q = 0.0;
        if (n_eff != 0u) {
            q = (w_eff / f32(n_eff) + 1.0) / 2.0;
        }
        return q + pa * c.prior * pb / f32(1u + n_eff);
    }
    if (n_eff == 0u) {
        if (cfg.rule == 1u) {
            return bitcast<f32>(0x7f7fffffu); // f32::MAX: unvisited first
        }
        return c.init_value; // a fresh node scores its initial value
    }
    let n = f32(n_eff);
    var u = 0.0;
    if (parent_n != 0u) {
        u = cfg.p0 * sqrt(pa / n);
    }
    return w_eff / n + u;
}

// Best selectable child index of the block at `cbase` (absolute node index), or
// CHOICE_ALL_TERMINAL / CHOICE_BLOCKED. Ties go to the lowest index (strict >).
fn select_child(cbase: u32, nc: u32, parent_n: u32) -> u32 {
    var pa = 0.0;
    var pb = 0.0;
    if (parent_n < PARENT_LUT) {
        pa = bitcast<f32>(aux[cfg.aux_lut + 2u * parent_n]);
        pb = bitcast<f32>(aux[cfg.aux_lut + 2u * parent_n + 1u]);
    } else {
        let np = f32(parent_n);
        if (cfg.rule == 2u) {
            pa = cfg.p0 + log((np + cfg.p1 + 1.0) / cfg.p1);
            pb = sqrt(np);
        } else {
            pa = log(np);
        }
    }
    var best = NONE;
    var best_score = 0.0;
    var any_open = false;
    for (var j = 0u; j < nc; j++) {
        let c = nodes[cbase + j];
        if ((c.mbits & TERMINAL) != 0u) {
            continue;
        }
        any_open = true;
        if ((c.mbits & PENDING) != 0u) {
            continue;
        }
        let s = score_child(c, pa, pb, parent_n);
        if (best == NONE || s > best_score) {
            best = j;
            best_score = s;
        }
    }
    if (best != NONE) {
        return best;
    }
    if (any_open) {
        return CHOICE_BLOCKED;
    }
    return CHOICE_ALL_TERMINAL;
}

// ---------------------------------------------------------------------------------------------
// Phases.

// Every tree becomes a lone root: init value aux[b] (f32 bits), cfg.root_visits visits; the
// tree's bookkeeping (node count, status, toy statistics) is reset as cpu.rs does.
@compute @workgroup_size(64)
fn reset(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = tree_index(gid, nwg);
    if (b >= cfg.trees) {
        return;
    }
    let v = bitcast<f32>(aux[b]);
    let rv = cfg.root_visits;
    nodes[b * cfg.capacity] = Node(rv, 0u, v * f32(rv), v, 1.0, NONE, NONE, 0u);
    let nb = cfg.trees;
    trees[T_N_NODES * nb + b] = 1u;
    trees[T_STATUS * nb + b] = ST_OK;
    trees[T_DEPTH_LO * nb + b] = 0u;
    trees[T_DEPTH_HI * nb + b] = 0u;
    trees[T_LEAVES_LO * nb + b] = 0u;
    trees[T_LEAVES_HI * nb + b] = 0u;
    trees[T_MAX_DEPTH * nb + b] = 0u;
}

// cpu.rs `select_group` / `start` / `advance` for one tree: K descents in slot order, each adding
// virtual loss along its path and marking its leaf PENDING before the next slot starts.
fn select_tree(b: u32, k: u32) {
    let base = b * cfg.capacity;
    for (var slot = 0u; slot < k; slot++) {
        let i = b * cfg.km + slot;
        let pbase = cfg.sel_paths + i * cfg.stride;
        var node = 0u;
        var len = 0u;
        var leaf = NONE;
        var done = false;
        // start
        if ((nodes[base].mbits & TERMINAL) != 0u) {
            done = true;
        } else {
            len = 1u;
            sel[pbase] = 0u;
        }
        while (!done) {
            let x = nodes[base + node];
            if ((x.mbits & EXPANDED) == 0u || depth_of(x.mbits) >= cfg.max_depth) {
                done = true;
                if ((x.mbits & PENDING) == 0u) {
                    leaf = node;
                }
                break;
            }
            let first = x.first_child;
            let ch = select_child(base + first, n_children(x.mbits), x.visits + x.vloss);
            if (ch == CHOICE_BLOCKED) {
                done = true;
            } else if (ch == CHOICE_ALL_TERMINAL) {
                // The node becomes terminal and the descent restarts from the root.
                nodes[base + node].mbits = x.mbits | TERMINAL;
                node = 0u;
                if ((nodes[base].mbits & TERMINAL) != 0u) {
                    len = 0u;
                    done = true;
                } else {
                    len = 1u;
                    sel[pbase] = 0u;
                }
            } else {
                let id = first + ch;
                sel[pbase + len] = id;
                len += 1u;
                node = id;
            }
        }
        sel[i] = leaf;
        if (leaf == NONE) {
            sel[cfg.sel_plen + i] = 0u;
            continue;
        }
        sel[cfg.sel_plen + i] = len;
        for (var p = 0u; p < len; p++) {
            let id = sel[pbase + p];
            nodes[base + id].vloss += 1u;
        }
        nodes[base + leaf].mbits |= PENDING;
    }
}

@compute @workgroup_size(64)
fn select(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = tree_index(gid, nwg);
    if (b < cfg.trees) {
        select_tree(b, cfg.k);
    }
}

// cpu.rs `expand_tree`: all-or-nothing per tree; a failing tree keeps its nodes and records a
// sticky status.
fn expand_tree(b: u32) {
    let base = b * cfg.capacity;
    let k = cfg.k;
    let a = cfg.max_children;
    var n_nodes = trees[T_N_NODES * cfg.trees + b];
    var need = 0u;
    var st = ST_OK;
    for (var slot = 0u; slot < k; slot++) {
        let c = stage_exp[b * k + slot];
        if (c == 0u) {
            continue;
        }
        let leaf = sel[b * cfg.km + slot];
        if (leaf == NONE) {
            st = ST_INVALID_EXPAND;
            break;
        }
        if ((nodes[base + leaf].mbits & EXPANDED) != 0u) {
            st = ST_INVALID_EXPAND;
            break;
        }
        need += c;
    }
    // n_nodes <= N < 2^31 and need <= 64 · 255: no overflow.
    if (st == ST_OK && n_nodes + need > cfg.capacity) {
        st = ST_CAPACITY;
    }
    if (st != ST_OK) {
        set_status(b, st);
        return;
    }
    for (var slot = 0u; slot < k; slot++) {
        let i = b * k + slot;
        let leaf = sel[b * cfg.km + slot];
        if (leaf == NONE) {
            continue;
        }
        var l = nodes[base + leaf];
        if ((l.mbits & EXPANDED) != 0u) {
            continue;
        }
        let c = stage_exp[i];
        let first = n_nodes;
        n_nodes += c;
        let depth = depth_of(l.mbits) + 1u;
        l.first_child = first;
        l.mbits = pack_meta((l.mbits & 0xffu) | EXPANDED, c, depth - 1u);
        nodes[base + leaf] = l;
        for (var j = 0u; j < c; j++) {
            let e = i * a + j;
            let f = stage_exp[cfg.exp_flags + e];
            let v = bitcast<f32>(stage_exp[cfg.exp_values + e]);
            let counted = (f & COUNT_INIT) != 0u;
            var visits = 0u;
            var w = 0.0;
            if (counted) {
                visits = 1u;
                w = v;
            }
            nodes[base + first + j] = Node(
                visits,
                0u,
                w,
                v,
                bitcast<f32>(stage_exp[cfg.exp_priors + e]),
                NONE,
                leaf,
                pack_meta(f & CHILD_STORED_MASK, 0u, depth),
            );
        }
    }
    trees[T_N_NODES * cfg.trees + b] = n_nodes;
}

@compute @workgroup_size(64)
fn expand(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = tree_index(gid, nwg);
    if (b < cfg.trees) {
        expand_tree(b);
    }
}

// cpu.rs `backup_tree`: slots in order, path root first; removes the virtual loss and PENDING.
fn backup_tree(b: u32) {
    let base = b * cfg.capacity;
    let k = cfg.k;
    for (var slot = 0u; slot < k; slot++) {
        let i = b * k + slot;
        let si = b * cfg.km + slot;
        let leaf = sel[si];
        if (leaf == NONE) {
            continue;
        }
        let counted = stage_bk[cfg.bk_mask + i] != 0u;
        let v = bitcast<f32>(stage_bk[i]);
        let len = sel[cfg.sel_plen + si];
        let pbase = cfg.sel_paths + si * cfg.stride;
        for (var p = 0u; p < len; p++) {
            let id = base + sel[pbase + p];
            nodes[id].vloss -= 1u;
            if (counted) {
                nodes[id].visits += 1u;
                nodes[id].value_sum += v;
            }
        }
        nodes[base + leaf].mbits &= ~PENDING;
    }
}

// cpu.rs `reroot_tree`: breadth-first copy of the subtree under aux[b] into the tree's scratch
// arena (children blocks stay contiguous, depths rebased, the new root's parent = NONE), then
// copied back. 0 or NONE keeps the tree.
@compute @workgroup_size(64)
fn reroot(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = tree_index(gid, nwg);
    if (b >= cfg.trees) {
        return;
    }
    let r = aux[b];
    if (r == 0u || r == NONE) {
        return;
    }
    let n_nodes = trees[T_N_NODES * cfg.trees + b];
    if (r >= n_nodes) {
        set_status(b, ST_INVALID_REROOT);
        return;
    }
    let base = b * cfg.capacity;
    var root = nodes[base + r];
    let d0 = depth_of(root.mbits);
    root.parent = NONE;
    scratch[base] = root;
    var len = 1u;
    for (var i = 0u; i < len; i++) {
        var x = scratch[base + i];
        let nc = n_children(x.mbits);
        if (x.first_child != NONE) {
            let new_first = len;
            for (var j = 0u; j < nc; j++) {
                var c = nodes[base + x.first_child + j];
                c.parent = i;
                scratch[base + len] = c;
                len += 1u;
            }
            x.first_child = new_first;
        }
        x.mbits = pack_meta(x.mbits & 0xffu, nc, depth_of(x.mbits) - d0);
        scratch[base + i] = x;
    }
    for (var i = 0u; i < len; i++) {
        nodes[base + i] = scratch[base + i];
    }
    trees[T_N_NODES * cfg.trees + b] = len;
}

// ---------------------------------------------------------------------------------------------
// Toy evaluator (src/forest/toy.rs, reference/toy_forest.c).

// Root state of tree b is b (toy_evaluate sets it again, as cpu.rs does); the depth statistics
// are zeroed.
@compute @workgroup_size(64)
fn toy_reset(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = tree_index(gid, nwg);
    if (b >= cfg.trees) {
        return;
    }
    toy_state[b * cfg.capacity] = b;
    let nb = cfg.trees;
    trees[T_DEPTH_LO * nb + b] = 0u;
    trees[T_DEPTH_HI * nb + b] = 0u;
    trees[T_LEAVES_LO * nb + b] = 0u;
    trees[T_LEAVES_HI * nb + b] = 0u;
    trees[T_MAX_DEPTH * nb + b] = 0u;
}

fn toy_child_state(parent_state: u32, action: u32) -> u32 {
    return (parent_state * 1103515245u + action * 12345u + 1u) & 0x7fffffffu;
}

fn toy_value(state: u32) -> f32 {
    return 0.1 * toy_sin(f32(state) * 1e-3);
}

// cpu.rs `toy_evaluate` for one tree: each selected leaf's state and value, a staged expansion of
// `branching` children with the toy priors (0 children if the leaf is expanded), a staged backup
// of the leaf's value; `record` adds the leaves' depths to the statistics.
fn toy_evaluate_tree(b: u32) {
    let base = b * cfg.capacity;
    let k = cfg.k;
    let a = cfg.max_children;
    let nb = cfg.trees;
    for (var slot = 0u; slot < k; slot++) {
        let i = b * k + slot;
        let leaf = sel[b * cfg.km + slot];
        if (leaf == NONE) {
            stage_exp[i] = 0u;
            stage_bk[cfg.bk_mask + i] = 0u;
            continue;
        }
        let x = nodes[base + leaf];
        if (leaf == 0u) {
            toy_state[base] = b;
        } else {
            let p = x.parent;
            toy_state[base + leaf] = toy_child_state(toy_state[base + p], leaf - nodes[base + p].first_child);
        }
        stage_bk[i] = bitcast<u32>(toy_value(toy_state[base + leaf]));
        stage_bk[cfg.bk_mask + i] = 1u;
        if ((x.mbits & EXPANDED) != 0u) {
            stage_exp[i] = 0u;
        } else {
            stage_exp[i] = cfg.branching;
        }
        // Values and flags are zeroed too: the staged arrays double as the host input arrays, and
        // the CPU's staged expansion has zero values and flags.
        for (var j = 0u; j < cfg.branching; j++) {
            let e = i * a + j;
            stage_exp[cfg.exp_priors + e] = aux[cfg.aux_priors + j];
            stage_exp[cfg.exp_values + e] = 0u;
            stage_exp[cfg.exp_flags + e] = 0u;
        }
        if (cfg.record != 0u) {
            let d = depth_of(x.mbits);
            let lo = trees[T_DEPTH_LO * nb + b];
            trees[T_DEPTH_LO * nb + b] = lo + d;
            if (lo + d < lo) {
                trees[T_DEPTH_HI * nb + b] += 1u;
            }
            let ll = trees[T_LEAVES_LO * nb + b];
            trees[T_LEAVES_LO * nb + b] = ll + 1u;
            if (ll == 0xffffffffu) {
                trees[T_LEAVES_HI * nb + b] += 1u;
            }
            trees[T_MAX_DEPTH * nb + b] = max(trees[T_MAX_DEPTH * nb + b], d);
        }
    }
}

// Diagnostic: probe_out[2i] = toy_sin(f32(probe_in[i]) · 1e-3), probe_out[2i+1] = toy value.
@compute @workgroup_size(64)
fn toy_value_probe(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = tree_index(gid, nwg);
    if (i >= arrayLength(&probe_in)) {
        return;
    }
    probe_out[2u * i] = bitcast<u32>(toy_sin(f32(probe_in[i]) * 1e-3));
    probe_out[2u * i + 1u] = bitcast<u32>(toy_value(probe_in[i]));
}

// ---------------------------------------------------------------------------------------------
// toy_sin: f32 sine, correctly rounded, with integer-only range reduction and evaluation. GPU
// `sin` is not usable here: llvmpipe's range reduction fails for the toy's arguments (up to
// 2.1e6), and GPUs' `sin` are a few ulp off. No float operation is used, so nothing depends on fma
// contraction or reassociation. src/forest/wgpu.rs `sin_port` is a line-for-line host port of
// this code, with its tests; checked exhaustively over every f32 in [2^-12, 2.2e6] against the f64
// sine rounded to f32 (no difference but one f64 double-rounding case, where this is right).
// The CPU backend's glibc sinf is not correctly rounded: it is 1 ulp away on ~1.3% of toy
// arguments, which leaves the toy's checksums unchanged but means toy values agree with the CPU
// backend to 1 ulp, not bit for bit.
//
// 1. x = m · 2^e with a 24-bit integer m. G = frac(x / 2π) as a 128-bit fixed-point fraction:
//    frac(m · frac(2^e / 2π)), using 128 bits of 1/(2π) starting at bit e (Payne–Hanek).
// 2. Quadrant q = the top 2 bits of G; R = frac(4G). The angle inside the quadrant is R·π/2; it is
//    written as π/4·u with u = 2R, or (past the quadrant's middle) as π/2 - π/4·u with u = 2 - 2R,
//    so that u ∈ [0, 1] and only sin(π/4·u) and cos(π/4·u) are needed.
// 3. Those are Taylor series in w = u², evaluated by Horner in signed Q2.62 fixed point (error
//    ~2^-58, far below the 2^-24 of an f32), then rounded to nearest even.

var<private> INV2PI: array<u32, 12> = array<u32, 12>(
    0u, 0u, 0x28be60dbu, 0x9391054au, 0x7f09d5f4u, 0x7d4d3770u, 0x36d8a566u, 0x4f10e410u,
    0x7f9458eau, 0xf7aef158u, 0x6dc91b8eu, 0x909374b8u,
);
// sin(π/4·u) = u · Σ SIN_C[k] w^k, k = 0..8, signed Q2.62 as (hi, lo) word pairs.
var<private> SIN_C: array<u32, 18> = array<u32, 18>(
    0x3243f6a8u, 0x885a308du, 0xfad510c6u, 0x76906b50u, 0x0028cd78u, 0xceeb55c4u, 0xffff6696u,
    0x998cea14u, 0x00000150u, 0x783487eeu, 0xfffffffeu, 0x1cf8b021u, 0x00000000u, 0x01e8f435u,
    0xffffffffu, 0xfffe9052u, 0x00000000u, 0x000000d5u,
);
// cos(π/4·u) = Σ COS_C[k] w^k, k = 0..9, signed Q2.62.
var<private> COS_C: array<u32, 20> = array<u32, 20>(
    0x40000000u, 0x00000000u, 0xec42c336u, 0x41ba21a6u, 0x0103c1f0u, 0x81b5ac3bu, 0xfffaa8b0u,
    0xe070d002u, 0x00000f0fu, 0xa83448ddu, 0xffffffe5u, 0x92e0d5e0u, 0x00000000u, 0x1f9d38a3u,
    0xffffffffu, 0xffe491dbu, 0x00000000u, 0x0000120cu, 0xffffffffu, 0xfffffff7u,
);

// 32 × 32 → 64-bit product as (hi, lo), from 16-bit halves.
fn mul32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (mid << 16u) | (p00 & 0xffffu);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, lo);
}

// Full 64 × 64 → 128-bit product of (hi, lo) pairs; result words most significant first.
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec4<u32> {
    let hh = mul32(a.x, b.x);
    let hl = mul32(a.x, b.y);
    let lh = mul32(a.y, b.x);
    let ll = mul32(a.y, b.y);
    let w3 = ll.y;
    let t = ll.x + hl.y;
    var c = u32(t < ll.x);
    let w2 = t + lh.y;
    c += u32(w2 < t);
    let t1 = hh.y + hl.x;
    var c1 = u32(t1 < hh.y);
    let t2 = t1 + lh.x;
    c1 += u32(t2 < t1);
    let w1 = t2 + c;
    c1 += u32(w1 < t2);
    let w0 = hh.x + c1;
    return vec4<u32>(w0, w1, w2, w3);
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.y + b.y;
    return vec2<u32>(a.x + b.x + u32(lo < a.y), lo);
}

fn neg64(a: vec2<u32>) -> vec2<u32> {
    return add64(vec2<u32>(~a.x, ~a.y), vec2<u32>(0u, 1u));
}

// Horner step c + s·w: s signed Q2.62, w unsigned Q0.64, the product truncated toward zero.
fn horner(c: vec2<u32>, s: vec2<u32>, w: vec2<u32>) -> vec2<u32> {
    let neg = (s.x >> 31u) != 0u;
    var m = s;
    if (neg) {
        m = neg64(s);
    }
    let p = mul64(m, w);
    var hi = vec2<u32>(p.x, p.y);
    if (neg) {
        hi = neg64(hi);
    }
    return add64(c, hi);
}

fn clz128(m: vec4<u32>) -> u32 {
    if (m.x != 0u) {
        return countLeadingZeros(m.x);
    }
    if (m.y != 0u) {
        return 32u + countLeadingZeros(m.y);
    }
    if (m.z != 0u) {
        return 64u + countLeadingZeros(m.z);
    }
    return 96u + countLeadingZeros(m.w);
}

// 128-bit left shift by 0..=127.
fn shl128(m: vec4<u32>, n: u32) -> vec4<u32> {
    let ws = n >> 5u;
    let bs = n & 31u;
    var src = array<u32, 4>(m.x, m.y, m.z, m.w);
    var o = array<u32, 4>(0u, 0u, 0u, 0u);
    for (var i = 0u; i < 4u; i++) {
        let j = i + ws;
        if (j < 4u) {
            var v = src[j] << bs;
            if (bs != 0u && j + 1u < 4u) {
                v |= src[j + 1u] >> (32u - bs);
            }
            o[i] = v;
        }
    }
    return vec4<u32>(o[0], o[1], o[2], o[3]);
}

// f32 bits nearest (ties to even) to M · 2^scale, for M != 0 and a normal result.
fn round_f32(m: vec4<u32>, scale: i32) -> u32 {
    let lz = clz128(m);
    let n = shl128(m, lz);
    var mant = n.x >> 8u;
    let rnd = (n.x >> 7u) & 1u;
    let sticky = (n.x & 0x7fu) | n.y | n.z | n.w;
    if (rnd != 0u && (sticky != 0u || (mant & 1u) != 0u)) {
        mant += 1u;
    }
    var biased = 254 + scale - i32(lz);
    if (mant == 0x01000000u) {
        mant = mant >> 1u;
        biased += 1;
    }
    return (u32(biased) << 23u) | (mant & 0x007fffffu);
}

// 32 bits of 1/(2π) starting just below bit position 2^-p (p >= -64).
fn inv2pi_bits(p: i32) -> u32 {
    let q = u32(p + 64);
    let i = q >> 5u;
    let s = q & 31u;
    if (s == 0u) {
        return INV2PI[i];
    }
    return (INV2PI[i] << s) | (INV2PI[i + 1u] >> (32u - s));
}

fn toy_sin(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    let sgn = bits & 0x80000000u;
    let ax = bits & 0x7fffffffu;
    if (ax >= 0x7f800000u) {
        return bitcast<f32>(0x7fc00000u); // sin(±inf) and sin(NaN) are NaN
    }
    // |x| < 2^-12: sin x rounds to x (x³/6 is below half an ulp).
    if (ax < 0x39800000u) {
        return x;
    }
    let m = (ax & 0x007fffffu) | 0x00800000u;
    let e = i32(ax >> 23u) - 150;
    // G = frac(m · frac(2^e / 2π)); the integer part (from word 0's high half) is dropped.
    let p0 = mul32(m, inv2pi_bits(e));
    let p1 = mul32(m, inv2pi_bits(e + 32));
    let p2 = mul32(m, inv2pi_bits(e + 64));
    let p3 = mul32(m, inv2pi_bits(e + 96));
    let g3 = p3.y;
    let g2 = p2.y + p3.x;
    let c2 = u32(g2 < p2.y);
    let t = p1.y + p2.x;
    var c1 = u32(t < p1.y);
    let g1 = t + c2;
    c1 += u32(g1 < t);
    let g0 = p0.y + p1.x + c1;
    // Quadrant and R = frac(4G).
    let q = g0 >> 30u;
    let r = vec4<u32>(
        (g0 << 2u) | (g1 >> 30u),
        (g1 << 2u) | (g2 >> 30u),
        (g2 << 2u) | (g3 >> 30u),
        g3 << 2u,
    );
    let half = r.x >> 31u;
    // u in Q1.127: 2R, or 2 - 2R (the 128-bit two's complement of R) past the middle.
    var u = r;
    if (half != 0u) {
        var carry = 1u;
        let v3 = ~r.w + carry;
        carry = u32(v3 == 0u && carry != 0u);
        let v2 = ~r.z + carry;
        carry = u32(v2 == 0u && carry != 0u);
        let v1 = ~r.y + carry;
        carry = u32(v1 == 0u && carry != 0u);
        let v0 = ~r.x + carry;
        u = vec4<u32>(v0, v1, v2, v3);
    }
    if ((u.x | u.y | u.z | u.w) == 0u) {
        return bitcast<f32>(sgn);
    }
    let use_cos = (q & 1u) ^ half;
    let neg = (q >> 1u) << 31u;
    // w = u² in Q0.64, saturated at u = 1.
    let s = mul64(vec2<u32>(u.x, u.y), vec2<u32>(u.x, u.y));
    var w = vec2<u32>((s.x << 2u) | (s.y >> 30u), (s.y << 2u) | (s.z >> 30u));
    if (u.x == 0x80000000u && u.y == 0u) {
        w = vec2<u32>(0xffffffffu, 0xffffffffu);
    }
    var out: u32;
    if (use_cos != 0u) {
        var p = vec2<u32>(COS_C[18], COS_C[19]);
        for (var k = 9; k > 0; k--) {
            let kk = u32(k - 1);
            p = horner(vec2<u32>(COS_C[2u * kk], COS_C[2u * kk + 1u]), p, w);
        }
        out = round_f32(vec4<u32>(0u, 0u, p.x, p.y), -62);
    } else {
        var p = vec2<u32>(SIN_C[16], SIN_C[17]);
        for (var k = 8; k > 0; k--) {
            let kk = u32(k - 1);
            p = horner(vec2<u32>(SIN_C[2u * kk], SIN_C[2u * kk + 1u]), p, w);
        }
        let lz = clz128(u);
        let un = shl128(u, lz);
        out = round_f32(mul64(vec2<u32>(un.x, un.y), p), -125 - i32(lz));
    }
    return bitcast<f32>(out | (sgn ^ neg));
}

// One dispatch per search step: the phases the host deferred (toy evaluation, staged expansion,
// backup, each with K = cfg.k) and then the next selection (K = cfg.k_select), tree by tree.
// Trees are independent, so this gives what the separate dispatches give.
@compute @workgroup_size(64)
fn step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = tree_index(gid, nwg);
    if (b >= cfg.trees) {
        return;
    }
    if ((cfg.phases & PH_TOY_EVAL) != 0u) {
        toy_evaluate_tree(b);
    }
    if ((cfg.phases & PH_EXPAND) != 0u) {
        expand_tree(b);
    }
    if ((cfg.phases & PH_BACKUP) != 0u) {
        backup_tree(b);
    }
    if ((cfg.phases & PH_SELECT) != 0u) {
        select_tree(b, cfg.k_select);
    }
}
