//! `rstar-gpu bench exec`: our executor against a faithful rStar-style baseline on the same
//! generated trajectories, in one run.
//!
//! Both run the trajectories the way a search does, one round per depth: round d executes step d
//! of every path (our executor continues each from step d−1's kept state; the baseline re-runs
//! steps 1..d from scratch, as rStar does). Start-up (interpreters, sympy imports, pools) is not
//! timed for either. Outputs are cross-checked: the baseline prints every ancestor's output again,
//! so its output for step d must equal ours for steps 1..d joined.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{ExecPool, ExecResult, Keep, Snippet};

/// The rStar-style baseline program.
pub const BASELINE_PY: &str = include_str!("baseline.py");

/// What the steps compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// 2–3 lines of integer arithmetic per step, continuing the previous step's variables.
    Trivial,
    /// As trivial, but one step in four also calls sympy's `solve` or `simplify` on a small
    /// expression, as model-written solutions often do.
    Sympy,
}

/// splitmix64: a tiny deterministic generator for the workload's constants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        crate::rng::splitmix64(&mut self.0)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `paths` trajectories of `depth` steps each: `[path][step]` Python code.
pub fn trajectories(workload: Workload, depth: usize, paths: usize, seed: u64) -> Vec<Vec<String>> {
    let mut rng = Rng(seed);
    (0..paths)
        .map(|p| {
            (0..depth)
                .map(|k| {
                    let prev = if k == 0 {
                        format!("{}", p + 3)
                    } else {
                        format!("v{}", k - 1)
                    };
                    let (a, b, c) = (rng.range(2, 97), rng.range(1, 999), rng.range(3, 31));
                    let mut code = format!(
                        "# Step {}: update the running values\nv{k} = ({prev} * {a} + {b}) % 1000003\nw{k} = v{k} % {c} + {k}\n",
                        k + 1
                    );
                    if rng.range(0, 1) == 1 || k + 1 == depth {
                        code.push_str(&format!("print(v{k} + w{k})\n"));
                    }
                    if workload == Workload::Sympy && k % 4 == 1 {
                        let (m, n) = (rng.range(1, 12), rng.range(1, 12));
                        if rng.range(0, 1) == 0 {
                            code.push_str(&format!(
                                "import sympy as sp\ns = sp.Symbol('s')\nr{k} = sp.solve(s**2 - {}*s + {}, s)\nprint(r{k})\n",
                                m + n,
                                m * n
                            ));
                        } else {
                            code.push_str(&format!(
                                "import sympy as sp\ns = sp.Symbol('s')\nr{k} = sp.simplify((s**2 - {m}**2)/(s - {m}) + w{k})\nprint(r{k})\n"
                            ));
                        }
                    }
                    code
                })
                .collect()
        })
        .collect()
}

/// Our executor over `trajs`, one round per depth. Returns (seconds, results `[step][path]`).
pub fn run_ours(pool: &mut ExecPool, trajs: &[Vec<String>]) -> (f64, Vec<Vec<ExecResult>>) {
    let depth = trajs.first().map_or(0, Vec::len);
    let tag = format!("bench{:x}", std::process::id());
    let mut rounds = Vec::with_capacity(depth);
    let start = Instant::now();
    for d in 0..depth {
        let batch: Vec<Snippet> = trajs
            .iter()
            .enumerate()
            .map(|(p, steps)| {
                let parent = (d > 0).then(|| format!("{tag}-{p}-{}", d - 1));
                let keep = if d + 1 < depth {
                    Keep::Children(1)
                } else {
                    Keep::No
                };
                Snippet::new(
                    format!("{tag}-{p}-{d}"),
                    steps[d].clone(),
                    parent.as_deref(),
                )
                .keep(keep)
            })
            .collect();
        rounds.push(pool.run_batch(&batch));
    }
    let secs = start.elapsed().as_secs_f64();
    let ids: Vec<String> = (0..trajs.len())
        .flat_map(|p| (0..depth).map(move |d| (p, d)))
        .map(|(p, d)| format!("{tag}-{p}-{d}"))
        .collect();
    pool.release(&ids);
    (secs, rounds)
}

/// The baseline's answer.
#[derive(Deserialize)]
pub struct BaselineRun {
    /// Time for all rounds.
    pub seconds: f64,
    /// `[step][path]` captured output (or `Type: message`).
    pub outputs: Vec<Vec<String>>,
}

/// The rStar-style baseline over `trajs` with `workers` pool processes.
pub fn run_baseline(
    python: &Path,
    trajs: &[Vec<String>],
    workers: usize,
) -> Result<BaselineRun, String> {
    let rounds = per_round(trajs, |steps, d| steps[..=d].concat());
    run_program(
        python,
        serde_json::json!({"workers": workers, "rounds": rounds}),
    )
}

/// The roofline of any incremental executor on `trajs`: `workers` warm processes of the same
/// program, each path pinned to one and kept in its own namespace, each step running only its
/// own code, with no sandbox, fork, isolation or limits. Its outputs are per step (not joined).
pub fn run_roofline(
    python: &Path,
    trajs: &[Vec<String>],
    workers: usize,
) -> Result<BaselineRun, String> {
    let rounds = per_round(trajs, |steps, d| steps[d].clone());
    run_program(
        python,
        serde_json::json!({"workers": workers, "rounds": rounds, "mode": "incremental"}),
    )
}

/// `[round][path]` programs: `program(path's steps, d)` for each depth d.
fn per_round(
    trajs: &[Vec<String>],
    program: impl Fn(&[String], usize) -> String,
) -> Vec<Vec<String>> {
    let depth = trajs.first().map_or(0, Vec::len);
    (0..depth)
        .map(|d| trajs.iter().map(|steps| program(steps, d)).collect())
        .collect()
}

fn run_program(python: &Path, req: serde_json::Value) -> Result<BaselineRun, String> {
    let req = req.to_string();
    let mut child = Command::new(python)
        .args(["-c", BASELINE_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(req.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("baseline failed: {e}"))?;
    let _ = writer.join();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "baseline exited with {}: {}",
            out.status,
            err.lines().last().unwrap_or("")
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable baseline output: {e}"))
}

/// Steps where the roofline's output differs from ours.
pub fn roofline_mismatches(ours: &[Vec<ExecResult>], roof: &BaselineRun) -> usize {
    let mut bad = 0;
    for (d, round) in ours.iter().enumerate() {
        for (p, r) in round.iter().enumerate() {
            if !r.ok || roof.outputs.get(d).and_then(|o| o.get(p)) != Some(&r.stdout) {
                bad += 1;
            }
        }
    }
    bad
}

/// Steps where the baseline's output differs from ours for steps 1..=d joined.
pub fn mismatches(ours: &[Vec<ExecResult>], base: &BaselineRun) -> usize {
    let paths = ours.first().map_or(0, Vec::len);
    let mut bad = 0;
    for p in 0..paths {
        let mut joined = String::new();
        for (d, round) in ours.iter().enumerate() {
            let r = &round[p];
            joined.push_str(&r.stdout);
            let theirs = base.outputs.get(d).and_then(|o| o.get(p));
            if !r.ok || theirs != Some(&joined) {
                bad += 1;
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_deterministic_and_shaped() {
        let a = trajectories(Workload::Sympy, 8, 4, 7);
        assert_eq!(a, trajectories(Workload::Sympy, 8, 4, 7));
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|p| p.len() == 8));
        let sympy_steps = a[0].iter().filter(|s| s.contains("sp.")).count();
        assert_eq!(sympy_steps, 2); // steps 2 and 6 of 8
        assert!(a[0][7].contains("print("));
        let t = trajectories(Workload::Trivial, 8, 2, 7);
        assert!(t.iter().flatten().all(|s| !s.contains("sympy")));
    }
}
