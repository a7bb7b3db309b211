//! [`OpenAiPolicy`] against a real OpenAI-compatible server: llama-cpp-python's
//! `python3 -m llama_cpp.server` serving SmolLM2-135M-Instruct (GGUF, from the asset cache) on a
//! free local port, two threads.
//!
//! Checked: shapes (`[prompt][sample]`), stop strings cut from the text, greedy determinism (the
//! same request twice, and once more through the prompt-array fallback, gives the same text),
//! sampled `n` > 1 through the `n` fallback (this server ignores `n`), and a one-line error once
//! the server is gone. The server is killed at the end, also when a check panics.
//!
//! Without `llama_cpp.server` importable (`pip install 'llama-cpp-python[server]'`, see
//! `.ci/run`), the test prints `SKIP openai server: <reason>` and passes; without the model
//! (no network for the fetch) likewise, unless `RSTAR_REQUIRE_DATA=1`.

use std::io::{Read, Seek};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rstar_gpu::model::openai::OpenAiPolicy;
use rstar_gpu::model::{FinishReason, ModelError, Policy, SamplingParams};

/// How long the server may take to load the model and answer `GET /v1/models`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The running server; killed (and reaped) on drop.
struct Server {
    child: Child,
    log: std::fs::File,
    url: String,
}

impl Server {
    /// The last lines of the server's output, for failure messages.
    fn log_tail(&mut self) -> String {
        let mut s = String::new();
        let _ = self.log.rewind();
        let _ = self.log.read_to_string(&mut s);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// `Err(reason)` when llama-cpp-python's server cannot be imported by `python`.
fn server_importable(python: &Path) -> Result<(), String> {
    let out = Command::new(python)
        .args(["-c", "import llama_cpp.server"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("import failed");
    Err(format!(
        "`import llama_cpp.server` failed with {} ({last}); install with pip install 'llama-cpp-python[server]'",
        python.display()
    ))
}

/// The SmolLM2 GGUF; `Err(reason)` to skip when it cannot be had here.
fn model() -> Result<PathBuf, String> {
    match rstar_gpu::assets::model_path("smollm2-135m") {
        Ok(p) => Ok(p),
        Err(e)
            if e.is_unavailable() && std::env::var("RSTAR_REQUIRE_DATA").as_deref() != Ok("1") =>
        {
            Err(format!("model smollm2-135m unavailable: {e}"))
        }
        Err(e) => panic!("model smollm2-135m: {e}"),
    }
}

fn start_server(python: &Path, model: &Path) -> Server {
    let port = free_port();
    let log = server_log();
    let mut cmd = Command::new(python);
    cmd.args(["-m", "llama_cpp.server", "--model"])
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
            "--n_threads_batch",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log.try_clone().expect("dup log"));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start llama_cpp.server: {e}"));
    let mut server = Server {
        child,
        log,
        url: format!("http://127.0.0.1:{port}/v1"),
    };
    let probe = OpenAiPolicy::new(&server.url, None)
        .expect("a valid URL")
        .with_retries(0, Duration::ZERO)
        .with_timeout(Duration::from_secs(5));
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            let tail = server.log_tail();
            panic!("llama_cpp.server exited early ({status}):\n{tail}");
        }
        match probe.list_models() {
            Ok(models) if !models.is_empty() => break,
            Ok(_) => panic!("the server lists no models"),
            Err(e) if t0.elapsed() > READY_TIMEOUT => {
                let tail = server.log_tail();
                panic!("server not ready after {READY_TIMEOUT:?}: {e}\n{tail}");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    println!(
        "openai server: ready at {} after {:.1?}",
        server.url,
        t0.elapsed()
    );
    server
}

/// An anonymous log file (unlinked at once) under the system temp dir.
fn server_log() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("rstar-openai-server-{}.log", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create the server log");
    let _ = std::fs::remove_file(&path);
    file
}

#[test]
fn openai_client_against_llama_cpp_server() {
    let python = match rstar_gpu::grade::python_interpreter() {
        Ok(p) => p,
        Err(e) => {
            println!("SKIP openai server: no python3: {e}");
            return;
        }
    };
    if let Err(reason) = server_importable(&python) {
        println!("SKIP openai server: {reason}");
        return;
    }
    let model = match model() {
        Ok(m) => m,
        Err(reason) => {
            println!("SKIP openai server: {reason}");
            return;
        }
    };
    let mut server = start_server(&python, &model);
    let url = server.url.clone();

    let mut policy = OpenAiPolicy::new(&url, None).expect("a valid URL");
    let served = policy.resolve_model().expect("the served model");
    assert_eq!(
        Path::new(&served),
        model.as_path(),
        "llama-cpp-python names the model by its path"
    );

    let prompts = vec![
        "Count from one to ten: 1, 2, 3, 4,".to_string(),
        "Question: What is 2 + 3?\nAnswer:".to_string(),
    ];
    let stop = vec![" 8".to_string(), "\n".to_string()];
    let greedy = SamplingParams {
        temperature: 0.0,
        max_tokens: 32,
        ..SamplingParams::default()
    };
    let t0 = Instant::now();
    let first = policy
        .generate(&prompts, 2, &greedy, &stop)
        .unwrap_or_else(|e| {
            let tail = server.log_tail();
            panic!("generate: {e}\n{tail}")
        });
    println!(
        "openai server: 2 prompts x n=2 in {:.2?}: {first:?}",
        t0.elapsed()
    );
    assert_eq!(first.len(), 2);
    for (i, row) in first.iter().enumerate() {
        assert_eq!(row.len(), 2, "prompt {i}");
        for c in row {
            for s in &stop {
                assert!(
                    !c.text.contains(s.as_str()),
                    "prompt {i}: stop {s:?} left in {:?}",
                    c.text
                );
            }
            assert!(
                c.tokens >= 1 && c.tokens <= 32,
                "prompt {i}: {} tokens",
                c.tokens
            );
            match &c.finish {
                FinishReason::Length => assert_eq!(c.tokens, 32),
                // llama-cpp-python does not say which stop string matched: the first is recorded.
                FinishReason::Stop(s) => assert_eq!(s, &stop[0]),
                FinishReason::Eos => panic!("with stop strings this server cannot report EOS"),
            }
        }
        assert_eq!(
            row[0].text, row[1].text,
            "greedy samples of one prompt differ"
        );
    }
    // The counting prompt runs into " 8" well within 32 tokens: the stop string was honoured.
    let count = &first[0][0];
    assert_ne!(count.finish, FinishReason::Length, "{count:?}");
    assert!(count.text.contains('7'), "{count:?}");

    // Greedy is deterministic: the same request again, and once more with one request in
    // flight (so both prompts go as one prompt array, which this server rejects: the client
    // falls back to one prompt per request).
    let again = policy
        .generate(&prompts, 2, &greedy, &stop)
        .expect("generate again");
    assert_eq!(texts(&again), texts(&first));
    let mut serial = OpenAiPolicy::new(&url, None)
        .expect("a valid URL")
        .with_concurrency(1);
    let third = serial
        .generate(&prompts, 2, &greedy, &stop)
        .expect("generate, one in flight");
    assert_eq!(texts(&third), texts(&first));

    // Sampling with n = 3: n requests with their own seeds (the server ignores `n`).
    let sampled = SamplingParams {
        temperature: 1.0,
        max_tokens: 8,
        seed: 7,
        ..SamplingParams::default()
    };
    let out = policy
        .generate(&prompts[1..], 3, &sampled, &[])
        .expect("sampled generate");
    assert_eq!((out.len(), out[0].len()), (1, 3));
    assert!(
        out[0].iter().all(|c| c.tokens >= 1 && c.tokens <= 8),
        "{out:?}"
    );

    // Once the server is gone its port is closed: one clear line, no hang.
    drop(server);
    let mut policy = policy.with_retries(1, Duration::from_millis(50));
    let err = policy
        .generate(&prompts, 1, &greedy, &stop)
        .expect_err("the server is gone");
    let msg = err.to_string();
    println!("openai server: after shutdown: {msg}");
    assert!(matches!(err, ModelError::Http { .. }), "{msg}");
    assert!(msg.contains(&url) && msg.contains("connect"), "{msg}");
    assert!(!msg.contains('\n'));
}

fn texts(out: &[Vec<rstar_gpu::model::Completion>]) -> Vec<Vec<&str>> {
    out.iter()
        .map(|row| row.iter().map(|c| c.text.as_str()).collect())
        .collect()
}
