//! A [`Policy`] backed by an OpenAI-compatible `/v1/completions` server: vLLM, SGLang,
//! llama.cpp's `llama-server`, `llama-cpp-python`'s `python -m llama_cpp.server`, or anything
//! else that speaks the (legacy, non-chat) completions API.
//!
//! ```no_run
//! use rstar_gpu::model::openai::OpenAiPolicy;
//! use rstar_gpu::model::{Policy, SamplingParams};
//!
//! // The served model is asked for (GET /v1/models) when the spec names none; `URL#model` names one.
//! let mut policy = OpenAiPolicy::from_url("http://127.0.0.1:8000/v1")?;
//! let prompts = vec!["1 + 1 =".to_string(), "2 + 2 =".to_string()];
//! let sampling = SamplingParams { temperature: 0.7, max_tokens: 64, ..SamplingParams::default() };
//! let out = policy.generate(&prompts, 4, &sampling, &["\n\n".to_string()])?;
//! assert_eq!((out.len(), out[0].len()), (2, 4)); // [prompt][sample]
//! # Ok::<(), rstar_gpu::model::ModelError>(())
//! ```
//!
//! # Requests
//!
//! Each request is a `POST {base}/completions` with `model`, `prompt`, `n`, `max_tokens`,
//! `temperature`, `top_p`, `seed`, `stop` (left out when empty) and `stream: false`; `top_k` only
//! when [`SamplingParams::top_k`] is set (it is not in OpenAI's API, but vLLM, SGLang and llama.cpp
//! take it). An API key (the constructor's, else `$OPENAI_API_KEY`) goes in
//! `Authorization: Bearer`. Fields from [`OpenAiPolicy::with_extra_body`] are merged in last.
//!
//! llama.cpp servers (recognised by `owned_by` in `/v1/models`: `"me"` for llama-cpp-python,
//! `"llamacpp"` for `llama-server`) apply a repetition penalty, min-p and top-k by default, so
//! their "greedy" is not arg-max; for them the client also sends `repeat_penalty: 1`,
//! `min_p: 0` and `top_k: 0` (off), so that the sampling is what [`SamplingParams`] says.
//!
//! # Batching and ordering
//!
//! The prompts of one [`Policy::generate`] call go out as up to
//! [`with_concurrency`](OpenAiPolicy::with_concurrency) requests in flight at once (default 8),
//! each on its own thread; when there are more prompts than that, each request carries a prompt
//! *array* (at most [`with_max_prompts_per_request`](OpenAiPolicy::with_max_prompts_per_request),
//! default 64), which vLLM and SGLang batch server-side. Choices are put back in
//! `[prompt][sample]` order by their `index` (OpenAI's rule, followed by vLLM: choice
//! `index = prompt_in_request * n + sample`); when the indices are not a permutation of
//! `0..choices` the array order is used.
//!
//! Not every server does all of this. llama-cpp-python answers a prompt array of more than one
//! prompt with HTTP 500 and ignores `n` (one choice per request). The client finds out on the
//! first call that needs it, by looking at the first request's reply alone, and remembers: a
//! rejected prompt array means one prompt per request from then on, one choice where `n` were
//! asked for means `n` requests of `n = 1` per prompt, each with its own seed.
//!
//! # Seeds
//!
//! The `seed` of a request is derived from ([`SamplingParams::seed`], the index of the request's
//! first prompt, the sample index when `n` is split into requests), kept in 31 bits (llama.cpp
//! takes a 32-bit seed). Where the server produces several samples from one request, it derives
//! theirs (vLLM: `seed + sample`). So sampled (temperature > 0) results are reproducible for a
//! given server, prompt list and configuration, but not equal to the in-process backends'.
//!
//! # Finish reasons and stop strings
//!
//! - `finish_reason: "length"` → [`FinishReason::Length`].
//! - `finish_reason: "stop"` means "a stop string *or* the end-of-sequence token" and the text
//!   never contains the stop string (servers cut it off). Which one it was is read from the
//!   choice's `stop_reason` (vLLM: the matched string, a stop token id, or `null` for EOS) or
//!   `matched_stop` (SGLang, same meaning): a string → [`FinishReason::Stop`], a number or `null`
//!   → [`FinishReason::Eos`]. Servers that say nothing (llama-cpp-python, llama-server, OpenAI)
//!   cannot be told apart: the client then records `Stop(first stop string of the request)`, or
//!   `Eos` when the request had no stop strings.
//! - `"eos"` → `Eos`; any other reason (e.g. vLLM's `"abort"`) is an error.
//!
//! # Token counts
//!
//! [`Completion::tokens`] is, per choice, the length of `token_ids` (vLLM with
//! `return_token_ids`) or of `logprobs.tokens` when the server sent them. Otherwise it comes from
//! `usage.completion_tokens` of the reply (which counts the tokens of a matched stop string): all
//! of it when the reply holds one choice; else `max_tokens` for each `"length"` choice and the
//! rest split over the other choices in proportion to their text length (plus the stop string),
//! by largest remainders so the sum is kept. Without `usage`, about 4 bytes per token.
//!
//! # Errors and retries
//!
//! Connection failures, HTTP 5xx and 429 are retried (default 3 retries, backoff 250 ms doubling
//! each time); time-outs (default 600 s per request) are not. Every failure ends as one
//! [`ModelError::Http`] line naming the URL: connection refused, `HTTP <status>: <the server's
//! error message>`, a malformed reply, or a wrong number of choices.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{Completion, FinishReason, ModelError, Policy, SamplingParams};

/// Time limit of one HTTP request (connection, generation and reply) unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Requests in flight at once unless set otherwise.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Most prompts in one request's prompt array unless set otherwise.
pub const DEFAULT_MAX_PROMPTS_PER_REQUEST: usize = 64;
/// Largest reply body read (a reply of many long choices stays far below).
const MAX_REPLY_BYTES: u64 = 256 << 20;

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModel {
    /// The name to send as `model`.
    pub id: String,
    /// Who serves it: `"vllm"`, `"sglang"`, `"llamacpp"` (llama-server), `"me"`
    /// (llama-cpp-python), `"openai"`, ...
    pub owned_by: Option<String>,
    /// The context length, where the server says (vLLM's `max_model_len`).
    pub max_model_len: Option<usize>,
}

/// What the client has learned about the server's completions endpoint (`None` = not yet).
#[derive(Debug, Clone, Copy, Default)]
struct Caps {
    /// More than one prompt per request.
    prompt_arrays: Option<bool>,
    /// `n` > 1 choices per prompt in one request.
    server_n: Option<bool>,
    /// `GET /models` was asked (model resolved, flavour known where it answered).
    models_checked: bool,
    /// A llama.cpp server: send the neutral sampling knobs.
    llamacpp: bool,
}

/// A [`Policy`] that calls an OpenAI-compatible `/v1/completions` endpoint. See the
/// [module docs](self) for what is sent and how replies are read.
#[derive(Clone)]
pub struct OpenAiPolicy {
    /// `scheme://host[:port]/path`, e.g. `http://127.0.0.1:8000/v1`, without a trailing slash.
    base: String,
    model: Option<String>,
    api_key: Option<String>,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    concurrency: usize,
    max_prompts_per_request: usize,
    extra: Map<String, Value>,
    agent: ureq::Agent,
    caps: Caps,
}

impl std::fmt::Debug for OpenAiPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiPolicy")
            .field("base", &self.base)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("concurrency", &self.concurrency)
            .field("max_prompts_per_request", &self.max_prompts_per_request)
            .finish_non_exhaustive()
    }
}

impl OpenAiPolicy {
    /// A client for the server at `base_url` (`http://host:port/v1`; see [`from_url`] for the
    /// forms taken). `model: None` asks the server (`GET /v1/models`) on the first
    /// [`generate`](Policy::generate). The API key is `$OPENAI_API_KEY` when set and non-empty.
    /// Nothing is sent here.
    ///
    /// [`from_url`]: OpenAiPolicy::from_url
    pub fn new(base_url: &str, model: Option<&str>) -> Result<Self, ModelError> {
        let base = parse_base(base_url)?;
        let api_key = std::env::var("OPENAI_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty());
        let mut policy = OpenAiPolicy {
            agent: build_agent(&base, DEFAULT_TIMEOUT, DEFAULT_CONCURRENCY),
            base,
            model: model.filter(|m| !m.is_empty()).map(str::to_string),
            api_key,
            timeout: DEFAULT_TIMEOUT,
            retries: 3,
            backoff: Duration::from_millis(250),
            concurrency: DEFAULT_CONCURRENCY,
            max_prompts_per_request: DEFAULT_MAX_PROMPTS_PER_REQUEST,
            extra: Map::new(),
            caps: Caps::default(),
        };
        policy.rebuild_agent();
        Ok(policy)
    }

    /// A client from one string: `http://host:port/v1`, `http://host:port/v1/completions`,
    /// `http://host:port` (then `/v1` is added), each optionally followed by `#model-name` to
    /// name the model (otherwise the served one is asked for). `https://` works too.
    pub fn from_url(spec: &str) -> Result<Self, ModelError> {
        let spec = spec.trim();
        let (url, model) = match spec.split_once('#') {
            Some((url, model)) => (url, Some(model.trim())),
            None => (spec, None),
        };
        Self::new(url, model)
    }

    /// Name the model to request.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into()).filter(|m| !m.is_empty());
        self
    }

    /// Set (or with `None`, drop) the API key sent as `Authorization: Bearer <key>`.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.trim().is_empty());
        self
    }

    /// Time limit of one request, from connecting to the last byte of the reply.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.rebuild_agent();
        self
    }

    /// Retries after a connection failure, HTTP 5xx or 429, waiting `backoff`, then twice that, ...
    pub fn with_retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// Most requests in flight at once (at least 1).
    pub fn with_concurrency(mut self, requests_in_flight: usize) -> Self {
        self.concurrency = requests_in_flight.max(1);
        self.rebuild_agent();
        self
    }

    /// Most prompts sent in one request's prompt array (1 = never send arrays).
    pub fn with_max_prompts_per_request(mut self, prompts: usize) -> Self {
        self.max_prompts_per_request = prompts.max(1);
        self
    }

    /// Extra JSON fields merged into every completions request, last (so they override the
    /// client's own), e.g. `{"repetition_penalty": 1.05}` for vLLM.
    pub fn with_extra_body(mut self, extra: Map<String, Value>) -> Self {
        self.extra = extra;
        self
    }

    /// The base URL requests go to, e.g. `http://127.0.0.1:8000/v1`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The model requested: the one named, or the one the server reported once asked.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// `GET {base}/models`: the models the server serves (retried like a completion).
    pub fn list_models(&self) -> Result<Vec<ServedModel>, ModelError> {
        let url = format!("{}/models", self.base);
        let reply = self
            .request(&url, None, true)
            .map_err(|e| e.into_model(&url))?;
        let data = reply
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| http(&url, "malformed reply: no `data` array of models"))?;
        data.iter()
            .map(|m| {
                let id = m
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| http(&url, "malformed reply: a model without an `id`"))?;
                Ok(ServedModel {
                    id: id.to_string(),
                    owned_by: m
                        .get("owned_by")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    max_model_len: m
                        .get("max_model_len")
                        .and_then(Value::as_u64)
                        .map(|l| l as usize),
                })
            })
            .collect()
    }

    /// The model to request: the one named, else the first one the server lists. Asks
    /// `GET /v1/models` once (also to recognise a llama.cpp server); when a model is named, a
    /// server without that endpoint is no error.
    pub fn resolve_model(&mut self) -> Result<String, ModelError> {
        if !self.caps.models_checked {
            let named = self.model.clone();
            match self.list_models() {
                Ok(models) => {
                    let chosen = match &named {
                        Some(name) => models.iter().find(|m| &m.id == name),
                        None => models.first(),
                    };
                    if named.is_none() {
                        let first = chosen.ok_or_else(|| {
                            http(
                                &format!("{}/models", self.base),
                                "the server lists no models",
                            )
                        })?;
                        self.model = Some(first.id.clone());
                    }
                    self.caps.llamacpp = chosen
                        .and_then(|m| m.owned_by.as_deref())
                        .is_some_and(|o| o == "me" || o == "llamacpp");
                }
                Err(e) if named.is_none() => return Err(e),
                Err(_) => {}
            }
            self.caps.models_checked = true;
        }
        Ok(self.model.clone().unwrap_or_default())
    }

    fn rebuild_agent(&mut self) {
        self.agent = build_agent(&self.base, self.timeout, self.concurrency);
    }

    fn completions_url(&self) -> String {
        format!("{}/completions", self.base)
    }

    /// One request (GET without a body, else POST of JSON), retried on connection failures,
    /// 5xx and 429 when `retry`. Returns the parsed JSON reply of a 2xx.
    fn request(&self, url: &str, body: Option<&Value>, retry: bool) -> Result<Value, CallError> {
        let mut attempt = 0u32;
        loop {
            let result = self.request_once(url, body);
            let again = match &result {
                Err(CallError::Transport { retryable, .. }) => *retryable,
                Err(CallError::Status { code, .. }) => *code >= 500 || *code == 429,
                _ => false,
            };
            if !(again && retry && attempt < self.retries) {
                return result;
            }
            std::thread::sleep(self.backoff.saturating_mul(1u32 << attempt.min(16)));
            attempt += 1;
        }
    }

    fn request_once(&self, url: &str, body: Option<&Value>) -> Result<Value, CallError> {
        let auth = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let sent = match body {
            None => {
                let mut req = self.agent.get(url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            Some(body) => {
                let mut req = self.agent.post(url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send_json(body)
            }
        };
        let mut resp = sent.map_err(|e| transport_error(e, self.timeout))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| transport_error(e, self.timeout))?;
        if !(200..300).contains(&status) {
            return Err(CallError::Status {
                code: status,
                msg: server_message(&text),
            });
        }
        serde_json::from_str(&text).map_err(|e| {
            CallError::Malformed(format!("reply is not JSON ({e}): {}", snippet(&text, 200)))
        })
    }

    /// The JSON body of a completions request for `prompts` (one string or an array).
    fn body(
        &self,
        model: &str,
        prompts: &[String],
        n: usize,
        seed: u64,
        s: &SamplingParams,
        stop: &[String],
    ) -> Value {
        let prompt = match prompts {
            [one] => Value::String(one.clone()),
            many => json!(many),
        };
        let mut body = json!({
            "model": model,
            "prompt": prompt,
            "n": n,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": seed,
            "stream": false,
        });
        let obj = body.as_object_mut().expect("a JSON object");
        if !stop.is_empty() {
            obj.insert("stop".into(), json!(stop));
        }
        if self.caps.llamacpp {
            obj.insert("repeat_penalty".into(), json!(1.0));
            obj.insert("min_p".into(), json!(0.0));
            obj.insert("top_k".into(), json!(0));
        }
        if let Some(k) = s.top_k {
            obj.insert("top_k".into(), json!(k));
        }
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        body
    }

    /// Send one job; its completions in the job's order (prompt-major, then sample).
    fn run_job(
        &self,
        job: &Job,
        model: &str,
        prompts: &[String],
        s: &SamplingParams,
        stop: &[String],
        retry: bool,
    ) -> Result<Vec<Completion>, CallError> {
        let body = self.body(
            model,
            &prompts[job.prompts.clone()],
            job.n,
            job.seed,
            s,
            stop,
        );
        let reply = self.request(&self.completions_url(), Some(&body), retry)?;
        parse_completions(&reply, s.max_tokens, stop)
    }

    /// Run `jobs` on up to `concurrency` threads; the first error (in job order) wins.
    fn run_jobs(
        &self,
        jobs: &[Job],
        model: &str,
        prompts: &[String],
        s: &SamplingParams,
        stop: &[String],
        done: Vec<Option<Vec<Completion>>>,
    ) -> Result<Vec<Vec<Completion>>, CallError> {
        let results: Mutex<Vec<Option<JobResult>>> =
            Mutex::new(done.into_iter().map(|d| d.map(Ok)).collect());
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let todo: Vec<usize> = {
            let r = results.lock().expect("not poisoned");
            (0..jobs.len()).filter(|&j| r[j].is_none()).collect()
        };
        let threads = self.concurrency.min(todo.len());
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= todo.len() || failed.load(Ordering::Relaxed) {
                return;
            }
            let j = todo[i];
            let job = &jobs[j];
            let result = self
                .run_job(job, model, prompts, s, stop, true)
                .and_then(|c| {
                    let want = job.prompts.len() * job.n;
                    if c.len() == want {
                        Ok(c)
                    } else {
                        Err(CallError::Count {
                            got: c.len(),
                            want,
                            prompts: job.prompts.len(),
                            n: job.n,
                        })
                    }
                });
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            results.lock().expect("not poisoned")[j] = Some(result);
        };
        if threads <= 1 {
            work();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(work);
                }
            });
        }
        let results = results.into_inner().expect("not poisoned");
        let mut out = Vec::with_capacity(results.len());
        let mut skipped = false;
        for r in results {
            match r {
                Some(Ok(c)) => out.push(c),
                Some(Err(e)) => return Err(e),
                None => skipped = true,
            }
        }
        assert!(!skipped, "a job was skipped without an error");
        Ok(out)
    }
}

/// The completions of one job, or why there are none.
type JobResult = Result<Vec<Completion>, CallError>;

/// One request of a generate call: a range of prompts and `n` choices each.
#[derive(Debug, Clone)]
struct Job {
    prompts: std::ops::Range<usize>,
    /// Choices per prompt asked of the server.
    n: usize,
    /// `Some(j)`: this request produces sample `j` only (the server's `n` is not used).
    sample: Option<usize>,
    seed: u64,
}

/// The requests for `p` prompts × `n` samples: prompt chunks of `chunk`; one request of `n`
/// choices per chunk, or (`split_n`) `n` requests of one choice each.
fn plan(p: usize, n: usize, chunk: usize, split_n: bool, seed: u64) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut start = 0;
    while start < p {
        let end = (start + chunk).min(p);
        if split_n {
            for j in 0..n {
                let seed = derive_seed(seed, start, Some(j));
                jobs.push(Job {
                    prompts: start..end,
                    n: 1,
                    sample: Some(j),
                    seed,
                });
            }
        } else {
            jobs.push(Job {
                prompts: start..end,
                n,
                sample: None,
                seed: derive_seed(seed, start, None),
            });
        }
        start = end;
    }
    jobs
}

/// A 31-bit seed from (seed, first prompt, sample): splitmix64 of the three.
fn derive_seed(seed: u64, prompt: usize, sample: Option<usize>) -> u64 {
    let mut z = seed
        ^ (prompt as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ sample.map_or(0, |s| (s as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 0x7FFF_FFFF
}

impl Policy for OpenAiPolicy {
    fn generate(
        &mut self,
        prompts: &[String],
        n: usize,
        sampling: &SamplingParams,
        stop: &[String],
    ) -> Result<Vec<Vec<Completion>>, ModelError> {
        let url = self.completions_url();
        sampling.validate(n.max(1))?;
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        if n == 0 {
            return Ok(vec![Vec::new(); prompts.len()]);
        }
        let model = self.resolve_model()?;
        let p = prompts.len();
        loop {
            let chunk = if self.caps.prompt_arrays == Some(false) {
                1
            } else {
                p.div_ceil(self.concurrency)
                    .min(self.max_prompts_per_request)
            };
            let split_n = n > 1 && self.caps.server_n == Some(false);
            let jobs = plan(p, n, chunk, split_n, sampling.seed);
            let probe_arrays = chunk > 1 && self.caps.prompt_arrays.is_none();
            let probe_n = n > 1 && !split_n && self.caps.server_n.is_none();
            let mut done: Vec<Option<Vec<Completion>>> = vec![None; jobs.len()];
            if probe_arrays || probe_n {
                // The first request alone, to learn what the server does with arrays and `n`.
                let job = &jobs[0];
                match self.run_job(job, &model, prompts, sampling, stop, !probe_arrays) {
                    Err(CallError::Status { .. }) if probe_arrays => {
                        self.caps.prompt_arrays = Some(false);
                        continue;
                    }
                    Err(e) => return Err(e.into_model(&url)),
                    Ok(c) => {
                        let (got, k, m) = (c.len(), job.prompts.len(), job.n);
                        if got == k * m {
                            if probe_arrays {
                                self.caps.prompt_arrays = Some(true);
                            }
                            if probe_n {
                                self.caps.server_n = Some(true);
                            }
                            done[0] = Some(c);
                        } else if probe_arrays && probe_n && (got == 1 || (got == k && k == m)) {
                            // Neither arrays nor `n` (or it cannot be told which): one of each.
                            self.caps.prompt_arrays = Some(false);
                            self.caps.server_n = Some(false);
                            continue;
                        } else if probe_n && got == k {
                            self.caps.server_n = Some(false);
                            if probe_arrays {
                                self.caps.prompt_arrays = Some(true);
                            }
                            continue;
                        } else if probe_arrays && got == m {
                            self.caps.prompt_arrays = Some(false);
                            if probe_n {
                                self.caps.server_n = Some(true);
                            }
                            continue;
                        } else {
                            let e = CallError::Count {
                                got,
                                want: k * m,
                                prompts: k,
                                n: m,
                            };
                            return Err(e.into_model(&url));
                        }
                    }
                }
            }
            let results = self
                .run_jobs(&jobs, &model, prompts, sampling, stop, done)
                .map_err(|e| e.into_model(&url))?;
            let mut out: Vec<Vec<Option<Completion>>> = vec![vec![None; n]; p];
            for (job, completions) in jobs.iter().zip(results) {
                let mut it = completions.into_iter();
                for prompt in job.prompts.clone() {
                    match job.sample {
                        Some(j) => out[prompt][j] = it.next(),
                        None => {
                            for slot in out[prompt].iter_mut() {
                                *slot = it.next();
                            }
                        }
                    }
                }
            }
            return Ok(out
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|c| c.expect("every slot filled"))
                        .collect()
                })
                .collect());
        }
    }

    fn name(&self) -> String {
        self.model.clone().unwrap_or_else(|| self.base.clone())
    }
}

/// A failed request, before it is turned into a [`ModelError::Http`] line.
#[derive(Debug)]
enum CallError {
    /// No reply: connection refused or reset, DNS, time-out, TLS.
    Transport { msg: String, retryable: bool },
    /// A non-2xx reply and the server's error message.
    Status { code: u16, msg: String },
    /// A 2xx reply that is not the JSON expected.
    Malformed(String),
    /// A reply with the wrong number of choices.
    Count {
        got: usize,
        want: usize,
        prompts: usize,
        n: usize,
    },
}

impl CallError {
    fn into_model(self, url: &str) -> ModelError {
        let msg = match self {
            CallError::Transport { msg, .. } => msg,
            CallError::Status { code, msg } => format!("HTTP {code}: {msg}"),
            CallError::Malformed(msg) => format!("malformed reply: {msg}"),
            CallError::Count {
                got,
                want,
                prompts,
                n,
            } => format!("expected {want} choices ({prompts} prompt(s) x n={n}), got {got}"),
        };
        http(url, &msg)
    }
}

fn http(url: &str, msg: &str) -> ModelError {
    ModelError::Http {
        url: url.to_string(),
        msg: one_line(msg),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn snippet(s: &str, max_chars: usize) -> String {
    let s = one_line(s);
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

fn transport_error(e: ureq::Error, timeout: Duration) -> CallError {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Timeout(what) => CallError::Transport {
            msg: format!("no reply within {timeout:?} ({what:?} time-out)"),
            retryable: false,
        },
        ureq::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => CallError::Transport {
            msg: format!("cannot connect: {io} (is the server running?)"),
            retryable: true,
        },
        ureq::Error::Io(io) => CallError::Transport {
            msg: format!("connection: {io}"),
            retryable: true,
        },
        ureq::Error::ConnectionFailed => CallError::Transport {
            msg: "cannot connect (is the server running?)".into(),
            retryable: true,
        },
        ureq::Error::HostNotFound => CallError::Transport {
            msg: "host not found".into(),
            retryable: false,
        },
        ureq::Error::BodyExceedsLimit(n) => {
            CallError::Malformed(format!("reply larger than {n} bytes"))
        }
        other => CallError::Transport {
            msg: other.to_string(),
            retryable: false,
        },
    }
}

/// The error message in a non-2xx reply: OpenAI's `{"error": {"message", "type"}}`, vLLM's
/// `{"message"}`, FastAPI's `{"detail"}`, else the start of the body.
fn server_message(body: &str) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.trim().to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let err = v.get("error");
        let msg = [
            err.and_then(|e| e.get("message")),
            err.filter(|e| e.is_string()),
            v.get("message"),
            v.get("detail"),
        ]
        .into_iter()
        .flatten()
        .map(text)
        .find(|m| !m.is_empty());
        // llama-cpp-python answers an assertion with an empty message and only a type.
        let kind = err
            .and_then(|e| e.get("type"))
            .map(text)
            .filter(|t| !t.is_empty());
        match (msg, kind) {
            (Some(m), _) => Some(m),
            (None, Some(k)) => Some(format!("{k} (no message)")),
            (None, None) => None,
        }
    });
    match from_json {
        Some(m) => snippet(&m, 500),
        None if body.trim().is_empty() => "(empty body)".into(),
        None => snippet(body, 500),
    }
}

/// The completions of one reply, ordered by choice `index` (array order when the indices are
/// not a permutation).
fn parse_completions(
    reply: &Value,
    max_tokens: usize,
    stop: &[String],
) -> Result<Vec<Completion>, CallError> {
    let bad = |what: &str| CallError::Malformed(what.to_string());
    let choices = reply
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `choices` array"))?;
    let mut order: Vec<usize> = (0..choices.len()).collect();
    let indices: Option<Vec<usize>> = choices
        .iter()
        .map(|c| c.get("index").and_then(Value::as_u64).map(|i| i as usize))
        .collect();
    if let Some(idx) = indices {
        let mut seen = vec![false; choices.len()];
        let permutation = idx
            .iter()
            .all(|&i| i < seen.len() && !std::mem::replace(&mut seen[i], true));
        if permutation {
            for (pos, &i) in idx.iter().enumerate() {
                order[i] = pos;
            }
        }
    }
    struct Parsed {
        text: String,
        finish: FinishReason,
        length: bool,
        tokens: Option<usize>,
    }
    let mut parsed = Vec::with_capacity(choices.len());
    for &pos in &order {
        let c = &choices[pos];
        let text = c
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a choice without `text`"))?
            .to_string();
        let reason = c.get("finish_reason").and_then(Value::as_str);
        let finish = match reason {
            Some("length") => FinishReason::Length,
            Some("eos") => FinishReason::Eos,
            Some("stop") => {
                let said = c.get("stop_reason").or_else(|| c.get("matched_stop"));
                match said {
                    Some(Value::String(s)) => FinishReason::Stop(s.clone()),
                    Some(Value::Null | Value::Number(_)) => FinishReason::Eos,
                    _ => match stop.first() {
                        Some(s) => FinishReason::Stop(s.clone()),
                        None => FinishReason::Eos,
                    },
                }
            }
            other => {
                return Err(CallError::Malformed(format!(
                    "unexpected finish_reason {}",
                    other.map_or("null".to_string(), |r| format!("{r:?}"))
                )))
            }
        };
        let tokens = c
            .get("token_ids")
            .and_then(Value::as_array)
            .or_else(|| {
                c.get("logprobs")
                    .and_then(|l| l.get("tokens"))
                    .and_then(Value::as_array)
            })
            .map(Vec::len);
        parsed.push(Parsed {
            text,
            length: finish == FinishReason::Length,
            finish,
            tokens,
        });
    }
    let usage = reply
        .get("usage")
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64)
        .map(|t| t as usize);
    let counts: Vec<usize> =
        if let Some(known) = parsed.iter().map(|p| p.tokens).collect::<Option<Vec<_>>>() {
            known
        } else if let Some(total) = usage {
            if parsed.len() == 1 {
                vec![total]
            } else {
                let length_total = max_tokens * parsed.iter().filter(|p| p.length).count();
                let weights: Vec<usize> = parsed
                    .iter()
                    .map(|p| match &p.finish {
                        FinishReason::Length => 0,
                        FinishReason::Stop(s) => p.text.len() + s.len() + 1,
                        FinishReason::Eos => p.text.len() + 1,
                    })
                    .collect();
                let shares = apportion(total.saturating_sub(length_total), &weights);
                parsed
                    .iter()
                    .zip(shares)
                    .map(|(p, s)| if p.length { max_tokens } else { s })
                    .collect()
            }
        } else {
            parsed
                .iter()
                .map(|p| {
                    if p.length {
                        max_tokens
                    } else {
                        p.text.len().div_ceil(4)
                    }
                })
                .collect()
        };
    Ok(parsed
        .into_iter()
        .zip(counts)
        .map(|(p, tokens)| Completion {
            text: p.text,
            tokens,
            finish: p.finish,
        })
        .collect())
}

/// Split `total` over `weights` in proportion, by largest remainders (sum kept; all zero
/// weights get nothing).
fn apportion(total: usize, weights: &[usize]) -> Vec<usize> {
    let sum: u128 = weights.iter().map(|&w| w as u128).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut shares: Vec<usize> = Vec::with_capacity(weights.len());
    let mut rems: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = total as u128 * w as u128;
        shares.push((exact / sum) as usize);
        rems.push((exact % sum, i));
    }
    let left = total - shares.iter().sum::<usize>();
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take(left) {
        shares[i] += 1;
    }
    shares
}

/// `scheme://authority/path` without a trailing slash or a `/completions` suffix; `/v1` added
/// when there is no path.
fn parse_base(url: &str) -> Result<String, ModelError> {
    let url = url.trim();
    let bad = |why: &str| {
        ModelError::Request(format!(
            "server URL {url:?}: {why} (expected e.g. http://127.0.0.1:8000/v1)"
        ))
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("not http:// or https://"))?;
    if rest.contains(['?', '#', ' ']) {
        return Err(bad("no query, fragment or spaces allowed"));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let mut path = path.trim_end_matches('/');
    for suffix in ["/completions", "/chat/completions"] {
        if let Some(p) = path.strip_suffix(suffix) {
            path = p;
            break;
        }
    }
    let path = if path.is_empty() { "/v1" } else { path };
    let scheme = &url[..url.len() - rest.len()];
    Ok(format!("{scheme}{authority}{path}"))
}

/// The host part of a base URL (without port, brackets of an IPv6 address kept).
fn host_of(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[');
    }
    authority.split(':').next().unwrap_or("")
}

fn build_agent(base: &str, timeout: Duration, concurrency: usize) -> ureq::Agent {
    let host = host_of(base);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
        .max_idle_connections(concurrency.max(3))
        .max_idle_connections_per_host(concurrency.max(3));
    if loopback {
        // A proxy from the environment is never wanted for a server on this machine.
        config = config.proxy(None);
    }
    config.build().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    /// One request as the mock server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Value,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    #[derive(Clone)]
    enum Reply {
        Json(u16, String),
        /// Close the connection without answering.
        Hangup,
    }

    type Handler = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

    /// A tiny HTTP/1.1 server on 127.0.0.1 answering each request by `handler(request, number)`,
    /// one connection per thread, `Connection: close`. Lives until the test process ends.
    struct Mock {
        url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Mock {
        fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Mock {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/v1", listener.local_addr().unwrap());
            let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
            let handler: Arc<Handler> = Arc::new(handler);
            let seen2 = seen.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (seen, handler) = (seen2.clone(), handler.clone());
                    std::thread::spawn(move || serve(stream, &seen, &*handler));
                }
            });
            Mock { url, seen }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn completions(&self) -> Vec<Seen> {
            self.seen()
                .into_iter()
                .filter(|s| s.path.ends_with("/completions"))
                .collect()
        }
    }

    fn serve(stream: TcpStream, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let req = Seen {
            method,
            path,
            headers,
            body,
        };
        let number = {
            let mut s = seen.lock().unwrap();
            s.push(req.clone());
            s.len() - 1
        };
        match handler(&req, number) {
            Reply::Hangup => {}
            Reply::Json(status, text) => {
                let mut out = stream;
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    text.len()
                );
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(text.as_bytes());
            }
        }
    }

    /// The prompts of a completions request, as a list.
    fn prompts_of(body: &Value) -> Vec<String> {
        match &body["prompt"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|p| p.as_str().unwrap().to_string()).collect(),
            other => panic!("prompt {other}"),
        }
    }

    /// A vLLM-like reply: choice `index = prompt * n + sample`, text `<prompt>|s<sample>`,
    /// listed in reverse to check the client sorts by index.
    /// With `vllm: false`, like llama-cpp-python: `n` ignored, no `stop_reason`.
    fn vllm_like(req: &Seen, vllm: bool) -> Reply {
        let prompts = prompts_of(&req.body);
        let n = if vllm {
            req.body["n"].as_u64().unwrap() as usize
        } else {
            1
        };
        let mut choices = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            for j in 0..n {
                let mut c = json!({
                    "index": i * n + j, "text": format!("{p}|s{j}|seed{}", req.body["seed"]),
                    "finish_reason": "stop",
                });
                if vllm {
                    c["stop_reason"] = Value::Null;
                }
                choices.push(c);
            }
        }
        choices.reverse();
        let total = choices.len() * 3;
        Reply::Json(
            200,
            json!({"choices": choices, "usage": {"completion_tokens": total}}).to_string(),
        )
    }

    fn models_reply(owned_by: &str) -> Reply {
        Reply::Json(200, json!({"object": "list", "data": [{"id": "m0", "object": "model", "owned_by": owned_by}]}).to_string())
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn fast(policy: OpenAiPolicy) -> OpenAiPolicy {
        policy
            .with_retries(3, Duration::from_millis(5))
            .with_timeout(Duration::from_secs(20))
    }

    #[test]
    fn request_shape_and_auth() {
        let mock = Mock::start(|req, _| {
            if req.path.ends_with("/models") {
                return models_reply("vllm");
            }
            vllm_like(req, true)
        });
        let mut policy = fast(OpenAiPolicy::new(&mock.url, Some("m0")).unwrap())
            .with_api_key(Some("sk-test".into()));
        let sampling = SamplingParams {
            temperature: 0.5,
            top_p: 0.9,
            top_k: Some(7),
            max_tokens: 12,
            seed: 3,
        };
        let out = policy
            .generate(
                &strings(&["hello"]),
                2,
                &sampling,
                &strings(&["\n\n", "END"]),
            )
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 2);
        let reqs = mock.completions();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert!(r.path.ends_with("/v1/completions"), "{}", r.path);
        assert_eq!(r.header("authorization"), Some("Bearer sk-test"));
        let b = &r.body;
        assert_eq!(b["model"], "m0");
        assert_eq!(b["prompt"], "hello");
        assert_eq!(b["n"], 2);
        assert_eq!(b["max_tokens"], 12);
        assert_eq!(b["temperature"], 0.5);
        assert_eq!(b["top_p"], 0.9);
        assert_eq!(b["top_k"], 7);
        assert_eq!(b["stop"], json!(["\n\n", "END"]));
        assert_eq!(b["stream"], false);
        assert!(b["seed"].as_u64().unwrap() < 1 << 31);
        assert!(
            b.get("repeat_penalty").is_none(),
            "vLLM gets no llama.cpp knobs"
        );
        // vLLM's stop_reason null is EOS; usage 6 tokens over two choices of equal text length.
        assert_eq!(out[0][0].finish, FinishReason::Eos);
        assert_eq!(out[0][0].tokens + out[0][1].tokens, 6);
        assert_eq!(policy.name(), "m0");
    }

    #[test]
    fn ordering_with_prompt_arrays_and_concurrency() {
        let mock = Mock::start(|req, _| {
            if req.path.ends_with("/models") {
                return models_reply("vllm");
            }
            vllm_like(req, true)
        });
        let mut policy = fast(OpenAiPolicy::from_url(&mock.url).unwrap()).with_concurrency(3);
        let prompts: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
        let out = policy
            .generate(&prompts, 3, &SamplingParams::default(), &[])
            .unwrap();
        assert_eq!(policy.model(), Some("m0"));
        assert_eq!(out.len(), 10);
        for (i, row) in out.iter().enumerate() {
            assert_eq!(row.len(), 3);
            for (j, c) in row.iter().enumerate() {
                assert!(
                    c.text.starts_with(&format!("p{i}|s{j}|")),
                    "[{i}][{j}] = {}",
                    c.text
                );
            }
        }
        // 10 prompts over 3 in flight: chunks of 4, 4, 2 in prompt arrays.
        let mut sizes: Vec<usize> = mock
            .completions()
            .iter()
            .map(|r| prompts_of(&r.body).len())
            .collect();
        sizes.sort();
        assert_eq!(sizes, vec![2, 4, 4]);
    }

    #[test]
    fn falls_back_when_n_and_arrays_are_not_supported() {
        // Like llama-cpp-python: a prompt array of > 1 is a 500, `n` is ignored.
        let mock = Mock::start(|req, _| {
            if req.path.ends_with("/models") {
                return models_reply("me");
            }
            if prompts_of(&req.body).len() > 1 {
                return Reply::Json(500, json!({"error": {"message": "AssertionError", "type": "internal_server_error"}}).to_string());
            }
            vllm_like(req, false)
        });
        let mut policy = fast(OpenAiPolicy::from_url(&mock.url).unwrap()).with_concurrency(2);
        let prompts: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
        let s = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let out = policy.generate(&prompts, 3, &s, &strings(&["\n"])).unwrap();
        for (i, row) in out.iter().enumerate() {
            assert_eq!(row.len(), 3);
            let mut seeds: Vec<&str> = row
                .iter()
                .map(|c| c.text.rsplit('|').next().unwrap())
                .collect();
            for c in row {
                assert!(c.text.starts_with(&format!("p{i}|s0|")), "{}", c.text);
                // No stop_reason from this server: the first stop string is recorded.
                assert_eq!(c.finish, FinishReason::Stop("\n".into()));
                assert_eq!(c.tokens, 3);
            }
            seeds.sort();
            seeds.dedup();
            assert_eq!(seeds.len(), 3, "each sample has its own seed: {row:?}");
        }
        let reqs = mock.completions();
        let body = &reqs.last().unwrap().body;
        assert_eq!(
            body["repeat_penalty"], 1.0,
            "llama.cpp gets neutral sampling knobs"
        );
        assert_eq!(body["min_p"], 0.0);
        assert_eq!(body["top_k"], 0);
        // The learned capabilities stick: the next call sends one prompt, n = 1 per request.
        let before = reqs.len();
        policy.generate(&prompts[..2], 2, &s, &[]).unwrap();
        let after = mock.completions();
        assert_eq!(after.len() - before, 4);
        assert!(after[before..]
            .iter()
            .all(|r| r.body["n"] == 1 && r.body["prompt"].is_string()));
    }

    #[test]
    fn retries_server_errors_then_succeeds() {
        let mock = Mock::start(|req, i| match i {
            0 => Reply::Json(404, "no such endpoint".into()),
            1 => Reply::Json(503, "overloaded".into()),
            2 => Reply::Hangup,
            _ => vllm_like(req, true),
        });
        let mut policy = fast(OpenAiPolicy::new(&mock.url, Some("m")).unwrap());
        // Request 0 is the models probe (a 404 there is no error once a model is named).
        let out = policy
            .generate(&strings(&["a"]), 1, &SamplingParams::default(), &[])
            .unwrap();
        assert!(out[0][0].text.starts_with("a|s0"));
        assert_eq!(mock.completions().len(), 3);
        let mock =
            Mock::start(|_, _| Reply::Json(502, json!({"message": "bad gateway"}).to_string()));
        let mut policy = OpenAiPolicy::new(&mock.url, Some("m"))
            .unwrap()
            .with_retries(2, Duration::from_millis(1));
        let err = policy
            .generate(&strings(&["a"]), 1, &SamplingParams::default(), &[])
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("HTTP 502: bad gateway"), "{msg}");
        assert!(msg.contains("/v1/completions"), "{msg}");
        // models (ignored once a model is named: 3 tries) + completions (3 tries)
        assert_eq!(mock.seen().len(), 6);
    }

    #[test]
    fn error_lines() {
        // Connection refused: a port that was just free.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut policy = OpenAiPolicy::new(&format!("http://127.0.0.1:{port}/v1"), Some("m"))
            .unwrap()
            .with_retries(1, Duration::from_millis(1));
        let err = policy
            .generate(&strings(&["a"]), 1, &SamplingParams::default(), &[])
            .unwrap_err();
        assert!(matches!(err, ModelError::Http { .. }));
        assert!(err.to_string().contains("connect"), "{err}");
        assert!(policy
            .list_models()
            .unwrap_err()
            .to_string()
            .contains("/v1/models"));

        let cases: Vec<(Reply, &str)> = vec![
            (
                Reply::Json(
                    400,
                    json!({"error": {"message": "max_tokens is too large"}}).to_string(),
                ),
                "HTTP 400: max_tokens is too large",
            ),
            (
                Reply::Json(
                    422,
                    json!({"detail": [{"msg": "field required"}]}).to_string(),
                ),
                "HTTP 422: [{\"msg\":\"field required\"}]",
            ),
            (
                Reply::Json(
                    500,
                    json!({"error": {"message": "", "type": "internal_server_error"}}).to_string(),
                ),
                "HTTP 500: internal_server_error (no message)",
            ),
            (
                Reply::Json(404, "<html>\nnot\nfound</html>".into()),
                "HTTP 404: <html> not found</html>",
            ),
            (
                Reply::Json(200, "{not json".into()),
                "malformed reply: reply is not JSON",
            ),
            (
                Reply::Json(200, json!({"id": "x"}).to_string()),
                "malformed reply: no `choices` array",
            ),
            (
                Reply::Json(
                    200,
                    json!({"choices": [{"index": 0, "finish_reason": "stop"}]}).to_string(),
                ),
                "a choice without `text`",
            ),
            (
                Reply::Json(
                    200,
                    json!({"choices": [{"index": 0, "text": "", "finish_reason": "abort"}]})
                        .to_string(),
                ),
                "unexpected finish_reason \"abort\"",
            ),
            (
                Reply::Json(
                    200,
                    json!({"choices": [
                {"index": 0, "text": "x", "finish_reason": "stop"},
                {"index": 1, "text": "y", "finish_reason": "stop"}]})
                    .to_string(),
                ),
                "expected 1 choices (1 prompt(s) x n=1), got 2",
            ),
        ];
        for (reply, want) in cases {
            let mock = Mock::start(move |req, _| {
                if req.path.ends_with("/models") {
                    return models_reply("vllm");
                }
                reply.clone()
            });
            let mut policy = fast(OpenAiPolicy::new(&mock.url, Some("m")).unwrap());
            let err = policy
                .generate(&strings(&["a"]), 1, &SamplingParams::default(), &[])
                .unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ModelError::Http { .. }), "{msg}");
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
            assert!(!msg.contains('\n'), "{msg:?}");
        }
    }

    #[test]
    fn finish_reasons_and_token_counts() {
        let stop = strings(&["\n\n", "</s>"]);
        let reply = json!({
            "choices": [
                {"index": 3, "text": "abcd", "finish_reason": "stop", "matched_stop": 2},
                {"index": 0, "text": "a", "finish_reason": "stop", "stop_reason": "</s>"},
                {"index": 1, "text": "0123456789", "finish_reason": "length"},
                {"index": 2, "text": "ab", "finish_reason": "stop"},
            ],
            "usage": {"completion_tokens": 10 + 8},
        });
        let c = parse_completions(&reply, 10, &stop).unwrap();
        let finishes: Vec<_> = c.iter().map(|c| c.finish.clone()).collect();
        assert_eq!(
            finishes,
            vec![
                FinishReason::Stop("</s>".into()),
                FinishReason::Length,
                FinishReason::Stop("\n\n".into()),
                FinishReason::Eos
            ]
        );
        assert_eq!(c[1].tokens, 10);
        assert_eq!(c.iter().map(|c| c.tokens).sum::<usize>(), 18);
        // Weights 1+4+1, 2+2+1, 4+1: 8 tokens over 6:5:5 = 3, 2.5, 2.5; the tie goes first.
        assert_eq!((c[0].tokens, c[2].tokens, c[3].tokens), (3, 3, 2));
        // Per-choice token lists win over usage.
        let reply = json!({"choices": [
            {"index": 0, "text": "ab", "finish_reason": "stop", "token_ids": [1, 2, 3]},
            {"index": 1, "text": "ab", "finish_reason": "stop", "logprobs": {"tokens": ["a", "b"]}},
        ], "usage": {"completion_tokens": 99}});
        let c = parse_completions(&reply, 10, &[]).unwrap();
        assert_eq!((c[0].tokens, c[1].tokens), (3, 2));
        assert_eq!(c[0].finish, FinishReason::Eos);
        // Indices that are not a permutation: array order.
        let reply = json!({"choices": [
            {"index": 0, "text": "x", "finish_reason": "stop"},
            {"index": 0, "text": "y", "finish_reason": "eos"},
        ]});
        let c = parse_completions(&reply, 10, &[]).unwrap();
        assert_eq!((c[0].text.as_str(), c[1].text.as_str()), ("x", "y"));
        assert_eq!(c[1].finish, FinishReason::Eos);
        assert_eq!(apportion(7, &[0, 0]), vec![0, 0]);
        assert_eq!(apportion(7, &[1, 1, 1]), vec![3, 2, 2]);
    }

    #[test]
    fn url_forms() {
        let base = |s: &str| {
            OpenAiPolicy::from_url(s)
                .map(|p| (p.base_url().to_string(), p.model().map(str::to_string)))
        };
        assert_eq!(
            base("http://127.0.0.1:8000/v1").unwrap(),
            ("http://127.0.0.1:8000/v1".into(), None)
        );
        assert_eq!(
            base("http://127.0.0.1:8000/v1/").unwrap().0,
            "http://127.0.0.1:8000/v1"
        );
        assert_eq!(
            base("http://localhost:8000/v1/completions").unwrap().0,
            "http://localhost:8000/v1"
        );
        assert_eq!(base(" http://h:1 ").unwrap().0, "http://h:1/v1");
        assert_eq!(
            base("https://api.example.com/openai/v1").unwrap().0,
            "https://api.example.com/openai/v1"
        );
        assert_eq!(
            base("http://h:8000/v1#Qwen/Qwen2.5-Math-1.5B-Instruct").unwrap(),
            (
                "http://h:8000/v1".into(),
                Some("Qwen/Qwen2.5-Math-1.5B-Instruct".into())
            )
        );
        for bad in [
            "127.0.0.1:8000/v1",
            "ftp://h/v1",
            "http:///v1",
            "http://h/v1?x=1",
        ] {
            let err = base(bad).unwrap_err();
            assert!(matches!(err, ModelError::Request(_)), "{bad}: {err}");
        }
        assert_eq!(host_of("http://[::1]:8000/v1"), "::1");
        assert_eq!(host_of("http://user@localhost:8000/v1"), "localhost");
    }

    #[test]
    fn list_models_and_empty_requests() {
        let mock = Mock::start(|req, _| {
            assert_eq!(req.method, "GET");
            Reply::Json(
                200,
                json!({"data": [
                    {"id": "a", "owned_by": "vllm", "max_model_len": 4096},
                    {"id": "b"},
                ]})
                .to_string(),
            )
        });
        let mut policy = fast(OpenAiPolicy::from_url(&mock.url).unwrap());
        let models = policy.list_models().unwrap();
        assert_eq!(
            models[0],
            ServedModel {
                id: "a".into(),
                owned_by: Some("vllm".into()),
                max_model_len: Some(4096)
            }
        );
        assert_eq!(models[1].id, "b");
        assert_eq!(policy.resolve_model().unwrap(), "a");
        assert!(policy
            .generate(&[], 2, &SamplingParams::default(), &[])
            .unwrap()
            .is_empty());
        assert_eq!(
            policy
                .generate(&strings(&["x"]), 0, &SamplingParams::default(), &[])
                .unwrap(),
            vec![Vec::<Completion>::new()]
        );
        let bad = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        };
        assert!(matches!(
            policy.generate(&strings(&["x"]), 1, &bad, &[]),
            Err(ModelError::Request(_))
        ));
        // An empty model list with no model named is an error.
        let mock = Mock::start(|_, _| Reply::Json(200, json!({"data": []}).to_string()));
        let mut policy = fast(OpenAiPolicy::from_url(&mock.url).unwrap());
        let err = policy
            .generate(&strings(&["x"]), 1, &SamplingParams::default(), &[])
            .unwrap_err();
        assert!(err.to_string().contains("lists no models"), "{err}");
    }

    #[test]
    fn seeds_are_31_bit_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for p in 0..50 {
            for s in [None, Some(0), Some(1), Some(2)] {
                let x = derive_seed(u64::MAX, p, s);
                assert!(x < 1 << 31);
                assert!(seen.insert(x));
            }
        }
    }
}
