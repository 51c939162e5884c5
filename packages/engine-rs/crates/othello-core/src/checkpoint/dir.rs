//! A run directory (docs/checkpoint-format.md, section 9): checkpoint names,
//! `latest`, retention, and loading the newest valid checkpoint.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{fsync_dir, load, save, write_atomic, Decoded, Node};
use crate::error::EngineError;

/// One checkpoint file of a run directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Full path.
    pub path: PathBuf,
    /// Step (games for the engine).
    pub step: u64,
    /// Saved on a signal or an error; never deleted by retention.
    pub emergency: bool,
    /// Size in bytes.
    pub size: u64,
    /// zstd-compressed.
    pub compressed: bool,
}

/// A run directory: periodic and emergency checkpoints, `latest`, retention.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    /// The directory.
    pub dir: PathBuf,
    /// Keep this many newest periodic checkpoints (at least 1).
    pub keep_last: usize,
    /// Also keep every checkpoint whose step is a multiple of this (0 = off).
    pub keep_every: u64,
    /// Write `.safetensors.zst` files.
    pub compress: bool,
}

/// The largest step a checkpoint name may carry (2^63 - 1, the spec's `MAX_STEP`).
pub const MAX_STEP: u64 = i64::MAX as u64;

/// What a checkpoint file name says (docs/checkpoint-format.md, section 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointName {
    /// The step.
    pub step: u64,
    /// An emergency checkpoint (never deleted by retention).
    pub emergency: bool,
    /// zstd-compressed (`.safetensors.zst`).
    pub compressed: bool,
}

/// Parses a checkpoint file name: the whole of
/// `(emergency_)?step_(0|[1-9][0-9]*)\.safetensors(\.zst)?` with a step of at
/// most [`MAX_STEP`]; `None` for any other name (which is not a checkpoint).
#[must_use]
pub fn parse_checkpoint_name(name: &str) -> Option<CheckpointName> {
    let (stem, compressed) = if let Some(s) = name.strip_suffix(".safetensors.zst") {
        (s, true)
    } else {
        (name.strip_suffix(".safetensors")?, false)
    };
    let (num, emergency) = if let Some(n) = stem.strip_prefix("emergency_step_") {
        (n, true)
    } else {
        (stem.strip_prefix("step_")?, false)
    };
    if num.is_empty()
        || !num.bytes().all(|b| b.is_ascii_digit())
        || (num.len() > 1 && num.starts_with('0'))
    {
        return None;
    }
    let step: u64 = num.parse().ok().filter(|&s| s <= MAX_STEP)?;
    Some(CheckpointName {
        step,
        emergency,
        compressed,
    })
}

impl CheckpointName {
    /// The file name: the inverse of [`parse_checkpoint_name`].
    #[must_use]
    pub fn file_name(&self) -> String {
        format!(
            "{}step_{}.safetensors{}",
            if self.emergency { "emergency_" } else { "" },
            self.step,
            if self.compressed { ".zst" } else { "" }
        )
    }
}

/// Checks a retention policy given as the spec's numbers: `keep_last` at least
/// 1, `keep_every` at least 1 or unset; returns it as [`CheckpointDir`] holds
/// it (`keep_every` 0 = unset).
///
/// # Errors
/// [`EngineError::InvalidConfig`] naming `keep_last` or `keep_every`.
pub fn retention_policy(
    keep_last: i64,
    keep_every: Option<i64>,
) -> Result<(usize, u64), EngineError> {
    if keep_last < 1 {
        return Err(EngineError::config("keep_last", "at least 1", keep_last));
    }
    match keep_every {
        Some(k) if k < 1 => Err(EngineError::config("keep_every", "at least 1, or unset", k)),
        k => Ok((keep_last as usize, k.unwrap_or(0) as u64)),
    }
}

/// The names retention deletes among the directory entries `names` (section 9
/// of the spec), oldest first (by step, then name). `is_valid` says whether a
/// checkpoint file reads back; it is asked only when needed, newest first:
///
/// 1. the periodic checkpoints of the newest `keep_last` distinct steps stay,
///    and so does every one whose step is a multiple of `keep_every` (0 =
///    unset); the other periodic checkpoints are selected;
/// 2. emergency checkpoints and names that are not checkpoints stay;
/// 3. if no checkpoint that stays is valid, the newest valid selected one
///    (greatest by step, then name) stays too: the only valid checkpoint is
///    never deleted;
/// 4. the selected ones are deleted.
pub fn retention_deletes(
    names: &[String],
    keep_last: usize,
    keep_every: u64,
    mut is_valid: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let mut ckpts: Vec<(CheckpointName, &String)> = names
        .iter()
        .filter_map(|n| parse_checkpoint_name(n).map(|c| (c, n)))
        .collect();
    // Newest first: step, then name, descending.
    ckpts.sort_by(|a, b| (b.0.step, b.1).cmp(&(a.0.step, a.1)));
    let mut steps: Vec<u64> = ckpts
        .iter()
        .filter(|(c, _)| !c.emergency)
        .map(|(c, _)| c.step)
        .collect();
    steps.dedup();
    let recent: &[u64] = &steps[..keep_last.min(steps.len())];
    let selected = |c: &CheckpointName| {
        !(c.emergency || recent.contains(&c.step) || (keep_every > 0 && c.step % keep_every == 0))
    };
    let any_staying_valid = ckpts
        .iter()
        .filter(|(c, _)| !selected(c))
        .any(|(_, n)| is_valid(n));
    let spared = if any_staying_valid {
        None
    } else {
        ckpts
            .iter()
            .filter(|(c, _)| selected(c))
            .find(|(_, n)| is_valid(n))
            .map(|(_, n)| (*n).clone())
    };
    let mut out: Vec<String> = ckpts
        .iter()
        .filter(|(c, n)| selected(c) && spared.as_ref() != Some(*n))
        .map(|(_, n)| (*n).clone())
        .collect();
    out.reverse();
    out
}

impl CheckpointDir {
    /// Opens (creating it if needed) a run directory and deletes `.tmp-` leftovers.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] for `keep_last` 0; [`EngineError::Io`] when the directory cannot be made.
    pub fn open(
        dir: &Path,
        keep_last: usize,
        keep_every: u64,
        compress: bool,
    ) -> Result<CheckpointDir, EngineError> {
        if keep_last == 0 {
            return Err(EngineError::config("keep_last", "at least 1", 0));
        }
        fs::create_dir_all(dir)?;
        for e in fs::read_dir(dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(CheckpointDir {
            dir: dir.to_path_buf(),
            keep_last,
            keep_every,
            compress,
        })
    }

    /// Every checkpoint file, oldest step first.
    ///
    /// # Errors
    /// [`EngineError::Io`] when the directory cannot be read.
    pub fn list(&self) -> Result<Vec<CheckpointInfo>, EngineError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(CheckpointName {
                step,
                emergency,
                compressed,
            }) = parse_checkpoint_name(&name)
            {
                let size = e.metadata().map_or(0, |m| m.len());
                out.push(CheckpointInfo {
                    path: e.path(),
                    step,
                    emergency,
                    size,
                    compressed,
                });
            }
        }
        out.sort_by_key(|c| (c.step, c.emergency));
        Ok(out)
    }

    /// Saves a checkpoint for `step`, updates `latest` and applies retention.
    ///
    /// `metadata` must be a JSON object; `"step"` is set in it.
    ///
    /// # Errors
    /// As [`save`].
    pub fn save(
        &self,
        step: u64,
        tree: &Node,
        metadata: &Value,
        emergency: bool,
    ) -> Result<CheckpointInfo, EngineError> {
        let mut md = metadata.clone();
        if let Value::Object(m) = &mut md {
            m.insert("step".into(), Value::from(step));
        }
        let prefix = if emergency {
            "emergency_step_"
        } else {
            "step_"
        };
        let ext = if self.compress {
            ".safetensors.zst"
        } else {
            ".safetensors"
        };
        let name = format!("{prefix}{step}{ext}");
        let path = self.dir.join(&name);
        let size = save(&path, tree, &md, self.compress)?;
        write_atomic(&self.dir.join("latest"), format!("{name}\n").as_bytes())?;
        self.apply_retention()?;
        Ok(CheckpointInfo {
            path,
            step,
            emergency,
            size,
            compressed: self.compress,
        })
    }

    /// Retention after a periodic save ([`retention_deletes`]: a checkpoint is
    /// valid when it loads, and the only valid one is never deleted).
    ///
    /// # Errors
    /// [`EngineError::Io`] when the directory cannot be read or a file removed.
    pub fn apply_retention(&self) -> Result<(), EngineError> {
        let names: Vec<String> = fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let doomed = retention_deletes(&names, self.keep_last, self.keep_every, |n| {
            load(&self.dir.join(n)).is_ok()
        });
        for n in &doomed {
            fs::remove_file(self.dir.join(n))?;
        }
        if !doomed.is_empty() {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The file name recorded in `latest`, if any.
    #[must_use]
    pub fn latest_name(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("latest"))
            .ok()
            .map(|s| s.trim_end().to_owned())
    }

    /// Loads the newest valid checkpoint, falling back past corrupt ones.
    ///
    /// Returns the checkpoint, its info and a warning for each corrupt file skipped.
    ///
    /// # Errors
    /// [`EngineError::CheckpointNotFound`] when no valid checkpoint exists.
    pub fn load_latest(&self) -> Result<(Decoded, CheckpointInfo, Vec<String>), EngineError> {
        let mut warnings = Vec::new();
        for info in self.list()?.into_iter().rev() {
            match load(&info.path) {
                Ok(d) => return Ok((d, info, warnings)),
                Err(e) => warnings.push(format!("skipping corrupt checkpoint: {e}")),
            }
        }
        Err(EngineError::CheckpointNotFound(format!(
            "{}: no valid checkpoint{}",
            self.dir.display(),
            if warnings.is_empty() {
                String::new()
            } else {
                format!(" ({})", warnings.join("; "))
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_retention_latest_and_fallback() {
        let dir = std::env::temp_dir().join(format!("ckdir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let cd = CheckpointDir::open(&dir, 2, 0, false).unwrap();
        for step in [10, 20, 30] {
            cd.save(step, &Node::Int(step as i64), &serde_json::json!({}), false)
                .unwrap();
        }
        cd.save(35, &Node::Int(35), &serde_json::json!({}), true)
            .unwrap();
        let steps: Vec<u64> = cd.list().unwrap().iter().map(|c| c.step).collect();
        assert_eq!(steps, [20, 30, 35]);
        assert_eq!(cd.latest_name().unwrap(), "emergency_step_35.safetensors");
        // Corrupt the newest: loading falls back to step 30 with a warning.
        let p = dir.join("emergency_step_35.safetensors");
        let mut b = fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&p, b).unwrap();
        let (d, info, warnings) = cd.load_latest().unwrap();
        assert_eq!(info.step, 30);
        assert_eq!(d.tree, Node::Int(30));
        assert_eq!(warnings.len(), 1);
        fs::write(dir.join(".tmp-junk"), b"x").unwrap();
        CheckpointDir::open(&dir, 2, 0, true).unwrap();
        assert!(!dir.join(".tmp-junk").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
