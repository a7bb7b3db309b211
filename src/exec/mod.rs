//! The sandboxed, incremental Python executor: runs each step's code, continuing from the
//! interpreter state its parent step left.
//!
//! This module owns the worker processes ([`worker`]: the embedded `worker.py` server), the
//! pool that routes snippets to them and turns their reports into results ([`pool`]), the output
//! rules ([`output`]: rStar's 1024-character truncation and numeric rounding), and the
//! rStar-style baseline used by `rstar-gpu bench exec` ([`bench`]).
//!
//! # How a snippet runs
//! A worker is a long-lived Python server started from the real interpreter (`sys.executable`,
//! not a pyenv shim) with `math`, `sympy` and `numpy` (where installed) imported and warmed up.
//! Each snippet runs in a forked child. Root-level snippets are forked by the worker's *base*
//! process (forked once from the preloaded interpreter, sandboxed once). A snippet with a
//! `parent` forks from the process the parent left behind (a *zygote*, kept while children are
//! expected), so a depth-d trajectory costs O(d) work instead of rStar's re-run of every ancestor.
//! The last expected child of a zygote runs in the zygote itself (no fork), over the same channel
//! and output memfd: a linear path forks once, and each later step costs one request frame and
//! one reply frame that carries the captured output. When a parent's state is gone (evicted by
//! the state cap, killed, or its worker restarted), the missing ancestors' code is replayed
//! silently in front of the child's, from the nearest live state.
//!
//! # Guarantees (each layer is best-effort where the kernel may refuse it; see
//! [`ExecPool::sandbox`] for what this machine granted)
//! * **Limits per snippet:** wall timeout (the process is killed), CPU seconds (`RLIMIT_CPU`),
//!   address space (`RLIMIT_AS`), file size (`RLIMIT_FSIZE`), no core dumps, captured output
//!   capped at [`ExecConfig::max_output_bytes`].
//! * **No new processes:** `RLIMIT_NPROC` soft limit 1 while model code runs (`fork`,
//!   `subprocess`, `multiprocessing` fail with EAGAIN); root-run workers switch snippets to an
//!   unprivileged uid (65534) because root ignores that limit; `execve` is denied by seccomp.
//! * **No signals, no tracing:** seccomp denies `kill`, `tkill`, `tgkill`, `pidfd_send_signal`,
//!   `ptrace`, `process_vm_*` and namespace syscalls to model code.
//! * **Files:** Landlock allows writes only in the snippet's scratch directory (removed after
//!   the snippet), and reads only of the interpreter's files and system directories. The scratch
//!   root is a private tmpfs capped at [`ExecConfig::scratch_mb`] where the mount namespace
//!   allows it (else below `/dev/shm` or the temporary directory).
//! * **Network:** a new network namespace (no interfaces) and seccomp allows only `AF_UNIX`
//!   sockets.
//! * **Processes and secrets:** a new pid namespace with a private `/proc` (the caller's
//!   processes are invisible); the worker's environment is scrubbed (no inherited variables).
//! * **Every snippet gets a result**, in input order: failures (timeouts, crashes, limits,
//!   exceptions, a worker dying) are results with `ok: false` and a one-line `error`.
//!
//! # Honest limits
//! * Model code runs in the same interpreter as the zygote loop: deliberately hostile code can
//!   tamper with its own process (and so with its descendants' results), raise its own soft
//!   limits up to the hard ones, or lie about its own output. It cannot escape the layers above.
//! * Where the kernel refuses a layer (no Landlock before Linux 5.13, no unprivileged user
//!   namespaces, not x86-64/aarch64 for seccomp), that protection is missing, and
//!   [`ExecPool::sandbox`] says so. Without the pid namespace and the uid switch, model code can
//!   see other processes of the same user in `/proc`.
//! * Python-level recursion is bounded by Python's recursion limit; code that raises the limit
//!   and recurses until the C stack overflows is reported as a crash (SIGSEGV).

pub mod bench;
pub mod output;
pub mod pool;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use pool::ExecPool;

/// One piece of model-written code to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snippet {
    /// Unique within the pool until released.
    pub id: String,
    /// Python source.
    pub code: String,
    /// The snippet whose interpreter state this one continues from; `None` starts fresh.
    pub parent: Option<String>,
    /// Whether (and for how many children) to keep the state this snippet leaves.
    #[serde(default)]
    pub keep: Keep,
}

impl Snippet {
    /// A snippet that keeps no state for children.
    pub fn new(id: impl Into<String>, code: impl Into<String>, parent: Option<&str>) -> Self {
        Self {
            id: id.into(),
            code: code.into(),
            parent: parent.map(str::to_string),
            keep: Keep::No,
        }
    }

    /// The same snippet keeping its state for `keep`.
    pub fn keep(mut self, keep: Keep) -> Self {
        self.keep = keep;
        self
    }
}

/// How long a snippet's interpreter state is kept for children.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Keep {
    /// No child will continue from it (a child that does anyway is served by replay).
    #[default]
    No,
    /// Exactly this many children will continue from it; the state is freed after the last one
    /// starts (which then runs in the kept process itself, without a fork).
    Children(u32),
    /// Until [`ExecPool::release`].
    UntilReleased,
}

impl Keep {
    pub(crate) fn wire(self) -> i64 {
        match self {
            Keep::No | Keep::Children(0) => 0,
            Keep::Children(n) => n as i64,
            Keep::UntilReleased => -1,
        }
    }
}

/// The outcome of one snippet (the `rstar-gpu exec` output line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    /// The snippet's id.
    pub id: String,
    /// The code ran to its end without an exception, within all limits.
    pub ok: bool,
    /// stdout and stderr as the policy sees them (truncated, optionally rounded).
    pub stdout: String,
    /// Why it failed: the exception as `Type: message` (rStar's format), or the limit or crash.
    pub error: Option<String>,
    /// Time running the code, in milliseconds (for failures: wall time until the failure).
    pub elapsed_ms: f64,
}

/// Executor settings. `Default` gives the `rstar-gpu exec` defaults.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// Worker server processes (default: the number of cores).
    pub workers: usize,
    /// Snippets running at once per worker.
    pub max_running: usize,
    /// Wall-clock limit per snippet (also sets the CPU limit, rounded up to whole seconds).
    pub timeout: Duration,
    /// Address-space limit per snippet process, MiB.
    pub memory_mb: u64,
    /// Largest file a snippet may write, MiB.
    pub file_size_mb: u64,
    /// Output beyond this many bytes stops the snippet (`ok: false`).
    pub max_output_bytes: u64,
    /// Kept interpreter states per worker; the least recently used beyond this are dropped.
    pub max_states: usize,
    /// Size of the private tmpfs mounted over each worker's scratch root, MiB: the cap on all
    /// files its snippets hold at once (where the mount namespace allows it; 0: no mount).
    pub scratch_mb: u64,
    /// rStar's truncation of the shown output (characters; 0 keeps everything captured).
    pub truncate_chars: usize,
    /// rStar's rounding of a purely numeric output to 4 decimals when shorter.
    pub round_floats: bool,
    /// The interpreter (default: [`crate::grade::python_interpreter`]).
    pub python: Option<PathBuf>,
    /// Modules imported once in each worker before any fork (missing ones are skipped).
    pub preload: Vec<String>,
    /// Sandbox layers to attempt.
    pub sandbox: SandboxConfig,
    /// How long a worker may take to start (importing sympy).
    pub start_timeout: Duration,
}

impl Default for ExecConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            workers: cores,
            max_running: 2,
            timeout: Duration::from_millis(2000),
            memory_mb: 1024,
            file_size_mb: 16,
            max_output_bytes: 1 << 20,
            max_states: 256,
            scratch_mb: 256,
            truncate_chars: output::TRUNCATE_CHARS,
            round_floats: false,
            python: None,
            preload: ["math", "fractions", "itertools", "sympy", "numpy", "scipy"]
                .map(String::from)
                .to_vec(),
            sandbox: SandboxConfig::default(),
            start_timeout: Duration::from_secs(120),
        }
    }
}

/// Which sandbox layers the workers try (each is skipped, and reported, where refused).
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// New user (when unprivileged), mount, network and pid namespaces.
    pub namespaces: bool,
    /// Landlock file-system rules.
    pub landlock: bool,
    /// Landlock also restricts reads (to the interpreter's files and system directories).
    pub landlock_reads: bool,
    /// The seccomp filter.
    pub seccomp: bool,
    /// (uid, gid) that snippets of a root-run worker switch to.
    pub uid: Option<(u32, u32)>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            namespaces: true,
            landlock: true,
            landlock_reads: true,
            seccomp: true,
            uid: Some((65534, 65534)),
        }
    }
}

/// Executor failures that are not a snippet's own result (those are [`ExecResult`]s).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The interpreter could not be found or started.
    #[error("cannot start the Python worker {0}: {1} (install Python 3.9+ or pass --python PATH)")]
    Spawn(String, String),
    /// The worker started but did not become ready.
    #[error("the Python worker did not start: {0}")]
    Start(String),
    /// A setting is out of range.
    #[error("invalid executor setting: {0}")]
    Config(String),
}
