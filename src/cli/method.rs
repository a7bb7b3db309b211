//! What `eval` and `solve` share: the method flags, loading the policy / PPM / executor once, and
//! running one method over a batch of problems into per-problem [`Outcome`]s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rstar_gpu::data::Problem;
use rstar_gpu::exec::{ExecConfig, ExecPool};
use rstar_gpu::forest::BackendKind;
use rstar_gpu::grade::Grader;
use rstar_gpu::model::generate::LocalPolicy;
use rstar_gpu::model::openai::OpenAiPolicy;
use rstar_gpu::model::ppm::Ppm;
use rstar_gpu::model::tokenizer::Tokenizer;
use rstar_gpu::model::transformer::{Transformer, WeightMode};
use rstar_gpu::model::Policy;
use rstar_gpu::search::greedy::{self, GreedyConfig};
use rstar_gpu::search::sample::{self, SampleConfig};
use rstar_gpu::search::vote::{pick, Scored};
use rstar_gpu::search::{
    AnswerRule, Engines, Mode, PromptStyle, SearchConfig, SearchProblem, SearchStats, SearchTree,
};

/// The answering methods.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// One candidate per step, temperature 0.
    Greedy,
    /// Self-consistency: `--samples` sampled solutions, majority vote (grader equivalence).
    Sc,
    /// Best-of-N: `--samples` sampled solutions, the PPM's highest-scored one.
    Bon,
    /// rStar-Math's MCTS (code prompt), the answer picked by `--answer-rule`.
    Mcts,
}

/// Flags shared by `eval` and `solve`.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// Prompt of greedy / sc / bon: `code` (rStar's code-augmented steps, run in the sandbox) or
    /// `plain` (free text, answer in \boxed{}). MCTS always uses `code`.
    #[arg(long, value_enum, default_value_t = PromptStyle::Code)]
    pub prompt: PromptStyle,
    /// Policy: an asset name, a .gguf file, a Hugging Face directory, or an OpenAI-compatible
    /// server URL (http://host:port/v1[#model]).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    pub model: String,
    /// Weights in memory for local models: as stored (`quantized`) or f32 (`dense`).
    #[arg(long, default_value = "quantized", value_parser = ["quantized", "dense"])]
    pub weights: String,
    /// PPM for bon and mcts: a directory written by `train ppm` (ppm.json +
    /// value_head.safetensors), or `untrained` for the policy's backbone with a random head (a
    /// smoke check only). Without it, MCTS in test mode scores every node 0 and picks answers by
    /// majority. Given to sc, the PPM's Best-of-N pick on the same samples is recorded beside the
    /// majority vote (`bon_answer`, `bon_correct`, summary `bon_accuracy`).
    #[arg(long)]
    pub ppm: Option<String>,
    /// Solutions per problem for sc and bon.
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Sampling temperature (sc, bon, mcts).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampler seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// MCTS settings from a TOML file (keys as in SearchConfig: mode, c, max_depth, candidates,
    /// rollouts, leaves_per_step, virtual_loss, errors_threshold, temperature, top_p,
    /// step_tokens, seed, answer_rule, vote_top_k); the flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// MCTS value mode. `test` (the default) never reads the reference answer; the other two are
    /// the self-evolution modes and need it.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// MCTS rollouts per problem (paper: 16).
    #[arg(long)]
    pub rollouts: Option<usize>,
    /// MCTS candidate steps per expansion (paper: 8).
    #[arg(long)]
    pub candidates: Option<usize>,
    /// Most steps per solution (paper: 16).
    #[arg(long)]
    pub max_depth: Option<usize>,
    /// MCTS: when a candidate step holds an answer, keep only it (`true`, rStar's rule) or keep it
    /// beside the non-answer candidates (`false`).
    #[arg(long)]
    pub answer_only: Option<bool>,
    /// MCTS leaves per tree per step (virtual loss).
    #[arg(long)]
    pub leaves_per_step: Option<usize>,
    /// MCTS exploration constant c (paper: 2).
    #[arg(long)]
    pub c: Option<f32>,
    /// How MCTS picks its answer: `best` (highest value; with a PPM, the highest PPM-scored
    /// trajectory), `vote` (top-K weighted vote), `majority`. Default: best with a PPM or in the
    /// training modes, majority in test mode without a PPM.
    #[arg(long, value_enum)]
    pub answer_rule: Option<AnswerRule>,
    /// K of `--answer-rule vote`.
    #[arg(long)]
    pub vote_top_k: Option<usize>,
    /// Forest backend for MCTS (default: the best available: cuda, then a hardware wgpu
    /// adapter, then cpu).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Most new tokens per step (greedy code prompt, mcts) or per solution (plain prompt, and the
    /// code block of sc / bon).
    #[arg(long)]
    pub max_tokens: Option<usize>,
}

/// One problem's result under any method.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub answer: Option<String>,
    /// The chosen solution text.
    pub solution: String,
    /// Policy tokens for this problem.
    pub tokens: usize,
    pub steps: usize,
    /// How a greedy solution ended.
    pub end: Option<greedy::End>,
    pub error: Option<String>,
    /// The chosen answer's score (PPM or node value), where there is one.
    pub score: Option<f32>,
    /// Distinct trajectories or samples that reached an answer.
    pub n_answers: usize,
    /// All extracted answers (sc / bon / mcts), for coverage.
    pub all_answers: Vec<String>,
    pub tree: Option<SearchTree>,
    /// `sc` with a PPM: the Best-of-N pick on the same samples (answer, PPM score), so the two
    /// rules are compared without sampling noise between them.
    pub bon: Option<(Option<String>, Option<f32>)>,
}

/// A loaded policy and what belongs with it.
pub struct Loaded {
    pub policy: Box<dyn Policy>,
    pub tokenizer: Option<Tokenizer>,
    pub model: Option<Arc<Transformer>>,
}

/// Loads a policy from a spec; local models also return their tokenizer and weights.
pub fn load_policy(spec: &str, weights: &str) -> Result<Loaded> {
    if spec.starts_with("http://") || spec.starts_with("https://") {
        let mut p = OpenAiPolicy::from_url(spec).map_err(|e| anyhow::anyhow!("{e}"))?;
        if p.model().is_none() {
            p.resolve_model().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        return Ok(Loaded {
            policy: Box::new(p),
            tokenizer: None,
            model: None,
        });
    }
    let path = rstar_gpu::assets::model_path(spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mode = if weights == "dense" {
        WeightMode::Dequantized
    } else {
        WeightMode::Quantized
    };
    let t = Instant::now();
    let p = LocalPolicy::load(&path, mode, &candle_core::Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(model = %path.display(), secs = t.elapsed().as_secs_f64(), "policy loaded");
    let tok = p.tokenizer().clone();
    let model = p.model().clone();
    Ok(Loaded {
        policy: Box::new(p),
        tokenizer: Some(tok),
        model: Some(model),
    })
}

/// Everything a method needs, loaded once.
pub struct Runner {
    pub method: Method,
    pub args: MethodArgs,
    pub loaded: Loaded,
    pub exec: Option<ExecPool>,
    pub ppm: Option<Ppm>,
    pub grader: Grader,
    pub search: SearchConfig,
    pub backend: BackendKind,
    pub stats: SearchStats,
}

impl Runner {
    pub fn new(method: Method, args: MethodArgs) -> Result<Runner> {
        let mut search = match &args.config {
            Some(p) => SearchConfig::from_toml_file(p).map_err(|e| anyhow::anyhow!("{e}"))?,
            None => SearchConfig {
                mode: Mode::Test,
                ..SearchConfig::default()
            },
        };
        // Each flag given overrides the config file (or the defaults).
        macro_rules! overrides {
            ($($f:ident),*) => {$(
                if let Some(v) = args.$f {
                    search.$f = v;
                }
            )*};
        }
        overrides!(
            mode,
            rollouts,
            candidates,
            max_depth,
            answer_only,
            leaves_per_step,
            c,
            temperature,
            seed,
            vote_top_k
        );
        if let Some(v) = args.max_tokens {
            search.step_tokens = v;
        }
        search.answer_rule = match args.answer_rule {
            Some(r) => r,
            None if args.ppm.is_none() && search.mode == Mode::Test => AnswerRule::Majority,
            None if args.config.is_some() => search.answer_rule,
            None => AnswerRule::Best,
        };
        search.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(args.samples >= 1, "--samples must be at least 1");
        if method == Method::Bon && args.ppm.is_none() {
            anyhow::bail!(
                "--method bon needs a PPM: --ppm DIR (trained), or --ppm untrained for a smoke run"
            );
        }
        if method == Method::Mcts && search.mode == Mode::PpmAugmented && args.ppm.is_none() {
            anyhow::bail!("--mode ppm-augmented needs a PPM: --ppm DIR or --ppm untrained");
        }
        let backend = args
            .backend
            .unwrap_or_else(rstar_gpu::forest::backend::best_available);
        let loaded = load_policy(&args.model, &args.weights)?;
        let needs_exec = method == Method::Mcts || args.prompt == PromptStyle::Code;
        let exec = if needs_exec {
            Some(ExecPool::new(ExecConfig::default()).context("starting the Python executor")?)
        } else {
            None
        };
        let ppm = match (&args.ppm, method) {
            (Some(spec), Method::Sc | Method::Bon | Method::Mcts) => {
                Some(load_ppm(spec, &args, &loaded)?)
            }
            _ => None,
        };
        Ok(Runner {
            method,
            args,
            loaded,
            exec,
            ppm,
            grader: Grader::with_sympy(),
            search,
            backend,
            stats: SearchStats::default(),
        })
    }

    /// Runs the method on `problems` (one batch); outcomes in order.
    pub fn run(&mut self, problems: &[&Problem]) -> Result<Vec<Outcome>> {
        match self.method {
            Method::Greedy => self.run_greedy(problems),
            Method::Sc | Method::Bon => self.run_samples(problems),
            Method::Mcts => self.run_mcts(problems),
        }
    }

    fn run_greedy(&mut self, problems: &[&Problem]) -> Result<Vec<Outcome>> {
        let mut cfg = GreedyConfig {
            style: self.args.prompt,
            ..GreedyConfig::default()
        };
        if let Some(d) = self.args.max_depth {
            cfg.max_depth = d;
        }
        if let Some(t) = self.args.max_tokens {
            cfg.step_tokens = t;
            cfg.plain_tokens = t;
        }
        let questions: Vec<&str> = problems.iter().map(|p| p.question.as_str()).collect();
        let solved = greedy::solve(
            self.loaded.policy.as_mut(),
            self.loaded.tokenizer.as_ref(),
            self.exec.as_mut(),
            &questions,
            &cfg,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(solved
            .into_iter()
            .map(|s| {
                let answer = rstar_gpu::grade::extract_answer(&s.solution, s.printed.as_deref())
                    .map(|e| e.answer);
                Outcome {
                    all_answers: answer.iter().cloned().collect(),
                    n_answers: answer.is_some() as usize,
                    answer,
                    solution: s.solution,
                    tokens: s.tokens,
                    steps: s.steps,
                    end: Some(s.end),
                    error: s.error,
                    ..Outcome::default()
                }
            })
            .collect())
    }

    fn run_samples(&mut self, problems: &[&Problem]) -> Result<Vec<Outcome>> {
        let mut cfg = SampleConfig {
            style: self.args.prompt,
            n: self.args.samples,
            ..SampleConfig::default()
        };
        if let Some(t) = self.args.temperature {
            cfg.temperature = t;
        }
        if let Some(s) = self.args.seed {
            cfg.seed = s;
        }
        if let Some(t) = self.args.max_tokens {
            cfg.solution_tokens = t;
        }
        let questions: Vec<&str> = problems.iter().map(|p| p.question.as_str()).collect();
        let samples = sample::sample(
            self.loaded.policy.as_mut(),
            self.loaded.tokenizer.as_ref(),
            self.exec.as_mut(),
            &questions,
            &cfg,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut out = Vec::with_capacity(samples.len());
        for (p, row) in problems.iter().zip(samples) {
            let tokens = row.iter().map(|s| s.tokens).sum();
            let answered: Vec<&sample::Sample> =
                row.iter().filter(|s| s.answer.is_some()).collect();
            let all_answers: Vec<String> =
                answered.iter().filter_map(|s| s.answer.clone()).collect();
            let mut bon: Option<(Option<&sample::Sample>, Option<f32>)> = None;
            if let Some(ppm) = self.ppm.as_ref() {
                let items: Vec<(&str, &str)> = answered
                    .iter()
                    .map(|s| (p.question.as_str(), s.solution.as_str()))
                    .collect();
                let t = Instant::now();
                let scores = ppm.score(&items).map_err(|e| anyhow::anyhow!("PPM: {e}"))?;
                self.stats.ppm_secs += t.elapsed().as_secs_f64();
                if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
                    anyhow::bail!("PPM: problem {}: score {bad} is not finite", p.id);
                }
                let scored: Vec<Scored<'_>> = answered
                    .iter()
                    .zip(&scores)
                    .map(|(s, &v)| Scored {
                        answer: s.answer.as_deref().unwrap_or_default(),
                        score: v,
                    })
                    .collect();
                bon = Some(match pick(&self.grader, &scored, AnswerRule::Best, 1) {
                    Some(k) => (Some(answered[k.index]), Some(scores[k.index])),
                    None => (None, None),
                });
            }
            let (chosen, score) = match (self.method, bon) {
                (Method::Bon, Some(b)) => b,
                (Method::Bon, None) => anyhow::bail!("Best-of-N needs a PPM"),
                _ => {
                    let scored: Vec<Scored<'_>> = answered
                        .iter()
                        .map(|s| Scored {
                            answer: s.answer.as_deref().unwrap_or_default(),
                            score: 0.0,
                        })
                        .collect();
                    match pick(&self.grader, &scored, AnswerRule::Majority, 1) {
                        Some(k) => (Some(answered[k.index]), Some(k.votes)),
                        None => (None, None),
                    }
                }
            };
            out.push(Outcome {
                answer: chosen.and_then(|s| s.answer.clone()),
                solution: chosen
                    .map(|s| s.solution.clone())
                    .or_else(|| row.first().map(|s| s.solution.clone()))
                    .unwrap_or_default(),
                tokens,
                steps: 1,
                error: chosen
                    .is_none()
                    .then(|| row.iter().find_map(|s| s.error.clone()))
                    .flatten(),
                score,
                n_answers: answered.len(),
                all_answers,
                bon: (self.method == Method::Sc)
                    .then_some(bon)
                    .flatten()
                    .map(|(c, sc)| (c.and_then(|s| s.answer.clone()), sc)),
                ..Outcome::default()
            });
        }
        Ok(out)
    }

    fn run_mcts(&mut self, problems: &[&Problem]) -> Result<Vec<Outcome>> {
        let sp: Vec<SearchProblem> = problems
            .iter()
            .map(|p| SearchProblem {
                id: p.id.clone(),
                question: p.question.clone(),
                reference: p.answer.clone().filter(|a| !a.trim().is_empty()),
            })
            .collect();
        let exec = self.exec.as_mut().context("MCTS needs the executor")?;
        let mut eng = Engines {
            policy: self.loaded.policy.as_mut(),
            tokenizer: self.loaded.tokenizer.as_ref(),
            exec,
            ppm: self
                .ppm
                .as_mut()
                .map(|p| p as &mut dyn rstar_gpu::search::Scorer),
            grader: &self.grader,
        };
        let (trees, stats) = rstar_gpu::search::search(&mut eng, &sp, &self.search, self.backend)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.stats.add(&stats);
        Ok(trees
            .into_iter()
            .map(|t| {
                let chosen = t.pick(
                    &self.grader,
                    self.search.answer_rule,
                    self.search.vote_top_k,
                );
                let answers = t.answers();
                Outcome {
                    answer: chosen.as_ref().map(|c| c.answer.clone()),
                    solution: chosen
                        .as_ref()
                        .map(|c| t.solution(c.node))
                        .unwrap_or_default(),
                    tokens: t.policy_tokens,
                    steps: chosen.as_ref().map_or(0, |c| t.path(c.node).len()),
                    score: chosen.as_ref().map(|c| c.value),
                    n_answers: answers.len(),
                    all_answers: answers.into_iter().map(|a| a.answer).collect(),
                    tree: Some(t),
                    ..Outcome::default()
                }
            })
            .collect())
    }
}

/// `--ppm untrained` (the policy's backbone with a random head) or a saved PPM directory (its
/// backbone shared with the policy when the spec is the same).
fn load_ppm(spec: &str, args: &MethodArgs, loaded: &Loaded) -> Result<Ppm> {
    if spec == "untrained" {
        let (Some(model), Some(tok)) = (&loaded.model, &loaded.tokenizer) else {
            anyhow::bail!("--ppm untrained needs a local policy model (not a server URL)");
        };
        tracing::warn!("using an untrained PPM head: scores are noise (smoke check only)");
        return Ok(Ppm::new(model.clone(), tok.clone(), &args.model, 0));
    }
    let dir = PathBuf::from(spec);
    Ppm::load(&dir, |backbone| {
        if backbone == args.model {
            if let (Some(m), Some(t)) = (&loaded.model, &loaded.tokenizer) {
                return Ok((m.clone(), t.clone()));
            }
        }
        let path = rstar_gpu::assets::model_path(backbone)
            .map_err(|e| rstar_gpu::model::ModelError::Request(e.to_string()))?;
        let p = LocalPolicy::load(&path, WeightMode::Quantized, &candle_core::Device::Cpu)?;
        Ok((p.model().clone(), p.tokenizer().clone()))
    })
    .map_err(|e| anyhow::anyhow!("loading the PPM from {}: {e}", dir.display()))
}
