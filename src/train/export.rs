//! JSONL exports of the training data, in the formats the common trainers read, and readers back.
//!
//! - SFT ([`write_sft_messages`]): one `{"messages": [...]}` object per line, the conversational
//!   format of TRL's `SFTTrainer` and LLaMA-Factory's OpenAI-style (`sharegpt` with
//!   `"formatting": "sharegpt"`, `"columns": {"messages": "messages"}`, role/content tags)
//!   datasets: an optional system turn, the question as the user turn, the solution as the
//!   assistant turn. Nothing else is on the line, so no trainer trips over an extra column.
//! - Preference pairs ([`write_pairs`]): one object per line with TRL's explicit-prompt
//!   preference columns `prompt`, `chosen`, `rejected` (`RewardTrainer`, `DPOTrainer`), where
//!   `prompt` is the shared context ([`pair_prompt`]) and `chosen`/`rejected` are only the
//!   differing continuations, plus every other [`Pair`] field (`problem`, `question`, `prefix`,
//!   `q_chosen`, `q_rejected`, `kind`, `depth`, `pos_count`, `neg_count`, `chosen_node`,
//!   `rejected_node`): the PPM loss weights pairs by `1 / (pos_count · neg_count)` and needs the
//!   question and prefix apart to apply the backbone's chat template.
//!
//! Writes are atomic: the lines go to `<path>.tmp` in the same directory, which is synced and then
//! renamed over `path`, so a crash never leaves a half-written dataset under the real name.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::pairs::Pair;
use super::sft::SftExample;
use super::TrainError;

/// Who speaks a chat turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One chat turn, `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// One line of an SFT file: `{"messages": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftRecord {
    pub messages: Vec<ChatMessage>,
}

impl SftRecord {
    /// The conversation for `example`: `system` (when given), the question, the solution.
    pub fn new(example: &SftExample, system: Option<&str>) -> SftRecord {
        let turn = |role, content: &str| ChatMessage {
            role,
            content: content.to_string(),
        };
        let mut messages = Vec::with_capacity(3);
        if let Some(s) = system {
            messages.push(turn(Role::System, s));
        }
        messages.push(turn(Role::User, &example.question));
        messages.push(turn(Role::Assistant, &example.solution));
        SftRecord { messages }
    }
}

/// The shared context of a pair, its `prompt` column: the question alone when the prefix is
/// empty (first steps, final pairs), else the question, a blank line (`"\n\n"`) and the prefix
/// (the rendered solution so far, which ends with its step delimiter).
pub fn pair_prompt(pair: &Pair) -> String {
    if pair.prefix.is_empty() {
        pair.question.clone()
    } else {
        format!("{}\n\n{}", pair.question, pair.prefix)
    }
}

/// A pair line as written: the `prompt` column, then the pair's own fields.
#[derive(Serialize)]
struct PairLineOut<'a> {
    prompt: String,
    #[serde(flatten)]
    pair: &'a Pair,
}

/// A pair line as read; the `prompt` column is derived data and is not kept.
#[derive(Deserialize)]
struct PairLineIn {
    #[serde(rename = "prompt")]
    _prompt: String,
    #[serde(flatten)]
    pair: Pair,
}

/// Writes `examples` as chat-format SFT JSONL (see the module docs), atomically.
pub fn write_sft_messages(
    path: &Path,
    examples: &[SftExample],
    system: Option<&str>,
) -> Result<(), TrainError> {
    write_jsonl(path, examples.iter().map(|e| SftRecord::new(e, system)))
}

/// Writes `pairs` as preference JSONL (see the module docs), atomically.
pub fn write_pairs(path: &Path, pairs: &[Pair]) -> Result<(), TrainError> {
    write_jsonl(
        path,
        pairs.iter().map(|pair| PairLineOut {
            prompt: pair_prompt(pair),
            pair,
        }),
    )
}

/// Reads a file written by [`write_pairs`]; errors name the file and the 1-based line.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>, TrainError> {
    let lines: Vec<PairLineIn> = read_jsonl(path)?;
    Ok(lines.into_iter().map(|l| l.pair).collect())
}

/// Reads a file written by [`write_sft_messages`]; errors name the file and the 1-based line.
pub fn read_sft(path: &Path) -> Result<Vec<SftRecord>, TrainError> {
    read_jsonl(path)
}

/// `<path>.tmp`: next to `path`, so the final rename stays within one file system.
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One JSON object per line into `<path>.tmp`, synced, renamed over `path`; the temporary file is
/// removed again when anything fails.
fn write_jsonl<T: Serialize>(
    path: &Path,
    items: impl IntoIterator<Item = T>,
) -> Result<(), TrainError> {
    let tmp = tmp_path(path);
    let result =
        write_synced(&tmp, items).and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path);
    Ok(())
}

fn write_synced<T: Serialize>(
    tmp: &Path,
    items: impl IntoIterator<Item = T>,
) -> Result<(), TrainError> {
    let mut w = BufWriter::new(File::create(tmp).map_err(io_err(tmp))?);
    for (i, item) in items.into_iter().enumerate() {
        let line = serde_json::to_string(&item).map_err(|source| TrainError::Json {
            path: tmp.to_path_buf(),
            line: i + 1,
            source,
        })?;
        w.write_all(line.as_bytes()).map_err(io_err(tmp))?;
        w.write_all(b"\n").map_err(io_err(tmp))?;
    }
    let file = w.into_inner().map_err(|e| io_err(tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err(tmp))
}

/// Makes the rename durable where the platform allows it (best effort: some file systems and
/// platforms cannot sync a directory, and the data itself is already synced).
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Parses every non-blank line of `path` as a `T`.
fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, TrainError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| TrainError::Read {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|source| TrainError::Json {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::pairs::tests::{right, step, tree, wrong, A, BAD, IDEAS, OK, S};
    use crate::train::pairs::{pairs, PairConfig, PairKind};
    use crate::train::sft::{select, SftConfig};

    /// A fresh directory under the system temp dir for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rstar-train-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Root -> 1 (leads to both) -> 3 (correct), 4 (wrong); root -> 2 -> 5 (wrong).
    fn sample() -> crate::search::SearchTree {
        let (s1, s2) = (step(1, IDEAS[0]), step(1, IDEAS[1]));
        let (ok, bad) = (right(), wrong());
        let mut t = tree(&[
            (0, 0.0, S, None, ""),
            (0, 0.5, S, None, &s1),
            (0, -0.5, S, None, &s2),
            (1, 1.0, A, OK, &ok),
            (1, -1.0, A, BAD, &bad),
            (2, -1.0, A, BAD, &bad),
        ]);
        t.question = "What is 3 + 4? \"Quote\" and ünïcode √".into();
        t
    }

    #[test]
    fn pairs_round_trip_with_trl_columns() {
        let dir = scratch("pairs");
        let path = dir.join("pairs.jsonl");
        let ps = pairs(&sample(), &PairConfig::default());
        assert!(ps.iter().any(|p| !p.prefix.is_empty()));
        assert!(ps.iter().any(|p| p.kind == PairKind::Final));
        write_pairs(&path, &ps).unwrap();
        assert!(!tmp_path(&path).exists());
        assert_eq!(read_pairs(&path).unwrap(), ps);

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), ps.len());
        for (line, p) in text.lines().zip(&ps) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["prompt"], pair_prompt(p).as_str());
            assert_eq!(v["chosen"], p.chosen.as_str());
            assert_eq!(v["rejected"], p.rejected.as_str());
            assert_eq!(v["problem"], "p1");
            assert_eq!(v["q_chosen"], f64::from(p.q_chosen));
            assert_eq!(v["q_rejected"], f64::from(p.q_rejected));
            assert_eq!(v["pos_count"], p.pos_count);
            assert!(v["kind"] == "step" || v["kind"] == "final");
        }
        let deep = ps.iter().find(|p| !p.prefix.is_empty()).unwrap();
        assert_eq!(
            pair_prompt(deep),
            format!("{}\n\n{}", deep.question, deep.prefix)
        );
        let fin = ps.iter().find(|p| p.kind == PairKind::Final).unwrap();
        assert_eq!(pair_prompt(fin), fin.question);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sft_messages_exact_line_and_round_trip() {
        let dir = scratch("sft");
        let path = dir.join("sft.jsonl");
        let t = sample();
        let ex = select(&t, &SftConfig::default());
        assert_eq!(ex.len(), 1);
        write_sft_messages(&path, &ex, Some("Solve with code.")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = serde_json::json!({"messages": [
            {"role": "system", "content": "Solve with code."},
            {"role": "user", "content": t.question},
            {"role": "assistant", "content": t.solution(3)},
        ]});
        assert_eq!(text.lines().count(), 1);
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line, expected);
        // The exact bytes: role before content, one object per line, newline-terminated.
        assert!(text.starts_with(
            r#"{"messages":[{"role":"system","content":"Solve with code."},{"role":"user","content":"What is 3 + 4? \"Quote\" and ünïcode √"},{"role":"assistant","content":"<code>\n# Step 1: "#
        ));
        assert!(text.ends_with("<end_of_answer>\"}]}\n"));
        assert_eq!(
            read_sft(&path).unwrap(),
            vec![SftRecord::new(&ex[0], Some("Solve with code."))]
        );
        // Without a system prompt: user and assistant only; the file is replaced.
        write_sft_messages(&path, &ex, None).unwrap();
        let back = read_sft(&path).unwrap();
        assert_eq!(back, vec![SftRecord::new(&ex[0], None)]);
        let roles: Vec<Role> = back[0].messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_line_is_named() {
        let dir = scratch("bad");
        let path = dir.join("pairs.jsonl");
        let ps = pairs(&sample(), &PairConfig::default());
        write_pairs(&path, &ps[..1]).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n{\"prompt\": \"q\", \"chosen\": 3}\n");
        std::fs::write(&path, text).unwrap();
        let err = read_pairs(&path).unwrap_err().to_string();
        // Line 2 is blank and skipped; line 3 is the bad one.
        assert!(err.starts_with(&format!("{}:3: ", path.display())), "{err}");
        let err = read_sft(&dir.join("missing.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.jsonl"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn write_errors_name_the_path_and_leave_nothing() {
        let dir = scratch("nodir");
        let path = dir.join("no-such-dir").join("pairs.jsonl");
        let err = write_pairs(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("no-such-dir"), "{err}");
        assert!(!path.exists() && !tmp_path(&path).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
