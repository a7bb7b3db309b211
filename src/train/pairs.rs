//! Preference pairs for the process preference model (PPM), from one finished search tree.
//!
//! The rules follow rStar-Math (paper §3.3 and the official `extra_rm_file.py` /
//! `sample_rm_data.py`):
//!
//! - **Step pairs** share a prefix. For every node P (root included) whose subtree holds both a
//!   correct and a wrong answer leaf, P's children that lead to a correct answer are positives
//!   (highest Q first) and those that lead to a wrong answer are negatives (lowest Q first),
//!   [`PairConfig::per_side`] of each — or twice that many on one side when the other side has a
//!   single candidate. Every (positive, negative) combination of distinct nodes with
//!   `q_pos − q_neg > 0` is a candidate pair, then the margin, edit-distance and greedy-path
//!   filters of [`PairConfig`] apply.
//! - **Final pairs** relax the shared prefix: whole root→answer trajectories, the correct ones
//!   with the highest average Q against the wrong ones with the lowest, prompt = the question.
//!   Only the edit-distance filter applies to them (the margin and greedy-path checks are
//!   defined on sibling steps and have no counterpart between whole trajectories).
//!
//! An *answer leaf* is a node with [`Terminal::Answer`]; it is correct/wrong by its `correct`
//! flag. Code-error, invalid and max-depth leaves are neither: a step that only failed to run is
//! not evidence of a wrong line of reasoning.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::sft::path_q;
use crate::search::{SearchTree, Terminal, TreeNode};

/// The pair selection settings; `Default` is the official code's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairConfig {
    /// Positives and negatives taken per node (the paper's 2); for final pairs, trajectories per
    /// side.
    pub per_side: usize,
    /// Step pairs with `q_pos − q_neg` below this are dropped (official: 0.5). With 0.0 every
    /// pair with a positive margin is kept.
    pub min_margin: f32,
    /// Pairs whose two texts are closer than this (Levenshtein distance in chars) are dropped
    /// (official: 20): near-identical steps teach the PPM nothing but noise. 0 keeps all.
    pub min_edit_distance: usize,
    /// Keep a step pair only when the positive's greedy continuation (from the child, follow the
    /// highest-Q child down to a leaf) has a higher average Q than the negative's: the official
    /// code's guard against a positive that is good only by luck of one rollout.
    pub greedy_path_check: bool,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            per_side: 2,
            min_margin: 0.5,
            min_edit_distance: 20,
            greedy_path_check: true,
        }
    }
}

/// Which rule made a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairKind {
    /// Two sibling steps after the same prefix.
    Step,
    /// Two whole solutions of the same question.
    Final,
}

/// One preference pair: `chosen` is better than `rejected` after the same `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    /// The tree's (problem's) id.
    pub problem: String,
    pub question: String,
    /// The rendered solution before the step ([`SearchTree::solution`] of the parent); empty for
    /// steps after the root and for final pairs.
    pub prefix: String,
    /// The rendered text of the chosen step as the policy saw it (stop string, delimiter and any
    /// output included); for final pairs the whole solution.
    pub chosen: String,
    /// As `chosen`, for the rejected step or solution.
    pub rejected: String,
    /// Q of the chosen node; for final pairs the average Q of its trajectory.
    pub q_chosen: f32,
    /// Q of the rejected node; for final pairs the average Q of its trajectory.
    pub q_rejected: f32,
    pub kind: PairKind,
    /// Depth of the two steps (1 = first step); 0 for final pairs.
    pub depth: u32,
    /// How many positives were selected at this node (before the filters), for the loss weight
    /// `1 / (pos_count · neg_count)`.
    pub pos_count: usize,
    /// How many negatives were selected at this node (before the filters).
    pub neg_count: usize,
    /// Node id of the chosen step (for final pairs: its answer leaf).
    pub chosen_node: u32,
    /// Node id of the rejected step (for final pairs: its answer leaf).
    pub rejected_node: u32,
}

/// All pairs of one tree: step pairs node by node in BFS order (children in id order), then the
/// final pairs. A tree without a reference answer, or without both a correct and a wrong answer,
/// gives none.
pub fn pairs(tree: &SearchTree, cfg: &PairConfig) -> Vec<Pair> {
    let mut out = step_pairs(tree, cfg);
    out.extend(final_pairs(tree, cfg));
    out
}

/// The step pairs of one tree (see the module docs), in BFS order of the parent node, then
/// positive by positive, negative by negative.
pub fn step_pairs(tree: &SearchTree, cfg: &PairConfig) -> Vec<Pair> {
    if tree.reference.is_none() {
        return Vec::new();
    }
    let out = Outcomes::of(tree);
    out.order
        .iter()
        .filter(|&&id| out.correct(id) && out.wrong(id))
        .flat_map(|&id| node_pairs(tree, &out, id, cfg))
        .collect()
}

/// The final-answer pairs of one tree: the top [`PairConfig::per_side`] correct trajectories by
/// average Q (root excluded) against the bottom `per_side` wrong ones, every combination that
/// passes the edit-distance filter.
pub fn final_pairs(tree: &SearchTree, cfg: &PairConfig) -> Vec<Pair> {
    if tree.reference.is_none() {
        return Vec::new();
    }
    let mut pos = trajectories(tree, true);
    let mut neg = trajectories(tree, false);
    pos.sort_by(|a, b| cmp_q(b.1, a.1).then(a.0.cmp(&b.0)));
    neg.sort_by(|a, b| cmp_q(a.1, b.1).then(a.0.cmp(&b.0)));
    pos.truncate(cfg.per_side);
    neg.truncate(cfg.per_side);
    let text = |id: u32| tree.solution(id);
    let neg_texts: Vec<String> = neg.iter().map(|&(id, _)| text(id)).collect();
    let mut out = Vec::new();
    for &(p, qp) in &pos {
        let chosen = text(p);
        for (&(n, qn), rejected) in neg.iter().zip(&neg_texts) {
            if !far_enough(&chosen, rejected, cfg.min_edit_distance) {
                continue;
            }
            out.push(Pair {
                problem: tree.id.clone(),
                question: tree.question.clone(),
                prefix: String::new(),
                chosen: chosen.clone(),
                rejected: rejected.clone(),
                q_chosen: qp,
                q_rejected: qn,
                kind: PairKind::Final,
                depth: 0,
                pos_count: pos.len(),
                neg_count: neg.len(),
                chosen_node: p,
                rejected_node: n,
            });
        }
    }
    out
}

/// Levenshtein distance between `a` and `b` in chars (insert, delete, substitute all cost 1),
/// two rows of O(|b|) memory.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Which graded answers each node's subtree holds, and the BFS order they were found in.
struct Outcomes {
    /// Node ids reachable from the root, BFS, children in id order (each once, so a malformed
    /// tree with a cycle cannot loop).
    order: Vec<u32>,
    has_correct: Vec<bool>,
    has_wrong: Vec<bool>,
}

impl Outcomes {
    fn of(tree: &SearchTree) -> Outcomes {
        let order = bfs(tree);
        let n = tree.nodes.len();
        let (mut has_correct, mut has_wrong) = (vec![false; n], vec![false; n]);
        // Reverse BFS order visits every child before its parent.
        for &id in order.iter().rev() {
            let node = &tree.nodes[id as usize];
            let answer = node.terminal == Some(Terminal::Answer);
            let mut c = answer && node.correct == Some(true);
            let mut w = answer && node.correct == Some(false);
            for &k in &node.children {
                c |= has_correct.get(k as usize).copied().unwrap_or(false);
                w |= has_wrong.get(k as usize).copied().unwrap_or(false);
            }
            has_correct[id as usize] = c;
            has_wrong[id as usize] = w;
        }
        Outcomes {
            order,
            has_correct,
            has_wrong,
        }
    }

    /// The node's subtree holds a correct answer leaf.
    fn correct(&self, id: u32) -> bool {
        self.has_correct.get(id as usize).copied().unwrap_or(false)
    }

    /// The node's subtree holds a wrong answer leaf.
    fn wrong(&self, id: u32) -> bool {
        self.has_wrong.get(id as usize).copied().unwrap_or(false)
    }
}

/// Node indices reachable from the root, breadth first, children in ascending id order.
fn bfs(tree: &SearchTree) -> Vec<u32> {
    let n = tree.nodes.len();
    if n == 0 {
        return Vec::new();
    }
    let mut seen = vec![false; n];
    seen[0] = true;
    let mut order = vec![0u32];
    let mut next = 0;
    while let Some(&id) = order.get(next) {
        next += 1;
        let mut kids: Vec<u32> = tree.nodes[id as usize].children.clone();
        kids.sort_unstable();
        for k in kids {
            if seen.get(k as usize) == Some(&false) {
                seen[k as usize] = true;
                order.push(k);
            }
        }
    }
    order
}

/// The existing children of `id` whose Q is finite (a non-finite Q cannot be ranked).
fn children(tree: &SearchTree, id: u32) -> impl Iterator<Item = &TreeNode> {
    let kids = tree.nodes.get(id as usize).map(|n| n.children.as_slice());
    kids.unwrap_or_default()
        .iter()
        .filter_map(|&k| tree.nodes.get(k as usize))
        .filter(|n| n.q.is_finite())
}

/// Orders finite Q values (±0 equal, so ties fall through to the id).
fn cmp_q(a: f32, b: f32) -> Ordering {
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

/// The positives and negatives selected among `parent`'s children (see the module docs).
fn candidates<'t>(
    tree: &'t SearchTree,
    out: &Outcomes,
    parent: u32,
    per_side: usize,
) -> (Vec<&'t TreeNode>, Vec<&'t TreeNode>) {
    let mut pos: Vec<&TreeNode> = children(tree, parent)
        .filter(|n| out.correct(n.id))
        .collect();
    let mut neg: Vec<&TreeNode> = children(tree, parent).filter(|n| out.wrong(n.id)).collect();
    pos.sort_by(|a, b| cmp_q(b.q, a.q).then(a.id.cmp(&b.id)));
    neg.sort_by(|a, b| cmp_q(a.q, b.q).then(a.id.cmp(&b.id)));
    // The official rule: a lone candidate on one side is paired with more of the other side.
    let wide = per_side.saturating_mul(2);
    let pos_take = if neg.len() == 1 { wide } else { per_side };
    let neg_take = if pos.len() == 1 { wide } else { per_side };
    pos.truncate(pos_take);
    neg.truncate(neg_take);
    (pos, neg)
}

/// The filtered step pairs among `parent`'s children.
fn node_pairs(tree: &SearchTree, out: &Outcomes, parent: u32, cfg: &PairConfig) -> Vec<Pair> {
    let (pos, neg) = candidates(tree, out, parent, cfg.per_side);
    let prefix = tree.solution(parent);
    let mut texts: HashMap<u32, String> = HashMap::new();
    for n in pos.iter().chain(&neg) {
        texts
            .entry(n.id)
            .or_insert_with(|| step_text(tree, &prefix, n.id));
    }
    let mut pairs = Vec::new();
    for p in &pos {
        for n in &neg {
            let margin = p.q - n.q;
            if p.id == n.id || margin <= 0.0 || margin < cfg.min_margin {
                continue;
            }
            let (chosen, rejected) = (&texts[&p.id], &texts[&n.id]);
            if !far_enough(chosen, rejected, cfg.min_edit_distance) {
                continue;
            }
            if cfg.greedy_path_check && greedy_q(tree, p) <= greedy_q(tree, n) {
                continue;
            }
            pairs.push(Pair {
                problem: tree.id.clone(),
                question: tree.question.clone(),
                prefix: prefix.clone(),
                chosen: chosen.clone(),
                rejected: rejected.clone(),
                q_chosen: p.q,
                q_rejected: n.q,
                kind: PairKind::Step,
                depth: p.depth,
                pos_count: pos.len(),
                neg_count: neg.len(),
                chosen_node: p.id,
                rejected_node: n.id,
            });
        }
    }
    pairs
}

/// The rendered text of step `id` alone: its solution minus the parent's (`prefix`).
fn step_text(tree: &SearchTree, prefix: &str, id: u32) -> String {
    let full = tree.solution(id);
    match full.strip_prefix(prefix) {
        Some(step) => step.to_string(),
        None => full,
    }
}

/// Whether two texts pass the edit-distance filter (skipping the O(n·m) work when it is off).
fn far_enough(a: &str, b: &str, min: usize) -> bool {
    min == 0 || levenshtein(a, b) >= min
}

/// The average Q of the greedy walk from `start`: `start`, then repeatedly its child with the
/// highest Q (lowest id on ties, non-finite skipped) until a node without one.
fn greedy_q(tree: &SearchTree, start: &TreeNode) -> f32 {
    let (mut sum, mut count) = (f64::from(start.q), 1u32);
    let mut cur = start;
    // At most one step per node: a malformed cyclic tree cannot loop forever.
    for _ in 0..tree.nodes.len() {
        let best = children(tree, cur.id).max_by(|a, b| cmp_q(a.q, b.q).then(b.id.cmp(&a.id)));
        let Some(next) = best else { break };
        sum += f64::from(next.q);
        count += 1;
        cur = next;
    }
    (sum / f64::from(count)) as f32
}

/// `(answer leaf, average Q of its trajectory)` for every correct (`want`) or wrong answer leaf
/// whose trajectory has finite Q values.
fn trajectories(tree: &SearchTree, want: bool) -> Vec<(u32, f32)> {
    tree.nodes
        .iter()
        .filter(|n| n.terminal == Some(Terminal::Answer) && n.correct == Some(want))
        .filter_map(|n| path_q(tree, n.id).map(|s| (n.id, s.avg)))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::search::Mode;

    pub(crate) const A: Option<Terminal> = Some(Terminal::Answer);
    pub(crate) const E: Option<Terminal> = Some(Terminal::CodeError);
    pub(crate) const I: Option<Terminal> = Some(Terminal::Invalid);
    pub(crate) const S: Option<Terminal> = None;
    pub(crate) const OK: Option<bool> = Some(true);
    pub(crate) const BAD: Option<bool> = Some(false);

    /// One node of a hand-built tree: `(parent, q, terminal, correct, text)`.
    pub(crate) type Row<'a> = (u32, f32, Option<Terminal>, Option<bool>, &'a str);

    /// A tree from [`Row`]s: row `i` is node `i`, row 0 the root (its parent and text ignored);
    /// children lists follow the parents. Graded answer leaves get the answer "7" or "12".
    pub(crate) fn tree(nodes: &[Row]) -> SearchTree {
        let mut out: Vec<TreeNode> = Vec::new();
        for (i, (parent, q, terminal, correct, text)) in nodes.iter().enumerate() {
            let parent = (i > 0).then_some(*parent);
            let depth = parent.map_or(0, |p| out[p as usize].depth + 1);
            out.push(TreeNode {
                id: i as u32,
                parent,
                depth,
                text: if i == 0 {
                    String::new()
                } else {
                    text.to_string()
                },
                output: None,
                error: None,
                visits: 1,
                q: *q,
                init_value: 0.0,
                terminal: *terminal,
                answer: correct.map(|c| if c { "7" } else { "12" }.to_string()),
                correct: *correct,
                tokens: 10,
                children: Vec::new(),
            });
            if let Some(p) = parent {
                out[p as usize].children.push(i as u32);
            }
        }
        SearchTree {
            id: "p1".into(),
            question: "What is 3 + 4?".into(),
            reference: Some("7".into()),
            mode: Mode::TerminalGuided,
            rollouts: 8,
            expansions: 8,
            policy_tokens: 100,
            nodes: out,
        }
    }

    /// A code step in the rStar format; `idea` makes siblings differ by far more than 20 chars.
    pub(crate) fn step(k: u32, idea: &str) -> String {
        let open = if k == 1 { "<code>" } else { "" };
        format!("{open}\n# Step {k}: {idea}\nv{k} = compute_{k}()\n<end_of_step>")
    }

    /// An answer step with `why` in its sentence.
    pub(crate) fn answer(why: &str, value: &str) -> String {
        format!("<answer>{why}, so the answer is \\boxed{{{value}}}.\n<end_of_answer>")
    }

    /// Step ideas, pairwise at least 23 chars apart.
    pub(crate) const IDEAS: [&str; 8] = [
        "Add the two numbers from the question",
        "Multiply both numbers together first",
        "Subtract the smaller value from the larger",
        "Divide the total into equal groups of four",
        "Square the first number and then halve it",
        "Count upward from three by ones, four times",
        "Set up an equation with sympy and solve it",
        "Convert everything to fractions before adding",
    ];

    /// A correct answer step.
    pub(crate) fn right() -> String {
        answer("Adding three and four gives seven", "7")
    }

    /// A wrong answer step, 28 chars from [`right`].
    pub(crate) fn wrong() -> String {
        answer("Multiplying instead of adding gives twelve", "12")
    }

    fn ids(pairs: &[Pair]) -> Vec<(u32, u32)> {
        pairs
            .iter()
            .map(|p| (p.chosen_node, p.rejected_node))
            .collect()
    }

    fn qs(pairs: &[Pair]) -> Vec<(f32, f32)> {
        pairs.iter().map(|p| (p.q_chosen, p.q_rejected)).collect()
    }

    /// Root with 5 code steps (1..=5), each ending in one answer leaf (6..=10).
    fn two_correct_three_wrong() -> SearchTree {
        let s: Vec<String> = (0..5).map(|i| step(1, IDEAS[i])).collect();
        let (ok, bad) = (right(), wrong());
        tree(&[
            (0, 0.0, S, None, ""),
            (0, 0.5, S, None, &s[0]),
            (0, 0.25, S, None, &s[1]),
            (0, -0.5, S, None, &s[2]),
            (0, -0.75, S, None, &s[3]),
            (0, 0.0, S, None, &s[4]),
            (1, 1.0, A, OK, &ok),
            (2, 1.0, A, OK, &ok),
            (3, -1.0, A, BAD, &bad),
            (4, -1.0, A, BAD, &bad),
            (5, -1.0, A, BAD, &bad),
        ])
    }

    #[test]
    fn two_positives_three_negatives_give_four_pairs() {
        let t = two_correct_three_wrong();
        let p = step_pairs(&t, &PairConfig::default());
        // Positives by Q desc: 1 (0.5), 2 (0.25); negatives by Q asc: 4 (-0.75), 3 (-0.5); 5 (0.0)
        // is the third negative and not taken.
        assert_eq!(ids(&p), vec![(1, 4), (1, 3), (2, 4), (2, 3)]);
        assert_eq!(
            qs(&p),
            vec![(0.5, -0.75), (0.5, -0.5), (0.25, -0.75), (0.25, -0.5)]
        );
        for pair in &p {
            assert_eq!((pair.pos_count, pair.neg_count), (2, 2));
            assert_eq!((pair.kind, pair.depth), (PairKind::Step, 1));
            assert_eq!((pair.problem.as_str(), pair.prefix.as_str()), ("p1", ""));
            assert_eq!(pair.question, "What is 3 + 4?");
        }
        // The step as rendered: its raw text and the step delimiter.
        assert_eq!(p[0].chosen, format!("{}\n", step(1, IDEAS[0])));
        assert_eq!(p[0].rejected, format!("{}\n", step(1, IDEAS[3])));
        // `pairs` = the step pairs, then the final pairs.
        let all = pairs(&t, &PairConfig::default());
        assert_eq!(&all[..4], &p[..]);
        assert!(all[4..].iter().all(|p| p.kind == PairKind::Final));
    }

    #[test]
    fn a_lone_positive_takes_up_to_four_negatives() {
        let a: Vec<String> = (0..6).map(|i| answer(IDEAS[i], "x")).collect();
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 0.5, A, OK, &a[0]),
            (0, -1.0, A, BAD, &a[1]),
            (0, -0.75, A, BAD, &a[2]),
            (0, -0.5, A, BAD, &a[3]),
            (0, -0.25, A, BAD, &a[4]),
            (0, 0.25, A, BAD, &a[5]),
        ]);
        let p = step_pairs(&t, &PairConfig::default());
        assert_eq!(ids(&p), vec![(1, 2), (1, 3), (1, 4), (1, 5)]);
        assert!(p.iter().all(|p| (p.pos_count, p.neg_count) == (1, 4)));
        // And the mirror: one negative, five positives -> the four best positives.
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, -1.0, A, BAD, &a[0]),
            (0, 1.0, A, OK, &a[1]),
            (0, 0.75, A, OK, &a[2]),
            (0, 0.5, A, OK, &a[3]),
            (0, 0.25, A, OK, &a[4]),
            (0, -0.25, A, OK, &a[5]),
        ]);
        let p = step_pairs(&t, &PairConfig::default());
        assert_eq!(ids(&p), vec![(2, 1), (3, 1), (4, 1), (5, 1)]);
        assert!(p.iter().all(|p| (p.pos_count, p.neg_count) == (4, 1)));
    }

    #[test]
    fn margin_filter_drops_close_pairs() {
        let a: Vec<String> = (0..3).map(|i| answer(IDEAS[i], "x")).collect();
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 0.25, A, OK, &a[0]),
            (0, -0.5, A, BAD, &a[1]),
            (0, -0.125, A, BAD, &a[2]),
        ]);
        // (1, 3) has margin 0.375 < 0.5.
        assert_eq!(ids(&step_pairs(&t, &PairConfig::default())), vec![(1, 2)]);
        let cfg = PairConfig {
            min_margin: 0.0,
            ..PairConfig::default()
        };
        assert_eq!(ids(&step_pairs(&t, &cfg)), vec![(1, 2), (1, 3)]);
        // A non-positive margin is never a pair, whatever the threshold.
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, -0.25, A, OK, &a[0]),
            (0, 0.0, A, BAD, &a[1]),
        ]);
        let cfg = PairConfig {
            min_margin: -1.0,
            ..PairConfig::default()
        };
        assert!(step_pairs(&t, &cfg).is_empty());
    }

    #[test]
    fn edit_distance_filter_drops_near_identical_steps() {
        let close_ok = answer("Adding three and four gives seven", "7");
        let close_bad = answer("Adding three and four gives seven", "12");
        let far_bad = answer("Multiplying instead of adding gives twelve", "12");
        assert_eq!(levenshtein(&close_ok, &close_bad), 2);
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 1.0, A, OK, close_ok.as_str()),
            (0, -1.0, A, BAD, close_bad.as_str()),
            (0, -0.5, A, BAD, far_bad.as_str()),
        ]);
        assert_eq!(ids(&step_pairs(&t, &PairConfig::default())), vec![(1, 3)]);
        // The final pairs (whole solutions = the single answer steps) are filtered too.
        assert_eq!(ids(&final_pairs(&t, &PairConfig::default())), vec![(1, 3)]);
        let cfg = PairConfig {
            min_edit_distance: 0,
            ..PairConfig::default()
        };
        assert_eq!(ids(&step_pairs(&t, &cfg)), vec![(1, 2), (1, 3)]);
        assert_eq!(ids(&final_pairs(&t, &cfg)), vec![(1, 2), (1, 3)]);
    }

    #[test]
    fn levenshtein_counts_chars() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("héllo", "hello"), 1);
        assert_eq!(levenshtein("√2 ≈ 1.41", "√2 ≈ 1.41"), 0);
    }

    #[test]
    fn greedy_path_check_drops_a_lucky_positive() {
        let s: Vec<String> = (0..3).map(|i| step(1, IDEAS[i])).collect();
        let (ok, bad) = (right(), wrong());
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 0.5, S, None, &s[0]), // 1: walk 1 -> 3: (0.5 - 0.5) / 2 = 0
            (0, -0.25, S, None, &s[1]), // 2: walk 2 -> 4: (-0.25 + 0.75) / 2 = 0.25
            (1, -0.5, A, OK, &ok),    // 3
            (2, 0.75, A, BAD, &bad),  // 4
            (0, -1.0, A, BAD, &bad),  // 5: walk -1
            (1, -0.75, I, None, &s[2]), // 6: lower than 3, not on 1's walk
        ]);
        let off = PairConfig {
            greedy_path_check: false,
            ..PairConfig::default()
        };
        assert_eq!(ids(&step_pairs(&t, &off)), vec![(1, 5), (1, 2)]);
        assert_eq!(greedy_q(&t, &t.nodes[1]), 0.0);
        assert_eq!(greedy_q(&t, &t.nodes[2]), 0.25);
        assert_eq!(ids(&step_pairs(&t, &PairConfig::default())), vec![(1, 5)]);
    }

    #[test]
    fn a_child_on_both_sides_is_never_paired_with_itself() {
        let s: Vec<String> = (0..2).map(|i| step(1, IDEAS[i])).collect();
        let (ok, bad) = (right(), wrong());
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 0.5, S, None, &s[0]),  // 1: leads to both
            (0, -0.5, S, None, &s[1]), // 2: leads to wrong only
            (1, 1.0, A, OK, &ok),      // 3
            (1, -1.0, A, BAD, &bad),   // 4
            (2, -1.0, A, BAD, &bad),   // 5
        ]);
        let cfg = PairConfig {
            min_margin: 0.0,
            ..PairConfig::default()
        };
        let p = step_pairs(&t, &cfg);
        // Root: positives [1], negatives [2, 1] (1 is on both sides); then node 1: 3 vs 4.
        assert_eq!(ids(&p), vec![(1, 2), (3, 4)]);
        assert_eq!((p[0].pos_count, p[0].neg_count, p[0].depth), (1, 2, 1));
        assert_eq!((p[1].pos_count, p[1].neg_count, p[1].depth), (1, 1, 2));
        assert_eq!(p[1].prefix, t.solution(1));
        assert_eq!(p[1].chosen, ok);
        assert_eq!(p[1].rejected, bad);
    }

    #[test]
    fn code_error_leaves_are_not_wrong() {
        let a: Vec<String> = (0..3).map(|i| answer(IDEAS[i], "x")).collect();
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 1.0, A, OK, &a[0]),
            (0, -1.0, E, None, &a[1]), // lowest Q, but a code error: not a negative
            (0, -0.5, A, BAD, &a[2]),
        ]);
        let p = step_pairs(&t, &PairConfig::default());
        assert_eq!(ids(&p), vec![(1, 3)]);
        assert_eq!((p[0].pos_count, p[0].neg_count), (1, 1));
        // Without a wrong answer the code error alone gives no pairs at all.
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 1.0, A, OK, &a[0]),
            (0, -1.0, E, None, &a[1]),
        ]);
        assert!(pairs(&t, &PairConfig::default()).is_empty());
    }

    #[test]
    fn final_pairs_best_correct_against_worst_wrong() {
        let s: Vec<String> = (0..3).map(|i| step(1, IDEAS[i])).collect();
        let a: Vec<String> = (0..7).map(|i| answer(IDEAS[i], "x")).collect();
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 0.5, S, None, &s[0]),  // 1
            (1, 1.0, A, OK, &a[0]),    // 2: avg 0.75
            (1, -1.0, A, BAD, &a[1]),  // 3: avg -0.25
            (0, 0.0, S, None, &s[1]),  // 4
            (4, 1.0, A, OK, &a[2]),    // 5: avg 0.5
            (4, 0.5, A, OK, &a[3]),    // 6: avg 0.25
            (4, -1.0, A, BAD, &a[4]),  // 7: avg -0.5
            (0, -0.5, S, None, &s[2]), // 8
            (8, -1.0, A, BAD, &a[5]),  // 9: avg -0.75
            (8, -1.0, E, None, &a[6]), // 10: code error, not a trajectory
        ]);
        let p = final_pairs(&t, &PairConfig::default());
        assert_eq!(ids(&p), vec![(2, 9), (2, 7), (5, 9), (5, 7)]);
        assert_eq!(
            qs(&p),
            vec![(0.75, -0.75), (0.75, -0.5), (0.5, -0.75), (0.5, -0.5)]
        );
        for pair in &p {
            assert_eq!(
                (pair.kind, pair.depth, pair.prefix.as_str()),
                (PairKind::Final, 0, "")
            );
            assert_eq!((pair.pos_count, pair.neg_count), (2, 2));
            assert_eq!(pair.chosen, t.solution(pair.chosen_node));
            assert_eq!(pair.rejected, t.solution(pair.rejected_node));
        }
        assert_eq!(p[0].chosen, format!("{}\n{}", s[0], a[0]));
    }

    #[test]
    fn ungraded_trees_give_no_pairs() {
        let mut t = two_correct_three_wrong();
        t.reference = None;
        assert!(pairs(&t, &PairConfig::default()).is_empty());
        let mut t = two_correct_three_wrong();
        for n in &mut t.nodes {
            n.correct = None;
        }
        assert!(pairs(&t, &PairConfig::default()).is_empty());
        let empty = SearchTree {
            nodes: Vec::new(),
            ..two_correct_three_wrong()
        };
        assert!(pairs(&empty, &PairConfig::default()).is_empty());
    }

    #[test]
    fn nan_q_nodes_are_skipped() {
        let a: Vec<String> = (0..4).map(|i| answer(IDEAS[i], "x")).collect();
        let t = tree(&[
            (0, 0.0, S, None, ""),
            (0, f32::NAN, A, OK, &a[0]),
            (0, 0.5, A, OK, &a[1]),
            (0, -0.5, A, BAD, &a[2]),
            (0, f32::INFINITY, A, BAD, &a[3]),
        ]);
        let p = pairs(&t, &PairConfig::default());
        assert_eq!(ids(&p), vec![(2, 3), (2, 3)]);
        assert_eq!(p[0].kind, PairKind::Step);
        assert_eq!(p[1].kind, PairKind::Final);
    }

    #[test]
    fn config_defaults_and_partial_json() {
        let cfg: PairConfig = serde_json::from_str(r#"{"min_margin": 0.0}"#).unwrap();
        assert_eq!(
            cfg,
            PairConfig {
                min_margin: 0.0,
                ..PairConfig::default()
            }
        );
        assert!(serde_json::from_str::<PairConfig>(r#"{"margin": 1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&PairKind::Final).unwrap(),
            "\"final\""
        );
    }
}
