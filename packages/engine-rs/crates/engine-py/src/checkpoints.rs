//! `CheckpointManager`, `Checkpoint` and `CheckpointInfo`: engine checkpoints from Python.

use super::*;

/// One checkpoint file.
#[pyclass(frozen, module = "trainsvc_engine", name = "CheckpointInfo", get_all)]
#[derive(Clone)]
pub(crate) struct PyCheckpointInfo {
    /// Full path.
    pub(crate) path: String,
    /// Step (games played).
    pub(crate) step: u64,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Saved on a signal, an error or a stop request; never deleted by retention.
    pub(crate) emergency: bool,
    /// zstd-compressed.
    pub(crate) compressed: bool,
    /// Seconds the save took (0.0 for listed files).
    pub(crate) seconds: f64,
}

impl From<CheckpointInfo> for PyCheckpointInfo {
    fn from(c: CheckpointInfo) -> Self {
        PyCheckpointInfo {
            path: c.path.display().to_string(),
            step: c.step,
            size: c.size,
            emergency: c.emergency,
            compressed: c.compressed,
            seconds: 0.0,
        }
    }
}

#[pymethods]
impl PyCheckpointInfo {
    fn __repr__(&self) -> String {
        format!(
            "CheckpointInfo(path={:?}, step={}, size={})",
            self.path, self.step, self.size
        )
    }
}

/// A loaded engine checkpoint.
#[pyclass(frozen, module = "trainsvc_engine")]
pub(crate) struct Checkpoint {
    pub(crate) info: PyCheckpointInfo,
    pub(crate) metadata: serde_json::Value,
    pub(crate) weights: Arc<Weights>,
    pub(crate) config: TrainConfig,
    pub(crate) warnings: Vec<String>,
}

#[pymethods]
impl Checkpoint {
    /// The file.
    #[getter]
    fn info(&self) -> PyCheckpointInfo {
        self.info.clone()
    }

    /// Games played when it was saved.
    #[getter]
    fn step(&self) -> u64 {
        self.info.step
    }

    /// The metadata object (trainer, config, pattern shapes, step).
    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.metadata)
    }

    /// Corrupt newer checkpoints that were skipped to find this one.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// An evaluator with these weights.
    fn evaluator(&self) -> Evaluator {
        Evaluator {
            weights: Arc::clone(&self.weights),
            config: self.config.clone(),
            tt: Mutex::new(TranspositionTable::with_bytes(16 << 20)),
            source: Some(self.info.path.clone()),
        }
    }
}

pub(crate) fn load_checkpoint(
    path: &std::path::Path,
    info: CheckpointInfo,
    warnings: Vec<String>,
) -> Result<Checkpoint, Core> {
    let d = checkpoint::load(path)?;
    let (w, config) = weights_from_checkpoint(&d)?;
    Ok(Checkpoint {
        info: info.into(),
        metadata: d.metadata,
        weights: Arc::new(w),
        config,
        warnings,
    })
}

/// A directory of engine checkpoints: save, load, list, verify, retention, compression.
#[pyclass(module = "trainsvc_engine")]
pub(crate) struct CheckpointManager {
    pub(crate) dir: CheckpointDir,
}

#[pymethods]
impl CheckpointManager {
    #[new]
    #[pyo3(signature = (directory, *, keep_last = 5, keep_every = 0, compress = false))]
    fn new(
        py: Python<'_>,
        directory: PathBuf,
        keep_last: usize,
        keep_every: u64,
        compress: bool,
    ) -> PyResult<Self> {
        let dir = run(py, || {
            CheckpointDir::open(&directory, keep_last, keep_every, compress)
        })?;
        Ok(CheckpointManager { dir })
    }

    /// The directory.
    #[getter]
    fn directory(&self) -> String {
        self.dir.dir.display().to_string()
    }

    /// How many newest periodic checkpoints retention keeps.
    #[getter]
    fn get_keep_last(&self) -> usize {
        self.dir.keep_last
    }

    #[setter]
    fn set_keep_last(&mut self, v: usize) -> PyResult<()> {
        if v == 0 {
            return Err(errors::config("keep_last", "got 0; allowed: at least 1"));
        }
        self.dir.keep_last = v;
        Ok(())
    }

    /// Steps that are multiples of this are kept too (0 = off).
    #[getter]
    fn get_keep_every(&self) -> u64 {
        self.dir.keep_every
    }

    #[setter]
    fn set_keep_every(&mut self, v: u64) {
        self.dir.keep_every = v;
    }

    /// Whether new checkpoints are zstd-compressed.
    #[getter]
    fn get_compress(&self) -> bool {
        self.dir.compress
    }

    #[setter]
    fn set_compress(&mut self, v: bool) {
        self.dir.compress = v;
    }

    /// Saves the weights of an Evaluator, or the full state of a TrainingManager.
    ///
    /// Returns the new file's info (path, size and the seconds the save took).
    #[pyo3(signature = (source, step = None, emergency = false))]
    fn save(
        &self,
        py: Python<'_>,
        source: &Bound<'_, PyAny>,
        step: Option<u64>,
        emergency: bool,
    ) -> PyResult<PyCheckpointInfo> {
        let start = std::time::Instant::now();
        let (tree, md, games) = if let Ok(ev) = source.extract::<PyRef<'_, Evaluator>>() {
            let (w, cfg) = ((*ev.weights).clone(), ev.config.clone());
            run(py, move || {
                let t = Trainer::with_weights(TrainConfig { threads: 1, ..cfg }, w)?;
                let (tree, md) = trainer_to_checkpoint(&t);
                Ok((tree, md, 0))
            })?
        } else if let Ok(m) = source.extract::<PyRef<'_, manager::TrainingManager>>() {
            m.checkpoint_tree(py)?
        } else {
            return Err(errors::config(
                "source",
                "expected an Evaluator or a TrainingManager",
            ));
        };
        let dir = &self.dir;
        let step = step.unwrap_or(games);
        let info = run(py, || dir.save(step, &tree, &md, emergency))?;
        let mut out = PyCheckpointInfo::from(info);
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Loads a checkpoint file (any path).
    fn load(&self, py: Python<'_>, path: PathBuf) -> PyResult<Checkpoint> {
        run(py, move || {
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            let info = CheckpointInfo {
                path: path.clone(),
                step: 0,
                emergency: false,
                size,
                compressed: false,
            };
            let mut c = load_checkpoint(&path, info, Vec::new())?;
            c.info.step = c
                .metadata
                .get("step")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            Ok(c)
        })
    }

    /// Loads the newest valid checkpoint, skipping corrupt ones (see `Checkpoint.warnings`).
    fn load_latest(&self, py: Python<'_>) -> PyResult<Checkpoint> {
        let dir = &self.dir;
        run(py, || {
            let (_, info, warnings) = dir.load_latest()?;
            load_checkpoint(&info.path.clone(), info, warnings)
        })
    }

    /// Every checkpoint file, oldest first.
    fn list(&self, py: Python<'_>) -> PyResult<Vec<PyCheckpointInfo>> {
        let dir = &self.dir;
        Ok(run(py, || dir.list())?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Checks a file completely (header, layout, every CRC) without keeping it; raises if corrupt.
    fn verify(&self, py: Python<'_>, path: PathBuf) -> PyResult<PyCheckpointInfo> {
        run(py, move || {
            let d = checkpoint::load(&path)?;
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            let step = d
                .metadata
                .get("step")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(PyCheckpointInfo {
                path: path.display().to_string(),
                step,
                size,
                emergency: name.starts_with("emergency_"),
                compressed: name.ends_with(".zst"),
                seconds: 0.0,
            })
        })
    }
}
