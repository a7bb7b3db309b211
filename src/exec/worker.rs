//! One worker: the `worker.py` server process, its request pipe, and a reader thread that turns
//! its reply lines into [`Event`]s on the pool's channel.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Sender;

use serde_json::Value;

use super::{ExecConfig, ExecError};

/// The server program (embedded; passed with `-c`).
pub const WORKER_PY: &str = include_str!("worker.py");

/// What a worker's reader thread reports.
#[derive(Debug)]
pub enum Event {
    /// One reply line from worker `worker` of generation `gen`.
    Msg { worker: usize, gen: u64, msg: Value },
    /// The worker's stdout closed: it died (or was killed).
    Dead { worker: usize, gen: u64 },
}

/// A running worker server.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Incremented at each restart; events from older generations are stale.
    pub gen: u64,
}

/// The environment a worker gets: nothing inherited.
fn scrubbed_env(scratch: &Path) -> Vec<(&'static str, String)> {
    let s = scratch.display().to_string();
    vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG", "C.UTF-8".into()),
        ("LC_ALL", "C.UTF-8".into()),
        ("HOME", s.clone()),
        ("TMPDIR", s),
        // BLAS thread pools would each need processes/threads the sandbox refuses.
        ("OPENBLAS_NUM_THREADS", "1".into()),
        ("OMP_NUM_THREADS", "1".into()),
        ("MKL_NUM_THREADS", "1".into()),
    ]
}

/// The JSON configuration the server reads from its argument.
pub fn server_config(cfg: &ExecConfig, scratch: &Path) -> Value {
    let sb = &cfg.sandbox;
    serde_json::json!({
        "scratch": scratch,
        "uid": sb.uid.map(|u| u.0),
        "gid": sb.uid.map(|u| u.1),
        "memory_bytes": cfg.memory_mb.saturating_mul(1 << 20),
        "fsize_bytes": cfg.file_size_mb.saturating_mul(1 << 20),
        "max_running": cfg.max_running,
        "max_states": cfg.max_states,
        "max_output_bytes": cfg.max_output_bytes,
        "scratch_mb": cfg.scratch_mb,
        "preload": cfg.preload,
        "namespaces": sb.namespaces,
        "landlock": sb.landlock,
        "landlock_reads": sb.landlock_reads,
        "seccomp": sb.seccomp,
        "nproc_hard": 4096 + cfg.workers * (cfg.max_states + cfg.max_running + 16),
    })
}

impl Worker {
    /// Starts worker `index` (generation `gen`); its replies go to `tx`.
    pub fn spawn(
        python: &PathBuf,
        config: &Value,
        scratch: &Path,
        index: usize,
        gen: u64,
        tx: Sender<Event>,
    ) -> Result<Self, ExecError> {
        // Each worker writes only below its own directory (its Landlock rule names it).
        let scratch = scratch.join(format!("w{index}-{gen}"));
        std::fs::create_dir_all(&scratch)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o711))
            })
            .map_err(|e| ExecError::Start(format!("cannot create {}: {e}", scratch.display())))?;
        let mut config = config.clone();
        config["scratch"] = Value::String(scratch.display().to_string());
        let scratch = scratch.as_path();
        let mut child = Command::new(python)
            // -E: ignore PYTHON* variables; -P: no script directory on sys.path; -B: no .pyc.
            .args(["-E", "-P", "-B", "-c", WORKER_PY])
            .arg(config.to_string())
            .env_clear()
            .envs(scrubbed_env(scratch))
            .current_dir(scratch)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ExecError::Spawn(python.display().to_string(), e.to_string()))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        std::thread::Builder::new()
            .name(format!("exec-worker-{index}"))
            .spawn(move || {
                if let Some(out) = stdout {
                    for line in BufReader::new(out).split(b'\n') {
                        let Ok(line) = line else { break };
                        match serde_json::from_slice::<Value>(&line) {
                            Ok(msg) => {
                                if tx
                                    .send(Event::Msg {
                                        worker: index,
                                        gen,
                                        msg,
                                    })
                                    .is_err()
                                {
                                    return;
                                }
                            }
                            Err(e) => tracing::warn!("exec worker {index}: unreadable reply: {e}"),
                        }
                    }
                }
                let _ = tx.send(Event::Dead { worker: index, gen });
            })
            .map_err(|e| ExecError::Start(e.to_string()))?;
        std::thread::Builder::new()
            .name(format!("exec-worker-{index}-stderr"))
            .spawn(move || {
                if let Some(err) = stderr {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        tracing::warn!("exec worker {index}: {line}");
                    }
                }
            })
            .map_err(|e| ExecError::Start(e.to_string()))?;
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            gen,
        })
    }

    /// Sends request lines. An error means the worker is gone (its reader reports `Dead`).
    pub fn send(&mut self, lines: &[u8]) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(s) => {
                s.write_all(lines)?;
                s.flush()
            }
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        }
    }

    /// The server process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server; with it goes its pid namespace and every snippet process in it.
    pub fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing stdin lets the server finish and kill its zygotes; then make sure.
        self.stdin = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.kill();
    }
}
