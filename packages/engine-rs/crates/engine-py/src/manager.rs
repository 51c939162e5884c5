//! `TrainingManager`: self-play training on a background thread, with pause,
//! resume, checkpoints into a run directory, progress callbacks and statistics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use othello_core::checkpoint::{CheckpointDir, CheckpointInfo, Node};
use othello_core::session::{
    lock, run_session, save_trainer, Progress, SessionEnd, SessionHooks, SessionParams, Snapshot,
};
use othello_core::state::{
    config_to_json, config_update, trainer_from_checkpoint, trainer_to_checkpoint,
};
use othello_core::train::{MemoryReport, TrainConfig, Trainer};
use othello_core::EngineError as Core;

use crate::errors::{self, run, InvalidStateError};
use crate::{json_to_py, py_to_json, Evaluator};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Training,
    Paused,
}

struct Shared {
    dir: CheckpointDir,
    trainer: Mutex<Option<Trainer>>,
    config: Mutex<TrainConfig>,
    phase: Mutex<Phase>,
    stop: AtomicBool,
    pending: Mutex<Option<TrainConfig>>,
    callback: Mutex<Option<Py<PyAny>>>,
    handle: Mutex<Option<JoinHandle<()>>>,
    thread_id: Mutex<Option<ThreadId>>,
    params: Mutex<SessionParams>,
    result: Mutex<Option<TrainingResult>>,
    last_error: Mutex<Option<String>>,
    snapshot: Mutex<Snapshot>,
}

static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// The summary of a finished (or stopped) training run.
#[pyclass(frozen, module = "trainsvc_engine", get_all)]
#[derive(Clone, Debug)]
pub struct TrainingResult {
    /// Games played in total.
    games: u64,
    /// Mean final stone difference (black - white) over the last 10,000 games.
    final_stone_diff: f64,
    /// Share of games black won.
    black_rate: f64,
    /// Share of games white won.
    white_rate: f64,
    /// Share of drawn games.
    draw_rate: f64,
    /// Seconds spent training (all sessions).
    elapsed_s: f64,
    /// Games per second in the last session.
    games_per_second: f64,
    /// Games lost to caught errors.
    errors: u64,
    /// Why it ended: "target", "stopped" or "error_rate: ...".
    reason: String,
}

#[pymethods]
impl TrainingResult {
    fn __repr__(&self) -> String {
        format!(
            "TrainingResult(games={}, final_stone_diff={:.2}, black_rate={:.3}, games_per_second={:.0}, errors={}, reason={:?})",
            self.games, self.final_stone_diff, self.black_rate, self.games_per_second, self.errors, self.reason
        )
    }
}

/// Convergence and resource statistics of a training run.
#[pyclass(frozen, module = "trainsvc_engine", get_all)]
#[derive(Clone, Debug)]
pub struct Statistics {
    /// Games played.
    games: u64,
    /// Mean stone difference (black - white) over the last 10,000 games.
    rolling_stone_diff: f64,
    /// Black's score (wins + draws/2) over the last 10,000 games.
    black_win_rate: f64,
    /// Variance of the evaluation over a fixed sample of positions (0 for untrained weights).
    evaluation_variance: f64,
    /// Share of pattern table entries that have been learnt (non-zero).
    pattern_coverage: f64,
    /// True when the rolling stone difference has stopped moving (older vs newer half of the window).
    stagnating: bool,
    /// Games lost to caught errors.
    errors: u64,
    /// Weights found NaN/Inf and reset.
    nan_resets: u64,
    /// Training seconds so far.
    elapsed_s: f64,
    /// Games per second in the current session.
    games_per_second: f64,
    /// Seconds to the target at the current rate (None when idle or unknown).
    eta_s: Option<f64>,
    /// Bytes by component: pattern_tables, adam_state, transposition_table, other, total, budget.
    memory: Vec<(String, u64)>,
    /// Last non-finite weights found: (pattern, phase, index, value).
    non_finite: Vec<(String, usize, usize, String)>,
    /// The CPU variant the games run on (`x86-64-v4`, `x86-64-v3`, `aarch64-neon` or `baseline`).
    cpu_variant: String,
}

#[pymethods]
impl Statistics {
    /// The statistics as a JSON text.
    fn to_json(&self) -> String {
        let mem: serde_json::Map<String, serde_json::Value> = self
            .memory
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        serde_json::json!({
            "games": self.games, "rolling_stone_diff": self.rolling_stone_diff,
            "black_win_rate": self.black_win_rate, "evaluation_variance": self.evaluation_variance,
            "pattern_coverage": self.pattern_coverage, "stagnating": self.stagnating,
            "errors": self.errors, "nan_resets": self.nan_resets, "elapsed_s": self.elapsed_s,
            "games_per_second": self.games_per_second, "eta_s": self.eta_s, "memory": mem,
            "non_finite": self.non_finite.iter().map(|(p, ph, i, v)| serde_json::json!({"pattern": p, "phase": ph, "index": i, "value": v})).collect::<Vec<_>>(),
            "cpu_variant": self.cpu_variant,
        })
        .to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Statistics(games={}, rolling_stone_diff={:.2}, pattern_coverage={:.3}, games_per_second={:.0}, cpu_variant={:?})",
            self.games, self.rolling_stone_diff, self.pattern_coverage, self.games_per_second, self.cpu_variant
        )
    }
}

fn memory_pairs(m: &MemoryReport) -> Vec<(String, u64)> {
    vec![
        ("pattern_tables".into(), m.pattern_tables as u64),
        ("adam_state".into(), m.adam_state as u64),
        ("transposition_table".into(), m.transposition_table as u64),
        ("other".into(), m.other as u64),
        ("total".into(), m.total() as u64),
        ("budget".into(), m.budget as u64),
    ]
}

impl Shared {
    fn phase(&self) -> Phase {
        *lock(&self.phase)
    }

    fn set_error(&self, e: impl Into<String>) {
        *lock(&self.last_error) = Some(e.into());
    }

    fn result_from(&self, t: &Trainer, reason: &str) -> TrainingResult {
        let s = &t.stats;
        let snap = lock(&self.snapshot);
        let g = s.games.max(1) as f64;
        TrainingResult {
            games: s.games,
            final_stone_diff: s.recent_stone_diff(),
            black_rate: s.black_wins as f64 / g,
            white_rate: s.white_wins as f64 / g,
            draw_rate: s.draws as f64 / g,
            elapsed_s: snap.elapsed,
            games_per_second: if snap.session_elapsed > 0.0 {
                snap.session_games as f64 / snap.session_elapsed
            } else {
                0.0
            },
            errors: s.errors,
            reason: reason.to_owned(),
        }
    }

    fn save(&self, t: &Trainer, emergency: bool) -> Result<CheckpointInfo, Core> {
        save_trainer(&self.dir, t, emergency)
    }

    /// The background thread: one [`run_session`], then the state its ending calls for.
    fn train_thread(self: &Arc<Shared>) {
        let params = *lock(&self.params);
        let mut guard = lock(&self.trainer);
        let Some(trainer) = guard.as_mut() else {
            *lock(&self.phase) = Phase::Idle;
            return;
        };
        match run_session(
            trainer,
            &self.dir,
            params,
            &self.stop,
            &self.snapshot,
            &**self,
        ) {
            SessionEnd::Target => {
                *lock(&self.result) = Some(self.result_from(trainer, "target"));
                *lock(&self.phase) = Phase::Idle;
            }
            SessionEnd::Stopped => {} // pause()/stop() finish the job
            SessionEnd::ErrorRate(why) => {
                self.set_error(why.clone());
                *lock(&self.result) =
                    Some(self.result_from(trainer, &format!("error_rate: {why}")));
                *lock(&self.phase) = Phase::Paused;
            }
            SessionEnd::Panicked => {
                self.set_error("training thread panicked; state kept, training paused");
                *lock(&self.phase) = Phase::Paused;
            }
        }
    }

    /// Stops the thread (GIL released by the caller) and waits for it.
    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = lock(&self.handle).take() {
            let _ = h.join();
        }
        self.stop.store(false, Ordering::SeqCst);
    }
}

impl SessionHooks for Shared {
    fn pending_config(&self) -> Option<TrainConfig> {
        lock(&self.pending).take()
    }

    fn error(&self, message: String) {
        self.set_error(message);
    }

    fn progress(&self, point: Progress) {
        let cb = Python::attach(|py| lock(&self.callback).as_ref().map(|c| c.clone_ref(py)));
        if let Some(cb) = cb {
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, point) {
                    self.set_error(format!("progress callback: {e}"));
                }
            });
        }
    }
}

/// Self-play TD(lambda) training on a background thread, checkpointing into `directory`.
#[pyclass(module = "trainsvc_engine")]
pub struct TrainingManager {
    shared: Arc<Shared>,
}

impl TrainingManager {
    fn check_not_callback(&self, what: &str) -> PyResult<()> {
        if *lock(&self.shared.thread_id) == Some(std::thread::current().id()) {
            return Err(InvalidStateError::new_err(format!(
                "{what}() cannot be called from the progress callback"
            )));
        }
        Ok(())
    }

    fn spawn(&self) -> PyResult<()> {
        *lock(&self.shared.phase) = Phase::Training;
        let sh = Arc::clone(&self.shared);
        let h = std::thread::Builder::new()
            .name("trainsvc-engine-train".into())
            .spawn(move || sh.train_thread())
            .map_err(|e| {
                errors::EngineIOError::new_err(format!("cannot start the training thread: {e}"))
            })?;
        *lock(&self.shared.thread_id) = Some(h.thread().id());
        *lock(&self.shared.handle) = Some(h);
        Ok(())
    }

    /// Stops training and saves; `emergency` names the file emergency_step_N.
    fn stop_and_save(
        &self,
        py: Python<'_>,
        emergency: bool,
        next: Phase,
        reason: &str,
    ) -> PyResult<u64> {
        let sh = &self.shared;
        py.detach(|| sh.halt());
        let guard = lock(&sh.trainer);
        let Some(t) = guard.as_ref() else {
            return Err(InvalidStateError::new_err("no training state to save"));
        };
        let games = t.stats.games;
        run(py, || sh.save(t, emergency))?;
        if next == Phase::Idle {
            *lock(&sh.result) = Some(sh.result_from(t, reason));
        }
        *lock(&sh.phase) = next;
        Ok(games)
    }

    /// The checkpoint tree of the current state (used by CheckpointManager.save).
    #[allow(clippy::type_complexity)]
    pub fn checkpoint_tree(&self, py: Python<'_>) -> PyResult<(Node, serde_json::Value, u64)> {
        if self.shared.phase() == Phase::Training {
            return Err(InvalidStateError::new_err(
                "save: pause() training first (it saves a checkpoint itself)",
            ));
        }
        let guard = lock(&self.shared.trainer);
        let Some(t) = guard.as_ref() else {
            return Err(InvalidStateError::new_err("save: nothing trained yet"));
        };
        run(py, || {
            let (tree, md) = trainer_to_checkpoint(t);
            Ok((tree, md, t.stats.games))
        })
    }
}

fn kwargs_json(
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    match kwargs {
        None => Ok(serde_json::Map::new()),
        Some(k) => py_to_json(k.as_any()),
    }
}

#[pymethods]
impl TrainingManager {
    #[new]
    #[pyo3(signature = (directory, *, keep_last = 5, keep_every = 0, compress = false, **config))]
    fn new(
        py: Python<'_>,
        directory: std::path::PathBuf,
        keep_last: usize,
        keep_every: u64,
        compress: bool,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let cfg =
            config_update(&TrainConfig::default(), &kwargs_json(config)?).map_err(errors::to_py)?;
        let dir = run(py, || {
            CheckpointDir::open(&directory, keep_last, keep_every, compress)
        })?;
        let shared = Arc::new(Shared {
            dir,
            trainer: Mutex::new(None),
            config: Mutex::new(cfg),
            phase: Mutex::new(Phase::Idle),
            stop: AtomicBool::new(false),
            pending: Mutex::new(None),
            callback: Mutex::new(None),
            handle: Mutex::new(None),
            thread_id: Mutex::new(None),
            params: Mutex::new(SessionParams {
                target: 0,
                checkpoint_interval: 10_000,
                callback_interval: 1000,
            }),
            result: Mutex::new(None),
            last_error: Mutex::new(None),
            snapshot: Mutex::new(Snapshot::default()),
        });
        let mut live = lock(&LIVE);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&shared));
        Ok(TrainingManager { shared })
    }

    /// Starts training towards `target_games` on a background thread.
    ///
    /// `resume=True` continues from the newest valid checkpoint in the
    /// directory (fresh weights when there is none). Extra keyword arguments
    /// are configuration fields (see `config()`).
    #[pyo3(signature = (target_games, checkpoint_interval = 10_000, callback_interval = 1_000, search_depth = None, epsilon = None, resume = false, **config))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        py: Python<'_>,
        target_games: u64,
        checkpoint_interval: u64,
        callback_interval: u64,
        search_depth: Option<u32>,
        epsilon: Option<f64>,
        resume: bool,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        self.check_not_callback("start")?;
        if self.shared.phase() != Phase::Idle {
            return Err(InvalidStateError::new_err(format!(
                "start: training is {}; allowed only when idle (use resume() when paused)",
                self.state()
            )));
        }
        if target_games == 0 {
            return Err(errors::config("target_games", "got 0; allowed: at least 1"));
        }
        if callback_interval == 0 {
            return Err(errors::config(
                "callback_interval",
                "got 0; allowed: at least 1",
            ));
        }
        let mut extra = kwargs_json(config)?;
        if let Some(d) = search_depth {
            extra.insert("search_depth".into(), d.into());
        }
        if let Some(e) = epsilon {
            extra.entry("epsilon_start").or_insert(e.into());
            extra.entry("epsilon_end").or_insert(e.into());
        }
        let sh = &self.shared;
        let base = lock(&sh.config).clone();
        let cfg = config_update(&base, &extra).map_err(errors::to_py)?;
        let trainer = run(py, || {
            if resume {
                match sh.dir.load_latest() {
                    Ok((d, _, warnings)) => {
                        if !warnings.is_empty() {
                            sh.set_error(warnings.join("; "));
                        }
                        let mut t = trainer_from_checkpoint(&d)?;
                        let keep = (t.config.pattern_set.clone(), t.config.n_phases);
                        t.config = TrainConfig {
                            pattern_set: keep.0,
                            n_phases: keep.1,
                            ..cfg.clone()
                        };
                        t.apply_config()?;
                        return Ok(t);
                    }
                    Err(Core::CheckpointNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Trainer::new(cfg.clone())
        })?;
        *lock(&sh.config) = trainer.config.clone();
        {
            let mut snap = lock(&sh.snapshot);
            *snap = Snapshot::default();
            snap.stats = trainer.stats.clone();
            snap.target = target_games;
        }
        *lock(&sh.trainer) = Some(trainer);
        *lock(&sh.params) = SessionParams {
            target: target_games,
            checkpoint_interval,
            callback_interval,
        };
        *lock(&sh.result) = None;
        *lock(&sh.last_error) = None;
        self.spawn()
    }

    /// Pauses: finishes promptly (the current batch is dropped), saves a checkpoint, returns the game count.
    fn pause(&self, py: Python<'_>) -> PyResult<u64> {
        self.check_not_callback("pause")?;
        if self.shared.phase() != Phase::Training {
            return Err(InvalidStateError::new_err(format!(
                "pause: training is {}; allowed only while training",
                self.state()
            )));
        }
        self.stop_and_save(py, false, Phase::Paused, "paused")
    }

    /// Resumes a paused run from the newest valid checkpoint in the directory.
    fn resume(&self, py: Python<'_>) -> PyResult<()> {
        self.check_not_callback("resume")?;
        if self.shared.phase() != Phase::Paused {
            return Err(InvalidStateError::new_err(format!(
                "resume: training is {}; allowed only when paused",
                self.state()
            )));
        }
        let sh = &self.shared;
        let cfg = lock(&sh.config).clone();
        let t = run(py, || {
            let (d, _, warnings) = sh.dir.load_latest()?;
            if !warnings.is_empty() {
                sh.set_error(warnings.join("; "));
            }
            let mut t = trainer_from_checkpoint(&d)?;
            t.config = TrainConfig {
                pattern_set: t.config.pattern_set.clone(),
                n_phases: t.config.n_phases,
                ..cfg
            };
            t.apply_config()?;
            Ok(t)
        })?;
        *lock(&sh.trainer) = Some(t);
        self.spawn()
    }

    /// Stops training for good, saving a checkpoint (emergency_step_N when `emergency`); returns the game count.
    #[pyo3(signature = (emergency = false))]
    fn stop(&self, py: Python<'_>, emergency: bool) -> PyResult<u64> {
        self.check_not_callback("stop")?;
        if lock(&self.shared.trainer).is_none() && self.shared.phase() != Phase::Training {
            return Err(InvalidStateError::new_err("stop: nothing has been trained"));
        }
        self.stop_and_save(py, emergency, Phase::Idle, "stopped")
    }

    /// Blocks until training ends (or `timeout` seconds pass); returns the result, or None on timeout.
    ///
    /// Ctrl+C while waiting saves an emergency checkpoint, stops, and re-raises KeyboardInterrupt.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<TrainingResult>> {
        self.check_not_callback("wait")?;
        let start = Instant::now();
        while self.shared.phase() == Phase::Training {
            if timeout.is_some_and(|t| start.elapsed().as_secs_f64() >= t) {
                return Ok(None);
            }
            py.detach(|| std::thread::sleep(Duration::from_millis(20)));
            if let Err(e) = py.check_signals() {
                if e.is_instance_of::<PyKeyboardInterrupt>(py)
                    && self.shared.phase() == Phase::Training
                {
                    self.stop_and_save(py, true, Phase::Idle, "interrupted")?;
                }
                return Err(e);
            }
        }
        let sh = &self.shared;
        py.detach(|| {
            if let Some(h) = lock(&sh.handle).take() {
                let _ = h.join();
            }
        });
        Ok(lock(&self.shared.result).clone())
    }

    /// "idle", "training" or "paused".
    #[getter]
    fn state(&self) -> &'static str {
        match self.shared.phase() {
            Phase::Idle => "idle",
            Phase::Training => "training",
            Phase::Paused => "paused",
        }
    }

    /// Games played so far.
    #[getter]
    fn games(&self) -> u64 {
        lock(&self.shared.snapshot).stats.games
    }

    /// The result of the last finished run, if any.
    #[getter]
    fn result(&self) -> Option<TrainingResult> {
        lock(&self.shared.result).clone()
    }

    /// The last error or warning (checkpoint failure, callback exception, auto-pause reason).
    #[getter]
    fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// The checkpoint directory.
    #[getter]
    fn directory(&self) -> String {
        self.shared.dir.dir.display().to_string()
    }

    /// Calls `fn(games, stone_diff, win_rate, elapsed_s)` every `callback_interval` games (None to clear).
    ///
    /// It runs on the training thread: it must return quickly and must not call
    /// pause/stop/resume/wait (they raise InvalidStateError there).
    fn set_progress_callback(&self, callback: Option<Py<PyAny>>) {
        *lock(&self.shared.callback) = callback;
    }

    /// Changes configuration fields; while training they apply from the next batch.
    ///
    /// `pattern_set`, `n_phases` and `seed` cannot change once trained weights exist.
    #[pyo3(signature = (**config))]
    fn configure(&self, config: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let sh = &self.shared;
        let extra = kwargs_json(config)?;
        let base = lock(&sh.config).clone();
        let cfg = config_update(&base, &extra).map_err(errors::to_py)?;
        let has_state = sh.phase() == Phase::Training || lock(&sh.trainer).is_some();
        if has_state {
            for (field, changed) in [
                ("pattern_set", cfg.pattern_set != base.pattern_set),
                ("n_phases", cfg.n_phases != base.n_phases),
                ("seed", cfg.seed != base.seed),
            ] {
                if changed {
                    return Err(errors::config(
                        field,
                        "cannot change once training has state; allowed: the current value",
                    ));
                }
            }
        }
        *lock(&sh.config) = cfg.clone();
        if sh.phase() == Phase::Training {
            *lock(&sh.pending) = Some(cfg);
        } else if let Some(t) = lock(&sh.trainer).as_mut() {
            t.config = cfg;
            t.apply_config().map_err(errors::to_py)?;
        }
        Ok(())
    }

    /// The configuration in force, as a dict.
    fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &config_to_json(&lock(&self.shared.config)))
    }

    /// Convergence, resource and progress statistics.
    fn statistics(&self) -> Statistics {
        let s = lock(&self.shared.snapshot).clone();
        let st = &s.stats;
        let gps = if s.session_elapsed > 0.0 {
            s.session_games as f64 / s.session_elapsed
        } else {
            0.0
        };
        let training = self.shared.phase() == Phase::Training;
        let eta = (training && gps > 0.0).then(|| s.target.saturating_sub(st.games) as f64 / gps);
        let diffs: Vec<f64> = st.recent_diffs.iter().map(|&d| f64::from(d)).collect();
        let half = diffs.len() / 2;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let stagnating =
            diffs.len() >= 2000 && (mean(&diffs[..half]) - mean(&diffs[half..])).abs() < 0.25;
        Statistics {
            games: st.games,
            rolling_stone_diff: st.recent_stone_diff(),
            black_win_rate: st.recent_black_win_rate(),
            evaluation_variance: s.eval_variance,
            pattern_coverage: s.coverage,
            stagnating,
            errors: st.errors,
            nan_resets: st.nan_resets,
            elapsed_s: s.elapsed,
            games_per_second: gps,
            eta_s: eta,
            memory: memory_pairs(&s.memory),
            non_finite: st
                .last_non_finite
                .iter()
                .map(|n| (n.pattern.clone(), n.phase, n.index, n.value.clone()))
                .collect(),
            cpu_variant: othello_core::isa::active().name().to_owned(),
        }
    }

    /// Progress points recorded at each callback interval: (games, stone_diff, win_rate, elapsed_s).
    fn history(&self) -> Vec<(u64, f64, f64, f64)> {
        lock(&self.shared.snapshot).history.clone()
    }

    /// Bytes by component: pattern_tables, adam_state, transposition_table, other, total, budget.
    fn memory_report(&self, py: Python<'_>) -> PyResult<Vec<(String, u64)>> {
        let sh = &self.shared;
        if sh.phase() != Phase::Training {
            if let Some(t) = lock(&sh.trainer).as_ref() {
                return Ok(memory_pairs(&t.memory_report()));
            }
            let cfg = lock(&sh.config).clone();
            let t = run(py, || Trainer::new(cfg))?;
            return Ok(memory_pairs(&t.memory_report()));
        }
        Ok(memory_pairs(&lock(&sh.snapshot).memory))
    }

    /// An Evaluator holding a copy of the current weights (not while training: pause first).
    fn evaluator(&self) -> PyResult<Evaluator> {
        self.check_not_callback("evaluator")?;
        if self.shared.phase() == Phase::Training {
            return Err(InvalidStateError::new_err(
                "evaluator: pause() first; weights change while training",
            ));
        }
        let guard = lock(&self.shared.trainer);
        let t = guard
            .as_ref()
            .ok_or_else(|| InvalidStateError::new_err("evaluator: nothing trained yet"))?;
        Ok(Evaluator::from_weights(
            t.weights.clone(),
            t.config.clone(),
            None,
        ))
    }

    fn __repr__(&self) -> String {
        format!(
            "TrainingManager(directory={:?}, state={:?}, games={})",
            self.directory(),
            self.state(),
            self.games()
        )
    }
}

/// Stops every live manager's training thread (called at interpreter exit), saving an emergency checkpoint.
#[pyfunction]
pub fn shutdown_all(py: Python<'_>) {
    let live: Vec<Arc<Shared>> = lock(&LIVE).iter().filter_map(Weak::upgrade).collect();
    for sh in live {
        if sh.phase() == Phase::Training {
            py.detach(|| sh.halt());
            if let Some(t) = lock(&sh.trainer).as_ref() {
                let _ = sh.save(t, true);
            }
            *lock(&sh.phase) = Phase::Idle;
        }
    }
}
