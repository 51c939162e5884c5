//! A training session: the loop a background thread runs for a manager
//! (`TrainingManager` in Python). It trains towards a target game count,
//! applies configuration changes between batches, keeps a snapshot of the
//! statistics for readers on other threads, saves periodic checkpoints, reports
//! progress at intervals, and ends with the checkpoint its ending calls for.
//! The caller owns the threads, the locks around the trainer and how progress
//! is reported ([`SessionHooks`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::checkpoint::{CheckpointDir, CheckpointInfo};
use crate::error::EngineError;
use crate::replay::coverage_and_variance;
use crate::state::trainer_to_checkpoint;
use crate::train::{MemoryReport, Stats, StopReason, TrainConfig, Trainer};

/// Locks `m`, going on with the data of a thread that panicked holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a session trains to, and how often it checkpoints and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// Games to reach.
    pub target: u64,
    /// Games between periodic checkpoints (0 = none but the final one).
    pub checkpoint_interval: u64,
    /// Games between progress reports (0 = only at the target).
    pub callback_interval: u64,
}

/// A progress point: games, rolling stone difference, black's rolling score, elapsed seconds.
pub type Progress = (u64, f64, f64, f64);

/// What readers see of a running session, updated after every batch.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The trainer's statistics.
    pub stats: Stats,
    /// Memory by component.
    pub memory: MemoryReport,
    /// Training seconds, all sessions of the run.
    pub elapsed: f64,
    /// Games played in this session.
    pub session_games: u64,
    /// Seconds of this session.
    pub session_elapsed: f64,
    /// Share of learnt weights (at each progress point).
    pub coverage: f64,
    /// Variance of the evaluation over fixed positions (at each progress point).
    pub eval_variance: f64,
    /// The target of the session.
    pub target: u64,
    /// Every progress point of the run.
    pub history: Vec<Progress>,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The target was reached; the final checkpoint was saved.
    Target,
    /// The stop flag was raised; the caller saves what it needs.
    Stopped,
    /// Too many errors: training paused itself after an emergency checkpoint.
    ErrorRate(String),
    /// The training code panicked; the state is kept.
    Panicked,
}

/// What a session asks of its caller.
pub trait SessionHooks {
    /// A configuration to apply before the next batch, if one is pending.
    fn pending_config(&self) -> Option<TrainConfig>;
    /// A failure that does not stop training (a checkpoint that could not be
    /// written, a configuration that did not apply, a failing callback).
    fn error(&self, message: String);
    /// A progress point, at each callback interval and at the target.
    fn progress(&self, point: Progress);
}

/// Saves the trainer's state as a checkpoint of its game count in `dir`.
///
/// # Errors
/// As [`CheckpointDir::save`].
pub fn save_trainer(
    dir: &CheckpointDir,
    t: &Trainer,
    emergency: bool,
) -> Result<CheckpointInfo, EngineError> {
    let (tree, md) = trainer_to_checkpoint(t);
    dir.save(t.stats.games, &tree, &md, emergency)
}

fn update_snapshot(
    snapshot: &Mutex<Snapshot>,
    t: &Trainer,
    elapsed: f64,
    session: (u64, f64),
    full: bool,
) {
    let mut s = lock(snapshot);
    s.stats.clone_from(&t.stats);
    s.memory = t.memory_report();
    s.elapsed = elapsed;
    (s.session_games, s.session_elapsed) = session;
    if full {
        (s.coverage, s.eval_variance) = coverage_and_variance(&t.weights);
    }
}

/// The next multiple of `k` above `g` (never, for `k` 0).
fn next_multiple(g: u64, k: u64) -> u64 {
    g.checked_div(k).map_or(u64::MAX, |q| (q + 1) * k)
}

/// Trains `trainer` to `params.target` games (see the module docs); returns how it ended.
pub fn run_session(
    trainer: &mut Trainer,
    dir: &CheckpointDir,
    params: SessionParams,
    stop: &AtomicBool,
    snapshot: &Mutex<Snapshot>,
    hooks: &impl SessionHooks,
) -> SessionEnd {
    let t0 = Instant::now();
    let base_elapsed = lock(snapshot).elapsed;
    let start_games = trainer.stats.games;
    let mut next_cb = next_multiple(start_games, params.callback_interval);
    let mut next_ck = next_multiple(start_games, params.checkpoint_interval);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        trainer.train(params.target, stop, |t| {
            if let Some(c) = hooks.pending_config() {
                t.config = c;
                if let Err(e) = t.apply_config() {
                    hooks.error(format!("configure: {e}"));
                }
            }
            let el = t0.elapsed().as_secs_f64();
            let games = t.stats.games;
            let cb_due = games >= next_cb || games >= params.target;
            let session = (games - start_games, el);
            update_snapshot(snapshot, t, base_elapsed + el, session, cb_due);
            if games >= next_ck {
                next_ck = next_multiple(games, params.checkpoint_interval);
                if let Err(e) = save_trainer(dir, t, false) {
                    hooks.error(format!("checkpoint at game {games}: {e}"));
                }
            }
            if cb_due {
                next_cb = next_multiple(games, params.callback_interval);
                let point = (
                    games,
                    t.stats.recent_stone_diff(),
                    t.stats.recent_black_win_rate(),
                    base_elapsed + el,
                );
                lock(snapshot).history.push(point);
                hooks.progress(point);
            }
        })
    }));
    let el = t0.elapsed().as_secs_f64();
    let session = (trainer.stats.games - start_games, el);
    update_snapshot(snapshot, trainer, base_elapsed + el, session, true);
    match outcome {
        Ok(StopReason::Target) => {
            if let Err(e) = save_trainer(dir, trainer, false) {
                hooks.error(format!("final checkpoint: {e}"));
            }
            SessionEnd::Target
        }
        Ok(StopReason::Stopped) => SessionEnd::Stopped,
        Ok(StopReason::ErrorRate(why)) => {
            if let Err(e) = save_trainer(dir, trainer, true) {
                hooks.error(format!("auto-pause checkpoint: {e}"));
            }
            SessionEnd::ErrorRate(why)
        }
        Err(_) => SessionEnd::Panicked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Recorder {
        pending: RefCell<Option<TrainConfig>>,
        errors: RefCell<Vec<String>>,
        points: RefCell<Vec<Progress>>,
    }

    impl SessionHooks for Recorder {
        fn pending_config(&self) -> Option<TrainConfig> {
            self.pending.borrow_mut().take()
        }
        fn error(&self, message: String) {
            self.errors.borrow_mut().push(message);
        }
        fn progress(&self, point: Progress) {
            self.points.borrow_mut().push(point);
        }
    }

    fn small() -> TrainConfig {
        TrainConfig {
            threads: 1,
            batch_games: 16,
            pattern_set: "small".into(),
            n_phases: 2,
            ..TrainConfig::default()
        }
    }

    fn temp_dir(name: &str) -> CheckpointDir {
        let dir = std::env::temp_dir().join(format!("session-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        CheckpointDir::open(&dir, 10, 0, false).unwrap()
    }

    #[test]
    fn a_session_checkpoints_reports_and_applies_configuration_changes() {
        let dir = temp_dir("run");
        let mut t = Trainer::new(small()).unwrap();
        let hooks = Recorder::default();
        *hooks.pending.borrow_mut() = Some(TrainConfig {
            epsilon_start: 0.3,
            ..small()
        });
        let snapshot = Mutex::new(Snapshot::default());
        let params = SessionParams {
            target: 128,
            checkpoint_interval: 64,
            callback_interval: 32,
        };
        let end = run_session(
            &mut t,
            &dir,
            params,
            &AtomicBool::new(false),
            &snapshot,
            &hooks,
        );
        assert_eq!(end, SessionEnd::Target);
        assert!(
            hooks.errors.borrow().is_empty(),
            "{:?}",
            hooks.errors.borrow()
        );
        let games: Vec<u64> = hooks.points.borrow().iter().map(|p| p.0).collect();
        assert_eq!(games, [32, 64, 96, 128]);
        let steps: Vec<u64> = dir.list().unwrap().iter().map(|c| c.step).collect();
        assert_eq!(steps, [64, 128]);
        assert!((t.config.epsilon_start - 0.3).abs() < 1e-12);
        let s = lock(&snapshot);
        assert_eq!(
            (s.stats.games, s.session_games, s.history.len()),
            (128, 128, 4)
        );
        assert!(s.coverage > 0.0 && s.eval_variance > 0.0);
        std::fs::remove_dir_all(&dir.dir).unwrap();
    }

    #[test]
    fn a_raised_stop_flag_ends_the_session_without_a_checkpoint() {
        let dir = temp_dir("stop");
        let mut t = Trainer::new(small()).unwrap();
        let hooks = Recorder::default();
        let params = SessionParams {
            target: 1_000,
            checkpoint_interval: 0,
            callback_interval: 0,
        };
        let snapshot = Mutex::new(Snapshot::default());
        let end = run_session(
            &mut t,
            &dir,
            params,
            &AtomicBool::new(true),
            &snapshot,
            &hooks,
        );
        assert_eq!(end, SessionEnd::Stopped);
        assert!(dir.list().unwrap().is_empty());
        assert!(t.stats.games < 1_000);
        std::fs::remove_dir_all(&dir.dir).unwrap();
    }
}
