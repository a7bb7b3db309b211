//! `home/manifest.json`: what has been fetched, with the checksums computed once at fetch time.
//! Replaced atomically (written beside it, then renamed) under `home/.lock-manifest`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::registry::AssetKind;
use super::AssetError;

/// The manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// The whole manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// By asset name.
    pub assets: BTreeMap<String, ManifestEntry>,
}

/// One fetched asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The asset name.
    pub name: String,
    /// Model or data.
    pub kind: AssetKind,
    /// The asset's directory, relative to the cache home (so a moved cache still works).
    pub dir: String,
    /// The asset (the file or the data directory), relative to `dir`.
    pub path: String,
    /// The sha256 of the file (for a one-file asset).
    pub sha256: Option<String>,
    /// Whether `sha256` was checked against a registry pin (false: recorded at first fetch).
    pub sha256_pinned: bool,
    /// Total bytes of all files.
    pub size: u64,
    /// The wheels it came from.
    pub packages: Vec<PackageRecord>,
    /// Every file of the asset, relative to `dir`.
    pub files: Vec<FileRecord>,
    /// When it was fetched, RFC 3339 UTC.
    pub fetched: String,
    /// The same, as Unix seconds.
    pub fetched_unix: u64,
}

/// A wheel as pip downloaded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// `NAME==VERSION`.
    pub requirement: String,
    /// The wheel's file name.
    pub wheel: String,
    /// The wheel's sha256.
    pub sha256: String,
}

/// One file of an asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative to the asset directory, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// sha256, hex.
    pub sha256: String,
}

impl Manifest {
    /// The manifest path in `home`.
    pub fn path(home: &Path) -> PathBuf {
        home.join("manifest.json")
    }

    /// Reads the manifest. Missing: empty. Unreadable or malformed: empty too, with the reason (the
    /// assets it listed are then fetched again; their directories are replaced).
    pub fn load(home: &Path) -> (Manifest, Option<String>) {
        let path = Manifest::path(home);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Manifest::empty(), None),
            Err(e) => return (Manifest::empty(), Some(format!("{}: {e}", path.display()))),
        };
        match serde_json::from_str::<Manifest>(&text) {
            Ok(m) if m.version == MANIFEST_VERSION => (m, None),
            Ok(m) => (
                Manifest::empty(),
                Some(format!(
                    "{}: version {}, expected {MANIFEST_VERSION}",
                    path.display(),
                    m.version
                )),
            ),
            Err(e) => (
                Manifest::empty(),
                Some(format!("{}: not a valid manifest: {e}", path.display())),
            ),
        }
    }

    fn empty() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            assets: BTreeMap::new(),
        }
    }

    /// Writes the manifest atomically: a temporary file beside it, fsynced, then renamed over it.
    /// The caller holds the manifest lock.
    pub fn store(&self, home: &Path) -> Result<(), AssetError> {
        let path = Manifest::path(home);
        let tmp = home.join(format!(".manifest.json.{}.tmp", std::process::id()));
        let io = |what: &str, e: std::io::Error| AssetError::Io {
            context: format!("{what} {}", tmp.display()),
            source: e,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| AssetError::Io {
            context: "serialise the manifest".into(),
            source: std::io::Error::other(e),
        })?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
            f.write_all(text.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
                .and_then(|_| f.sync_all())
                .map_err(|e| io("write", e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| AssetError::Io {
            context: format!("replace {}", path.display()),
            source: e,
        })
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
