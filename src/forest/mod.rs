//! The batched search forest: the trees of many problems stored together, numbers only (no text).
//!
//! This module owns the node record, the forest's shape ([`ForestConfig`]), the input/output
//! batches of the four phases, the errors, and [`Forest`] — the front type that validates every
//! call and keeps the phase order (select → expand → backup) before handing the work to one of the
//! backends (`cpu`, `cuda`, `wgpu`) behind [`ForestBackend`].
//!
//! # Storage (identical on every backend)
//! * `nodes: [B, N]` of [`Node`] (32 bytes each): tree `b`'s arena is `nodes[b*N .. (b+1)*N]`, node
//!   ids are u32 indices into it, the root is 0, and a node's children are one contiguous block
//!   `first_child .. first_child + n_children`, so all child statistics of a node are read together.
//! * `n_nodes: [B]` u32 — bump pointer of each arena. Capacity `N` is fixed per forest and is
//!   independent of the number of simulations; a full tree is an error, never an overwrite.
//! * `leaves: [B, KM]` u32, `path_len: [B, KM]` u32, `paths: [B, KM, D+1]` u32 — the last
//!   selection, in rows of KM = `max_leaves` slots per tree of which the first K are used (so a
//!   fused pass can write one tree's new selection while another still holds its last one);
//!   [`Selection`] hands them out in rows of K. [`NONE`] marks a slot that found no leaf (tree
//!   exhausted, or a collision with a leaf another slot of the same tree already holds).
//!
//! # Semantics worth knowing
//! * A fresh child starts with `visits = 0` and scores its initial value under rStar UCT; with
//!   [`flags::COUNT_INIT`] its initial value counts as one visit (rStar's `node.update(q0)`).
//! * A leaf expanded with zero children is a dead end: the next descent through its parent finds
//!   no open child there and marks it terminal.
//! * Work the backends defer (the built-in evaluator's staged expansion, any backup) is applied in
//!   the same pass or launch as the next `select`; per-tree errors it raises are reported at the
//!   next read (`selection`, `read_back`) or `sync`. Host expansions report theirs at once.
//!
//! # Phases (each one batched over all trees)
//! 1. `select(K)`: up to K leaves per tree, each found by descending from the root with the rule of
//!    [`rules`], with virtual loss added along every chosen path so the K paths differ.
//! 2. `expand`: attach 0..=A children to each selected leaf (initial value, prior, flags).
//! 3. `backup`: add a value along each recorded path (or only remove the virtual loss).
//!
//! Plus `reroot` (tree reuse with compaction), `read_back` and the toy evaluator used by
//! `rstar-gpu bench forest` (see [`toy`]).

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod rules;
pub mod toy;
pub mod wgpu;

use serde::{Deserialize, Serialize};

pub use backend::{BackendKind, ForestBackend, Input};

/// Id of a node inside its tree's arena.
pub type NodeId = u32;

/// "No node": an unexpanded node's `first_child`, the root's `parent`, an empty selection slot.
pub const NONE: u32 = u32::MAX;

/// Node flag bits (low 8 bits of [`Node::meta`]).
pub mod flags {
    /// Children have been attached (possibly zero of them).
    pub const EXPANDED: u32 = 1;
    /// Never selected again: an answer, an error, a dead end, or a node whose children are all
    /// terminal.
    pub const TERMINAL: u32 = 2;
    /// Informational: this node holds a final answer.
    pub const ANSWER: u32 = 4;
    /// Selected in the current step and not yet backed up; other slots skip it.
    pub const PENDING: u32 = 8;
    /// Expansion input only (not stored): the child's initial value counts as one visit
    /// (`visits = 1`, `value_sum = init_value`), as rStar's `node.update(q0)` does.
    pub const COUNT_INIT: u32 = 16;
    /// The flags a caller may set on a new child.
    pub const CHILD_INPUT_MASK: u32 = TERMINAL | ANSWER | COUNT_INIT;
    /// The flags stored on a new child.
    pub const CHILD_STORED_MASK: u32 = TERMINAL | ANSWER;
}

/// One node, 32 bytes, identical layout on every backend (`kernels/forest.cu`, `shaders/forest.wgsl`).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    bytemuck::Pod,
    bytemuck::Zeroable,
    Serialize,
    Deserialize,
)]
pub struct Node {
    /// Completed visits N (backups through this node, plus the initial visit if counted).
    pub visits: u32,
    /// Selections through this node not yet backed up (virtual loss count).
    pub vloss: u32,
    /// Sum of backed-up values W (Q = W / N).
    pub value_sum: f32,
    /// Initial value q0 given at expansion (a PPM score, ±1 for a terminal, or 0).
    pub init_value: f32,
    /// Prior probability P of this node under its parent (PUCT only).
    pub prior: f32,
    /// First child's id, [`NONE`] while unexpanded.
    pub first_child: u32,
    /// Parent's id, [`NONE`] for the root.
    pub parent: u32,
    /// Bits 0..8: [`flags`]; bits 8..16: number of children; bits 16..32: depth (root = 0).
    pub meta: u32,
}

impl Node {
    pub const BYTES: usize = 32;

    pub fn root(init_value: f32, visits: u32) -> Node {
        Node {
            visits,
            vloss: 0,
            value_sum: init_value * visits as f32,
            init_value,
            prior: 1.0,
            first_child: NONE,
            parent: NONE,
            meta: 0,
        }
    }
    #[inline]
    pub fn flags(&self) -> u32 {
        self.meta & 0xff
    }
    #[inline]
    pub fn n_children(&self) -> u32 {
        (self.meta >> 8) & 0xff
    }
    #[inline]
    pub fn depth(&self) -> u32 {
        self.meta >> 16
    }
    #[inline]
    pub fn is(&self, flag: u32) -> bool {
        self.meta & flag != 0
    }
    #[inline]
    pub fn pack_meta(flags: u32, n_children: u32, depth: u32) -> u32 {
        (flags & 0xff) | ((n_children & 0xff) << 8) | (depth << 16)
    }
    /// Mean value Q = W / N, or the initial value while unvisited.
    pub fn q(&self) -> f32 {
        if self.visits == 0 {
            self.init_value
        } else {
            self.value_sum / self.visits as f32
        }
    }
}

/// Selection rule (see [`rules`] for the exact formulas).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Rule {
    /// rStar UCT: `Q + c·sqrt(ln N_parent / N)`; an unvisited node scores its initial value.
    Uct { c: f32 },
    /// Textbook UCT: unvisited children first (lowest index), then `Q + c·sqrt(ln N_parent / N)`.
    UctUnvisitedFirst { c: f32 },
    /// mctx MuZero-style PUCT with a fixed value normalisation of [-1, 1] to [0, 1].
    Puct { c1: f32, c2: f32 },
}

impl Rule {
    pub const RSTAR_UCT: Rule = Rule::Uct { c: 2.0 };
    pub const MCTX_PUCT: Rule = Rule::Puct {
        c1: 1.25,
        c2: 19652.0,
    };

    /// (kind, p0, p1) as passed to the kernels: kind 0 = uct, 1 = uct unvisited-first, 2 = puct.
    pub fn encode(&self) -> (u32, f32, f32) {
        match *self {
            Rule::Uct { c } => (0, c, 0.0),
            Rule::UctUnvisitedFirst { c } => (1, c, 0.0),
            Rule::Puct { c1, c2 } => (2, c1, c2),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Uct { .. } => "uct",
            Rule::UctUnvisitedFirst { .. } => "uct-unvisited-first",
            Rule::Puct { .. } => "puct",
        }
    }
    fn params_finite(&self) -> bool {
        let (_, a, b) = self.encode();
        a.is_finite() && b.is_finite()
    }
}

/// The forest's shape. All arrays are allocated once from these numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForestConfig {
    /// B: number of trees.
    pub trees: usize,
    /// N: node capacity of each tree, root included.
    pub capacity: usize,
    /// A: most children one expansion may attach (1..=255).
    pub max_children: usize,
    /// D: selection stops at a node of this depth even if it is expanded (1..=1024).
    pub max_depth: usize,
    /// Most leaves per tree one `select` may return (1..=64).
    pub max_leaves: usize,
    pub rule: Rule,
    /// Each in-flight selection counts as one visit of value `-virtual_loss`.
    pub virtual_loss: f32,
}

impl Default for ForestConfig {
    fn default() -> Self {
        ForestConfig {
            trees: 1,
            capacity: 4096,
            max_children: 8,
            max_depth: 16,
            max_leaves: 1,
            rule: Rule::RSTAR_UCT,
            virtual_loss: 1.0,
        }
    }
}

pub const MAX_CHILDREN_LIMIT: usize = 255;
pub const MAX_DEPTH_LIMIT: usize = 1024;
pub const MAX_LEAVES_LIMIT: usize = 64;

impl ForestConfig {
    pub fn validate(&self) -> Result<(), ForestError> {
        let bad = |what: &str| Err(ForestError::InvalidConfig(what.to_string()));
        if self.trees == 0 {
            return bad("trees must be at least 1 (a forest of zero trees has nothing to search)");
        }
        if self.capacity == 0 || self.capacity >= (1usize << 31) {
            return bad("capacity (nodes per tree) must be in 1..2^31");
        }
        if self.max_children == 0 || self.max_children > MAX_CHILDREN_LIMIT {
            return bad("max_children must be in 1..=255");
        }
        if self.max_depth == 0 || self.max_depth > MAX_DEPTH_LIMIT {
            return bad("max_depth must be in 1..=1024");
        }
        if self.max_leaves == 0 || self.max_leaves > MAX_LEAVES_LIMIT {
            return bad("max_leaves (leaves per tree per step) must be in 1..=64");
        }
        if !self.virtual_loss.is_finite() || self.virtual_loss < 0.0 {
            return bad("virtual_loss must be finite and >= 0");
        }
        if !self.rule.params_finite() {
            return bad("rule parameters must be finite");
        }
        let bytes = (self.trees as u128) * (self.capacity as u128) * (Node::BYTES as u128);
        if bytes > (1u128 << 40) || self.trees as u128 * self.capacity as u128 >= (1u128 << 32) {
            return bad("trees × capacity is too large (node ids must fit in 32 bits per forest)");
        }
        Ok(())
    }
    /// Path record length per slot: root .. leaf, at most D+1 nodes.
    pub fn path_stride(&self) -> usize {
        self.max_depth + 1
    }
    pub fn forest_bytes(&self) -> u128 {
        (self.trees as u128) * (self.capacity as u128) * (Node::BYTES as u128)
    }
}

/// Errors of the forest. Every one names the thing and what to do.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ForestError {
    #[error("invalid forest configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error(
        "tree {tree} is full: capacity is {capacity} nodes per tree; raise --capacity or reroot \
         (that tree's expansion was not applied)"
    )]
    CapacityExceeded { tree: usize, capacity: usize },
    #[error(
        "tree {tree}: invalid expansion (children given for an empty slot or for a node that is \
         already expanded); that tree's expansion was not applied"
    )]
    InvalidExpand { tree: usize },
    #[error("tree {tree}: reroot target is not a node of that tree")]
    InvalidReroot { tree: usize },
    #[error("phase order: {0}")]
    PhaseOrder(String),
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend} backend error: {reason}")]
    Device {
        backend: &'static str,
        reason: String,
    },
}

/// Per-tree status codes written by the backends (sticky until reported).
pub mod status {
    pub const OK: u32 = 0;
    pub const CAPACITY: u32 = 1;
    pub const INVALID_EXPAND: u32 = 2;
    pub const INVALID_REROOT: u32 = 3;
}

/// Turn the per-tree status words into the error of the lowest-index failing tree.
pub fn status_error(statuses: &[u32], capacity: usize) -> Result<(), ForestError> {
    match statuses.iter().position(|&s| s != status::OK) {
        None => Ok(()),
        Some(tree) => Err(match statuses[tree] {
            status::CAPACITY => ForestError::CapacityExceeded { tree, capacity },
            status::INVALID_EXPAND => ForestError::InvalidExpand { tree },
            _ => ForestError::InvalidReroot { tree },
        }),
    }
}

/// The last selection, read back to the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub trees: usize,
    /// K of the `select` call.
    pub k: usize,
    /// D+1.
    pub path_stride: usize,
    /// `[B, K]` leaf ids, [`NONE`] for an empty slot.
    pub leaves: Vec<u32>,
    /// `[B, K]` number of nodes on each path (root .. leaf); 0 for an empty slot.
    pub path_len: Vec<u32>,
    /// `[B, K, D+1]` node ids root first.
    pub paths: Vec<u32>,
}

impl Selection {
    /// Build from the backends' storage, where each tree has rows of `km` (= max_leaves) slots:
    /// `leaves`, `path_len` `[B, KM]`, `paths` `[B, KM, D+1]`; keeps the first `k` of each row.
    pub fn from_rows(
        trees: usize,
        k: usize,
        km: usize,
        path_stride: usize,
        leaves: &[u32],
        path_len: &[u32],
        paths: &[u32],
    ) -> Selection {
        let rows = |v: &[u32], w: usize| -> Vec<u32> {
            v.chunks(km * w)
                .take(trees)
                .flat_map(|r| &r[..k * w])
                .copied()
                .collect()
        };
        Selection {
            trees,
            k,
            path_stride,
            leaves: rows(leaves, 1),
            path_len: rows(path_len, 1),
            paths: rows(paths, path_stride),
        }
    }

    pub fn leaf(&self, tree: usize, slot: usize) -> Option<NodeId> {
        let l = self.leaves[tree * self.k + slot];
        (l != NONE).then_some(l)
    }
    pub fn path(&self, tree: usize, slot: usize) -> &[u32] {
        let i = tree * self.k + slot;
        let base = i * self.path_stride;
        &self.paths[base..base + self.path_len[i] as usize]
    }
}

/// Children to attach to the selected leaves. Shapes use the K of the last `select`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expansion {
    /// `[B, K]` number of children for each slot (0 for an empty slot or an expanded leaf).
    pub counts: Vec<u32>,
    /// `[B, K, A]` initial value of each child (finite).
    pub values: Vec<f32>,
    /// `[B, K, A]` prior of each child (finite; used by PUCT only).
    pub priors: Vec<f32>,
    /// `[B, K, A]` child flags: [`flags::TERMINAL`], [`flags::ANSWER`], [`flags::COUNT_INIT`].
    pub flags: Vec<u32>,
}

/// One new child, as given to [`Expansion::set`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ChildInit {
    /// Initial value q0 (a PPM score, ±1 for an answer, 0 in terminal-guided search).
    pub value: f32,
    /// Prior (PUCT only).
    pub prior: f32,
    /// [`flags::TERMINAL`], [`flags::ANSWER`], [`flags::COUNT_INIT`].
    pub flags: u32,
}

impl Expansion {
    /// No children for any slot: `[B, K]` counts and `[B, K, A]` children, all zero.
    pub fn zeros(trees: usize, k: usize, max_children: usize) -> Expansion {
        Expansion {
            counts: vec![0; trees * k],
            values: vec![0.0; trees * k * max_children],
            priors: vec![0.0; trees * k * max_children],
            flags: vec![0; trees * k * max_children],
        }
    }

    /// Set the children of selection slot `i` (the flat index `tree * K + slot`, as in
    /// [`Selection::leaves`]); more than A (max_children) children is an error.
    pub fn set(&mut self, i: usize, children: &[ChildInit]) -> Result<(), ForestError> {
        let a = self
            .values
            .len()
            .checked_div(self.counts.len())
            .unwrap_or(0);
        if i >= self.counts.len() {
            return Err(ForestError::InvalidInput(format!(
                "slot index {i} is out of range: the expansion has {} slots",
                self.counts.len()
            )));
        }
        if children.len() > a {
            return Err(ForestError::InvalidInput(format!(
                "{} children for slot {i}: at most {a} (max_children)",
                children.len()
            )));
        }
        self.counts[i] = children.len() as u32;
        for (j, c) in children.iter().enumerate() {
            self.values[i * a + j] = c.value;
            self.priors[i * a + j] = c.prior;
            self.flags[i * a + j] = c.flags;
        }
        Ok(())
    }
}

/// Values to back up along the recorded paths.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backup {
    /// `[B, K]` value added to W of every node on the path (finite where `mask` is set).
    pub values: Vec<f32>,
    /// `[B, K]` 1 = add the value and one visit; 0 = only remove the virtual loss.
    pub mask: Vec<u8>,
}

impl Backup {
    /// Nothing to add for any of `slots` (= B·K) slots: only the virtual loss is removed.
    pub fn none(slots: usize) -> Backup {
        Backup {
            values: vec![0.0; slots],
            mask: vec![0; slots],
        }
    }

    /// Add `value` along the path of slot `i` (the flat index `tree * K + slot`).
    pub fn set(&mut self, i: usize, value: f32) {
        self.values[i] = value;
        self.mask[i] = 1;
    }
}

/// A host copy of the whole forest.
#[derive(Clone, Debug, PartialEq)]
pub struct ForestSnapshot {
    pub trees: usize,
    pub capacity: usize,
    /// `[B]` nodes in use per tree.
    pub n_nodes: Vec<u32>,
    /// `[B, N]`; only the first `n_nodes[b]` of tree b are meaningful.
    pub nodes: Vec<Node>,
}

impl ForestSnapshot {
    pub fn tree(&self, b: usize) -> &[Node] {
        &self.nodes[b * self.capacity..b * self.capacity + self.n_nodes[b] as usize]
    }
    pub fn node(&self, b: usize, id: NodeId) -> &Node {
        &self.tree(b)[id as usize]
    }
    /// Children ids of a node.
    pub fn children(&self, b: usize, id: NodeId) -> std::ops::Range<u32> {
        let n = self.node(b, id);
        if n.first_child == NONE {
            0..0
        } else {
            n.first_child..n.first_child + n.n_children()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Selected,
    Expanded,
}

/// The forest: validated, phase-ordered access to one backend.
pub struct Forest {
    backend: Box<dyn ForestBackend>,
    config: ForestConfig,
    phase: Phase,
    k: usize,
}

impl Forest {
    /// Create a forest on the given backend; every tree starts as a lone unvisited root with value 0.
    pub fn new(config: ForestConfig, kind: BackendKind) -> Result<Forest, ForestError> {
        config.validate()?;
        let backend = backend::create(kind, &config)?;
        let mut f = Forest {
            backend,
            config,
            phase: Phase::Idle,
            k: 0,
        };
        f.reset(&vec![0.0; f.config.trees], 0)?;
        Ok(f)
    }

    pub fn config(&self) -> &ForestConfig {
        &self.config
    }
    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }
    pub fn backend_description(&self) -> String {
        self.backend.description()
    }

    /// Reset every tree to a lone root with the given initial value `[B]` and visit count (0 or 1).
    pub fn reset(&mut self, root_values: &[f32], root_visits: u32) -> Result<(), ForestError> {
        check_len("root_values", root_values.len(), self.config.trees)?;
        check_finite("root_values", root_values)?;
        if root_visits > 1 {
            return Err(ForestError::InvalidInput(
                "root_visits must be 0 or 1".into(),
            ));
        }
        self.backend.reset(root_values, root_visits)?;
        self.phase = Phase::Idle;
        self.k = 0;
        Ok(())
    }

    /// Select up to `k` leaves per tree (one launch for the whole batch).
    pub fn select(&mut self, k: usize) -> Result<(), ForestError> {
        if self.phase != Phase::Idle {
            return Err(ForestError::PhaseOrder(
                "select called while the previous selection is not backed up; call backup first"
                    .into(),
            ));
        }
        if k == 0 || k > self.config.max_leaves {
            return Err(ForestError::InvalidInput(format!(
                "leaves per step K={k} must be in 1..={} (ForestConfig::max_leaves)",
                self.config.max_leaves
            )));
        }
        self.backend.select(k)?;
        self.phase = Phase::Selected;
        self.k = k;
        Ok(())
    }

    /// Read the last selection back to the host.
    pub fn selection(&mut self) -> Result<Selection, ForestError> {
        if self.phase == Phase::Idle {
            return Err(ForestError::PhaseOrder(
                "no selection to read: call select first".into(),
            ));
        }
        self.backend.selection(self.k)
    }

    /// Attach children to the selected leaves (host input).
    pub fn expand(&mut self, e: &Expansion) -> Result<(), ForestError> {
        self.expand_from(Input::Host(e))
    }

    /// Attach children from host input or from what the built-in evaluator staged on the device.
    pub fn expand_from(&mut self, input: Input<'_, Expansion>) -> Result<(), ForestError> {
        if self.phase != Phase::Selected {
            return Err(ForestError::PhaseOrder(
                "expand must follow select (once per selection)".into(),
            ));
        }
        if let Input::Host(e) = input {
            let (b, k, a) = (self.config.trees, self.k, self.config.max_children);
            check_len("expansion counts", e.counts.len(), b * k)?;
            check_len("expansion values", e.values.len(), b * k * a)?;
            check_len("expansion priors", e.priors.len(), b * k * a)?;
            check_len("expansion flags", e.flags.len(), b * k * a)?;
            if let Some(i) = e.counts.iter().position(|&c| c as usize > a) {
                return Err(ForestError::InvalidInput(format!(
                    "expansion count {} at tree {}, slot {} exceeds max_children {a}",
                    e.counts[i],
                    i / k,
                    i % k
                )));
            }
            check_finite("expansion values", &e.values)?;
            check_finite("expansion priors", &e.priors)?;
            if let Some(i) = e
                .flags
                .iter()
                .position(|&f| f & !flags::CHILD_INPUT_MASK != 0)
            {
                return Err(ForestError::InvalidInput(format!(
                    "expansion flags {:#x} at index {i}: only TERMINAL, ANSWER and COUNT_INIT may be set",
                    e.flags[i]
                )));
            }
        }
        // The phase advances even on a per-tree error: the failing trees were left unchanged and
        // their selections still need their backup to remove the virtual loss.
        self.phase = Phase::Expanded;
        self.backend.expand(input, self.k)
    }

    /// Back up values along the recorded paths and remove the virtual loss.
    pub fn backup(&mut self, b: &Backup) -> Result<(), ForestError> {
        self.backup_from(Input::Host(b))
    }

    pub fn backup_from(&mut self, input: Input<'_, Backup>) -> Result<(), ForestError> {
        if self.phase == Phase::Idle {
            return Err(ForestError::PhaseOrder("backup must follow select".into()));
        }
        if let Input::Host(bk) = input {
            let n = self.config.trees * self.k;
            check_len("backup values", bk.values.len(), n)?;
            check_len("backup mask", bk.mask.len(), n)?;
            if let Some(i) = (0..n).find(|&i| bk.mask[i] != 0 && !bk.values[i].is_finite()) {
                return Err(ForestError::InvalidInput(format!(
                    "backup value {} at tree {}, slot {} is not finite (NaN/inf scores cannot be backed up)",
                    bk.values[i],
                    i / self.k,
                    i % self.k
                )));
            }
        }
        self.backend.backup(input, self.k)?;
        self.phase = Phase::Idle;
        Ok(())
    }

    /// Keep node `new_roots[b]` of each tree as its new root (tree reuse), compacting the arena.
    /// [`NONE`] or 0 keeps a tree as it is.
    pub fn reroot(&mut self, new_roots: &[u32]) -> Result<(), ForestError> {
        if self.phase != Phase::Idle {
            return Err(ForestError::PhaseOrder(
                "reroot needs no selection in flight".into(),
            ));
        }
        check_len("new_roots", new_roots.len(), self.config.trees)?;
        self.backend.reroot(new_roots)
    }

    /// Copy the whole forest to the host.
    pub fn read_back(&mut self) -> Result<ForestSnapshot, ForestError> {
        self.backend.read_back()
    }

    /// Wait for queued device work and report any sticky per-tree error.
    pub fn sync(&mut self) -> Result<(), ForestError> {
        self.backend.sync()
    }

    /// Direct access for the built-in toy evaluator (bench).
    pub fn backend_mut(&mut self) -> &mut dyn ForestBackend {
        self.backend.as_mut()
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), ForestError> {
    if got != want {
        return Err(ForestError::InvalidInput(format!(
            "{what} has {got} elements, expected {want}"
        )));
    }
    Ok(())
}

fn check_finite(what: &str, v: &[f32]) -> Result<(), ForestError> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(ForestError::InvalidInput(format!(
            "{what}[{i}] = {} is not finite (NaN or inf)",
            v[i]
        )));
    }
    Ok(())
}
