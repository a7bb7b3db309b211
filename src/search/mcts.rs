//! The batched MCTS driver: rStar-Math's System 2 search over many problems at once.
//!
//! Step-synchronous over the batch, each step is:
//! 1. `Forest::select` K leaves per unfinished tree (one launch for all trees);
//! 2. render each leaf's trajectory (the text store, here, holds the steps; the forest only
//!    numbers) and make **one** policy call for all leaves, `candidates` samples each, stopped by
//!    rStar's stop strings;
//! 3. per leaf: drop duplicate candidates, and if any candidate holds an answer keep only the
//!    first such one (rStar's `llms.py` rule; with `answer_only = false` the non-answer
//!    candidates stay beside it);
//! 4. run every new step's code in **one** executor batch, each continuing from its parent's
//!    interpreter state;
//! 5. classify: an answer step is terminal (so is a turn the model ends right after a program
//!    output without writing `<answer>`: its answer is the printed output, as in greedy solving);
//!    a failing code step counts a consecutive error and
//!    is terminal at `errors_threshold`; an empty or cut-off step is invalid; a non-answer step
//!    deeper than `max_depth` is terminal — each invalid kind with −1 on itself only;
//! 6. score: answers ±1 against the reference (terminal-guided, PPM-augmented) or their PPM score
//!    (test); fresh nodes 0 (terminal-guided) or their PPM score counted as one visit — **one**
//!    PPM call for all new nodes;
//! 7. `Forest::expand` and `Forest::backup`: an answer's value goes up the selected path (which,
//!    with the answer's own initial visit, is rStar's `update_recursive` from the answer); other
//!    slots only lose their virtual loss.
//!
//! A rollout ends when an expansion leaves nothing open to descend into; a tree is finished after
//! `rollouts` rollouts, when its root is exhausted, or after `rollouts × (max_depth + 1)`
//! expansions. Trees never share state: a problem's tree is the same alone as in any batch
//! (the policy's sampling streams are keyed by prompt text, not batch position).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::config::{Mode, SearchConfig};
use super::prompt::{render, PromptStyle};
use super::tree::{SearchTree, Terminal, TreeNode};
use super::SearchError;
use crate::exec::{ExecPool, Keep, Snippet};
use crate::forest::{
    flags, BackendKind, Backup, ChildInit, Expansion, Forest, ForestConfig, Rule, NONE,
};
use crate::grade::{extract_answer, Grader};
use crate::model::tokenizer::Tokenizer;
use crate::model::{FinishReason, ModelError, Policy, SamplingParams};
use crate::step::{parse_step, render_prefix, ParseIssue, Step, StopReason, STOP_STRINGS};

/// Scores partial solutions in [-1, 1]: the PPM, or a test double.
pub trait Scorer {
    /// One score per `(question, partial solution)` pair.
    fn score(&mut self, items: &[(&str, &str)]) -> Result<Vec<f32>, ModelError>;
}

impl Scorer for crate::model::ppm::Ppm {
    fn score(&mut self, items: &[(&str, &str)]) -> Result<Vec<f32>, ModelError> {
        crate::model::ppm::Ppm::score(self, items)
    }
}

/// One problem to search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchProblem {
    pub id: String,
    pub question: String,
    /// Needed by the terminal-guided and PPM-augmented modes; never read in test mode.
    pub reference: Option<String>,
}

/// The parts a search runs on.
pub struct Engines<'a> {
    pub policy: &'a mut dyn Policy,
    /// Chat template of a local policy (None: the plain prompt text).
    pub tokenizer: Option<&'a Tokenizer>,
    pub exec: &'a mut ExecPool,
    pub ppm: Option<&'a mut dyn Scorer>,
    pub grader: &'a Grader,
}

/// Where a search's wall time went, and its totals.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SearchStats {
    /// Search steps (select → expand → backup rounds over the batch).
    pub steps: usize,
    pub expansions: usize,
    pub policy_tokens: usize,
    pub forest_secs: f64,
    pub policy_secs: f64,
    pub exec_secs: f64,
    pub ppm_secs: f64,
    pub grade_secs: f64,
    pub total_secs: f64,
}

impl SearchStats {
    pub fn add(&mut self, o: &SearchStats) {
        self.steps += o.steps;
        self.expansions += o.expansions;
        self.policy_tokens += o.policy_tokens;
        self.forest_secs += o.forest_secs;
        self.policy_secs += o.policy_secs;
        self.exec_secs += o.exec_secs;
        self.ppm_secs += o.ppm_secs;
        self.grade_secs += o.grade_secs;
        self.total_secs += o.total_secs;
    }
}

/// Host-side record of a node (the text store); indexed by forest node id.
#[derive(Debug, Clone, Default)]
struct Info {
    step: Option<Step>,
    /// Executor id whose interpreter state this node's children continue from.
    state: Option<String>,
    /// Consecutive failing code steps ending here.
    errors: u32,
    error: Option<String>,
    terminal: Option<Terminal>,
    answer: Option<String>,
    correct: Option<bool>,
    tokens: usize,
}

struct TreeState {
    prompt: String,
    nodes: Vec<Option<Info>>,
    rollouts: usize,
    expansions: usize,
    tokens: usize,
    done: bool,
    exec_ids: Vec<String>,
}

impl TreeState {
    fn info(&self, id: u32) -> &Info {
        // Every id the forest hands out was recorded when its parent was expanded.
        self.nodes[id as usize].as_ref().expect("node recorded")
    }
    fn steps_to(&self, path: &[u32]) -> Vec<Step> {
        path.iter()
            .skip(1)
            .filter_map(|&id| self.info(id).step.clone())
            .collect()
    }
}

/// A new child before it is attached.
struct NewChild {
    info: Info,
    /// Solution text up to and including this step (PPM input, answer extraction).
    partial: String,
    printed: Option<String>,
    value: f32,
    flags: u32,
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// Searches every problem; returns one tree per problem, in order, and the time split.
pub fn search(
    eng: &mut Engines<'_>,
    problems: &[SearchProblem],
    cfg: &SearchConfig,
    backend: BackendKind,
) -> Result<(Vec<SearchTree>, SearchStats), SearchError> {
    cfg.validate()?;
    if problems.is_empty() {
        return Ok((Vec::new(), SearchStats::default()));
    }
    if cfg.mode.needs_reference() {
        if let Some(p) = problems
            .iter()
            .find(|p| p.reference.as_deref().is_none_or(|r| r.trim().is_empty()))
        {
            return Err(SearchError::NoReference(p.id.clone()));
        }
    }
    let t_all = Instant::now();
    let mut stats = SearchStats::default();
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let b = problems.len();
    let k = cfg.leaves_per_step;
    let a = cfg.candidates;
    let t = Instant::now();
    let mut forest = Forest::new(
        ForestConfig {
            trees: b,
            capacity: cfg.capacity(),
            max_children: a,
            // Nodes deeper than max_depth are terminal, so selection never needs to look below.
            max_depth: cfg.max_depth + 1,
            max_leaves: k,
            rule: Rule::Uct { c: cfg.c },
            virtual_loss: cfg.virtual_loss,
        },
        backend,
    )?;
    stats.forest_secs += t.elapsed().as_secs_f64();
    let mut trees: Vec<TreeState> = problems
        .iter()
        .map(|p| TreeState {
            prompt: render(eng.tokenizer, PromptStyle::Code, &p.question),
            nodes: vec![Some(Info::default())],
            rollouts: 0,
            expansions: 0,
            tokens: 0,
            done: false,
            exec_ids: Vec::new(),
        })
        .collect();
    let stops: Vec<String> = STOP_STRINGS.iter().map(|s| s.to_string()).collect();
    let sampling = SamplingParams {
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        top_k: None,
        max_tokens: cfg.step_tokens,
        seed: cfg.seed,
    };

    let result = (|| -> Result<(), SearchError> {
        while trees.iter().any(|t| !t.done) {
            stats.steps += 1;
            let t = Instant::now();
            forest.select(k)?;
            let sel = forest.selection()?;
            stats.forest_secs += t.elapsed().as_secs_f64();

            // Slots to expand: (tree, flat slot index, leaf, path).
            let mut pending: Vec<(usize, usize, u32, Vec<u32>)> = Vec::new();
            for (tree, st) in trees.iter_mut().enumerate() {
                if st.done {
                    continue;
                }
                let before = pending.len();
                for s in 0..k {
                    if let Some(leaf) = sel.leaf(tree, s) {
                        pending.push((tree, tree * k + s, leaf, sel.path(tree, s).to_vec()));
                    }
                }
                if pending.len() == before {
                    st.done = true; // the root is exhausted
                }
            }
            if pending.is_empty() {
                let t = Instant::now();
                forest.backup(&Backup::none(b * k))?;
                stats.forest_secs += t.elapsed().as_secs_f64();
                continue;
            }

            // 2. One policy call for every leaf.
            let prompts: Vec<String> = pending
                .iter()
                .map(|(tree, _, _, path)| {
                    let st = &trees[*tree];
                    format!("{}{}", st.prompt, render_prefix(&st.steps_to(path)))
                })
                .collect();
            let t = Instant::now();
            let out = eng.policy.generate(&prompts, a, &sampling, &stops)?;
            stats.policy_secs += t.elapsed().as_secs_f64();
            if out.len() != pending.len() {
                return Err(SearchError::Model(ModelError::Request(format!(
                    "the policy returned {} prompt results for {} prompts",
                    out.len(),
                    pending.len()
                ))));
            }

            // 3. Candidates → new children (dedupe, answer-first).
            let mut children: Vec<Vec<NewChild>> = Vec::with_capacity(pending.len());
            let mut snippets: Vec<Snippet> = Vec::new();
            let mut snippet_of: Vec<(usize, usize)> = Vec::new();
            for (p, ((tree, _, leaf, path), cands)) in pending.iter().zip(&out).enumerate() {
                let st = &mut trees[*tree];
                let leaf_info = st.info(*leaf).clone();
                let leaf_depth = (path.len() - 1) as u32;
                let generated: usize = cands.iter().map(|c| c.tokens).sum();
                st.tokens += generated;
                stats.policy_tokens += generated;
                // The model may end its turn right after the program output instead of writing an
                // `<answer>` step; the printed output then is its answer (as in greedy solving).
                let after_output = leaf_info
                    .step
                    .as_ref()
                    .is_some_and(|s| s.ends_code && s.output.is_some());
                let mut parsed: Vec<(Step, usize)> = Vec::new();
                let mut ended: Vec<bool> = Vec::new();
                for c in cands {
                    let stop = match &c.finish {
                        FinishReason::Stop(s) => Some(s.as_str()),
                        _ => None,
                    };
                    let step = parse_step(&c.text, stop);
                    if parsed.iter().any(|(s, _)| s.raw == step.raw) {
                        continue;
                    }
                    ended.push(after_output && c.finish == FinishReason::Eos && !step.is_final());
                    parsed.push((step, c.tokens));
                }
                let is_answer = |i: usize, s: &Step| s.is_final() || ended[i];
                let answers: Vec<usize> = (0..parsed.len())
                    .filter(|&i| is_answer(i, &parsed[i].0))
                    .collect();
                if let Some(&first) = answers.first() {
                    let keep: Vec<bool> = (0..parsed.len())
                        .map(|i| i == first || (!cfg.answer_only && !answers.contains(&i)))
                        .collect();
                    let mut i = 0;
                    parsed.retain(|_| {
                        i += 1;
                        keep[i - 1]
                    });
                    let mut i = 0;
                    ended.retain(|_| {
                        i += 1;
                        keep[i - 1]
                    });
                }
                let prefix = render_prefix(&st.steps_to(path));
                let printed = path
                    .iter()
                    .rev()
                    .filter_map(|&id| st.info(id).step.as_ref())
                    .find_map(|s| s.output.clone());
                let mut kids = Vec::with_capacity(parsed.len());
                for (j, ((step, tokens), ended)) in parsed.into_iter().zip(ended).enumerate() {
                    let mut info = Info {
                        state: leaf_info.state.clone(),
                        tokens,
                        ..Info::default()
                    };
                    if step.is_final() || ended {
                        info.terminal = Some(Terminal::Answer);
                    } else if step.stop == StopReason::Length
                        || step.issues.contains(&ParseIssue::Empty)
                    {
                        info.terminal = Some(Terminal::Invalid);
                    } else if step.needs_execution() {
                        let id = format!("m{run}-{tree}-{leaf}-{j}");
                        snippets.push(Snippet {
                            id: id.clone(),
                            code: step.code.clone(),
                            parent: leaf_info.state.clone(),
                            keep: Keep::UntilReleased,
                        });
                        st.exec_ids.push(id);
                        snippet_of.push((p, j));
                    }
                    if info.terminal.is_none() && leaf_depth + 1 > cfg.max_depth as u32 {
                        info.terminal = Some(Terminal::MaxDepth);
                    }
                    info.step = Some(step);
                    kids.push(NewChild {
                        info,
                        partial: String::new(),
                        printed: printed.clone(),
                        value: 0.0,
                        flags: 0,
                    });
                }
                for kid in &mut kids {
                    kid.partial = prefix.clone();
                }
                children.push(kids);
            }

            // 4. One executor batch for every new step's code.
            let t = Instant::now();
            let results = eng.exec.run_batch(&snippets);
            stats.exec_secs += t.elapsed().as_secs_f64();
            for ((p, j), (snip, r)) in snippet_of.into_iter().zip(snippets.iter().zip(results)) {
                let leaf_errors = trees[pending[p].0].info(pending[p].2).errors;
                let kid = &mut children[p][j];
                let failed = !r.ok || r.stdout.to_lowercase().contains("error");
                if failed {
                    kid.info.errors = leaf_errors + 1;
                    kid.info.error = Some(
                        r.error
                            .clone()
                            .unwrap_or_else(|| crate::exec::output::truncate(&r.stdout, 200)),
                    );
                    if kid.info.errors >= cfg.errors_threshold {
                        kid.info.terminal = Some(Terminal::CodeError);
                    }
                } else {
                    kid.info.state = Some(snip.id.clone());
                }
                if let Some(step) = kid.info.step.as_mut() {
                    if step.ends_code {
                        step.output = Some(r.stdout.clone());
                        kid.printed = Some(r.stdout.clone());
                    }
                }
            }
            for kids in &mut children {
                for kid in kids.iter_mut() {
                    if let Some(step) = &kid.info.step {
                        kid.partial
                            .push_str(&render_prefix(std::slice::from_ref(step)));
                    }
                }
            }

            // 5. Answers: extract, and grade against the reference where the mode uses it (or
            //    for the record, when a reference is known).
            let t = Instant::now();
            let mut pairs: Vec<(String, String)> = Vec::new();
            let mut pair_of: Vec<(usize, usize)> = Vec::new();
            for (p, kids) in children.iter_mut().enumerate() {
                for (j, kid) in kids.iter_mut().enumerate() {
                    if kid.info.terminal != Some(Terminal::Answer) {
                        continue;
                    }
                    let e = extract_answer(&kid.partial, kid.printed.as_deref());
                    kid.info.answer = e.map(|e| e.answer);
                    let reference = problems[pending[p].0].reference.as_deref();
                    if let (Some(ans), Some(r)) = (&kid.info.answer, reference) {
                        if !r.trim().is_empty() {
                            pairs.push((ans.clone(), r.to_string()));
                            pair_of.push((p, j));
                        }
                    } else if reference.is_some_and(|r| !r.trim().is_empty()) {
                        kid.info.correct = Some(false);
                    }
                }
            }
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(x, y)| (x.as_str(), y.as_str()))
                .collect();
            for ((p, j), o) in pair_of.into_iter().zip(eng.grader.equiv_many(&refs)) {
                children[p][j].info.correct = Some(o.equivalent);
            }
            stats.grade_secs += t.elapsed().as_secs_f64();

            // 6. PPM: one call for every node that needs a score in this mode.
            let mut want: Vec<(usize, usize)> = Vec::new();
            if cfg.mode.uses_ppm() && eng.ppm.is_some() {
                for (p, kids) in children.iter().enumerate() {
                    for (j, kid) in kids.iter().enumerate() {
                        let scored = match kid.info.terminal {
                            None => true,
                            Some(Terminal::Answer) => cfg.mode == Mode::Test,
                            Some(_) => false,
                        };
                        if scored {
                            want.push((p, j));
                        }
                    }
                }
            }
            let mut ppm_score: HashMap<(usize, usize), f32> = HashMap::new();
            if let (false, Some(ppm)) = (want.is_empty(), eng.ppm.as_deref_mut()) {
                let items: Vec<(&str, &str)> = want
                    .iter()
                    .map(|&(p, j)| {
                        (
                            problems[pending[p].0].question.as_str(),
                            children[p][j].partial.as_str(),
                        )
                    })
                    .collect();
                let t = Instant::now();
                let scores = ppm
                    .score(&items)
                    .map_err(|e| SearchError::Score(e.to_string()))?;
                stats.ppm_secs += t.elapsed().as_secs_f64();
                if scores.len() != want.len() {
                    return Err(SearchError::Score(format!(
                        "the PPM returned {} scores for {} inputs",
                        scores.len(),
                        want.len()
                    )));
                }
                for (&(p, j), s) in want.iter().zip(scores) {
                    if !s.is_finite() {
                        return Err(SearchError::Score(format!(
                            "problem {}: the PPM scored a partial solution {s} (not finite); \
                             check the PPM's weights",
                            problems[pending[p].0].id
                        )));
                    }
                    ppm_score.insert((p, j), s.clamp(-1.0, 1.0));
                }
            }

            // 7. Values, expansion and backup.
            let mut exp = Expansion::zeros(b, k, a);
            let mut bk = Backup::none(b * k);
            for (p, kids) in children.iter_mut().enumerate() {
                let slot = pending[p].1;
                for (j, kid) in kids.iter_mut().enumerate() {
                    let ppm = ppm_score.get(&(p, j)).copied();
                    match kid.info.terminal {
                        Some(Terminal::Answer) => {
                            let v = match cfg.mode {
                                Mode::Test => ppm.unwrap_or(0.0),
                                _ => {
                                    if kid.info.correct == Some(true) {
                                        1.0
                                    } else {
                                        -1.0
                                    }
                                }
                            };
                            kid.value = v;
                            kid.flags = flags::TERMINAL | flags::ANSWER | flags::COUNT_INIT;
                            bk.set(slot, v);
                        }
                        Some(_) => {
                            kid.value = -1.0;
                            kid.flags = flags::TERMINAL | flags::COUNT_INIT;
                        }
                        None => match ppm {
                            Some(v) => {
                                kid.value = v;
                                kid.flags = flags::COUNT_INIT;
                            }
                            None => {
                                kid.value = 0.0;
                                kid.flags = 0;
                            }
                        },
                    }
                }
                let inits: Vec<ChildInit> = kids
                    .iter()
                    .map(|kid| ChildInit {
                        value: kid.value,
                        prior: 1.0,
                        flags: kid.flags,
                    })
                    .collect();
                exp.set(slot, &inits)?;
            }
            let t = Instant::now();
            forest.expand(&exp)?;
            let snap = forest.read_back()?;
            forest.backup(&bk)?;
            stats.forest_secs += t.elapsed().as_secs_f64();

            for ((tree, _, leaf, _), kids) in pending.iter().zip(children) {
                let st = &mut trees[*tree];
                let first = snap.node(*tree, *leaf).first_child;
                let open = kids.iter().any(|k| k.info.terminal.is_none());
                if first != NONE {
                    for (j, kid) in kids.into_iter().enumerate() {
                        let id = (first as usize) + j;
                        if st.nodes.len() <= id {
                            st.nodes.resize(id + 1, None);
                        }
                        st.nodes[id] = Some(kid.info);
                    }
                }
                st.expansions += 1;
                stats.expansions += 1;
                if !open {
                    st.rollouts += 1;
                }
                if st.rollouts >= cfg.rollouts || st.expansions >= cfg.max_expansions() {
                    st.done = true;
                }
            }
        }
        Ok(())
    })();
    // Free every kept interpreter state, whatever happened.
    let ids: Vec<String> = trees
        .iter()
        .flat_map(|t| t.exec_ids.iter().cloned())
        .collect();
    eng.exec.release(&ids);
    result?;

    let t = Instant::now();
    let snap = forest.read_back()?;
    stats.forest_secs += t.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(b);
    for (tree, (st, p)) in trees.into_iter().zip(problems).enumerate() {
        let nodes = snap.tree(tree);
        let mut tn = Vec::with_capacity(nodes.len());
        for (id, n) in nodes.iter().enumerate() {
            let info = st.nodes.get(id).cloned().flatten().unwrap_or_default();
            tn.push(TreeNode {
                id: id as u32,
                parent: (n.parent != NONE).then_some(n.parent),
                depth: n.depth(),
                text: info
                    .step
                    .as_ref()
                    .map(|s| s.raw.clone())
                    .unwrap_or_default(),
                output: info.step.as_ref().and_then(|s| s.output.clone()),
                error: info.error,
                visits: n.visits,
                q: n.q(),
                init_value: n.init_value,
                terminal: info.terminal,
                answer: info.answer,
                correct: info.correct,
                tokens: info.tokens,
                children: snap.children(tree, id as u32).collect(),
            });
        }
        // Exhausted nodes from the structure (children always follow their parent in the arena),
        // not from the forest's flags: a finished tree still takes part in the batch's later
        // selections, which mark such nodes on the way, and its record must not depend on that.
        for id in (0..tn.len()).rev() {
            let kids = &tn[id].children;
            if tn[id].terminal.is_none()
                && !kids.is_empty()
                && kids.iter().all(|&c| tn[c as usize].terminal.is_some())
            {
                tn[id].terminal = Some(Terminal::Exhausted);
            }
        }
        out.push(SearchTree {
            id: p.id.clone(),
            question: p.question.clone(),
            reference: p.reference.clone(),
            mode: cfg.mode,
            rollouts: st.rollouts,
            expansions: st.expansions,
            policy_tokens: st.tokens,
            nodes: tn,
        });
    }
    stats.total_secs = t_all.elapsed().as_secs_f64();
    Ok((out, stats))
}
