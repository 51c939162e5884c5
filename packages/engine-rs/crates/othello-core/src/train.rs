//! Self-play training of the pattern weights (plain TD steps, TC or Adam).
//!
//! Each position learns towards its own 2-ply minimax value under the current
//! weights (`target_depth` 2, the default: [`Weights::two_ply`]) or, with
//! `target_depth` 1, by TD(lambda) along the game played (below).
//!
//! Games are played in batches of `batch_games`. All games of a batch read the
//! same weights, each with its own random stream `(seed, game index)`, so they
//! can run on any number of rayon threads; their gradients are then applied in
//! game order. The weights after N games therefore depend only on the seed,
//! the configuration and N (when N is a multiple of `batch_games`), never on
//! the thread count.
//!
//! TD(lambda) uses sparse eligibility traces: a trace is the list of the
//! positions visited so far, each with its ~50 active weight indices and a
//! coefficient that decays by lambda per ply. At the end of a game the trace
//! coefficients of each position are folded backwards
//! (`c_k = delta_k + lambda * c_{k+1}`), which is exactly the accumulated
//! `sum_t delta_t * e_t` of accumulating traces, computed in O(features) per
//! position instead of touching every active trace entry at every ply.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::EngineError;
use crate::eval::{NonFinite, Weights};
use crate::isa::Variant;
use crate::pattern::{PatternSet, MAX_INSTANCES};
use crate::search::{TranspositionTable, TT_ENTRY_BYTES};

pub mod cma;
mod config;
mod ctdl;
mod es;
pub mod evolve;
mod game;
mod portfolio;
mod stats;

pub use config::{EsStrategy, Learner, Optimizer, TrainConfig};
pub use evolve::Population;
pub use game::td_lambda_folds;
use game::{play_game_on, GameRecord};
pub use stats::{MemoryReport, Stats, RECENT_WINDOW};

/// Adam bias corrections precomputed for update counts below this.
const BC_TABLE: usize = 4096;

/// Adds one game's TD update to the weights with a per-weight factor:
/// `w[i] += step · factor(i, scale) · scale` for every active feature `i` of
/// every learnt position (`step` is `bias_lr` for the phase bias, the last
/// feature, else `lr`), in game order. `factor` may update per-weight state.
/// Returns whether a weight became non-finite.
fn add_with_factor(
    w: &mut [f32],
    rec: &GameRecord,
    lr: f32,
    bias_lr: f32,
    mut factor: impl FnMut(usize, f32) -> f32,
) -> bool {
    let mut bad = false;
    let n = rec.n_feat;
    for (t, &scale) in rec.scales.iter().enumerate() {
        if scale == 0.0 {
            continue;
        }
        let feats = &rec.features[t * n..(t + 1) * n];
        for (k, &i) in feats.iter().enumerate() {
            let i = i as usize;
            let step = if k + 1 == n { bias_lr } else { lr };
            w[i] += step * factor(i, scale) * scale;
            bad |= !w[i].is_finite();
        }
    }
    bad
}

/// `(sqrt(1 - beta2^k), 1 - beta1^k)` for update count `k`.
fn bias_correction(beta1: f32, beta2: f32, k: usize) -> (f32, f32) {
    let k = k as i32;
    ((1.0 - beta2.powi(k)).sqrt(), 1.0 - beta1.powi(k))
}

/// The learner: weights, Adam state and statistics.
pub struct Trainer {
    /// Configuration in force.
    pub config: TrainConfig,
    /// The weights being learnt.
    pub weights: Weights,
    /// Adam first moments.
    pub adam_m: Vec<f32>,
    /// Adam second moments.
    pub adam_v: Vec<f32>,
    /// Adam steps taken (batches).
    pub adam_step: u64,
    /// Per-weight Adam step counts (bias correction for sparse updates).
    pub adam_t: Vec<u32>,
    /// Statistics.
    pub stats: Stats,
    /// The population of the evolving learners (`ctdl`, `es`; empty for `td`).
    pub population: Population,
    grad: Vec<f32>,
    touched: Vec<u32>,
    bias_corr: Vec<(f32, f32)>,
    tt_bytes_per_thread: usize,
    /// One transposition table per pool thread (with `search_depth > 1`), kept across
    /// batches and cleared (in constant time) before each game.
    tts: Vec<Mutex<TranspositionTable>>,
    /// Game records applied in earlier batches, reused by the next games.
    records: Mutex<Vec<GameRecord>>,
    pool: Option<rayon::ThreadPool>,
    /// The CPU variant the games run on (`None`: [`crate::isa::active`]); every
    /// variant trains the same weights.
    pub variant: Option<Variant>,
}

/// Why [`Trainer::train`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The target game count was reached.
    Target,
    /// The stop flag was raised.
    Stopped,
    /// Too many errors in the window: training paused itself.
    ErrorRate(String),
}

impl Trainer {
    /// A trainer with zero weights.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] when the configuration is invalid or the
    /// memory budget cannot hold the weights and optimizer state.
    pub fn new(config: TrainConfig) -> Result<Trainer, EngineError> {
        config.validate()?;
        let set = Arc::new(PatternSet::named(&config.pattern_set)?);
        let weights = Weights::new(set, config.n_phases)?;
        Trainer::with_weights(config, weights)
    }

    /// A trainer that continues from `weights` (fresh Adam state).
    ///
    /// # Errors
    /// As [`Trainer::new`].
    pub fn with_weights(config: TrainConfig, weights: Weights) -> Result<Trainer, EngineError> {
        config.validate()?;
        let n = weights.w.len();
        let mut t = Trainer {
            config,
            weights,
            adam_m: vec![0.0; n],
            adam_v: vec![0.0; n],
            adam_step: 0,
            adam_t: vec![0; n],
            stats: Stats::default(),
            population: Population::default(),
            grad: vec![0.0; n],
            touched: Vec::new(),
            bias_corr: Vec::new(),
            tt_bytes_per_thread: 0,
            tts: Vec::new(),
            records: Mutex::new(Vec::new()),
            pool: None,
            variant: None,
        };
        t.apply_config()?;
        Ok(t)
    }

    fn threads(&self) -> usize {
        if self.config.threads == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            self.config.threads
        }
    }

    /// Re-derives the thread pool and the TT size after a configuration change.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] naming `memory_budget_mb` when the budget is too small.
    pub fn apply_config(&mut self) -> Result<(), EngineError> {
        self.config.validate()?;
        let fixed = self.fixed_bytes();
        let budget = self.config.memory_budget_mb << 20;
        if fixed > budget {
            return Err(EngineError::config(
                "memory_budget_mb",
                &format!(
                    "at least {} for this pattern set and phase count",
                    fixed.div_ceil(1 << 20)
                ),
                self.config.memory_budget_mb,
            ));
        }
        let (b1, b2) = (self.config.beta1, self.config.beta2);
        self.bias_corr = (0..BC_TABLE).map(|k| bias_correction(b1, b2, k)).collect();
        let threads = self.threads();
        // The TT shrinks to fit what is left of the budget (capped at 64 MB per thread).
        let per_thread = ((budget - fixed) / threads).min(64 << 20);
        self.tt_bytes_per_thread = if self.config.search_depth > 1 && per_thread >= TT_ENTRY_BYTES {
            TranspositionTable::bytes_for(per_thread)
        } else {
            0
        };
        let tt_count = if self.tt_bytes_per_thread > 0 {
            threads
        } else {
            0
        };
        let tt_bytes = self.tt_bytes_per_thread;
        let resized = self.tts.first_mut().is_some_and(|tt| {
            tt.get_mut()
                .map_or(true, |tt| tt.memory_bytes() != tt_bytes)
        });
        if self.tts.len() != tt_count || resized {
            self.tts = (0..tt_count)
                .map(|_| Mutex::new(TranspositionTable::with_bytes(self.tt_bytes_per_thread)))
                .collect();
        }
        self.pool = Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| EngineError::Io(format!("thread pool: {e}")))?,
        );
        Ok(())
    }

    fn fixed_bytes(&self) -> usize {
        let w = self.weights.memory_bytes();
        // weights + m + v + step counts + gradient buffer + touched list (worst case) + game records
        w * 5 + self.weights.w.len() / 8 + self.config.batch_games * 64 * (MAX_INSTANCES + 2) * 4
    }

    /// Memory use by component.
    #[must_use]
    pub fn memory_report(&self) -> MemoryReport {
        let w = self.weights.memory_bytes();
        MemoryReport {
            pattern_tables: w,
            adam_state: 3 * w,
            transposition_table: self.tt_bytes_per_thread * self.threads(),
            other: self.fixed_bytes() - 4 * w,
            budget: self.config.memory_budget_mb << 20,
        }
    }

    /// Plays and learns from games until `target_games`, `stop` or the error limit.
    ///
    /// `on_batch` runs after every batch with the trainer (for progress and checkpoints).
    /// With the evolving learners (`ctdl`, `es`) a batch is a whole generation,
    /// which may end past `target_games`: the stop flag and the target are
    /// checked between generations.
    pub fn train(
        &mut self,
        target_games: u64,
        stop: &AtomicBool,
        mut on_batch: impl FnMut(&mut Trainer),
    ) -> StopReason {
        // Weights can turn non-finite only through an update (checked where it is
        // applied) or from outside (a loaded checkpoint, the caller): one full
        // sweep per call, not one per batch (a full sweep costs as much as a few games).
        self.sweep_non_finite();
        while self.stats.games < target_games {
            if stop.load(Ordering::Relaxed) {
                return StopReason::Stopped;
            }
            match self.config.learner {
                Learner::Td => {
                    let start = self.stats.games;
                    let b = self.config.batch_games as u64;
                    let end = ((start / b + 1) * b).min(target_games);
                    if !self.run_batch(start, end, stop) {
                        return StopReason::Stopped;
                    }
                }
                Learner::Es => self.es_generation(),
                Learner::Ctdl => self.ctdl_generation(),
            }
            on_batch(self);
            if let Some(why) = self.check_error_rate() {
                return StopReason::ErrorRate(why);
            }
        }
        StopReason::Target
    }

    fn check_error_rate(&mut self) -> Option<String> {
        let errors = self.stats.window_errors();
        let limit = (self.config.max_error_rate * self.config.error_window as f64).floor() as u64;
        if errors > limit {
            let why = format!(
                "{errors} errors in the last {} games exceed {:.2}% (limit {limit}); training paused",
                self.stats.recent_errors.len(),
                self.config.max_error_rate * 100.0
            );
            self.stats.auto_paused = Some(why.clone());
            return Some(why);
        }
        None
    }

    /// Plays games `start..end` and applies their updates; false if stopped midway.
    fn run_batch(&mut self, start: u64, end: u64, stop: &AtomicBool) -> bool {
        if self.config.inject_nan_at_game > 0
            && (start..end).contains(&self.config.inject_nan_at_game)
        {
            let i = self.weights.set.phase_len + 7;
            self.weights.w[i] = f32::NAN;
            self.sweep_non_finite();
        }
        let w = &self.weights;
        let cfg = &self.config;
        let tts = &self.tts;
        let records = &self.records;
        let variant = self.variant.unwrap_or_else(crate::isa::active);
        let pool = self.pool.as_ref().expect("pool built in apply_config");
        let results: Vec<Result<Option<GameRecord>, String>> = pool.install(|| {
            (start..end)
                .into_par_iter()
                .map(|g| {
                    // This thread's table, emptied: what another game stored (a different
                    // game on each thread count) never steers this game's search.
                    let mut guard = rayon::current_thread_index()
                        .and_then(|i| tts.get(i))
                        .map(|tt| tt.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                    if let Some(tt) = guard.as_deref_mut() {
                        tt.clear();
                    }
                    catch_unwind(AssertUnwindSafe(|| {
                        let rec = records
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .pop()
                            .unwrap_or_default();
                        play_game_on(variant, w, cfg, g, guard.as_deref_mut(), stop, rec)
                    }))
                    .map_err(|e| {
                        e.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "panic".into())
                    })
                })
                .collect()
        });
        if results.iter().any(|r| matches!(r, Ok(None))) {
            return false;
        }
        let td = self.config.optimizer != Optimizer::Adam;
        let tc = self.config.optimizer == Optimizer::Tc;
        let visits = self.config.optimizer == Optimizer::Td && self.config.lr_decay_visits > 0;
        let td_lr = self.td_step();
        let positions: usize = results
            .iter()
            .filter_map(|r| r.as_ref().ok().and_then(Option::as_ref))
            .map(|rec| rec.scales.len())
            .sum();
        let bias_lr = td_lr / positions.max(1) as f32;
        let mut bad = false;
        for r in &results {
            match r {
                Ok(Some(rec)) => {
                    if tc {
                        bad |= self.apply_tc(rec, td_lr, bias_lr);
                    } else if visits {
                        bad |= self.apply_td_visits(rec, td_lr, bias_lr);
                    } else if td {
                        bad |= self.apply_td(rec, td_lr, bias_lr);
                    } else {
                        self.accumulate(rec);
                    }
                    self.record_game(Some(rec.black_diff));
                }
                _ => self.record_game(None),
            }
        }
        let pool = self
            .records
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pool.extend(results.into_iter().filter_map(|r| r.ok().flatten()));
        if td {
            if bad {
                self.sweep_non_finite();
            }
        } else {
            self.adam_update();
        }
        true
    }

    /// The plain-TD step per unit of gradient: the rate at this game count over the active features.
    fn td_step(&self) -> f32 {
        let n_active = (self.weights.set.n_instances() + 1) as f32;
        if self.config.optimizer == Optimizer::Td && self.config.lr_decay_visits > 0 {
            return self.config.learning_rate / n_active;
        }
        // A `ctdl` individual's rate follows its own experience: the TD games
        // each individual has played before this generation.
        let games = if self.config.learner == Learner::Ctdl {
            self.population.generation * self.config.ctdl_td_games
        } else {
            self.stats.games
        };
        self.learning_rate_at(games) / n_active
    }

    /// Plain TD (with `lr_decay_visits` > 0) whose rate decays per weight with the
    /// weight's own update count `k` (kept in `adam_t`, so checkpoints keep
    /// it): `step · d / (d + k)` with `d = lr_decay_visits`. Entries seen in
    /// most positions (the opening, near-empty patterns, the bias) slow down
    /// within a few batches, rare ones keep a large step for as long as they
    /// stay rare; the decay by games slowed both alike. Like [`Self::apply_td`]
    /// the games' updates are added in game order, so the weights do not
    /// depend on the thread count.
    fn apply_td_visits(&mut self, rec: &GameRecord, lr: f32, bias_lr: f32) -> bool {
        let d = self.config.lr_decay_visits as f32;
        let counts = &mut self.adam_t;
        add_with_factor(&mut self.weights.w, rec, lr, bias_lr, |i, _| {
            let c = &mut counts[i];
            let decay = d / (d + *c as f32);
            *c = c.saturating_add(1);
            decay
        })
    }

    /// Plain TD: adds one game's update straight to the weights (the batch's
    /// games all read the weights from before the batch; their updates are added
    /// in game order, so the result does not depend on the threads). Returns
    /// whether a weight became non-finite.
    ///
    /// The phase bias is active in every position, so a batch would add up
    /// about 2,000 same-signed steps on it from stale weights and overshoot
    /// (values saturate at ±1): it steps by `bias_lr`, the step over the batch's
    /// positions, i.e. one averaged step per batch.
    fn apply_td(&mut self, rec: &GameRecord, lr: f32, bias_lr: f32) -> bool {
        let mut bad = false;
        let n = rec.n_feat;
        for (t, &scale) in rec.scales.iter().enumerate() {
            if scale == 0.0 {
                continue;
            }
            let step = lr * scale;
            let feats = &rec.features[t * n..(t + 1) * n];
            for &i in &feats[..n - 1] {
                let w = &mut self.weights.w[i as usize];
                *w += step;
                bad |= !w.is_finite();
            }
            let w = &mut self.weights.w[feats[n - 1] as usize];
            *w += bias_lr * scale;
            bad |= !w.is_finite();
        }
        bad
    }

    /// Temporal coherence (Beal & Smith): plain TD whose step on each weight is
    /// scaled by `|N_i| / A_i`, where `N_i` sums the weight's past updates and
    /// `A_i` their magnitudes (1 before its first update). A weight whose
    /// updates keep one sign learns at the full rate; one whose updates
    /// cancel out (noise, or overshoot corrected back and forth) slows down.
    /// `N` and `A` live in `adam_m` and `adam_v` (so checkpoints keep them).
    fn apply_tc(&mut self, rec: &GameRecord, lr: f32, bias_lr: f32) -> bool {
        let (sum, abs) = (&mut self.adam_m, &mut self.adam_v);
        add_with_factor(&mut self.weights.w, rec, lr, bias_lr, |i, scale| {
            let a = abs[i];
            let rate = if a > 0.0 { sum[i].abs() / a } else { 1.0 };
            sum[i] += scale;
            abs[i] += scale.abs();
            rate
        })
    }

    fn record_game(&mut self, diff: Option<i32>) {
        let s = &mut self.stats;
        s.games += 1;
        s.recent_errors.push_back(diff.is_none());
        if s.recent_errors.len() as u64 > self.config.error_window {
            s.recent_errors.pop_front();
        }
        let Some(d) = diff else {
            s.errors += 1;
            return;
        };
        match d.signum() {
            1 => s.black_wins += 1,
            -1 => s.white_wins += 1,
            _ => s.draws += 1,
        }
        s.stone_diff_sum += i64::from(d);
        s.recent_diffs.push_back(d as i8);
        if s.recent_diffs.len() > RECENT_WINDOW {
            s.recent_diffs.pop_front();
        }
    }

    fn accumulate(&mut self, rec: &GameRecord) {
        for (t, &scale) in rec.scales.iter().enumerate() {
            for &i in &rec.features[t * rec.n_feat..(t + 1) * rec.n_feat] {
                let g = &mut self.grad[i as usize];
                if *g == 0.0 {
                    self.touched.push(i);
                }
                // Gradient ascent direction on the TD objective.
                *g += scale;
                if *g == 0.0 {
                    *g = f32::MIN_POSITIVE; // keep it marked as touched
                }
            }
        }
    }

    /// The Adam step size after `games` games.
    #[must_use]
    pub fn learning_rate_at(&self, games: u64) -> f32 {
        let c = &self.config;
        if c.lr_decay_games == 0 {
            return c.learning_rate;
        }
        let d = c.lr_decay_games as f64;
        (f64::from(c.learning_rate) * d / (d + games as f64)) as f32
    }

    fn adam_update(&mut self) {
        self.adam_step += 1;
        let lr = self.learning_rate_at(self.stats.games);
        let c = &self.config;
        let mut bad = Vec::new();
        for &i in &self.touched {
            let i = i as usize;
            // Per-weight bias correction: a rarely seen weight is corrected by its own count.
            let t = &mut self.adam_t[i];
            *t = t.saturating_add(1);
            let k = (*t).min(1 << 20) as usize;
            // Same expression as powi in place, from a table for the common small counts.
            let (sqrt_bc2, bc1) = if k < BC_TABLE {
                self.bias_corr[k]
            } else {
                bias_correction(c.beta1, c.beta2, k)
            };
            let step = lr * sqrt_bc2 / bc1;
            let g = std::mem::take(&mut self.grad[i]);
            let m = &mut self.adam_m[i];
            let v = &mut self.adam_v[i];
            *m = c.beta1 * *m + (1.0 - c.beta1) * g;
            *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
            let w = &mut self.weights.w[i];
            *w += step * *m / (v.sqrt() + c.adam_eps);
            if !w.is_finite() || !m.is_finite() || !v.is_finite() {
                bad.push(i);
            }
        }
        self.touched.clear();
        if !bad.is_empty() {
            for &i in &bad {
                self.weights.w[i] = f32::NAN; // so that the sweep reports it
            }
            self.sweep_non_finite();
        }
    }

    /// Checks every weight for NaN/Inf, resets them and the Adam state to 0, and reports them.
    pub fn sweep_non_finite(&mut self) -> Vec<NonFinite> {
        let plen = self.weights.set.phase_len;
        let found = self.weights.reset_non_finite();
        for nf in &found {
            let off = if nf.pattern == "bias" {
                plen - 1
            } else {
                let s = self
                    .weights
                    .set
                    .shapes
                    .iter()
                    .position(|s| s.name == nf.pattern)
                    .unwrap_or(0);
                self.weights.set.offsets[s] + nf.index
            };
            let i = nf.phase * plen + off;
            self.adam_m[i] = 0.0;
            self.adam_v[i] = 0.0;
            self.adam_t[i] = 0;
        }
        self.stats.nan_resets += found.len() as u64;
        if !found.is_empty() {
            self.stats.last_non_finite = found.iter().take(100).cloned().collect();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(threads: usize) -> TrainConfig {
        TrainConfig {
            threads,
            batch_games: 16,
            pattern_set: "small".into(),
            n_phases: 2,
            ..TrainConfig::default()
        }
    }

    /// A trainer for `config` after `games` self-play games.
    fn trained(config: TrainConfig, games: u64) -> Trainer {
        let mut t = Trainer::new(config).unwrap();
        t.train(games, &AtomicBool::new(false), |_| {});
        t
    }

    #[test]
    fn same_seed_same_weights_on_one_and_two_threads() {
        let a = trained(small(1), 96);
        let a2 = trained(small(1), 96);
        let b = trained(small(2), 96);
        assert_eq!(a.weights.w, a2.weights.w);
        assert_eq!(a.weights.w, b.weights.w);
        assert_eq!(a.stats, b.stats);
        assert!(a.weights.w.iter().any(|&v| v != 0.0), "weights must move");
        // The other rules (per-weight decay by visits; temporal coherence; TD(lambda)
        // targets along the game) are reproducible too.
        for (optimizer, visits, target_depth) in [
            (Optimizer::Td, 10_000, 2),
            (Optimizer::Tc, 0, 2),
            (Optimizer::Td, 0, 1),
        ] {
            let cfg = |threads| TrainConfig {
                optimizer,
                lr_decay_visits: visits,
                target_depth,
                ..small(threads)
            };
            let x = trained(cfg(1), 96);
            let y = trained(cfg(2), 96);
            assert_eq!(x.weights.w, y.weights.w, "{optimizer}");
            assert_eq!(x.adam_v, y.adam_v, "{optimizer}");
            assert_eq!(x.adam_t, y.adam_t, "{optimizer}");
            assert_ne!(x.weights.w, a.weights.w, "{optimizer}");
        }
        let c = trained(
            TrainConfig {
                seed: 1,
                ..small(1)
            },
            96,
        );
        assert_ne!(a.weights.w, c.weights.w);
    }

    #[test]
    fn two_ply_targets_learn_from_positions_where_exploration_moved() {
        // Every move random: TD(lambda) learns nothing along such games (the
        // trace is cut at each exploration move), while each position's own
        // 2-ply value is a target whatever move followed it.
        let cfg = |target_depth| TrainConfig {
            epsilon_start: 1.0,
            epsilon_end: 1.0,
            target_depth,
            ..small(1)
        };
        assert!(trained(cfg(1), 64).weights.w.iter().all(|&v| v == 0.0));
        let learnt = trained(cfg(2), 64);
        let moved = learnt.weights.w.iter().filter(|&&v| v != 0.0).count();
        assert!(moved > 100, "{moved} weights moved");
    }

    #[test]
    fn games_against_the_heuristic_are_learnt_from_and_reproducible() {
        // The learner explores every move: TD(lambda) cuts the trace at each
        // of them, so self-play learns nothing (above); in games against the
        // heuristic, the heuristic's own moves (90% of its turns) are learnt from.
        let explore = |vs| TrainConfig {
            epsilon_start: 1.0,
            epsilon_end: 1.0,
            target_depth: 1,
            td_heuristic_games: vs,
            ..small(1)
        };
        let learnt = trained(explore(1.0), 64);
        let moved = learnt.weights.w.iter().filter(|&&v| v != 0.0).count();
        assert!(moved > 100, "{moved} weights moved");
        // Half the games: fewer positions learnt from than in every game.
        let half = trained(explore(0.5), 64);
        let half_moved = half.weights.w.iter().filter(|&&v| v != 0.0).count();
        assert!(
            half_moved > 0 && half_moved < moved,
            "{half_moved} vs {moved}"
        );
        // With the default rule: the same on any thread count, and not self-play.
        let vs = |threads| TrainConfig {
            td_heuristic_games: 0.5,
            ..small(threads)
        };
        let (one, two) = (trained(vs(1), 96), trained(vs(2), 96));
        assert_eq!(one.weights.w, two.weights.w);
        assert_eq!(one.stats, two.stats);
        assert_ne!(one.weights.w, trained(small(1), 96).weights.w);
    }

    #[test]
    fn visit_decay_counts_updates_per_weight_and_slows_common_weights() {
        let stop = AtomicBool::new(false);
        let mut t = trained(
            TrainConfig {
                lr_decay_visits: 100,
                ..small(1)
            },
            64,
        );
        let plen = t.weights.set.phase_len;
        // The phase-0 bias is active in every opening position: counted once per
        // learnt position, far more often than a typical table entry.
        let bias = t.adam_t[plen - 1];
        assert!(bias > 64 * 5, "{bias}");
        let mut seen: Vec<u32> = t.adam_t[..plen - 1]
            .iter()
            .copied()
            .filter(|&k| k > 0)
            .collect();
        seen.sort_unstable();
        assert!(
            seen[seen.len() / 2] * 10 < bias,
            "median {}",
            seen[seen.len() / 2]
        );
        assert!(t.adam_t.iter().filter(|&&k| k == 1).count() > 100);
        // One more batch: the step a weight takes shrinks as d / (d + k).
        let before = t.weights.w.clone();
        let k_before = t.adam_t.clone();
        t.train(80, &stop, |_| {});
        let moved = |i: usize| (t.weights.w[i] - before[i]).abs();
        assert!(moved(plen - 1) > 0.0);
        assert!(t.adam_t[plen - 1] > k_before[plen - 1]);
        assert!(
            t.adam_m.iter().all(|&v| v == 0.0),
            "td keeps no Adam moments"
        );
    }

    #[test]
    fn adam_is_available_and_unknown_optimizers_are_rejected() {
        let adam = |threads| TrainConfig {
            optimizer: Optimizer::Adam,
            learning_rate: 0.002,
            ..small(threads)
        };
        let a = trained(adam(1), 64);
        let b = trained(adam(2), 64);
        assert_eq!(a.weights.w, b.weights.w);
        assert!(a.adam_v.iter().any(|&v| v > 0.0), "Adam state must move");
        let td = trained(
            TrainConfig {
                optimizer: Optimizer::Td,
                learning_rate: 0.1,
                ..small(1)
            },
            64,
        );
        assert_ne!(a.weights.w, td.weights.w);
        assert!(td.adam_v.iter().all(|&v| v == 0.0));
        let err = "sgd".parse::<Optimizer>().unwrap_err();
        assert!(err.to_string().starts_with("optimizer: got sgd"), "{err}");
        for o in [Optimizer::Td, Optimizer::Tc, Optimizer::Adam] {
            assert_eq!(o.name().parse::<Optimizer>().unwrap(), o);
        }
    }

    #[test]
    fn panics_are_counted_and_the_error_rate_pauses_training() {
        let stop = AtomicBool::new(false);
        let cfg = TrainConfig {
            inject_panic_every: 50,
            error_window: 100,
            ..small(2)
        };
        let mut t = Trainer::new(cfg).unwrap();
        let reason = t.train(400, &stop, |_| {});
        // 1 panic in 50 games is 2% > 1%: paused once the window holds 2 errors.
        assert!(matches!(reason, StopReason::ErrorRate(_)), "{reason:?}");
        assert!(t.stats.errors >= 2);
        assert!(t.stats.games < 400);
        assert!(t.stats.auto_paused.as_deref().unwrap().contains("errors"));
    }

    #[test]
    fn nan_weights_are_detected_reset_and_reported() {
        let cfg = TrainConfig {
            inject_nan_at_game: 20,
            ..small(1)
        };
        let mut t = trained(cfg, 64);
        assert!(t.weights.w.iter().all(|v| v.is_finite()));
        let found = t.sweep_non_finite();
        assert!(found.is_empty());
        assert_eq!(t.stats.nan_resets, 1, "{:?}", t.stats);
        let nf = &t.stats.last_non_finite[0];
        assert_eq!(
            (nf.pattern.as_str(), nf.phase, nf.index, nf.value.as_str()),
            ("corner3x3", 1, 7, "NaN")
        );
    }

    #[test]
    fn config_errors_name_the_field_and_range() {
        let err = Trainer::new(TrainConfig {
            lambda: 1.5,
            ..TrainConfig::default()
        })
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "lambda: got 1.5; allowed: 0.0 to 1.0");
        let err = Trainer::new(TrainConfig {
            memory_budget_mb: 16,
            ..TrainConfig::default()
        })
        .err()
        .unwrap();
        assert!(err.to_string().starts_with("memory_budget_mb"), "{err}");
        let err = TrainConfig {
            target_depth: 3,
            ..TrainConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "target_depth: got 3; allowed: 1 (TD(lambda) along the game) or 2 (2-ply minimax targets)"
        );
    }

    #[test]
    fn searched_training_is_the_same_on_one_and_two_threads() {
        // At search_depth > 1 each worker thread keeps a transposition table across
        // games: what one game stored must never steer another game's search.
        let cfg = |threads| TrainConfig {
            search_depth: 3,
            memory_budget_mb: 64,
            ..small(threads)
        };
        let one = trained(cfg(1), 96);
        let two = trained(cfg(2), 96);
        assert!(one.memory_report().transposition_table > 0);
        assert!(
            one.weights.w == two.weights.w,
            "weights differ between 1 and 2 threads"
        );
        assert_eq!(one.stats, two.stats);
    }

    #[test]
    fn tt_shrinks_to_fit_the_budget() {
        let big = Trainer::new(TrainConfig {
            search_depth: 3,
            threads: 2,
            ..TrainConfig::default()
        })
        .unwrap();
        let r = big.memory_report();
        assert!(r.total() <= r.budget, "{r:?}");
        assert!(r.transposition_table > 0);
        let tight = Trainer::new(TrainConfig {
            search_depth: 3,
            threads: 2,
            memory_budget_mb: 40,
            ..TrainConfig::default()
        })
        .unwrap();
        let r2 = tight.memory_report();
        assert!(r2.total() <= r2.budget, "{r2:?}");
        assert!(r2.transposition_table < r.transposition_table);
    }
}
