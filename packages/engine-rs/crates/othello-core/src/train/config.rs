//! The training configuration and its validation.

use crate::error::EngineError;
use crate::pattern::PatternSet;

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
