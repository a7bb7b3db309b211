#![allow(clippy::needless_range_loop)] // index-parallel arrays read clearer with an index
//! A deliberately plain, sequential model of the forest rules, written straight from the
//! specification (`src/forest/mod.rs`, `rules.rs`): one tree at a time, no SIMD, no fusion, no
//! prefetching. The optimised CPU backend is checked against it, and the device backends against
//! the CPU backend.

use rstar_gpu::forest::rules::{select_child, Choice};
use rstar_gpu::forest::{
    flags, status, status_error, Backup, Expansion, ForestConfig, ForestError, ForestSnapshot,
    Node, Selection, NONE,
};

pub struct Model {
    pub cfg: ForestConfig,
    /// One Vec per tree, length = nodes in use.
    pub trees: Vec<Vec<Node>>,
    /// Last selection per tree: (leaf, path) per slot.
    pub sel: Vec<Vec<(u32, Vec<u32>)>>,
    pub k: usize,
}

impl Model {
    pub fn new(cfg: &ForestConfig) -> Model {
        let mut m = Model {
            cfg: cfg.clone(),
            trees: vec![],
            sel: vec![],
            k: 0,
        };
        m.reset(&vec![0.0; cfg.trees], 0);
        m
    }

    pub fn reset(&mut self, root_values: &[f32], root_visits: u32) {
        self.trees = root_values
            .iter()
            .map(|&v| vec![Node::root(v, root_visits)])
            .collect();
        self.sel = vec![vec![]; self.cfg.trees];
    }

    fn descend(&self, tree: &mut [Node]) -> (u32, Vec<u32>) {
        'restart: loop {
            if tree[0].is(flags::TERMINAL) {
                return (NONE, vec![]);
            }
            let mut node = 0u32;
            let mut path = vec![0u32];
            loop {
                let x = tree[node as usize];
                if !x.is(flags::EXPANDED) || x.depth() as usize >= self.cfg.max_depth {
                    break;
                }
                let kids = &tree[x.first_child as usize..(x.first_child + x.n_children()) as usize];
                match select_child(
                    self.cfg.rule,
                    x.visits + x.vloss,
                    kids,
                    self.cfg.virtual_loss,
                ) {
                    Choice::Child(j) => {
                        node = x.first_child + j;
                        path.push(node);
                    }
                    Choice::AllTerminal => {
                        tree[node as usize].meta |= flags::TERMINAL;
                        continue 'restart;
                    }
                    Choice::Blocked => return (NONE, vec![]),
                }
            }
            if tree[node as usize].is(flags::PENDING) {
                return (NONE, vec![]);
            }
            return (node, path);
        }
    }

    pub fn select(&mut self, k: usize) {
        self.k = k;
        for b in 0..self.cfg.trees {
            let mut tree = std::mem::take(&mut self.trees[b]);
            let mut slots = vec![];
            for _ in 0..k {
                let (leaf, path) = self.descend(&mut tree);
                if leaf != NONE {
                    for &id in &path {
                        tree[id as usize].vloss += 1;
                    }
                    tree[leaf as usize].meta |= flags::PENDING;
                }
                slots.push((leaf, path));
            }
            self.trees[b] = tree;
            self.sel[b] = slots;
        }
    }

    pub fn selection(&self) -> Selection {
        let st = self.cfg.max_depth + 1;
        let mut s = Selection {
            trees: self.cfg.trees,
            k: self.k,
            path_stride: st,
            leaves: vec![],
            path_len: vec![],
            paths: vec![],
        };
        for b in 0..self.cfg.trees {
            for (leaf, path) in &self.sel[b] {
                s.leaves.push(*leaf);
                s.path_len.push(path.len() as u32);
                let mut p = path.clone();
                p.resize(st, NONE);
                s.paths.extend(p);
            }
        }
        s
    }

    pub fn expand(&mut self, e: &Expansion) -> Result<(), ForestError> {
        let (k, a) = (self.k, self.cfg.max_children);
        let mut st = vec![status::OK; self.cfg.trees];
        for b in 0..self.cfg.trees {
            let tree = &mut self.trees[b];
            let mut need = 0usize;
            let mut bad = false;
            for (slot, (leaf, _)) in self.sel[b].iter().enumerate() {
                let c = e.counts[b * k + slot] as usize;
                if c > 0 && (*leaf == NONE || tree[*leaf as usize].is(flags::EXPANDED)) {
                    bad = true;
                }
                need += c;
            }
            if bad {
                st[b] = status::INVALID_EXPAND;
                continue;
            }
            if tree.len() + need > self.cfg.capacity {
                st[b] = status::CAPACITY;
                continue;
            }
            for (slot, (leaf, _)) in self.sel[b].iter().enumerate() {
                if *leaf == NONE || tree[*leaf as usize].is(flags::EXPANDED) {
                    continue;
                }
                let c = e.counts[b * k + slot];
                let first = tree.len() as u32;
                let l = tree[*leaf as usize];
                let depth = l.depth() + 1;
                tree[*leaf as usize].first_child = first;
                tree[*leaf as usize].meta =
                    Node::pack_meta(l.flags() | flags::EXPANDED, c, l.depth());
                for j in 0..c as usize {
                    let i = (b * k + slot) * a + j;
                    let counted = e.flags[i] & flags::COUNT_INIT != 0;
                    tree.push(Node {
                        visits: counted as u32,
                        vloss: 0,
                        value_sum: if counted { e.values[i] } else { 0.0 },
                        init_value: e.values[i],
                        prior: e.priors[i],
                        first_child: NONE,
                        parent: *leaf,
                        meta: Node::pack_meta(e.flags[i] & flags::CHILD_STORED_MASK, 0, depth),
                    });
                }
            }
        }
        status_error(&st, self.cfg.capacity)
    }

    pub fn backup(&mut self, bk: &Backup) {
        let k = self.k;
        for b in 0..self.cfg.trees {
            for (slot, (leaf, path)) in self.sel[b].iter().enumerate() {
                if *leaf == NONE {
                    continue;
                }
                for &id in path {
                    let n = &mut self.trees[b][id as usize];
                    n.vloss -= 1;
                    if bk.mask[b * k + slot] != 0 {
                        n.visits += 1;
                        n.value_sum += bk.values[b * k + slot];
                    }
                }
                self.trees[b][*leaf as usize].meta &= !flags::PENDING;
            }
        }
    }

    pub fn reroot(&mut self, roots: &[u32]) -> Result<(), ForestError> {
        let mut st = vec![status::OK; self.cfg.trees];
        for b in 0..self.cfg.trees {
            let r = roots[b];
            if r == 0 || r == NONE {
                continue;
            }
            let old = &self.trees[b];
            if r as usize >= old.len() {
                st[b] = status::INVALID_REROOT;
                continue;
            }
            // Breadth-first renumbering: new id = position in BFS order from r; a node's children
            // block starts where the order stood when the node was reached (also for an expanded
            // node with no children).
            let d0 = old[r as usize].depth();
            let mut order = vec![r];
            let mut new_first = vec![];
            let mut i = 0;
            while i < order.len() {
                let x = old[order[i] as usize];
                if x.first_child != NONE {
                    new_first.push(order.len() as u32);
                    for j in 0..x.n_children() {
                        order.push(x.first_child + j);
                    }
                } else {
                    new_first.push(NONE);
                }
                i += 1;
            }
            let mut new_id = vec![NONE; old.len()];
            for (ni, &oi) in order.iter().enumerate() {
                new_id[oi as usize] = ni as u32;
            }
            let mut new = vec![];
            for (ni, &oi) in order.iter().enumerate() {
                let mut x = old[oi as usize];
                x.parent = if oi == r {
                    NONE
                } else {
                    new_id[x.parent as usize]
                };
                x.first_child = new_first[ni];
                x.meta = Node::pack_meta(x.flags(), x.n_children(), x.depth() - d0);
                new.push(x);
            }
            self.trees[b] = new;
        }
        status_error(&st, self.cfg.capacity)
    }

    pub fn snapshot(&self) -> ForestSnapshot {
        let n = self.cfg.capacity;
        let mut nodes = vec![Node::default(); self.cfg.trees * n];
        for (b, t) in self.trees.iter().enumerate() {
            nodes[b * n..b * n + t.len()].copy_from_slice(t);
        }
        ForestSnapshot {
            trees: self.cfg.trees,
            capacity: n,
            n_nodes: self.trees.iter().map(|t| t.len() as u32).collect(),
            nodes,
        }
    }
}
