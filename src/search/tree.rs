//! A finished search tree as text and numbers together: what the driver writes (one JSON object
//! per problem per line of `trees.jsonl`), what self-evolution reads, and what `rstar-gpu view`
//! renders (indented text or a static HTML page).

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::{AnswerRule, Mode};
use super::vote::{pick, Scored};
use super::SearchError;
use crate::grade::Grader;
use crate::step::{parse_step, render_prefix, Step};

/// Why a node is terminal (rStar's terminal kinds, plus dead ends found by the forest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Terminal {
    /// The step holds a final answer (`\boxed{}`).
    Answer,
    /// `errors_threshold` consecutive failing code steps (rStar's `TOO_MANY_CODE_ERRORS`).
    CodeError,
    /// The step could not be used: empty, or cut off without a stop string (`NO_VALID_CHILD`).
    Invalid,
    /// A non-answer step deeper than `max_depth` (`TOO_MANY_STEPS`).
    MaxDepth,
    /// Expanded, and every child is terminal: nothing is left to search below.
    Exhausted,
}

impl Terminal {
    pub fn name(self) -> &'static str {
        match self {
            Terminal::Answer => "answer",
            Terminal::CodeError => "code_error",
            Terminal::Invalid => "invalid",
            Terminal::MaxDepth => "max_depth",
            Terminal::Exhausted => "exhausted",
        }
    }
}

/// One node of a finished tree. The root (id 0) has no step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    pub id: u32,
    pub parent: Option<u32>,
    /// Root = 0; a node's depth is its number of steps.
    pub depth: u32,
    /// The step exactly as generated, ending with its stop string (empty for the root).
    pub text: String,
    /// The interpreter output of the step's code (shown to the policy after `<end_of_code>`).
    pub output: Option<String>,
    /// The code's error, when it failed.
    pub error: Option<String>,
    /// Completed visits N.
    pub visits: u32,
    /// Q = W / N (the initial value while unvisited).
    pub q: f32,
    /// Initial value q0: the PPM score, ±1 for an answer or an invalid terminal, or 0.
    pub init_value: f32,
    pub terminal: Option<Terminal>,
    /// The extracted final answer of an answer node.
    pub answer: Option<String>,
    /// Whether the answer matches the reference (when the problem has one).
    pub correct: Option<bool>,
    /// Policy tokens generated for this step.
    pub tokens: usize,
    pub children: Vec<u32>,
}

/// One problem's search tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchTree {
    pub id: String,
    pub question: String,
    pub reference: Option<String>,
    pub mode: Mode,
    pub rollouts: usize,
    pub expansions: usize,
    /// Policy tokens generated for this tree (all candidates, kept or not).
    pub policy_tokens: usize,
    /// Nodes by id; `nodes[i].id == i`.
    pub nodes: Vec<TreeNode>,
}

/// An answer node and its score, as the answer rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerNode {
    pub node: u32,
    pub answer: String,
    /// The node's value (Q).
    pub value: f32,
    pub correct: Option<bool>,
}

impl SearchTree {
    /// The nodes from the root's first child down to `id`.
    pub fn path(&self, id: u32) -> Vec<&TreeNode> {
        let mut out = Vec::new();
        let mut cur = self.nodes.get(id as usize);
        while let Some(n) = cur {
            if n.parent.is_none() {
                break;
            }
            out.push(n);
            cur = n.parent.and_then(|p| self.nodes.get(p as usize));
        }
        out.reverse();
        out
    }

    /// The steps from the root to `id`, with their outputs, ready to render.
    pub fn steps(&self, id: u32) -> Vec<Step> {
        self.path(id)
            .into_iter()
            .map(|n| {
                let mut s = parse_step(&n.text, None);
                s.output = n.output.clone();
                s
            })
            .collect()
    }

    /// The solution text from the root to `id`, as the policy saw it.
    pub fn solution(&self, id: u32) -> String {
        render_prefix(&self.steps(id))
    }

    /// Every answer node with an extracted answer, in id order.
    pub fn answers(&self) -> Vec<AnswerNode> {
        self.nodes
            .iter()
            .filter(|n| n.terminal == Some(Terminal::Answer))
            .filter_map(|n| {
                Some(AnswerNode {
                    node: n.id,
                    answer: n.answer.clone()?,
                    value: n.q,
                    correct: n.correct,
                })
            })
            .collect()
    }

    /// The tree's answer by `rule` (see [`AnswerRule`]); `None` when no answer was reached.
    pub fn pick(&self, grader: &Grader, rule: AnswerRule, top_k: usize) -> Option<AnswerNode> {
        let answers = self.answers();
        let scored: Vec<Scored<'_>> = answers
            .iter()
            .map(|a| Scored {
                answer: &a.answer,
                score: a.value,
            })
            .collect();
        let p = pick(grader, &scored, rule, top_k)?;
        answers.into_iter().nth(p.index)
    }

    /// At least one trajectory reached a correct answer.
    pub fn covered(&self) -> bool {
        self.nodes.iter().any(|n| n.correct == Some(true))
    }

    /// The nodes' JSON line.
    pub fn to_json_line(&self) -> Result<String, SearchError> {
        serde_json::to_string(self).map_err(|e| SearchError::Config(format!("serialising: {e}")))
    }

    /// Indented text: one line per node with its N, Q, q0 and kind, then its step and output.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "problem {}: {}\nreference: {}   mode: {:?}   rollouts: {}   nodes: {}   policy tokens: {}\n",
            self.id,
            one_line(&self.question, 200),
            self.reference.as_deref().unwrap_or("-"),
            self.mode,
            self.rollouts,
            self.nodes.len(),
            self.policy_tokens
        );
        let mut stack = vec![0u32];
        while let Some(id) = stack.pop() {
            let n = &self.nodes[id as usize];
            let pad = "  ".repeat(n.depth as usize);
            out.push_str(&format!(
                "{pad}[{}] N={} Q={:+.3} q0={:+.3}{}{}\n",
                n.id,
                n.visits,
                n.q,
                n.init_value,
                n.terminal
                    .map(|t| format!(" {}", t.name()))
                    .unwrap_or_default(),
                match (&n.answer, n.correct) {
                    (Some(a), Some(c)) =>
                        format!(" answer={a} ({})", if c { "correct" } else { "wrong" }),
                    (Some(a), None) => format!(" answer={a}"),
                    _ => String::new(),
                }
            ));
            if !n.text.is_empty() {
                for line in n.text.lines() {
                    out.push_str(&format!("{pad}  | {line}\n"));
                }
            }
            if let Some(o) = &n.output {
                out.push_str(&format!("{pad}  > output: {}\n", one_line(o, 160)));
            }
            if let Some(e) = &n.error {
                out.push_str(&format!("{pad}  ! error: {}\n", one_line(e, 160)));
            }
            for &c in n.children.iter().rev() {
                stack.push(c);
            }
        }
        out
    }

    /// A static HTML page: the tree as nested `<details>` (open along the best answer's path).
    pub fn render_html(&self) -> String {
        let best = self
            .answers()
            .into_iter()
            .max_by(|a, b| a.value.total_cmp(&b.value).then(b.node.cmp(&a.node)));
        let open: std::collections::HashSet<u32> = best
            .map(|b| {
                let mut v: Vec<u32> = self.path(b.node).iter().map(|n| n.id).collect();
                v.push(0);
                v.into_iter().collect()
            })
            .unwrap_or_default();
        let mut body = String::new();
        self.html_node(0, &open, &mut body);
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>rstar-gpu tree {id}</title>\n<style>\
body{{font-family:sans-serif;margin:1.5em}} details{{margin-left:1.2em;border-left:1px solid #ccc;padding-left:.5em}}\
summary{{cursor:pointer;font-family:monospace}} pre{{background:#f6f6f6;padding:.4em;margin:.2em 0;white-space:pre-wrap}}\
.correct{{color:#070}} .wrong{{color:#b00}} .term{{color:#666}} .out{{background:#eef6ff}} .err{{background:#fff0f0}}\
</style></head><body>\n<h2>Problem {id}</h2>\n<p>{q}</p>\n<p>Reference: <b>{r}</b> · mode {m:?} · {ro} rollouts · {nn} nodes · {t} policy tokens</p>\n{body}</body></html>\n",
            id = esc(&self.id),
            q = esc(&self.question),
            r = esc(self.reference.as_deref().unwrap_or("-")),
            m = self.mode,
            ro = self.rollouts,
            nn = self.nodes.len(),
            t = self.policy_tokens,
        )
    }

    fn html_node(&self, id: u32, open: &std::collections::HashSet<u32>, out: &mut String) {
        let n = &self.nodes[id as usize];
        let class = match n.correct {
            Some(true) => "correct",
            Some(false) => "wrong",
            None if n.terminal.is_some() => "term",
            None => "",
        };
        out.push_str(&format!(
            "<details{}><summary class=\"{class}\">[{}] N={} Q={:+.3} q0={:+.3}{}{}</summary>\n",
            if open.contains(&id) { " open" } else { "" },
            n.id,
            n.visits,
            n.q,
            n.init_value,
            n.terminal
                .map(|t| format!(" · {}", t.name()))
                .unwrap_or_default(),
            n.answer
                .as_ref()
                .map(|a| format!(" · answer {}", esc(a)))
                .unwrap_or_default(),
        ));
        if !n.text.is_empty() {
            out.push_str(&format!("<pre>{}</pre>\n", esc(&n.text)));
        }
        if let Some(o) = &n.output {
            out.push_str(&format!("<pre class=\"out\">{}</pre>\n", esc(o)));
        }
        if let Some(e) = &n.error {
            out.push_str(&format!("<pre class=\"err\">{}</pre>\n", esc(e)));
        }
        for &c in &n.children {
            self.html_node(c, open, out);
        }
        out.push_str("</details>\n");
    }

    /// Checks the invariants a reader relies on (ids, parents, children, depths).
    pub fn check(&self) -> Result<(), String> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.id as usize != i {
                return Err(format!("node {i} has id {}", n.id));
            }
            if (i == 0) != n.parent.is_none() {
                return Err(format!("node {i}: only the root has no parent"));
            }
            for &c in &n.children {
                let child = self
                    .nodes
                    .get(c as usize)
                    .ok_or_else(|| format!("node {i}: child {c} does not exist"))?;
                if child.parent != Some(n.id) || child.depth != n.depth + 1 {
                    return Err(format!("node {c}: parent or depth disagrees with node {i}"));
                }
            }
            if !n.q.is_finite() || !n.init_value.is_finite() {
                return Err(format!("node {i}: value is not finite"));
            }
        }
        Ok(())
    }
}

/// Reads a trees JSONL file (one [`SearchTree`] per line); errors name the line.
pub fn read_trees(path: &Path) -> Result<Vec<SearchTree>, SearchError> {
    let f = std::fs::File::open(path)
        .map_err(|e| SearchError::Config(format!("cannot open {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line =
            line.map_err(|e| SearchError::Config(format!("{}:{}: {e}", path.display(), i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let t: SearchTree = serde_json::from_str(&line).map_err(|e| {
            SearchError::Config(format!(
                "{}:{}: not a search tree ({e})",
                path.display(),
                i + 1
            ))
        })?;
        t.check().map_err(|e| {
            SearchError::Config(format!("{}:{}: invalid tree: {e}", path.display(), i + 1))
        })?;
        out.push(t);
    }
    Ok(out)
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        format!("{}…", flat.chars().take(max).collect::<String>())
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
