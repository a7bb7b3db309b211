//! The MCTS driver against hand-checked golden trees (`tests/golden/search/*.json`), driven by a
//! scripted policy and PPM (test doubles: they return chosen strings and scores) with the real
//! sandboxed Python executor and the real grader; and batch isolation: a problem's tree is the
//! same alone as in a batch of 64.
//!
//! A fixture names every step by a label in brackets (`# Step 1 [A2]`, `<answer>[G2] …`). The
//! script maps "problem id / labels of the partial solution" to the candidates the policy returns
//! for that leaf; expected nodes are keyed by their step's label.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rstar_gpu::exec::{ExecConfig, ExecPool};
use rstar_gpu::forest::BackendKind;
use rstar_gpu::grade::Grader;
use rstar_gpu::model::{Completion, FinishReason, ModelError, Policy, SamplingParams};
use rstar_gpu::search::prompt::{render, PromptStyle};
use rstar_gpu::search::{
    search, Engines, Scorer, SearchConfig, SearchProblem, SearchTree, Terminal,
};
use rstar_gpu::step::STOP_STRINGS;
use serde::Deserialize;

/// The labels (`[X]`) in a text, in order.
fn labels(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('[') {
        rest = &rest[i + 1..];
        if let Some(j) = rest.find(']') {
            let l = &rest[..j];
            if !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric()) {
                out.push(l.to_string());
            }
        }
    }
    out
}

/// Which problem a prompt belongs to, and the key of its partial solution.
#[derive(Clone)]
struct Keys {
    /// (rendered prompt, problem id, question).
    problems: Vec<(String, String, String)>,
}

impl Keys {
    fn new(problems: &[SearchProblem]) -> Keys {
        Keys {
            problems: problems
                .iter()
                .map(|p| {
                    (
                        render(None, PromptStyle::Code, &p.question),
                        p.id.clone(),
                        p.question.clone(),
                    )
                })
                .collect(),
        }
    }
    fn of_prompt(&self, prompt: &str) -> String {
        let (rendered, id, _) = self
            .problems
            .iter()
            .filter(|(r, _, _)| prompt.starts_with(r.as_str()))
            .max_by_key(|(r, _, _)| r.len())
            .expect("prompt of a known problem");
        key(id, &prompt[rendered.len()..])
    }
    fn of_item(&self, question: &str, partial: &str) -> String {
        let (_, id, _) = self
            .problems
            .iter()
            .find(|(_, _, q)| q == question)
            .expect("known question");
        key(id, partial)
    }
}

fn key(id: &str, partial: &str) -> String {
    let mut k = id.to_string();
    for l in labels(partial) {
        k.push('/');
        k.push_str(&l);
    }
    k
}

/// Returns the scripted candidates of each prompt; records the number of prompts per call.
struct ScriptedPolicy {
    keys: Keys,
    script: HashMap<String, Vec<String>>,
    calls: Arc<Mutex<Vec<usize>>>,
}

/// A scripted candidate: ends with a stop string (stopped there), with `<eos>` (the model ended
/// its turn), or with neither (cut off at the token limit).
fn completion(text: &str) -> Completion {
    let tokens = text.split_whitespace().count().max(1);
    if let Some(t) = text.strip_suffix("<eos>") {
        return Completion {
            text: t.to_string(),
            tokens,
            finish: FinishReason::Eos,
        };
    }
    for s in STOP_STRINGS {
        if let Some(t) = text.strip_suffix(s) {
            return Completion {
                text: t.to_string(),
                tokens,
                finish: FinishReason::Stop(s.to_string()),
            };
        }
    }
    Completion {
        text: text.to_string(),
        tokens,
        finish: FinishReason::Length,
    }
}

impl Policy for ScriptedPolicy {
    fn generate(
        &mut self,
        prompts: &[String],
        _n: usize,
        _sampling: &SamplingParams,
        _stop: &[String],
    ) -> Result<Vec<Vec<Completion>>, ModelError> {
        self.calls.lock().unwrap().push(prompts.len());
        prompts
            .iter()
            .map(|p| {
                let k = self.keys.of_prompt(p);
                let cands = self
                    .script
                    .get(&k)
                    .ok_or_else(|| ModelError::Request(format!("unscripted leaf {k}")))?;
                Ok(cands.iter().map(|c| completion(c)).collect())
            })
            .collect()
    }
    fn name(&self) -> String {
        "scripted".into()
    }
}

/// Returns the scripted score of each partial solution; records what it was asked.
struct ScriptedPpm {
    keys: Keys,
    scores: HashMap<String, f32>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Scorer for ScriptedPpm {
    fn score(&mut self, items: &[(&str, &str)]) -> Result<Vec<f32>, ModelError> {
        items
            .iter()
            .map(|(q, p)| {
                let k = self.keys.of_item(q, p);
                self.asked.lock().unwrap().push(k.clone());
                self.scores
                    .get(&k)
                    .copied()
                    .ok_or_else(|| ModelError::Request(format!("unscripted PPM input {k}")))
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct ProblemSpec {
    id: String,
    question: String,
    reference: Option<String>,
}

#[derive(Deserialize)]
struct NodeSpec {
    visits: u32,
    q: f32,
    terminal: Option<Terminal>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    correct: Option<bool>,
    #[serde(default)]
    output: Option<String>,
}

#[derive(Deserialize)]
struct TreeSpec {
    rollouts: usize,
    nodes: HashMap<String, NodeSpec>,
}

#[derive(Deserialize)]
struct Fixture {
    name: String,
    config: SearchConfig,
    problems: Vec<ProblemSpec>,
    script: HashMap<String, Vec<String>>,
    ppm: HashMap<String, f32>,
    expected: HashMap<String, TreeSpec>,
    policy_calls: Vec<usize>,
    #[serde(default)]
    ppm_scored: Option<Vec<String>>,
}

fn exec_pool() -> ExecPool {
    ExecPool::new(ExecConfig {
        workers: 2,
        ..ExecConfig::default()
    })
    .expect("the Python executor starts")
}

fn node_label(text: &str) -> Option<String> {
    labels(text).pop()
}

fn check_fixture(path: &Path, exec: &mut ExecPool, backend: BackendKind) {
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let problems: Vec<SearchProblem> = fx
        .problems
        .iter()
        .map(|p| SearchProblem {
            id: p.id.clone(),
            question: p.question.clone(),
            reference: p.reference.clone(),
        })
        .collect();
    let keys = Keys::new(&problems);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut policy = ScriptedPolicy {
        keys: keys.clone(),
        script: fx.script.clone(),
        calls: calls.clone(),
    };
    let mut ppm = ScriptedPpm {
        keys,
        scores: fx.ppm.clone(),
        asked: asked.clone(),
    };
    let grader = Grader::quick();
    let mut eng = Engines {
        policy: &mut policy,
        tokenizer: None,
        exec,
        ppm: (!fx.ppm.is_empty()).then_some(&mut ppm as &mut dyn Scorer),
        grader: &grader,
    };
    let (trees, stats) = search(&mut eng, &problems, &fx.config, backend)
        .unwrap_or_else(|e| panic!("{}: {e}", fx.name));
    assert_eq!(
        *calls.lock().unwrap(),
        fx.policy_calls,
        "{}: prompts per policy call",
        fx.name
    );
    assert!(stats.steps >= fx.policy_calls.len());
    if let Some(want) = &fx.ppm_scored {
        let mut got = asked.lock().unwrap().clone();
        got.sort();
        let mut want = want.clone();
        want.sort();
        assert_eq!(got, want, "{}: what the PPM was asked", fx.name);
    }
    for tree in &trees {
        tree.check().unwrap();
        let spec = &fx.expected[&tree.id];
        assert_eq!(
            tree.rollouts, spec.rollouts,
            "{} {}: rollouts",
            fx.name, tree.id
        );
        let mut seen = Vec::new();
        for n in &tree.nodes {
            let label = if n.id == 0 {
                "root".to_string()
            } else {
                node_label(&n.text).expect("labelled step")
            };
            let want = spec.nodes.get(&label).unwrap_or_else(|| {
                panic!(
                    "{} {}: unexpected node {label}\n{}",
                    fx.name,
                    tree.id,
                    tree.render_text()
                )
            });
            let ctx = format!(
                "{} {} node {label}\n{}",
                fx.name,
                tree.id,
                tree.render_text()
            );
            assert_eq!(n.visits, want.visits, "visits of {ctx}");
            assert!(
                (n.q - want.q).abs() < 1e-5,
                "Q {} vs {} of {ctx}",
                n.q,
                want.q
            );
            assert_eq!(n.terminal, want.terminal, "terminal kind of {ctx}");
            if n.terminal == Some(Terminal::Answer) {
                assert_eq!(n.answer, want.answer, "answer of {ctx}");
                assert_eq!(n.correct, want.correct, "correctness of {ctx}");
            }
            if let Some(o) = &want.output {
                assert_eq!(
                    n.output.as_deref().map(str::trim),
                    Some(o.as_str()),
                    "output of {ctx}"
                );
            }
            seen.push(label);
        }
        assert_eq!(
            seen.len(),
            spec.nodes.len(),
            "{} {}: node count",
            fx.name,
            tree.id
        );
    }
}

#[test]
fn golden_trees_on_every_cpu_path() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/search");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "golden fixtures missing in {}",
        dir.display()
    );
    let mut exec = exec_pool();
    for f in &files {
        check_fixture(f, &mut exec, BackendKind::Cpu);
    }
}

#[test]
fn golden_trees_on_wgpu() {
    // lavapipe in CI: the same trees from the compute shaders.
    if let Err(e) = rstar_gpu::forest::wgpu::available() {
        panic!("wgpu must be available (lavapipe in CI): {e}");
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/search");
    let mut exec = exec_pool();
    for name in ["terminal_guided.json", "virtual_loss.json"] {
        check_fixture(&dir.join(name), &mut exec, BackendKind::Wgpu);
    }
}

// ---- batch isolation ----

/// SplitMix-style hash of a string.
fn h(s: &str) -> u64 {
    let mut z = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |a, b| {
        (a ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

/// A policy whose candidates are a pure function of the prompt text: code steps (some failing),
/// answers (some right), duplicates and cut-off steps.
struct HashPolicy;

impl Policy for HashPolicy {
    fn generate(
        &mut self,
        prompts: &[String],
        n: usize,
        _s: &SamplingParams,
        _stop: &[String],
    ) -> Result<Vec<Vec<Completion>>, ModelError> {
        Ok(prompts
            .iter()
            .map(|p| {
                let depth = p.matches("[S").count();
                (0..n)
                    .map(|j| {
                        let r = h(&format!("{p}#{}", j / 2)); // pairs of duplicates
                        let label = format!("S{}", r % 1_000_000);
                        let text = match (r >> 20) % 8 {
                            0 | 1 if depth >= 1 => format!(
                                "<answer>[{label}] \\boxed{{{}}}\n<end_of_answer>",
                                (r >> 40) % 4
                            ),
                            2 => format!("# [{label}]\nv{depth} = 1 / 0\n<end_of_step>"),
                            3 => format!("# [{label}] cut off\nv{depth} = "),
                            4 => format!(
                                "# [{label}]\nprint(v{} if {depth} > 0 else 0)\n<end_of_code>",
                                depth.saturating_sub(1)
                            ),
                            _ => {
                                format!("# [{label}]\nv{depth} = {}\n<end_of_step>", (r >> 40) % 5)
                            }
                        };
                        completion(&text)
                    })
                    .collect()
            })
            .collect())
    }
    fn name(&self) -> String {
        "hash".into()
    }
}

struct HashPpm;

impl Scorer for HashPpm {
    fn score(&mut self, items: &[(&str, &str)]) -> Result<Vec<f32>, ModelError> {
        Ok(items
            .iter()
            .map(|(q, p)| ((h(&format!("{q}|{p}")) % 2001) as f32 / 1000.0) - 1.0)
            .collect())
    }
}

fn run_isolated(
    problems: &[SearchProblem],
    exec: &mut ExecPool,
    cfg: &SearchConfig,
) -> Vec<SearchTree> {
    let grader = Grader::quick();
    let mut policy = HashPolicy;
    let mut ppm = HashPpm;
    let mut eng = Engines {
        policy: &mut policy,
        tokenizer: None,
        exec,
        ppm: Some(&mut ppm),
        grader: &grader,
    };
    search(&mut eng, problems, cfg, BackendKind::Cpu).unwrap().0
}

#[test]
fn a_problem_searches_the_same_alone_and_in_a_batch_of_64() {
    let problems: Vec<SearchProblem> = (0..64)
        .map(|i| SearchProblem {
            id: format!("q{i}"),
            // Some questions repeat: identical problems must not share anything either.
            question: format!("Question number {}", i % 48),
            reference: Some(format!("{}", i % 4)),
        })
        .collect();
    let cfg = SearchConfig {
        mode: rstar_gpu::search::Mode::PpmAugmented,
        candidates: 4,
        rollouts: 4,
        max_depth: 4,
        leaves_per_step: 2,
        errors_threshold: 2,
        ..SearchConfig::default()
    };
    let mut exec = exec_pool();
    let batch = run_isolated(&problems, &mut exec, &cfg);
    assert_eq!(batch.len(), 64);
    let total_nodes: usize = batch.iter().map(|t| t.nodes.len()).sum();
    assert!(
        total_nodes > 64 * 4,
        "the search grew trees ({total_nodes} nodes)"
    );
    assert!(batch.iter().any(|t| t.covered()) && batch.iter().any(|t| !t.covered()));
    for i in [0usize, 1, 17, 48, 63] {
        let alone = run_isolated(&problems[i..i + 1], &mut exec, &cfg);
        assert_eq!(alone[0], batch[i], "problem {i}: alone vs in the batch");
    }
    // Two copies of the same question in one batch grow identical trees (apart from the id and
    // reference, which differ here only where i % 4 differs).
    let (a, b) = (&batch[0], &batch[48]);
    assert_eq!(a.question, b.question);
    assert_eq!(a.nodes, b.nodes);
}
