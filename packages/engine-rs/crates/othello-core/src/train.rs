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

use crate::board::Board;
use crate::error::EngineError;
use crate::eval::{reward, FeatureBuf, NonFinite, Weights};
use crate::isa::{Kernels, Variant};
use crate::pattern::{PatternSet, MAX_INSTANCES};
use crate::rng::Rng;
use crate::search::{search_until, Limits, TranspositionTable, TT_ENTRY_BYTES};

/// The weight update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Optimizer {
    /// Plain TD: step `learning_rate / active features`, traces cut at exploration moves (the default).
    Td,
    /// TD with temporal-coherence per-weight rates (Beal & Smith).
    Tc,
    /// Sparse Adam.
    Adam,
}

impl Optimizer {
    /// The name used in configurations and checkpoints (`td`, `tc`, `adam`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Td => "td",
            Optimizer::Tc => "tc",
            Optimizer::Adam => "adam",
        }
    }
}

impl std::str::FromStr for Optimizer {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Optimizer, EngineError> {
        match s {
            "td" => Ok(Optimizer::Td),
            "tc" => Ok(Optimizer::Tc),
            "adam" => Ok(Optimizer::Adam),
            other => Err(EngineError::config(
                "optimizer",
                "'td', 'tc' or 'adam'",
                other,
            )),
        }
    }
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Training configuration. Every field is checked by [`TrainConfig::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Worker threads (1 = single-thread mode; results do not depend on it).
    pub threads: usize,
    /// Games per weight update (all read the same weights).
    pub batch_games: usize,
    /// Search depth of the moves played (1 = greedy on the evaluation).
    pub search_depth: u32,
    /// What each position learns towards: 1 = TD(lambda) along the game played
    /// (the next position's value, the result at the end); 2 = the position's
    /// own 2-ply minimax value under the current weights (see
    /// docs/othello-engine.md: every seed measured scores higher in the League).
    pub target_depth: u32,
    /// Exploration rate at game 0.
    pub epsilon_start: f64,
    /// Exploration rate after `epsilon_decay_games` games (linear in between).
    pub epsilon_end: f64,
    /// Games over which epsilon goes from start to end.
    pub epsilon_decay_games: u64,
    /// Trace decay lambda in [0, 1].
    pub lambda: f32,
    /// Step size at game 0 (`td`: divided by the active features per position; `adam`: Adam's step).
    pub learning_rate: f32,
    /// Step size decay by games: the rate is `learning_rate * d / (d + games)`
    /// (0 = constant). Used by `adam` and `tc`, and by `td` when `lr_decay_visits` is 0.
    pub lr_decay_games: u64,
    /// `td` only: per-weight step decay by the weight's own update count `k`,
    /// `d / (d + k)` with `d = lr_decay_visits` (10,000 is the value measured),
    /// instead of the decay by games (0, the default: decay by games).
    pub lr_decay_visits: u64,
    /// Adam beta1.
    pub beta1: f32,
    /// Adam beta2.
    pub beta2: f32,
    /// Adam epsilon.
    pub adam_eps: f32,
    /// Weight update rule: `td` (default: plain TD, step `learning_rate / active
    /// features`, traces cut at exploration moves), `tc` (TD with temporal-coherence
    /// per-weight rates) or `adam` (sparse Adam; see docs/othello-engine.md).
    pub optimizer: Optimizer,
    /// Built-in pattern set name (`default`, `small` or a systematic set; see [`PatternSet::named`]).
    pub pattern_set: String,
    /// Number of phases (disc-count ranges) with their own tables.
    pub n_phases: usize,
    /// Memory budget in MB for weights, optimizer state and transposition tables.
    pub memory_budget_mb: usize,
    /// Games in the error-rate window.
    pub error_window: u64,
    /// Error rate in the window above which training pauses itself.
    pub max_error_rate: f64,
    /// Fault injection for tests: a game whose index is a multiple of this panics (0 = off).
    pub inject_panic_every: u64,
    /// Fault injection for tests: poison one weight with NaN before this game (0 = off).
    pub inject_nan_at_game: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 0,
            threads: 0,
            batch_games: 32,
            search_depth: 1,
            target_depth: 2,
            epsilon_start: 0.1,
            epsilon_end: 0.1,
            epsilon_decay_games: 100_000,
            lambda: 0.5,
            learning_rate: 1.0,
            lr_decay_games: 50_000,
            lr_decay_visits: 0,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            optimizer: Optimizer::Td,
            pattern_set: "default".into(),
            n_phases: 6,
            memory_budget_mb: 600,
            error_window: 10_000,
            max_error_rate: 0.01,
            inject_panic_every: 0,
            inject_nan_at_game: 0,
        }
    }
}

fn check<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
    allowed: &str,
) -> Result<(), EngineError> {
    if v >= lo && v <= hi {
        Ok(())
    } else {
        Err(EngineError::config(field, allowed, v))
    }
}

impl TrainConfig {
    /// Checks every field; the error names the field and its allowed range.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] for the first field out of range.
    pub fn validate(&self) -> Result<(), EngineError> {
        check("threads", self.threads, 0, 256, "0 (all cores) to 256")?;
        check("batch_games", self.batch_games, 1, 65_536, "1 to 65536")?;
        check("search_depth", self.search_depth, 1, 8, "1 to 8")?;
        check(
            "target_depth",
            self.target_depth,
            1,
            2,
            "1 (TD(lambda) along the game) or 2 (2-ply minimax targets)",
        )?;
        check("epsilon_start", self.epsilon_start, 0.0, 1.0, "0.0 to 1.0")?;
        check("epsilon_end", self.epsilon_end, 0.0, 1.0, "0.0 to 1.0")?;
        check("lambda", self.lambda, 0.0, 1.0, "0.0 to 1.0")?;
        check(
            "learning_rate",
            self.learning_rate,
            1e-7,
            100.0,
            "1e-7 to 100.0",
        )?;
        check("beta1", self.beta1, 0.0, 0.999_999, "0.0 to <1.0")?;
        check("beta2", self.beta2, 0.0, 0.999_999_9, "0.0 to <1.0")?;
        check("adam_eps", self.adam_eps, 1e-12, 1.0, "1e-12 to 1.0")?;
        check("n_phases", self.n_phases, 1, 60, "1 to 60")?;
        check(
            "lr_decay_visits",
            self.lr_decay_visits,
            0,
            1 << 32,
            "0 (decay by games) to 4294967296",
        )?;
        check(
            "memory_budget_mb",
            self.memory_budget_mb,
            16,
            1 << 20,
            "16 to 1048576",
        )?;
        check(
            "error_window",
            self.error_window,
            10,
            100_000_000,
            "10 to 100000000",
        )?;
        check(
            "max_error_rate",
            self.max_error_rate,
            0.0,
            1.0,
            "0.0 to 1.0",
        )?;
        PatternSet::named(&self.pattern_set)?;
        Ok(())
    }

    /// Exploration rate for the game with this index.
    #[must_use]
    pub fn epsilon(&self, game: u64) -> f64 {
        if self.epsilon_decay_games == 0 || game >= self.epsilon_decay_games {
            return self.epsilon_end;
        }
        let f = game as f64 / self.epsilon_decay_games as f64;
        self.epsilon_start + (self.epsilon_end - self.epsilon_start) * f
    }
}

/// Memory use by component, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Pattern weight tables.
    pub pattern_tables: usize,
    /// Adam first and second moments.
    pub adam_state: usize,
    /// Transposition tables (all worker threads).
    pub transposition_table: usize,
    /// Gradient buffers, traces and bookkeeping.
    pub other: usize,
    /// The configured budget.
    pub budget: usize,
}

impl MemoryReport {
    /// Sum of the components.
    #[must_use]
    pub fn total(&self) -> usize {
        self.pattern_tables + self.adam_state + self.transposition_table + self.other
    }
}

/// Running totals of a training run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Games finished (and learnt from).
    pub games: u64,
    /// Games black won.
    pub black_wins: u64,
    /// Games white won.
    pub white_wins: u64,
    /// Drawn games.
    pub draws: u64,
    /// Sum over games of (black discs - white discs).
    pub stone_diff_sum: i64,
    /// Games lost to a caught panic.
    pub errors: u64,
    /// Weights found NaN/Inf and reset.
    pub nan_resets: u64,
    /// The last reported non-finite weights (at most 100).
    pub last_non_finite: Vec<NonFinite>,
    /// Recent stone differences (black - white), newest last, at most 10,000.
    pub recent_diffs: std::collections::VecDeque<i8>,
    /// Recent error flags for the error-rate window.
    pub recent_errors: std::collections::VecDeque<bool>,
    /// Why training paused itself, if it did.
    pub auto_paused: Option<String>,
}

/// Size of the rolling stone-difference window.
pub const RECENT_WINDOW: usize = 10_000;

impl Stats {
    /// Mean stone difference (black - white) over the recent window.
    #[must_use]
    pub fn recent_stone_diff(&self) -> f64 {
        if self.recent_diffs.is_empty() {
            return 0.0;
        }
        self.recent_diffs.iter().map(|&d| f64::from(d)).sum::<f64>()
            / self.recent_diffs.len() as f64
    }

    /// Black's win rate over the recent window (draws count half).
    #[must_use]
    pub fn recent_black_win_rate(&self) -> f64 {
        if self.recent_diffs.is_empty() {
            return 0.0;
        }
        let s: f64 = self
            .recent_diffs
            .iter()
            .map(|&d| {
                if d > 0 {
                    1.0
                } else if d == 0 {
                    0.5
                } else {
                    0.0
                }
            })
            .sum();
        s / self.recent_diffs.len() as f64
    }

    /// Errors in the current error window.
    #[must_use]
    pub fn window_errors(&self) -> u64 {
        self.recent_errors.iter().filter(|&&e| e).count() as u64
    }
}

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

/// One finished self-play game: what the learner needs.
struct GameRecord {
    /// Per position: coefficient-free features (n per position) and the gradient scale.
    features: Vec<u32>,
    scales: Vec<f32>,
    n_feat: usize,
    black_diff: i32,
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
    grad: Vec<f32>,
    touched: Vec<u32>,
    bias_corr: Vec<(f32, f32)>,
    tt_bytes_per_thread: usize,
    /// One transposition table per pool thread (with `search_depth > 1`), kept across
    /// batches and cleared (in constant time) before each game.
    tts: Vec<Mutex<TranspositionTable>>,
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

/// The move an exploration step or a deeper search picks, or `None`: play
/// the greedy move.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pick_move(
    b: &Board,
    moves: u64,
    w: &Weights,
    rng: &mut Rng,
    eps: f64,
    depth: u32,
    tt: Option<&mut TranspositionTable>,
    stop: &AtomicBool,
) -> Option<(u32, bool)> {
    if eps > 0.0 && rng.next_f64() < eps {
        return Some((rng.pick_bit(moves), true));
    }
    if depth > 1 {
        if let Some(tt) = tt {
            // A pause must not wait for a deep search: it polls `stop`, and the
            // game loop then abandons the game (the batch is discarded).
            let r = search_until(
                b,
                w,
                tt,
                &Limits {
                    depth,
                    time: None,
                    exact_empties: 0,
                },
                Some(stop),
            );
            if let Some(m) = r.best_move {
                return Some((m, false));
            }
        }
    }
    None
}

crate::multiversion! {
    /// Plays self-play game `game` and returns what the learner needs (`None`
    /// when `stop` was raised), compiled for the CPU variant.
    #[allow(dead_code)]
    fn play_game / play_game_on (
        w: &Weights,
        cfg: &TrainConfig,
        game: u64,
        tt: Option<&mut TranspositionTable>,
        stop: &AtomicBool,
    ) -> Option<GameRecord> = play_game_k;
}

#[inline(always)]
fn play_game_k<K: Kernels>(
    w: &Weights,
    cfg: &TrainConfig,
    game: u64,
    mut tt: Option<&mut TranspositionTable>,
    stop: &AtomicBool,
) -> Option<GameRecord> {
    if cfg.inject_panic_every > 0 && game % cfg.inject_panic_every == 0 {
        panic!("injected fault in game {game}");
    }
    let mut rng = Rng::new(cfg.seed, game);
    let eps = cfg.epsilon(game);
    let n_feat = w.set.n_instances() + 1;
    let mut features = Vec::with_capacity(64 * n_feat);
    let mut values = Vec::with_capacity(64);
    let mut signs = Vec::with_capacity(64);
    let mut explored = Vec::with_capacity(64);
    // With `target_depth` 2: each position's own 2-ply value (mover's view).
    let mut targets = Vec::with_capacity(if cfg.target_depth == 2 { 64 } else { 0 });
    let mut b = Board::initial();
    let mut black_to_move = true;
    let mut buf: FeatureBuf = [0; MAX_INSTANCES + 1];
    let set = &*w.set;
    let n_inst = set.n_instances();
    // Both views' raw indices: this position's features from the mover's
    // view, and every child's starting point from the opponent's. Computed
    // once from the board, then updated per move (only the instances of the
    // move's square and of the flipped discs change).
    let (mut mine, mut theirs) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
    set.raw_index_pair(&b, &mut mine, &mut theirs);
    while let Some((moves, passed)) = b.next_turn_k::<K>() {
        black_to_move ^= passed;
        if passed {
            std::mem::swap(&mut mine, &mut theirs);
        }
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let base = (w.phase(&b) * set.phase_len) as u32;
        for (o, &r) in buf[..n_inst].iter_mut().zip(&mine[..n_inst]) {
            *o = set.canonical(r) + base;
        }
        buf[n_inst] = base + set.phase_len as u32 - 1;
        let raw: f32 = buf[..n_feat].iter().map(|&i| w.w[i as usize]).sum();
        features.extend_from_slice(&buf[..n_feat]);
        // The greedy move, computed at most once: the 2-ply target scores it
        // first, and greedy play (no exploration, depth 1) plays it.
        let mut greedy = None;
        if cfg.target_depth == 2 {
            let g = w.greedy_child_k::<K>(&b, moves, &theirs).0;
            greedy = Some(g);
            targets.push(w.two_ply_k::<K>(&b, &mine, g));
        }
        values.push(raw.tanh());
        signs.push(if black_to_move { 1.0f32 } else { -1.0 });
        let tt = tt.as_deref_mut();
        // No closure for the greedy move: closures are not inlined into the
        // variant's code reliably, and this one is the game's hot path.
        let (sq, random) = match pick_move(&b, moves, w, &mut rng, eps, cfg.search_depth, tt, stop)
        {
            Some(chosen) => chosen,
            None => match greedy {
                Some(g) => (g, false),
                None => (w.greedy_child_k::<K>(&b, moves, &theirs).0, false),
            },
        };
        explored.push(random);
        let flips = K::flips(b.player, b.opponent, sq);
        // The new mover's view is the old `theirs` with the square 0 -> 2 and
        // each flipped disc 1 -> 2; the other view the old `mine` with the
        // square 0 -> 1 and each flipped disc 2 -> 1.
        for (i, p) in set.square_terms(sq as usize) {
            theirs[i] += 2 * p;
            mine[i] += p;
        }
        let mut f = flips;
        while f != 0 {
            for (i, p) in set.square_terms(f.trailing_zeros() as usize) {
                theirs[i] += p;
                mine[i] -= p;
            }
            f &= f - 1;
        }
        std::mem::swap(&mut mine, &mut theirs);
        b = b.play_flips(sq, flips);
        black_to_move = !black_to_move;
        debug_assert!({
            let (mut m2, mut t2) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
            set.raw_index_pair(&b, &mut m2, &mut t2);
            m2 == mine && t2 == theirs
        });
    }
    let side_diff = b.final_score();
    let black_diff = if black_to_move { side_diff } else { -side_diff };
    let scales = if cfg.target_depth == 2 {
        search_target_scales(&values, &targets)
    } else {
        td_lambda_scales(cfg, &values, &signs, &explored, reward(black_diff))
    };
    Some(GameRecord {
        features,
        scales,
        n_feat,
        black_diff,
    })
}

/// Gradient scales towards each position's own 2-ply value: `(S_t - V_t)
/// (1 - V_t^2)`, both in the mover's view (the tables are shared between
/// colours, so the mover's view is the weights' own). The target does not
/// depend on the move played next, so positions where an exploration move
/// followed learn too, and a position's siblings' replies shape its target
/// where TD only sees the one line played.
fn search_target_scales(values: &[f32], targets: &[f32]) -> Vec<f32> {
    values
        .iter()
        .zip(targets)
        .map(|(&v, &s)| (s - v) * (1.0 - v * v))
        .collect()
}

/// The TD(lambda) errors folded backwards, `c_t = delta_t + lambda * c_{t+1}`
/// with `delta_t = V_{t+1} - V_t` (`values` and the result `r` in black's
/// view): the accumulated `sum_t delta_t * e_t` of accumulating traces. With
/// `cut_at_exploration`, a position where an exploration move was played gets
/// `None` (no update: the move says nothing about the greedy policy's value)
/// and the trace is cut there. Training ([`td_lambda_scales`]) and
/// [`crate::replay::replay_game`] both fold with this.
#[must_use]
pub fn td_lambda_folds(
    lambda: f32,
    cut_at_exploration: bool,
    values: &[f32],
    explored: &[bool],
    r: f32,
) -> Vec<Option<f32>> {
    let t_len = values.len();
    let mut folds = vec![None; t_len];
    let mut c = 0.0f32;
    for t in (0..t_len).rev() {
        if explored[t] && cut_at_exploration {
            c = 0.0;
            continue;
        }
        let v_next = if t + 1 < t_len { values[t + 1] } else { r };
        c = (v_next - values[t]) + lambda * c;
        folds[t] = Some(c);
    }
    folds
}

/// Gradient scales of TD(lambda) along the game played ([`td_lambda_folds`]);
/// `r` is the result in black's view.
fn td_lambda_scales(
    cfg: &TrainConfig,
    values: &[f32],
    signs: &[f32],
    explored: &[bool],
    r: f32,
) -> Vec<f32> {
    let black: Vec<f32> = values.iter().zip(signs).map(|(v, s)| s * v).collect();
    let cut_at_exploration = cfg.optimizer != Optimizer::Adam;
    td_lambda_folds(cfg.lambda, cut_at_exploration, &black, explored, r)
        .into_iter()
        .enumerate()
        // dV_black/dw = sign * (1 - tanh^2) on each active weight.
        .map(|(t, c)| c.map_or(0.0, |c| c * signs[t] * (1.0 - values[t] * values[t])))
        .collect()
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
            grad: vec![0.0; n],
            touched: Vec::new(),
            bias_corr: Vec::new(),
            tt_bytes_per_thread: 0,
            tts: Vec::new(),
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
            let start = self.stats.games;
            let b = self.config.batch_games as u64;
            let end = ((start / b + 1) * b).min(target_games);
            if !self.run_batch(start, end, stop) {
                return StopReason::Stopped;
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
                        play_game_on(variant, w, cfg, g, guard.as_deref_mut(), stop)
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
        self.learning_rate_at(self.stats.games) / n_active
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
