//! The shared name and retention vectors (packages/checkpoint/tests/vectors/
//! names.json and retention.json, which the Python library passes too): the
//! Rust checkpoint directory parses and writes the same names and deletes the
//! same files, the only valid checkpoint included, on a real directory.

use std::fs;
use std::path::PathBuf;

use othello_core::checkpoint::{
    encode, parse_checkpoint_name, retention_deletes, retention_policy, save, CheckpointDir, Node,
};
use serde_json::Value;

fn vector(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../checkpoint/tests/vectors")
        .join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], 1, "{name}");
    v
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn names_parse_and_write_like_the_vectors() {
    let v = vector("names.json");
    let valid = v["valid"].as_array().unwrap();
    assert!(valid.len() >= 5);
    for case in valid {
        let name = case["name"].as_str().unwrap();
        let parsed = parse_checkpoint_name(name).unwrap_or_else(|| panic!("{name:?}"));
        assert_eq!(parsed.step, case["step"].as_u64().unwrap(), "{name}");
        assert_eq!(
            parsed.emergency,
            case["emergency"].as_bool().unwrap(),
            "{name}"
        );
        assert_eq!(parsed.compressed, case["compression"] == "zstd", "{name}");
        assert_eq!(parsed.file_name(), name);
    }
    let invalid = strings(&v["invalid"]);
    assert!(invalid.len() >= 10);
    for name in invalid {
        assert_eq!(parse_checkpoint_name(&name), None, "{name:?}");
    }
}

fn case_policy(case: &Value) -> (usize, u64) {
    let keep_every = case["keep_every"].as_i64();
    retention_policy(case["keep_last"].as_i64().unwrap(), keep_every).unwrap()
}

#[test]
fn retention_deletes_what_the_vectors_say() {
    let v = vector("retention.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let what = case["description"].as_str().unwrap();
        let (keep_last, keep_every) = case_policy(case);
        let files = strings(&case["files"]);
        let invalid = strings(&case["invalid"]);
        let got = retention_deletes(&files, keep_last, keep_every, |n| {
            !invalid.iter().any(|i| i == n)
        });
        assert_eq!(got, strings(&case["delete"]), "{what}");
    }
    for policy in v["invalid_policies"].as_array().unwrap() {
        let err = retention_policy(
            policy["keep_last"].as_i64().unwrap(),
            policy["keep_every"].as_i64(),
        )
        .unwrap_err();
        let field = policy["field"].as_str().unwrap();
        assert!(err.to_string().starts_with(&format!("{field}:")), "{err}");
    }
}

#[test]
fn the_directory_deletes_what_the_vectors_say_on_real_files() {
    let v = vector("retention.json");
    let valid_bytes = encode(&Node::Int(1), &serde_json::json!({})).unwrap();
    for (k, case) in v["cases"].as_array().unwrap().iter().enumerate() {
        let what = case["description"].as_str().unwrap();
        let dir = std::env::temp_dir().join(format!("ckret-{}-{k}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let files = strings(&case["files"]);
        let invalid = strings(&case["invalid"]);
        for f in &files {
            let corrupt = invalid.contains(f) || parse_checkpoint_name(f).is_none();
            if corrupt {
                fs::write(dir.join(f), b"not a checkpoint").unwrap();
            } else if f.ends_with(".zst") {
                save(&dir.join(f), &Node::Int(1), &serde_json::json!({}), true).unwrap();
            } else {
                fs::write(dir.join(f), &valid_bytes).unwrap();
            }
        }
        let (keep_last, keep_every) = case_policy(case);
        let cd = CheckpointDir {
            dir: dir.clone(),
            keep_last,
            keep_every,
            compress: false,
        };
        cd.apply_retention().unwrap();
        let deleted = strings(&case["delete"]);
        for f in &files {
            assert_eq!(dir.join(f).exists(), !deleted.contains(f), "{what}: {f}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
