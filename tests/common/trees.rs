//! Hand-built search trees with known pairs and SFT selections (shared by the train and evolve
//! tests through `#[path]`).
#![allow(dead_code)]

use rstar_gpu::search::{Mode, SearchTree, Terminal, TreeNode};

/// (parent, q, terminal, correct, text)
pub type Row = (
    Option<u32>,
    f32,
    Option<Terminal>,
    Option<bool>,
    &'static str,
);

pub fn tree(id: &str, question: &str, reference: &str, rows: &[Row]) -> SearchTree {
    let mut nodes: Vec<TreeNode> = rows
        .iter()
        .enumerate()
        .map(|(i, &(parent, q, terminal, correct, text))| TreeNode {
            id: i as u32,
            parent,
            depth: 0,
            text: text.to_string(),
            output: None,
            error: None,
            visits: 1,
            q,
            init_value: 0.0,
            terminal,
            answer: terminal.filter(|t| *t == Terminal::Answer).map(|_| {
                if correct == Some(true) {
                    reference.into()
                } else {
                    "0".into()
                }
            }),
            correct,
            tokens: 10,
            children: Vec::new(),
        })
        .collect();
    for i in 1..nodes.len() {
        let p = nodes[i].parent.unwrap() as usize;
        nodes[i].depth = nodes[p].depth + 1;
        nodes[p].children.push(i as u32);
    }
    SearchTree {
        id: id.into(),
        question: question.into(),
        reference: Some(reference.into()),
        mode: Mode::TerminalGuided,
        rollouts: 4,
        expansions: 4,
        policy_tokens: 100,
        nodes,
    }
}

const A: Option<Terminal> = Some(Terminal::Answer);

pub fn trees() -> Vec<SearchTree> {
    vec![
        tree(
            "t-apples",
            "Tom has 3 apples and buys 4 more. How many apples does he have?",
            "7",
            &[
                (None, 0.2, None, None, ""),
                (Some(0), 0.9, None, None, "<code>\n# Step 1: add the apples he buys to the ones he has\ntotal = 3 + 4\n<end_of_step>"),
                (Some(0), -0.8, None, None, "<code>\n# Step 1: multiply the counts\ntotal = 3 * 4\n<end_of_step>"),
                (Some(1), 1.0, A, Some(true), "<answer>\nHe has \\boxed{7} apples.\n<end_of_answer>"),
                (Some(2), -1.0, A, Some(false), "<answer>\nHe has \\boxed{12} apples, after multiplying.\n<end_of_answer>"),
            ],
        ),
        tree(
            "t-pens",
            "A pen costs 2 dollars. How much do 5 pens cost?",
            "10",
            &[
                (None, 0.1, None, None, ""),
                (Some(0), 0.8, None, None, "<code>\n# Step 1: price times the number of pens\ncost = 2 * 5\n<end_of_step>"),
                (Some(0), -0.9, None, None, "<code>\n# Step 1: add the price and the count together\ncost = 2 + 5\n<end_of_step>"),
                (Some(1), 1.0, A, Some(true), "<answer>\nThey cost \\boxed{10} dollars.\n<end_of_answer>"),
                (Some(2), -1.0, A, Some(false), "<answer>\nThe total is \\boxed{7} dollars in all.\n<end_of_answer>"),
            ],
        ),
    ]
}
