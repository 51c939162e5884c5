//! The trainsvc checkpoint format, version 1 (`docs/checkpoint-format.md`).
//!
//! A safetensors file whose `__metadata__` carries the tree structure, the
//! caller's metadata and CRC32Cs, every JSON text in Python's canonical form
//! (`json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)`),
//! so that this writer and the Python library produce the same bytes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::EngineError;

mod codec;
mod dir;
mod json;
mod tree;

pub use codec::*;
pub use dir::{
    parse_checkpoint_name, retention_deletes, retention_policy, CheckpointDir, CheckpointInfo,
    CheckpointName, MAX_STEP,
};
pub use json::*;
pub use tree::*;

/// Format name in `trainsvc.format`.
pub const FORMAT_NAME: &str = "trainsvc-checkpoint";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: &str = "1";
/// Largest header a reader accepts.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;
/// Largest decompressed size a reader accepts from a zstd frame.
pub const MAX_DECOMPRESSED_BYTES: u64 = 16 * 1024 * 1024 * 1024;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

// ---------------------------------------------------------------- files

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
///
/// # Errors
/// [`EngineError::Io`] on any I/O failure; the final name is then untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let base = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(".tmp-{base}-{}-{nanos}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Saves `tree` and `metadata` to `path` atomically; zstd-compressed when `compress`.
///
/// # Errors
/// As [`encode`] and [`write_atomic`].
pub fn save(
    path: &Path,
    tree: &Node,
    metadata: &Value,
    compress_it: bool,
) -> Result<u64, EngineError> {
    let mut bytes = encode(tree, metadata)?;
    if compress_it {
        bytes = compress(&bytes)?;
    }
    write_atomic(path, &bytes)?;
    Ok(bytes.len() as u64)
}

/// Loads and checks the checkpoint at `path`.
///
/// # Errors
/// [`EngineError::CheckpointNotFound`] when there is no such file; as [`decode`] otherwise.
pub fn load(path: &Path) -> Result<Decoded, EngineError> {
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            EngineError::CheckpointNotFound(format!("{}: no such file", path.display()))
        }
        _ => EngineError::Io(format!("{}: {e}", path.display())),
    })?;
    decode(&bytes).map_err(|e| match e {
        EngineError::CorruptCheckpoint(m) => {
            EngineError::CorruptCheckpoint(format!("{}: {m}", path.display()))
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn floats_format_like_python_repr() {
        let cases = [
            (1e-5, "1e-05"),
            (1.5e16, "1.5e+16"),
            (1e16, "1e+16"),
            (2.0, "2.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (123_456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (0.001_000_000_047_497_451_3, "0.0010000000474974513"),
            (3.000_000_005_497_755_8e38, "3.0000000054977558e+38"),
        ];
        for (x, s) in cases {
            assert_eq!(py_float_repr(x), s);
        }
    }

    #[test]
    fn strings_escape_like_python() {
        let v = Value::from("a\"\\/\n\u{1}\u{7f}é😀");
        assert_eq!(
            canonical_json(&v).unwrap(),
            r#""a\"\\/\n\u0001\u007f\u00e9\ud83d\ude00""#
        );
    }

    #[test]
    fn round_trip_and_any_flipped_byte_is_detected() {
        let tree = Node::dict([
            (
                "w",
                Node::Tensor(Tensor::f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0])),
            ),
            ("lr", Node::Float(0.5)),
            ("n", Node::Int(3)),
        ]);
        let bytes = encode(&tree, &serde_json::json!({"a": 1})).unwrap();
        let d = decode(&bytes).unwrap();
        assert_eq!(d.tree, tree);
        for i in (8..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(
                decode(&bad).is_err(),
                "flip at {i} went unnoticed: {:?}",
                String::from_utf8_lossy(&bad[..200])
            );
        }
        let mut short = bytes.clone();
        short.pop();
        assert!(matches!(
            decode(&short),
            Err(EngineError::CorruptCheckpoint(_))
        ));
    }
}
