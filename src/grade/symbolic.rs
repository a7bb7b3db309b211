//! The symbolic fallback: sympy decides pairs the quick rules cannot (`x^3+3x-6` vs `3x+x^3-6`,
//! `\cot x` vs `\frac{\cos x}{\sin x}`).
//!
//! [`SymbolicChecker`] is the seam: the executor's worker pool can implement it later (it already
//! has warm interpreters with sympy imported), running [`SYMPY_PROGRAM`] as a snippet. The default,
//! [`PythonSympy`], starts the real interpreter in a subprocess per batch of pairs with a hard
//! timeout (the process is killed on expiry), so a pathological `simplify` can never stall grading.
//!
//! The program converts the normalised LaTeX with a small converter (`\frac`, `\sqrt`, `\pi`, `^`,
//! `\cdot`, functions, implicit multiplication; `i` is the imaginary unit and `e` Euler's number, as
//! in MATH answers) and `sympy.parse_expr`; `sympy.parsing.latex.parse_latex` is only a second try,
//! because it needs an exact `antlr4` runtime version that is often not the installed one (here:
//! 4.13 against sympy's 4.11) and it reads `i`/`e` as plain symbols. Two answers are equal when
//! `simplify(a - b) == 0` (or sympy's `a.equals(b)` is true; two plain numbers compare with the
//! quick rules' relative tolerance, 1e-4); otherwise not equal. A parse failure, missing sympy or
//! a timeout is *undecided*, which the grader reports as "not equal" with the reason.
//!
//! Safety: `parse_expr` evaluates Python, and answers are model-written. The program therefore
//! gives it no builtins and only sympy's arithmetic names, and refuses any converted text outside
//! letters, digits, spaces and `+ - * / ^ ( ) . , < >` (no underscores, so no dunder attributes;
//! no quotes; no attribute access). The process also runs under a 2 GiB address-space limit and
//! the hard kill, so `9^{9^{9^9}}` costs at most the time limit.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::GradeError;

/// Decides whether two normalised answers are symbolically equal.
pub trait SymbolicChecker: Send + Sync {
    /// `Ok(true)` equal, `Ok(false)` not equal, `Err` undecided (with the reason).
    fn check(&self, a: &str, b: &str) -> Result<bool, GradeError>;

    /// Many pairs at once (one interpreter start for all of them, where the implementation can).
    fn check_batch(&self, pairs: &[(String, String)]) -> Vec<Result<bool, GradeError>> {
        pairs.iter().map(|(a, b)| self.check(a, b)).collect()
    }
}

/// The Python program behind [`PythonSympy`]: reads `{"pairs": [[a, b], …], "timeout": s}` on
/// stdin and prints one JSON line per pair, `{"equal": true|false}` or `{"error": "…"}`, flushing
/// after each so the answers before a kill are kept.
pub const SYMPY_PROGRAM: &str = r#"
import sys, json, signal, re

def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

req = json.loads(sys.stdin.read())
pairs, timeout = req["pairs"], max(1, int(req.get("timeout", 5)))
try:
    # A bounded address space: `9^9^9^9` must fail with MemoryError, not eat the machine.
    import resource
    limit = 2 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
except Exception:
    pass
try:
    import sympy
    from sympy.parsing.sympy_parser import (parse_expr, standard_transformations,
        implicit_multiplication_application, convert_xor)
except Exception as e:
    for _ in pairs:
        emit({"error": "sympy is not importable: %s" % e})
    sys.exit(0)

FUNCS = ["arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sin", "cos", "tan", "cot", "sec",
         "csc", "ln", "log", "exp"]
GREEK = ["alpha", "beta", "gamma", "delta", "theta", "lambda", "mu", "phi", "psi", "omega", "rho",
         "sigma", "tau"]

def group(s, i):
    # s[i] == "{": return (content, index after the closing brace)
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{": depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0: return s[i + 1:j], j + 1
    raise ValueError("unbalanced braces")

def arg(s, i):
    if i < len(s) and s[i] == "{": return group(s, i)
    if i < len(s): return s[i], i + 1
    raise ValueError("missing argument")

def conv(s):
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            a, i = arg(s, i + 5); b, i = arg(s, i)
            out.append("((%s)/(%s))" % (conv(a), conv(b)))
        elif s.startswith("\\sqrt", i):
            i += 5
            if i < len(s) and s[i] == "[":
                j = s.index("]", i); n = conv(s[i + 1:j]); i = j + 1
                a, i = arg(s, i); out.append("((%s)**(1/(%s)))" % (conv(a), n))
            else:
                a, i = arg(s, i); out.append("sqrt(%s)" % conv(a))
        elif s[i] == "\\":
            m = re.match(r"\\([A-Za-z]+)", s[i:])
            if not m:
                i += 1; continue
            name = m.group(1); i += len(m.group(0))
            if name == "pi": out.append(" pi ")
            elif name in ("cdot", "times"): out.append("*")
            elif name == "div": out.append("/")
            elif name == "infty": out.append(" oo ")
            elif name in FUNCS: out.append(" %s" % name)
            elif name in GREEK: out.append(" %s " % name)
            else: raise ValueError("unsupported command \\%s" % name)
        elif s[i] in "{": out.append("("); i += 1
        elif s[i] in "}": out.append(")"); i += 1
        elif s[i] == "^": out.append("**"); i += 1
        else: out.append(s[i]); i += 1
    return "".join(out)

LOCALS = {"i": sympy.I, "e": sympy.E, "pi": sympy.pi, "oo": sympy.oo}
TRANSFORMS = standard_transformations + (implicit_multiplication_application, convert_xor)
# parse_expr evaluates Python: answers are model-written, so it gets only these names (no
# builtins), and only text that cannot reach anything else: no underscores (no dunders), no
# quotes, no attribute access, no brackets or other syntax beyond arithmetic.
GLOBALS = {"__builtins__": {}}
for _n in ["Symbol", "Integer", "Float", "Rational", "Function", "sqrt", "pi", "E", "I", "oo",
           "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh",
           "tanh", "log", "exp"]:
    GLOBALS[_n] = getattr(sympy, _n)
GLOBALS.update({"ln": sympy.log, "arcsin": sympy.asin, "arccos": sympy.acos,
                "arctan": sympy.atan})
SAFE = re.compile(r"[A-Za-z0-9\s+\-*/().,^<>]*")

def safe(expr):
    if not SAFE.fullmatch(expr) or re.search(r"\.\s*[A-Za-z]", expr):
        raise ValueError("unsupported characters in %r" % expr[:80])
    return expr

def parse(s):
    try:
        return parse_expr(safe(conv(s)), local_dict=dict(LOCALS), global_dict=dict(GLOBALS),
                          transformations=TRANSFORMS)
    except Exception as first:
        try:
            from sympy.parsing.latex import parse_latex
            return parse_latex(s)
        except Exception:
            raise ValueError("cannot parse %r: %s" % (s, first))

class Timeout(BaseException):
    # Not an Exception: the parsers' `except Exception` fallbacks must not swallow it.
    pass

def on_alarm(signum, frame):
    raise Timeout()

signal.signal(signal.SIGALRM, on_alarm)
for a, b in pairs:
    signal.alarm(timeout)
    try:
        x, y = parse(a), parse(b)
        d = sympy.simplify(x - y)
        if d == 0:
            emit({"equal": True})
        elif d.is_number and x.is_number and y.is_number:
            # Numbers: the same relative tolerance as the quick rules (1e-4).
            dx, dy = complex(sympy.N(x)), complex(sympy.N(y))
            emit({"equal": abs(dx - dy) <= 1e-4 * max(abs(dx), abs(dy))})
        else:
            emit({"equal": bool(x.equals(y) is True)})
    except Timeout:
        emit({"error": "sympy took longer than %d s" % timeout})
    except Exception as e:
        emit({"error": "%s: %s" % (type(e).__name__, str(e)[:200])})
    finally:
        signal.alarm(0)
"#;

/// The default [`SymbolicChecker`]: sympy in a fresh `python3` subprocess, killed after the time
/// limit (per pair: a batch of `n` pairs may take `n ×` the limit, and each pair is also bounded
/// inside Python by `SIGALRM`, so one slow pair does not cost the others their answers).
#[derive(Clone, Debug)]
pub struct PythonSympy {
    /// The interpreter; `None` resolves it on first use (see [`python_interpreter`]).
    pub python: Option<PathBuf>,
    /// Time limit per pair.
    pub timeout: Duration,
}

impl Default for PythonSympy {
    fn default() -> Self {
        Self {
            python: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One line of the program's output.
#[derive(Deserialize)]
struct Answer {
    equal: Option<bool>,
    error: Option<String>,
}

impl PythonSympy {
    fn interpreter(&self) -> Result<PathBuf, GradeError> {
        match &self.python {
            Some(p) => Ok(p.clone()),
            None => python_interpreter(),
        }
    }
}

impl SymbolicChecker for PythonSympy {
    fn check(&self, a: &str, b: &str) -> Result<bool, GradeError> {
        self.check_batch(&[(a.to_string(), b.to_string())])
            .pop()
            .unwrap_or_else(|| Err(GradeError::Symbolic("no answer".into())))
    }

    fn check_batch(&self, pairs: &[(String, String)]) -> Vec<Result<bool, GradeError>> {
        if pairs.is_empty() {
            return Vec::new();
        }
        let python = match self.interpreter() {
            Ok(p) => p,
            Err(e) => return pairs.iter().map(|_| Err(e.clone())).collect(),
        };
        let request = serde_json::json!({
            "pairs": pairs.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>(),
            "timeout": self.timeout.as_secs().max(1),
        });
        let limit = self.timeout.saturating_mul(pairs.len() as u32);
        let (stdout, failure) = match run_with_timeout(&python, &request.to_string(), limit) {
            Ok(out) => (out, None),
            Err((partial, e)) => (partial, Some(e)),
        };
        let mut answers: Vec<Result<bool, GradeError>> = stdout
            .lines()
            .take(pairs.len())
            .map(|line| match serde_json::from_str::<Answer>(line) {
                Ok(Answer {
                    equal: Some(eq), ..
                }) => Ok(eq),
                Ok(Answer { error: Some(e), .. }) => Err(GradeError::Symbolic(e)),
                _ => Err(GradeError::Symbolic(format!(
                    "unreadable answer line {line:?}"
                ))),
            })
            .collect();
        let missing = failure.unwrap_or_else(|| GradeError::Symbolic("no answer".into()));
        answers.resize_with(pairs.len(), || Err(missing.clone()));
        answers
    }
}

/// Runs [`SYMPY_PROGRAM`] with `input` on stdin; kills it after `limit`. On failure, returns the
/// output so far with the error.
fn run_with_timeout(
    python: &PathBuf,
    input: &str,
    limit: Duration,
) -> Result<String, (String, GradeError)> {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(SYMPY_PROGRAM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            (
                String::new(),
                GradeError::Spawn(python.display().to_string(), e.to_string()),
            )
        })?;
    // Writing and reading on their own threads: a full pipe must never block the timeout loop.
    let mut stdin = child.stdin.take();
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(GradeError::Timeout(limit));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(GradeError::Spawn(
                    python.display().to_string(),
                    e.to_string(),
                ));
            }
        }
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Ok(s) if s.success() => Ok(stdout),
        Ok(s) => {
            let last = stderr.lines().last().unwrap_or("").to_string();
            Err((
                stdout,
                GradeError::Symbolic(format!("python exited with {s}: {last}")),
            ))
        }
        Err(e) => Err((stdout, e)),
    }
}

/// The real Python interpreter: `$RSTAR_PYTHON` if set, else what `python3` reports as
/// `sys.executable` (on pyenv machines `python3` is a shell shim that costs a bash start per call
/// and may pick another version per directory; the resolved path avoids both). Resolved once.
pub fn python_interpreter() -> Result<PathBuf, GradeError> {
    static PYTHON: OnceLock<Result<PathBuf, GradeError>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("RSTAR_PYTHON").filter(|p| !p.is_empty()) {
                return Ok(PathBuf::from(p));
            }
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| GradeError::Spawn("python3".into(), e.to_string()))?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || path.is_empty() {
                return Err(GradeError::Spawn(
                    "python3".into(),
                    "no sys.executable".into(),
                ));
            }
            Ok(PathBuf::from(path))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sympy_here() -> bool {
        python_interpreter().is_ok_and(|p| {
            Command::new(p)
                .args(["-c", "import sympy"])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    #[test]
    fn sympy_decides_polynomials_and_trig() {
        if !sympy_here() {
            eprintln!("SKIP sympy unit test: sympy is not importable");
            return;
        }
        let c = PythonSympy::default();
        let r = c.check_batch(&[
            ("x^3+3x-6".into(), "3x+x^3-6".into()),
            (r"\cot x".into(), r"\frac{\cos x}{\sin x}".into()),
            ("(a+5)(b+2)".into(), "ab+2a+5b+10".into()),
            ("2k+2".into(), "2k+3".into()),
            (r"\pm".into(), "1".into()),
        ]);
        assert!(matches!(r[0], Ok(true)), "{:?}", r[0]);
        assert!(matches!(r[1], Ok(true)), "{:?}", r[1]);
        assert!(matches!(r[2], Ok(true)), "{:?}", r[2]);
        assert!(matches!(r[3], Ok(false)), "{:?}", r[3]);
        assert!(r[4].is_err(), "{:?}", r[4]);
    }

    #[test]
    fn injected_python_is_refused_not_run() {
        if !sympy_here() {
            eprintln!("SKIP sympy injection test: sympy is not importable");
            return;
        }
        let marker = std::env::temp_dir().join(format!("rstar-grade-pwned-{}", std::process::id()));
        let m = marker.display().to_string();
        let c = PythonSympy::default();
        let attacks = [
            format!("__import__('os').system('touch {m}')"),
            format!("open('{m}','w')"),
            "x.__class__.__mro__".to_string(),
            format!("eval(\"open('{m}','w')\")"),
            "exec(chr(49))".to_string(),
            "(lambda: 1)()".to_string(),
        ];
        let pairs: Vec<(String, String)> =
            attacks.iter().map(|a| (a.clone(), "1".into())).collect();
        for (a, r) in attacks.iter().zip(c.check_batch(&pairs)) {
            assert!(!matches!(r, Ok(true)), "{a}: {r:?}");
        }
        assert!(!marker.exists(), "an answer ran code");
        // A huge power is bounded by the time limit (and the address-space limit).
        let slow = PythonSympy {
            timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let t = Instant::now();
        let r = slow.check("9^{9^{9^{9}}}", "1");
        assert!(!matches!(r, Ok(true)), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn missing_interpreter_is_an_error_not_a_panic() {
        let c = PythonSympy {
            python: Some("/nonexistent/python".into()),
            ..Default::default()
        };
        assert!(matches!(c.check("1", "1"), Err(GradeError::Spawn(..))));
    }

    #[cfg(unix)]
    #[test]
    fn a_hung_interpreter_is_killed_at_the_limit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rstar-grade-hang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("python");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = PythonSympy {
            python: Some(fake),
            timeout: Duration::from_secs(1),
        };
        let t = Instant::now();
        let r = c.check("1", "1");
        assert!(matches!(r, Err(GradeError::Timeout(_))), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
