//! The policy's SFT data: the best correct trajectories of each problem's tree.
//!
//! rStar-Math keeps the top-2 correct root→answer trajectories per problem by average Q (the
//! official `sample_sft_data.py --n 2` sorts by `(avg Q, min Q)` and drops traces that mention
//! "error"): Q after many rollouts says how reliably a step leads to the answer, so the average
//! favours solutions whose every step is sound, and the minimum breaks ties against a single
//! shaky step.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::search::{SearchTree, Terminal, TreeNode};

/// SFT selection settings; `Default` is the paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Trajectories kept per problem (the paper's 2).
    pub per_problem: usize,
    /// Drop trajectories with a code error anywhere on the path (a step with an `error`, or an
    /// output mentioning "error" in any case): the official code drops such traces so the policy
    /// does not learn to write failing code.
    pub drop_errors: bool,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            per_problem: 2,
            drop_errors: true,
        }
    }
}

/// One selected trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    /// The tree's (problem's) id.
    pub problem: String,
    pub question: String,
    /// The rendered solution from the root to the answer leaf ([`SearchTree::solution`]).
    pub solution: String,
    /// The leaf's extracted answer.
    pub answer: Option<String>,
    /// Average Q of the path's nodes (root excluded).
    pub avg_q: f32,
    /// Lowest Q on the path (root excluded).
    pub min_q: f32,
    /// The answer leaf's node id.
    pub leaf: u32,
    /// Steps in the trajectory.
    pub steps: usize,
}

/// The Q statistics of one root→node path (root excluded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PathQ {
    pub avg: f32,
    pub min: f32,
    pub steps: usize,
}

/// The Q statistics of the path to `id`; `None` for the root, or when a Q on the path is not
/// finite (such a trajectory cannot be ranked).
pub(crate) fn path_q(tree: &SearchTree, id: u32) -> Option<PathQ> {
    let path = tree.path(id);
    if path.is_empty() || path.iter().any(|n| !n.q.is_finite()) {
        return None;
    }
    let sum: f64 = path.iter().map(|n| f64::from(n.q)).sum();
    let min = path.iter().map(|n| n.q).fold(f32::INFINITY, f32::min);
    Some(PathQ {
        avg: (sum / path.len() as f64) as f32,
        min,
        steps: path.len(),
    })
}

/// The best correct trajectories of `tree`: every root→leaf path ending at a correct answer leaf
/// (error paths dropped when [`SftConfig::drop_errors`]), sorted by average Q descending, then
/// minimum Q descending, then leaf id, the first [`SftConfig::per_problem`] kept. A tree without
/// a reference answer gives none (its `correct` flags cannot be trusted).
pub fn select(tree: &SearchTree, cfg: &SftConfig) -> Vec<SftExample> {
    if tree.reference.is_none() {
        return Vec::new();
    }
    let mut picked: Vec<(&TreeNode, PathQ)> = tree
        .nodes
        .iter()
        .filter(|n| n.terminal == Some(Terminal::Answer) && n.correct == Some(true))
        .filter(|n| !(cfg.drop_errors && has_error(&tree.path(n.id))))
        .filter_map(|n| path_q(tree, n.id).map(|q| (n, q)))
        .collect();
    picked.sort_by(|(a, qa), (b, qb)| {
        desc(qa.avg, qb.avg)
            .then(desc(qa.min, qb.min))
            .then(a.id.cmp(&b.id))
    });
    picked.truncate(cfg.per_problem);
    picked
        .into_iter()
        .map(|(leaf, q)| SftExample {
            problem: tree.id.clone(),
            question: tree.question.clone(),
            solution: tree.solution(leaf.id),
            answer: leaf.answer.clone(),
            avg_q: q.avg,
            min_q: q.min,
            leaf: leaf.id,
            steps: q.steps,
        })
        .collect()
}

/// Descending order of finite values.
fn desc(a: f32, b: f32) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

/// A node on the path failed to run, or its output mentions an error.
fn has_error(path: &[&TreeNode]) -> bool {
    path.iter().any(|n| {
        n.error.is_some()
            || n.output
                .as_deref()
                .is_some_and(|o| o.to_lowercase().contains("error"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::pairs::tests::{answer, step, tree, A, BAD, OK, S};

    fn sample() -> SearchTree {
        let s: Vec<String> = (1..=5)
            .map(|k| step(1, &format!("idea number {k}")))
            .collect();
        let ok = answer("So", "7");
        let mut t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 0.5, S, None, &s[0]),  // 1
            (1, 1.0, A, OK, &ok),      // 2: avg 0.75, min 0.5
            (0, 0.75, S, None, &s[1]), // 3
            (3, 0.75, A, OK, &ok),     // 4: avg 0.75, min 0.75
            (0, 1.0, S, None, &s[2]),  // 5: raised
            (5, 1.0, A, OK, &ok),      // 6: avg 1.0
            (0, 0.25, S, None, &s[3]), // 7: output mentions an error
            (7, 1.0, A, OK, &ok),      // 8: avg 0.625
            (0, 0.0, S, None, &s[4]),  // 9
            (9, 0.5, A, OK, &ok),      // 10: avg 0.25
            (9, 1.0, A, BAD, &ok),     // 11: wrong
        ]);
        t.nodes[5].error = Some("ZeroDivisionError: division by zero".into());
        t.nodes[7].output = Some("NameError: name 'y' is not defined".into());
        t.nodes[3].output = Some("7".into());
        t
    }

    fn leaves(ex: &[SftExample]) -> Vec<u32> {
        ex.iter().map(|e| e.leaf).collect()
    }

    #[test]
    fn best_two_by_average_then_minimum() {
        let t = sample();
        let ex = select(&t, &SftConfig::default());
        // 4 and 2 tie on avg 0.75; 4 has the higher minimum.
        assert_eq!(leaves(&ex), vec![4, 2]);
        assert_eq!(
            ex[0],
            SftExample {
                problem: "p1".into(),
                question: "What is 3 + 4?".into(),
                solution: t.solution(4),
                answer: Some("7".into()),
                avg_q: 0.75,
                min_q: 0.75,
                leaf: 4,
                steps: 2,
            }
        );
        assert_eq!(ex[1].min_q, 0.5);
        assert!(ex[0].solution.ends_with("\\boxed{7}.\n<end_of_answer>"));
    }

    #[test]
    fn per_problem_limit_and_error_paths() {
        let t = sample();
        let all = SftConfig {
            per_problem: 10,
            ..SftConfig::default()
        };
        assert_eq!(leaves(&select(&t, &all)), vec![4, 2, 10]);
        let keep_errors = SftConfig {
            per_problem: 10,
            drop_errors: false,
        };
        assert_eq!(leaves(&select(&t, &keep_errors)), vec![6, 4, 2, 8, 10]);
        let one = SftConfig {
            per_problem: 1,
            ..SftConfig::default()
        };
        assert_eq!(leaves(&select(&t, &one)), vec![4]);
    }

    #[test]
    fn ties_break_by_leaf_id_and_nan_is_skipped() {
        let mut t = sample();
        // 1 -> 2 now ties 3 -> 4 exactly (avg 0.75, min 0.75): the lower leaf id comes first.
        t.nodes[1].q = 0.75;
        t.nodes[2].q = 0.75;
        // A NaN on 4's path: that trajectory cannot be ranked and is left out.
        t.nodes[3].q = f32::NAN;
        let all = SftConfig {
            per_problem: 10,
            ..SftConfig::default()
        };
        assert_eq!(leaves(&select(&t, &all)), vec![2, 10]);
        t.nodes[3].q = 0.75;
        assert_eq!(leaves(&select(&t, &all)), vec![2, 4, 10]);
    }

    #[test]
    fn no_reference_no_examples() {
        let mut t = sample();
        t.reference = None;
        assert!(select(&t, &SftConfig::default()).is_empty());
    }
}
