// kernels/forest.cu — the batched search forest on CUDA (compiled at run time by NVRTC).
//
// Every kernel mirrors one phase of the CPU reference backend (src/forest/cpu.rs) node for node:
// same arena layout, same order of operations, same float arithmetic (src/forest/cuda.rs compiles
// this with --fmad=false so no multiply-add is fused; the kernels call the IEEE-accurate
// sqrtf/logf/sinf, never the fast __logf/__sinf intrinsics). The selection rules follow
// src/forest/rules.rs operation for operation.
//
// Thread mapping: ONE THREAD PER TREE. The thread owns its tree for the whole phase and handles
// the tree's K slots in order, so there are no atomics, no shared memory and no warp intrinsics,
// and float sums are added in the same order as on the CPU. This is the simple, verifiable
// baseline; the faster layout of reference/gpu-mcts.md §6 (an 8-lane sub-warp per tree, lanes
// scoring children in parallel and reducing with shuffles) is the next step once a device can
// measure it. Using no device-only feature also lets tests/cuda_emu.rs compile this exact file
// with the host C++ compiler (tests/cuda_emu/emu.h defines the few CUDA names used here) and check
// it against the CPU backend without a GPU.
//
// All kernels take one argument, `ForestArgs` (below, mirrored by `KernelArgs` in
// src/forest/cuda.rs): the device addresses of every array plus the forest's shape. One struct
// keeps the host/kernel contract in one place, checked by static_asserts on both sides.
//
// Index arithmetic on [B, ...] arrays is 64-bit: B·N·32 bytes can exceed 2^32.

typedef unsigned int u32;
typedef unsigned long long u64;

#define RS_NONE 0xffffffffu
#define RS_FLT_MAX 3.40282347e38f

// Node flag bits (src/forest/mod.rs `flags`).
#define F_EXPANDED 1u
#define F_TERMINAL 2u
#define F_ANSWER 4u
#define F_PENDING 8u
#define F_COUNT_INIT 16u
#define F_CHILD_STORED_MASK (F_TERMINAL | F_ANSWER)

// Per-tree status words (src/forest/mod.rs `status`); sticky until the host reads and clears them.
#define ST_OK 0u
#define ST_CAPACITY 1u
#define ST_INVALID_EXPAND 2u
#define ST_INVALID_REROOT 3u

// Rule kinds (Rule::encode): 0 = rStar UCT, 1 = UCT unvisited-first, 2 = mctx PUCT.
#define RULE_UCT 0u
#define RULE_UCT_UNVISITED_FIRST 1u
#define RULE_PUCT 2u

// forest_step phases, run for each tree in this order (the order of one search step).
#define PH_TOY_EVAL 1u
#define PH_EXPAND 2u
#define PH_BACKUP 4u
#define PH_SELECT 8u

// select_child outcomes other than a child index (a node has at most 255 children).
#define CHOICE_ALL_TERMINAL 0xfffffffeu
#define CHOICE_BLOCKED 0xffffffffu

// One node, 32 bytes, the layout of `Node` in src/forest/mod.rs. 16-byte aligned so that a
// child's record is read with two 16-byte vector loads (load_node).
struct __align__(16) Node {
    u32 visits;      // completed visits N
    u32 vloss;       // selections in flight (virtual loss count)
    float value_sum; // W
    float init_value;
    float prior;
    u32 first_child; // RS_NONE while unexpanded
    u32 parent;      // RS_NONE for the root
    u32 meta;        // bits 0..8 flags, 8..16 number of children, 16..32 depth
};

// Kernel arguments. Shapes: B = trees, N = capacity, A = max_children, D = max_depth,
// KM = km (max leaves per step), K = k (slots of the current selection, K <= KM). As on the CPU
// backend, the selection and staged arrays have a row of KM slots per tree, of which a launch uses
// the first K; a host expansion has rows of K slots (exp_stride says which). Unused pointers are 0.
struct ForestArgs {
    Node* nodes;          // [B, N] the arenas; tree b's node i is nodes[b*N + i]
    Node* scratch;        // [B, N] reroot's compaction target (allocated on first reroot)
    u32* n_nodes;         // [B] bump pointer: nodes in use per tree
    u32* status;          // [B] sticky status words (ST_*)
    u32* leaves;          // [B, KM] selected leaf ids, RS_NONE for an empty slot
    u32* path_len;        // [B, KM] nodes on each path (root .. leaf), 0 for an empty slot
    u32* paths;           // [B, KM, D+1] node ids, root first
    u32* exp_counts;      // [B, exp_stride] children to attach per slot (expansion input)
    float* exp_values;    // [B, exp_stride, A] initial value of each child
    float* exp_priors;    // [B, exp_stride, A] prior of each child
    u32* exp_flags;       // [B, exp_stride, A] TERMINAL | ANSWER | COUNT_INIT per child
    float* bk_values;     // [B, KM] value added along each path (staged backup)
    u32* bk_mask;         // [B, KM] 1 = add value and a visit, 0 = only remove the virtual loss
    float* bk_in_values;  // [B, K] host backup values, copied into bk_values first (or 0)
    u32* bk_in_mask;      // [B, K] host backup mask, copied into bk_mask first
    float* root_values;   // [B] reset input: each root's initial value
    u32* new_roots;       // [B] reroot input: node to keep as root, 0 or RS_NONE keeps the tree
    u32* toy_state;       // [B, N] toy evaluator state of every evaluated node
    u32* toy_stats;       // [B, 3] toy statistics per tree: depth sum, leaves, max depth (u32)
    float* toy_priors;    // [branching] the toy prior, identical at every node
    u32 trees;            // B
    u32 capacity;         // N
    u32 max_children;     // A
    u32 max_depth;        // D (paths have D+1 entries)
    u32 k;                // K: slots handled by this launch
    u32 km;               // KM: row stride of leaves, path_len, paths and the staged arrays
    u32 exp_stride;       // row stride (slots) of the exp_* arrays: K (host input) or KM (staged)
    u32 rule;             // RULE_*
    float rule_p0;      // UCT: c; PUCT: c1
    float rule_p1;      // PUCT: c2
    float virtual_loss; // value of one in-flight selection (counted as a visit of -virtual_loss)
    u32 root_visits;    // reset: 0 or 1
    u32 branching;      // toy: children per expansion
    u32 record;         // toy: 1 = add the leaves' depths to toy_stats
    u32 k_select;       // forest_step: K of the selection that follows the deferred phases
    u32 phases;         // forest_step: PH_* bits of the phases to run, in PH_* order
};

// The layout contract with src/forest/cuda.rs (KernelArgs asserts the same numbers). NVRTC has
// no offsetof, so the field offsets are checked where the host emulation defines RS_OFFSETOF.
static_assert(sizeof(Node) == 32, "Node must be 32 bytes");
static_assert(sizeof(ForestArgs) == 224, "ForestArgs layout changed: update KernelArgs");
#ifdef RS_OFFSETOF
static_assert(RS_OFFSETOF(ForestArgs, toy_priors) == 152, "ForestArgs layout");
static_assert(RS_OFFSETOF(ForestArgs, trees) == 160, "ForestArgs layout");
static_assert(RS_OFFSETOF(ForestArgs, rule_p0) == 192, "ForestArgs layout");
static_assert(RS_OFFSETOF(ForestArgs, record) == 212, "ForestArgs layout");
static_assert(RS_OFFSETOF(ForestArgs, phases) == 220, "ForestArgs layout");
#endif

__device__ __forceinline__ u32 meta_flags(u32 meta) { return meta & 0xffu; }
__device__ __forceinline__ u32 meta_children(u32 meta) { return (meta >> 8) & 0xffu; }
__device__ __forceinline__ u32 meta_depth(u32 meta) { return meta >> 16; }
__device__ __forceinline__ u32 pack_meta(u32 flags, u32 n_children, u32 depth) {
    return (flags & 0xffu) | ((n_children & 0xffu) << 8) | (depth << 16);
}

// A node's whole record. Node is 16-byte aligned (the arena base is 256-byte aligned and nodes
// are 32 bytes), so NVRTC copies it with two 16-byte vector loads / stores (ld.global.v4.u32).
// A plain struct copy rather than a reinterpret_cast to uint4: every access to a record then has
// the same type, so the compiler cannot reorder a load around a field store to the same node
// under the C++ aliasing rules.
__device__ __forceinline__ Node load_node(const Node* p) { return *p; }
__device__ __forceinline__ void store_node(Node* p, const Node n) { *p = n; }

__device__ __forceinline__ u64 tree_index() {
    return (u64)blockIdx.x * (u64)blockDim.x + (u64)threadIdx.x;
}

// Keep the first error of a tree (the status word is sticky until the host clears it).
__device__ __forceinline__ void set_status(const ForestArgs& a, u64 b, u32 st) {
    if (a.status[b] == ST_OK) a.status[b] = st;
}

// ---------------------------------------------------------------------------------------------
// Scoring: rules.rs `parent_terms`, `score`, `score_node`, `select_child`, in the same order.

struct ParentTerms {
    float a; // UCT: ln(N_parent) (0 when N_parent = 0); PUCT: pb_c
    float b; // PUCT: sqrt(N_parent)
    u32 parent_n;
};

__device__ __forceinline__ ParentTerms parent_terms(const ForestArgs& a, u32 parent_visits_eff) {
    ParentTerms pt;
    const float np = (float)parent_visits_eff;
    pt.parent_n = parent_visits_eff;
    if (a.rule == RULE_PUCT) {
        pt.a = a.rule_p0 + logf((np + a.rule_p1 + 1.0f) / a.rule_p1);
        pt.b = sqrtf(np);
    } else {
        pt.a = parent_visits_eff == 0u ? 0.0f : logf(np);
        pt.b = 0.0f;
    }
    return pt;
}

__device__ __forceinline__ float score(const ForestArgs& a, const ParentTerms pt, u32 n_eff,
                                       float w_eff, float init_value, float prior) {
    if (a.rule == RULE_PUCT) {
        const float q = n_eff == 0u ? 0.0f : (w_eff / (float)n_eff + 1.0f) / 2.0f;
        return q + pt.a * prior * pt.b / (float)(1u + n_eff);
    }
    if (n_eff == 0u) return a.rule == RULE_UCT ? init_value : RS_FLT_MAX;
    const float n = (float)n_eff;
    const float u = pt.parent_n == 0u ? 0.0f : a.rule_p0 * sqrtf(pt.a / n);
    return w_eff / n + u;
}

// Index of the best selectable child of the block `children[0..nc)`, or a CHOICE_* code.
// Terminal children are skipped; pending ones are skipped but keep the node open (a collision
// with another slot); ties go to the lowest index (strict `>`).
__device__ __forceinline__ u32 select_child(const ForestArgs& a, u32 parent_visits_eff,
                                            const Node* children, u32 nc) {
    const ParentTerms pt = parent_terms(a, parent_visits_eff);
    u32 best = RS_NONE;
    float best_score = 0.0f;
    bool any_open = false;
    for (u32 j = 0; j < nc; ++j) {
        const Node c = load_node(children + j);
        if (c.meta & F_TERMINAL) continue;
        any_open = true;
        if (c.meta & F_PENDING) continue;
        const u32 n_eff = c.visits + c.vloss;
        const float w_eff = c.value_sum - a.virtual_loss * (float)c.vloss;
        const float s = score(a, pt, n_eff, w_eff, c.init_value, c.prior);
        if (best == RS_NONE || s > best_score) {
            best = j;
            best_score = s;
        }
    }
    if (best != RS_NONE) return best;
    return any_open ? CHOICE_BLOCKED : CHOICE_ALL_TERMINAL;
}

// ---------------------------------------------------------------------------------------------
// Kernels. Grid: ceil(B / blockDim) blocks; thread b handles tree b.

// Every tree becomes a lone root (Node::root) with root_values[b] and root_visits visits.
extern "C" __global__ void forest_reset(const ForestArgs a) {
    const u64 b = tree_index();
    if (b >= a.trees) return;
    const float v = a.root_values[b];
    Node r;
    r.visits = a.root_visits;
    r.vloss = 0u;
    r.value_sum = v * (float)a.root_visits;
    r.init_value = v;
    r.prior = 1.0f;
    r.first_child = RS_NONE;
    r.parent = RS_NONE;
    r.meta = 0u;
    store_node(a.nodes + b * a.capacity, r);
    a.n_nodes[b] = 1u;
    a.status[b] = ST_OK;
    if (a.toy_stats) {
        a.toy_stats[b * 3 + 0] = 0u;
        a.toy_stats[b * 3 + 1] = 0u;
        a.toy_stats[b * 3 + 2] = 0u;
    }
}

// One slot's descent (cpu.rs `start` + `advance`): returns the leaf or RS_NONE and leaves the
// number of path entries in *len. A node whose children are all terminal becomes terminal and the
// descent restarts from the root.
__device__ __forceinline__ u32 descend(const ForestArgs& a, Node* arena, u32* path, u32* len) {
    u32 node = 0u;
    u32 n = 0u;
    for (;;) {
        if (n == 0u) { // (re)start at the root
            if (arena[0].meta & F_TERMINAL) {
                *len = 0u;
                return RS_NONE;
            }
            path[0] = 0u;
            n = 1u;
            node = 0u;
        }
        const Node x = load_node(arena + node);
        if (!(x.meta & F_EXPANDED) || meta_depth(x.meta) >= a.max_depth) {
            *len = n;
            return (x.meta & F_PENDING) ? RS_NONE : node;
        }
        const u32 choice =
            select_child(a, x.visits + x.vloss, arena + x.first_child, meta_children(x.meta));
        if (choice == CHOICE_BLOCKED) {
            *len = n;
            return RS_NONE;
        }
        if (choice == CHOICE_ALL_TERMINAL) {
            arena[node].meta |= F_TERMINAL;
            n = 0u;
            continue;
        }
        node = x.first_child + choice;
        path[n] = node;
        n += 1u;
    }
}

// Up to K leaves per tree; each chosen path gets one virtual loss per node and its leaf PENDING,
// so later slots of the same tree choose differently.
__device__ __forceinline__ void select_tree(const ForestArgs& a, const u64 b) {
    Node* arena = a.nodes + b * a.capacity;
    const u64 stride = (u64)a.max_depth + 1u;
    for (u32 slot = 0; slot < a.k; ++slot) {
        const u64 i = b * a.km + slot;
        u32* path = a.paths + i * stride;
        u32 len = 0u;
        const u32 leaf = descend(a, arena, path, &len);
        a.leaves[i] = leaf;
        if (leaf == RS_NONE) {
            a.path_len[i] = 0u;
            continue;
        }
        a.path_len[i] = len;
        for (u32 p = 0; p < len; ++p) arena[path[p]].vloss += 1u;
        arena[leaf].meta |= F_PENDING;
    }
}

extern "C" __global__ void forest_select(const ForestArgs a) {
    const u64 b = tree_index();
    if (b < a.trees) select_tree(a, b);
}

// Attach the staged children to each slot's leaf; all-or-nothing per tree (cpu.rs expand_tree).
// Even a count of 0 marks a valid leaf EXPANDED (a dead end).
__device__ __forceinline__ void expand_tree(const ForestArgs& a, const u64 b) {
    Node* arena = a.nodes + b * a.capacity;
    const u64 row = b * a.km;          // leaves
    const u64 erow = b * a.exp_stride; // expansion input
    // Validate the whole tree's expansion before touching it.
    u64 need = 0u;
    for (u32 slot = 0; slot < a.k; ++slot) {
        const u32 c = a.exp_counts[erow + slot];
        if (c == 0u) continue;
        const u32 leaf = a.leaves[row + slot];
        if (leaf == RS_NONE || (arena[leaf].meta & F_EXPANDED)) {
            set_status(a, b, ST_INVALID_EXPAND);
            return;
        }
        need += c;
    }
    u32 n = a.n_nodes[b];
    if ((u64)n + need > (u64)a.capacity) {
        set_status(a, b, ST_CAPACITY);
        return;
    }
    for (u32 slot = 0; slot < a.k; ++slot) {
        const u32 leaf = a.leaves[row + slot];
        if (leaf == RS_NONE) continue;
        Node* l = arena + leaf;
        const u32 meta = l->meta;
        if (meta & F_EXPANDED) continue;
        const u32 c = a.exp_counts[erow + slot];
        const u32 first = n;
        const u32 depth = meta_depth(meta) + 1u;
        n += c;
        l->first_child = first;
        l->meta = pack_meta(meta_flags(meta) | F_EXPANDED, c, depth - 1u);
        const u64 base = (erow + slot) * a.max_children;
        for (u32 j = 0; j < c; ++j) {
            const u32 f = a.exp_flags[base + j];
            const float v = a.exp_values[base + j];
            const bool counted = (f & F_COUNT_INIT) != 0u;
            Node ch;
            ch.visits = counted ? 1u : 0u;
            ch.vloss = 0u;
            ch.value_sum = counted ? v : 0.0f;
            ch.init_value = v;
            ch.prior = a.exp_priors[base + j];
            ch.first_child = RS_NONE;
            ch.parent = leaf;
            ch.meta = pack_meta(f & F_CHILD_STORED_MASK, 0u, depth);
            store_node(arena + first + j, ch);
        }
    }
    a.n_nodes[b] = n;
}

extern "C" __global__ void forest_expand(const ForestArgs a) {
    const u64 b = tree_index();
    if (b < a.trees) expand_tree(a, b);
}

// Add each slot's value along its path (when masked in), remove its virtual loss, clear PENDING.
// Slots are applied in order, so every node's W receives its additions in the CPU's order. A host
// backup first lands in the staged arrays, as the CPU backend copies it there.
__device__ __forceinline__ void backup_tree(const ForestArgs& a, const u64 b) {
    Node* arena = a.nodes + b * a.capacity;
    const u64 stride = (u64)a.max_depth + 1u;
    if (a.bk_in_values) {
        for (u32 slot = 0; slot < a.k; ++slot) {
            a.bk_values[b * a.km + slot] = a.bk_in_values[b * a.k + slot];
            a.bk_mask[b * a.km + slot] = a.bk_in_mask[b * a.k + slot];
        }
    }
    for (u32 slot = 0; slot < a.k; ++slot) {
        const u64 i = b * a.km + slot;
        const u32 leaf = a.leaves[i];
        if (leaf == RS_NONE) continue;
        const bool counted = a.bk_mask[i] != 0u;
        const float v = a.bk_values[i];
        const u32* path = a.paths + i * stride;
        const u32 len = a.path_len[i];
        for (u32 p = 0; p < len; ++p) {
            Node* x = arena + path[p];
            x->vloss -= 1u;
            if (counted) {
                x->visits += 1u;
                x->value_sum += v;
            }
        }
        arena[leaf].meta &= ~F_PENDING;
    }
}

// Keep the subtree under new_roots[b]: breadth-first copy into the tree's scratch arena (children
// blocks stay contiguous, depths become relative to the new root), then copy back.
extern "C" __global__ void forest_reroot(const ForestArgs a) {
    const u64 b = tree_index();
    if (b >= a.trees) return;
    const u32 r = a.new_roots[b];
    if (r == 0u || r == RS_NONE) return;
    const u32 n = a.n_nodes[b];
    if (r >= n) {
        set_status(a, b, ST_INVALID_REROOT);
        return;
    }
    Node* arena = a.nodes + b * a.capacity;
    Node* out = a.scratch + b * a.capacity;
    Node root = load_node(arena + r);
    const u32 d0 = meta_depth(root.meta);
    root.parent = RS_NONE;
    store_node(out, root);
    u32 len = 1u;
    for (u32 i = 0; i < len; ++i) {
        Node x = load_node(out + i);
        if (x.first_child != RS_NONE) {
            const u32 nc = meta_children(x.meta);
            // A subtree never has more nodes than its tree; this guards the scratch arena
            // against a corrupted arena only.
            if ((u64)len + nc > (u64)n) {
                set_status(a, b, ST_INVALID_REROOT);
                return;
            }
            const u32 new_first = len;
            for (u32 j = 0; j < nc; ++j) {
                Node c = load_node(arena + x.first_child + j);
                c.parent = i;
                store_node(out + len, c);
                len += 1u;
            }
            x.first_child = new_first;
        }
        x.meta = pack_meta(meta_flags(x.meta), meta_children(x.meta), meta_depth(x.meta) - d0);
        store_node(out + i, x);
    }
    for (u32 i = 0; i < len; ++i) store_node(arena + i, load_node(out + i));
    a.n_nodes[b] = len;
}

// ---------------------------------------------------------------------------------------------
// The toy evaluator of reference/toy_forest.c (src/forest/toy.rs), staged on the device.

// The depth statistics restart at zero (states are set as nodes are evaluated).
extern "C" __global__ void toy_reset(const ForestArgs a) {
    const u64 b = tree_index();
    if (b >= a.trees) return;
    a.toy_stats[b * 3 + 0] = 0u;
    a.toy_stats[b * 3 + 1] = 0u;
    a.toy_stats[b * 3 + 2] = 0u;
}

__device__ __forceinline__ u32 toy_child_state(u32 parent_state, u32 action) {
    return (parent_state * 1103515245u + action * 12345u + 1u) & 0x7fffffffu;
}

// For each selected leaf: set its state (tree b's root: b; a child: derived from its parent's),
// stage its value as the backup (mask 1) and `branching` children with the toy priors as the
// expansion (0 if already expanded).
// The staged expansion's values and flags stay zero. CUDA's sinf does full range reduction, so
// large states (up to 2^31 · 1e-3) are reduced like the host's sinf.
__device__ __forceinline__ void toy_evaluate_tree(const ForestArgs& a, const u64 b) {
    const Node* arena = a.nodes + b * a.capacity;
    u32* state = a.toy_state + b * a.capacity;
    const u64 row = b * a.km;
    for (u32 slot = 0; slot < a.k; ++slot) {
        const u64 i = row + slot;
        const u32 leaf = a.leaves[i];
        if (leaf == RS_NONE) {
            a.exp_counts[i] = 0u;
            a.bk_mask[i] = 0u;
            continue;
        }
        const u32 meta = arena[leaf].meta;
        if (leaf == 0u) {
            state[0] = (u32)b;
        } else {
            const u32 p = arena[leaf].parent;
            state[leaf] = toy_child_state(state[p], leaf - arena[p].first_child);
        }
        a.bk_values[i] = 0.1f * sinf((float)state[leaf] * 1e-3f);
        a.bk_mask[i] = 1u;
        a.exp_counts[i] = (meta & F_EXPANDED) ? 0u : a.branching;
        for (u32 j = 0; j < a.branching; ++j)
            a.exp_priors[i * a.max_children + j] = a.toy_priors[j];
        if (a.record) {
            const u32 d = meta_depth(meta);
            a.toy_stats[b * 3 + 0] += d;
            a.toy_stats[b * 3 + 1] += 1u;
            if (d > a.toy_stats[b * 3 + 2]) a.toy_stats[b * 3 + 2] = d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One launch per search step: the phases the host deferred (toy evaluation, staged expansion,
// backup, each with K = a.k) and then the next selection (K = a.k_select), tree by tree. Trees are
// independent, so running a tree's phases back to back gives what the separate launches give, with
// one launch instead of four and each tree's nodes still in cache between its phases.
extern "C" __global__ void forest_step(const ForestArgs a) {
    const u64 b = tree_index();
    if (b >= a.trees) return;
    if (a.phases & PH_TOY_EVAL) toy_evaluate_tree(a, b);
    if (a.phases & PH_EXPAND) expand_tree(a, b);
    if (a.phases & PH_BACKUP) backup_tree(a, b);
    if (a.phases & PH_SELECT) {
        ForestArgs s = a;
        s.k = a.k_select;
        select_tree(s, b);
    }
}
