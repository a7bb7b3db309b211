//! The pool: routes snippets to workers (a child goes where its parent's state lives), restarts
//! dead or hung workers, and assembles one [`ExecResult`] per snippet in input order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use super::output::{decode, round_numeric, truncate, Captured};
use super::worker::{server_config, Event, Worker};
use super::{ExecConfig, ExecError, ExecResult, Snippet};

/// Largest accepted snippet, bytes.
pub const MAX_CODE_BYTES: usize = 1 << 20;

/// A hung worker (no reply for this long while it has work) is killed and restarted. Servers
/// send a heartbeat every second while snippets run.
const WATCHDOG: Duration = Duration::from_secs(15);

/// What the pool remembers about a snippet until it is released.
struct Node {
    rid: u64,
    worker: usize,
    gen: u64,
    parent: Option<String>,
    code: String,
}

/// A pool of sandboxed Python workers. See the [module docs](super) for the guarantees.
pub struct ExecPool {
    cfg: ExecConfig,
    python: PathBuf,
    scratch: tempdir::Scratch,
    server_cfg: Value,
    workers: Vec<Worker>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    nodes: HashMap<String, Node>,
    next_rid: u64,
    sandbox: Value,
    python_version: String,
    preloaded: Vec<String>,
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// The workers' scratch root (one directory per snippet below it), removed on drop.
    pub struct Scratch(PathBuf);

    impl Scratch {
        /// Below `/dev/shm` where it is a writable tmpfs (a snippet's directory is made and
        /// removed per snippet; on a disk file system the inode allocator costs more than the
        /// rest of a trivial step), else below the temporary directory.
        pub fn new() -> std::io::Result<Self> {
            Self::new_in(&std::path::PathBuf::from("/dev/shm"))
                .or_else(|_| Self::new_in(&std::env::temp_dir()))
        }

        fn new_in(base: &Path) -> std::io::Result<Self> {
            use std::os::unix::fs::PermissionsExt;
            for i in 0..100u32 {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let p = base.join(format!("rstar-exec-{}-{nanos:x}-{i}", std::process::id()));
                match std::fs::create_dir(&p) {
                    Ok(()) => {
                        // Snippets may run as another uid: they need to reach their own
                        // subdirectory, not to list or write this one.
                        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711))?;
                        return Ok(Self(p));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(std::io::Error::other("no free scratch directory name"))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl ExecPool {
    /// Starts `cfg.workers` servers and waits until each is ready (sympy imported).
    pub fn new(cfg: ExecConfig) -> Result<Self, ExecError> {
        if cfg.workers == 0 || cfg.max_running == 0 {
            return Err(ExecError::Config(
                "workers and max_running must be at least 1".into(),
            ));
        }
        if cfg.timeout.is_zero() || cfg.memory_mb == 0 {
            return Err(ExecError::Config(
                "timeout and memory limit must be positive".into(),
            ));
        }
        let python = match &cfg.python {
            Some(p) => p.clone(),
            None => crate::grade::python_interpreter()
                .map_err(|e| ExecError::Spawn("python3".into(), e.to_string()))?,
        };
        let scratch = tempdir::Scratch::new()
            .map_err(|e| ExecError::Start(format!("cannot create a scratch directory: {e}")))?;
        let server_cfg = server_config(&cfg, scratch.path());
        let (tx, rx) = channel();
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers {
            workers.push(Worker::spawn(
                &python,
                &server_cfg,
                scratch.path(),
                i,
                0,
                tx.clone(),
            )?);
        }
        let mut pool = Self {
            cfg,
            python,
            scratch,
            server_cfg,
            workers,
            tx,
            rx,
            nodes: HashMap::new(),
            next_rid: 0,
            sandbox: Value::Null,
            python_version: String::new(),
            preloaded: Vec::new(),
        };
        pool.wait_ready()?;
        Ok(pool)
    }

    fn wait_ready(&mut self) -> Result<(), ExecError> {
        let deadline = Instant::now() + self.cfg.start_timeout;
        let mut ready = vec![false; self.workers.len()];
        while ready.iter().any(|r| !r) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Event::Msg { worker, msg, .. }) => {
                    if msg.get("op").and_then(Value::as_str) == Some("ready") {
                        ready[worker] = true;
                        self.note_ready(&msg);
                    }
                }
                Ok(Event::Dead { worker, .. }) => {
                    return Err(ExecError::Start(format!(
                        "worker {worker} exited during start-up (is {} a working Python 3.9+?)",
                        self.python.display()
                    )));
                }
                Err(_) => {
                    return Err(ExecError::Start(format!(
                        "no worker ready after {:?}",
                        self.cfg.start_timeout
                    )))
                }
            }
        }
        Ok(())
    }

    fn note_ready(&mut self, msg: &Value) {
        self.sandbox = msg.get("sandbox").cloned().unwrap_or(Value::Null);
        self.python_version = msg
            .get("python")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        self.preloaded = msg
            .get("preloaded")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
    }

    /// The sandbox layers the kernel granted (uid, namespaces, Landlock ABI, seccomp, ...).
    pub fn sandbox(&self) -> &Value {
        &self.sandbox
    }

    /// The workers' Python version.
    pub fn python_version(&self) -> &str {
        &self.python_version
    }

    /// The modules preloaded in every worker.
    pub fn preloaded(&self) -> &[String] {
        &self.preloaded
    }

    /// The settings.
    pub fn config(&self) -> &ExecConfig {
        &self.cfg
    }

    /// Runs a batch; one result per snippet, in order. A snippet may name as parent an earlier
    /// snippet of this batch or of an earlier batch (not yet released).
    pub fn run_batch(&mut self, batch: &[Snippet]) -> Vec<ExecResult> {
        self.run_batch_with(batch, &mut |_| {})
    }

    /// [`run_batch`](Self::run_batch), calling `progress(done)` as results arrive.
    pub fn run_batch_with(
        &mut self,
        batch: &[Snippet],
        progress: &mut dyn FnMut(usize),
    ) -> Vec<ExecResult> {
        self.poll_events();
        let mut results: Vec<Option<ExecResult>> = vec![None; batch.len()];
        let mut slot_of: HashMap<u64, usize> = HashMap::new();
        let mut owner: HashMap<u64, usize> = HashMap::new();
        let mut load = vec![0usize; self.workers.len()];
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); self.workers.len()];
        let mut done = 0usize;
        for (i, s) in batch.iter().enumerate() {
            if let Err(e) = self.validate(s) {
                results[i] = Some(failed(&s.id, e));
                done += 1;
                continue;
            }
            self.next_rid += 1;
            let rid = self.next_rid;
            let (worker, parent_rid, chain) = self.route(s, &load);
            let req = serde_json::json!({
                "op": "run", "rid": rid, "parent": parent_rid, "code": s.code,
                "keep": s.keep.wire(), "timeout_ms": self.cfg.timeout.as_millis() as u64,
                "chain": chain,
            });
            out[worker].extend_from_slice(req.to_string().as_bytes());
            out[worker].push(b'\n');
            load[worker] += 1;
            slot_of.insert(rid, i);
            owner.insert(rid, worker);
            self.nodes.insert(
                s.id.clone(),
                Node {
                    rid,
                    worker,
                    gen: self.workers[worker].gen,
                    parent: s.parent.clone(),
                    code: s.code.clone(),
                },
            );
        }
        if done > 0 {
            progress(done);
        }
        for (w, lines) in out.iter().enumerate() {
            if !lines.is_empty() && self.workers[w].send(lines).is_err() {
                tracing::warn!("exec worker {w}: request pipe closed");
            }
        }
        let mut last_heard = vec![Instant::now(); self.workers.len()];
        while done < batch.len() {
            match self.rx.recv_timeout(Duration::from_millis(500)) {
                Ok(Event::Msg { worker, gen, msg }) => {
                    if gen != self.workers[worker].gen {
                        continue;
                    }
                    last_heard[worker] = Instant::now();
                    let Some(rid) = msg.get("rid").and_then(Value::as_u64) else {
                        continue;
                    };
                    let Some(i) = slot_of.remove(&rid) else {
                        continue;
                    };
                    owner.remove(&rid);
                    results[i] = Some(self.result_of(&batch[i].id, &msg));
                    done += 1;
                    progress(done);
                }
                Ok(Event::Dead { worker, gen }) => {
                    if gen != self.workers[worker].gen {
                        continue;
                    }
                    done += self.fail_worker(
                        worker,
                        "the executor worker process died",
                        batch,
                        &mut slot_of,
                        &mut owner,
                        &mut results,
                    );
                    last_heard[worker] = Instant::now();
                    progress(done);
                }
                Err(RecvTimeoutError::Timeout) => {
                    let hung: Vec<usize> = (0..self.workers.len())
                        .filter(|&w| {
                            owner.values().any(|&o| o == w) && last_heard[w].elapsed() > WATCHDOG
                        })
                        .collect();
                    for w in hung {
                        {
                            done += self.fail_worker(
                                w,
                                "the executor worker stopped responding",
                                batch,
                                &mut slot_of,
                                &mut owner,
                                &mut results,
                            );
                            last_heard[w] = Instant::now();
                            progress(done);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        results
            .into_iter()
            .zip(batch)
            .map(|(r, s)| r.unwrap_or_else(|| failed(&s.id, "no result from the executor".into())))
            .collect()
    }

    /// Handles what happened between batches: a worker that died is restarted now, so that
    /// children of its snippets are routed with a replay chain instead of to a dead pipe.
    fn poll_events(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            if let Event::Dead { worker, gen } = ev {
                if gen == self.workers[worker].gen {
                    self.restart_worker(worker, "the executor worker process died");
                }
            }
        }
    }

    /// The worker server processes' pids (for diagnostics and tests).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(Worker::pid).collect()
    }

    /// Frees kept states and forgets the snippets (their ids may be reused).
    pub fn release<S: AsRef<str>>(&mut self, ids: &[S]) {
        let mut per: Vec<Vec<u64>> = vec![Vec::new(); self.workers.len()];
        for id in ids {
            if let Some(n) = self.nodes.remove(id.as_ref()) {
                if n.gen == self.workers[n.worker].gen {
                    per[n.worker].push(n.rid);
                }
            }
        }
        for (w, rids) in per.into_iter().enumerate() {
            if !rids.is_empty() {
                let line = format!("{}\n", serde_json::json!({"op": "release", "rids": rids}));
                let _ = self.workers[w].send(line.as_bytes());
            }
        }
    }

    fn validate(&self, s: &Snippet) -> Result<(), String> {
        if self.nodes.contains_key(&s.id) {
            return Err(format!(
                "duplicate snippet id {:?} (ids must be unique until released)",
                s.id
            ));
        }
        if s.code.len() > MAX_CODE_BYTES {
            return Err(format!(
                "code is {} bytes; the limit is {MAX_CODE_BYTES}",
                s.code.len()
            ));
        }
        if let Some(p) = &s.parent {
            if !self.nodes.contains_key(p) {
                return Err(format!(
                    "unknown parent {p:?} (a parent must be an earlier snippet, not released)"
                ));
            }
        }
        Ok(())
    }

    /// (worker, parent rid on that worker, replay chain). A child goes to its parent's worker;
    /// if that worker was restarted since, the parent's state is gone and the ancestors' code
    /// travels with the child for replay on the least loaded worker.
    fn route(&self, s: &Snippet, load: &[usize]) -> (usize, Option<u64>, Vec<String>) {
        let least = (0..self.workers.len())
            .min_by_key(|&w| load[w])
            .unwrap_or(0);
        let Some(pid) = &s.parent else {
            return (least, None, Vec::new());
        };
        let parent = &self.nodes[pid];
        if parent.gen == self.workers[parent.worker].gen {
            return (parent.worker, Some(parent.rid), Vec::new());
        }
        let mut chain = Vec::new();
        let mut cur = Some(pid.as_str());
        while let Some(id) = cur {
            let Some(n) = self.nodes.get(id) else { break };
            chain.push(n.code.clone());
            cur = n.parent.as_deref();
        }
        chain.reverse();
        (least, None, chain)
    }

    /// Restarts worker `w`; its in-flight snippets of this batch fail. Returns how many.
    fn fail_worker(
        &mut self,
        w: usize,
        why: &str,
        batch: &[Snippet],
        slot_of: &mut HashMap<u64, usize>,
        owner: &mut HashMap<u64, usize>,
        results: &mut [Option<ExecResult>],
    ) -> usize {
        self.restart_worker(w, why);
        let lost: Vec<u64> = owner
            .iter()
            .filter(|(_, &o)| o == w)
            .map(|(&r, _)| r)
            .collect();
        for rid in &lost {
            owner.remove(rid);
            if let Some(i) = slot_of.remove(rid) {
                results[i] = Some(failed(
                    &batch[i].id,
                    format!("{why} while this snippet was queued or running; it was restarted"),
                ));
            }
        }
        lost.len()
    }

    /// Kills worker `w` and starts a new generation in its place (its kept states are gone;
    /// children of its snippets are then routed with a replay chain).
    fn restart_worker(&mut self, w: usize, why: &str) {
        tracing::warn!("exec worker {w}: {why}; restarting it");
        self.workers[w].kill();
        let gen = self.workers[w].gen + 1;
        match Worker::spawn(
            &self.python,
            &self.server_cfg,
            self.scratch.path(),
            w,
            gen,
            self.tx.clone(),
        ) {
            Ok(new) => self.workers[w] = new,
            Err(e) => {
                tracing::error!("exec worker {w}: restart failed: {e}");
                self.workers[w].gen = gen;
            }
        }
    }

    fn result_of(&self, id: &str, msg: &Value) -> ExecResult {
        let b64 = |k: &str| {
            msg.get(k)
                .and_then(Value::as_str)
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .unwrap_or_default()
        };
        let captured = Captured {
            head: b64("head"),
            tail: b64("tail"),
            total: msg.get("total").and_then(Value::as_u64).unwrap_or(0),
        };
        let (text, valid) = decode(&captured);
        let mut ok = msg.get("ok").and_then(Value::as_bool).unwrap_or(false);
        let mut error = msg
            .get("error")
            .and_then(Value::as_str)
            .map(|e| one_line(e, 2000));
        if !valid && ok {
            ok = false;
            error = Some("the output is not valid UTF-8 (invalid bytes shown as U+FFFD)".into());
        }
        if !ok && error.is_none() {
            error = Some("failed without an error message".into());
        }
        let mut stdout = truncate(&text, self.cfg.truncate_chars);
        if self.cfg.round_floats {
            stdout = round_numeric(&stdout);
        }
        ExecResult {
            id: id.to_string(),
            ok,
            stdout,
            error: if ok { None } else { error },
            elapsed_ms: msg.get("ms").and_then(Value::as_f64).unwrap_or(0.0),
        }
    }
}

fn failed(id: &str, error: String) -> ExecResult {
    ExecResult {
        id: id.to_string(),
        ok: false,
        stdout: String::new(),
        error: Some(error),
        elapsed_ms: 0.0,
    }
}

/// An error message on one line, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        let mut t: String = flat.chars().take(max).collect();
        t.push_str("...");
        t
    } else {
        flat
    }
}
