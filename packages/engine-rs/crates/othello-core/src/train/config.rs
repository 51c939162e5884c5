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

/// How the weights are learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Learner {
    /// Self-play temporal-difference learning (the default; `optimizer` and
    /// `target_depth` choose the rule).
    Td,
    /// Coevolutionary TD learning (Szubert, Jaśkowski, Krawiec): a population
    /// of TD learners, each improved by `ctdl_td_games` self-play games per
    /// generation, then ranked by a round-robin tournament; the better half
    /// replaces the worse (`train/ctdl.rs`).
    Ctdl,
    /// A (mu + lambda) evolution strategy on the weights: Gaussian mutation,
    /// fitness = League score against the WPC heuristic (`train/es.rs`).
    Es,
}

impl Learner {
    /// The name used in configurations and checkpoints (`td`, `ctdl`, `es`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Learner::Td => "td",
            Learner::Ctdl => "ctdl",
            Learner::Es => "es",
        }
    }
}

impl std::str::FromStr for Learner {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Learner, EngineError> {
        match s {
            "td" => Ok(Learner::Td),
            "ctdl" => Ok(Learner::Ctdl),
            "es" => Ok(Learner::Es),
            other => Err(EngineError::config(
                "learner",
                "'td', 'ctdl' or 'es'",
                other,
            )),
        }
    }
}

impl std::fmt::Display for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the `es` learner searches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EsStrategy {
    /// (mu + lambda), or (mu/mu + lambda) with `es_recombine`: isotropic
    /// Gaussian mutation of `es_sigma` (decaying with `es_sigma_decay`),
    /// parents re-evaluated every generation (the default).
    Plus,
    /// Separable CMA-ES (Ros and Hansen): lambda candidates from `N(mean,
    /// sigma² diag(c))`, the best `es_parents` recombined with log weights;
    /// step size and per-weight variances adapt (`train/cma.rs`).
    SepCma,
}

impl EsStrategy {
    /// The name used in configurations and checkpoints (`plus`, `sep-cma`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            EsStrategy::Plus => "plus",
            EsStrategy::SepCma => "sep-cma",
        }
    }
}

impl std::str::FromStr for EsStrategy {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<EsStrategy, EngineError> {
        match s {
            "plus" => Ok(EsStrategy::Plus),
            "sep-cma" => Ok(EsStrategy::SepCma),
            other => Err(EngineError::config(
                "es_strategy",
                "'plus' or 'sep-cma'",
                other,
            )),
        }
    }
}

impl std::fmt::Display for EsStrategy {
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
    /// The fraction of TD training games (0 to 1; `td`, and `ctdl`'s TD
    /// games) in which one side is the League's WPC heuristic (1-ply, with
    /// the League's 10% random moves) instead of the learner: black in even
    /// games, white in odd ones. Every position of those games is learnt
    /// from, as in self-play. Self-play alone stops at 0.78-0.85 against the
    /// heuristic (docs/othello-engine.md).
    pub td_heuristic_games: f64,
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
    /// How the weights are learnt: `td` (self-play TD, the default), `ctdl`
    /// (coevolutionary TD) or `es` (evolution strategy); see [`Learner`].
    pub learner: Learner,
    /// `es`: parents kept each generation (mu).
    pub es_parents: usize,
    /// `es`: offspring per generation (lambda), each a mutated copy of a parent.
    pub es_offspring: usize,
    /// `es`: standard deviation of the Gaussian mutation of every weight.
    pub es_sigma: f32,
    /// `es`: intermediate recombination, (mu/mu + lambda): every offspring
    /// mutates the mean of the parents, and the trainer's weights are the
    /// mean of the selected parents (averaging cancels noise in the
    /// selection); false: offspring `k` mutates parent `k mod mu`, and the
    /// weights are the best parent.
    pub es_recombine: bool,
    /// `es`: mutation decay by generations: generation `g` mutates with
    /// `es_sigma * d / (d + g)` for `d = es_sigma_decay` (0 = constant).
    pub es_sigma_decay: u64,
    /// `es`: pairs of League games (colours swapped) against the WPC heuristic
    /// per fitness evaluation; every candidate of a generation plays the same
    /// random streams (common random numbers), parents are re-evaluated.
    pub es_fitness_pairs: u64,
    /// `es`: the fitness sample grows as the search narrows: with a step
    /// `s` times the reference one, `es_fitness_pairs / s²` pairs, at most
    /// this many (0 = always `es_fitness_pairs`). The step is
    /// `es_sigma_at(g)` for `plus`, sigma times the root mean variance for
    /// `sep-cma`; the reference is `es_sigma`, or see `es_fitness_step`.
    pub es_fitness_pairs_max: u64,
    /// `es`: with `es_fitness_pairs_max`, key the sample on the step
    /// *relative to the weights* (the step over the root mean square of the
    /// mean or best parent), with this relative step as the reference (0 =
    /// key on the step itself, against `es_sigma`). Differences between
    /// candidates shrink with the relative step while the noise of their
    /// games does not, so keeping selection as informative needs samples
    /// growing as its inverse square; the step alone grows with the weights'
    /// scale, which a 1-ply player cannot see, and then never grows them.
    pub es_fitness_step: f64,
    /// `es`: pairs of games (colours swapped, 10% random moves on both
    /// sides) each candidate also plays against the uniformly random player
    /// per fitness evaluation, counted in its fitness like the heuristic's
    /// games (0 = the heuristic only), so that the player cannot win by
    /// learning only the heuristic's habits.
    pub es_random_pairs: u64,
    /// `es`: keep the best network met so far (the *elite*) as the trainer's
    /// weights (0 = off: the weights are the search point). Every
    /// `es_elite_every` generations the search point (`sep-cma`'s mean,
    /// `plus`'s best parent or parents' mean) and the elite both play this
    /// many fresh pairs of League games against the WPC heuristic, on the same
    /// streams; the search point takes the elite's place when it scores more
    /// points. The search itself goes on from its own point: the elite only
    /// keeps its wander (a search mean moves around its optimum from one
    /// generation to the next) out of what the run hands over.
    pub es_elite_pairs: u64,
    /// `es`: generations between elite comparisons (see `es_elite_pairs`).
    pub es_elite_every: u64,
    /// `es`: weight of the disc margin in the fitness: a candidate's fitness
    /// is its League points per game plus this times its mean disc
    /// difference / 64 (0 = points only, the League's own measure; the
    /// margin is a less noisy signal of the same skill).
    pub es_fitness_margin: f64,
    /// `es` with `sep-cma`: the mean's learning rate c_m: the mean moves this
    /// fraction of the way to the recombined candidates (1 = standard
    /// CMA-ES; below 1 averages the selection noise of a noisy fitness).
    pub es_mean_rate: f64,
    /// `es` with `sep-cma`: a cap on the root mean square of the mean (0 =
    /// none). A 1-ply player only uses the order of its children's values,
    /// which a positive scale does not change; left alone, the mean's scale
    /// grows by random walk and the step relative to the weights shrinks
    /// with it. With a cap, an update that takes the mean's rms above it is
    /// rescaled to it, and once there the candidates are sampled across the
    /// mean only ([`super::cma::SepCma::tangent`]), so `sigma` stays a step
    /// relative to the weights and the step-size rule is not fooled by the
    /// scale, which the fitness cannot see.
    pub es_normalize: f64,
    /// `es` with `sep-cma` and more than one phase: the phases share one set
    /// of tables until this many games (the search runs over one phase's
    /// entries, copied into every phase), then each phase's tables are
    /// searched on their own, starting from the shared ones with the step
    /// size and per-weight variances carried over (0 = every phase on its own
    /// from the start). The shared search finds its optimum in a space
    /// `n_phases` times smaller; the split then refines it per phase.
    pub es_split_games: u64,
    /// `es`: independent searches run side by side, a generation each in
    /// turn, until `es_portfolio_games` (1 = one search). Search `j` draws
    /// from the streams of seed `seed + j * 2^32` (search 0 is the run's own
    /// seed), so each is exactly the search a run of that seed makes. When
    /// the race ends, every search's network plays the same
    /// `es_portfolio_pairs` pairs of League games against the WPC heuristic
    /// and the best by points goes on alone: seeds settle in optima of
    /// different height, and the race keeps one run's lower optimum from
    /// being the run's result.
    pub es_portfolio: u64,
    /// `es` with `es_portfolio` above 1: the run's games at which the race
    /// ends (at the end of the first whole round of generations from there).
    pub es_portfolio_games: u64,
    /// `es` with `es_portfolio` above 1: pairs of League games (colours
    /// swapped, 10% random moves on both sides) each search's network plays
    /// against the heuristic when the race ends, all on the same streams.
    pub es_portfolio_pairs: u64,
    /// `es`: the search, `plus` (isotropic mutation, the default) or
    /// `sep-cma` (separable CMA-ES); see [`EsStrategy`].
    pub es_strategy: EsStrategy,
    /// `ctdl`: individuals in the population (even: the better half survives).
    pub ctdl_population: usize,
    /// `ctdl`: self-play TD games each individual plays per generation.
    pub ctdl_td_games: u64,
    /// `ctdl`: pairs of games (colours swapped, 10% random moves) each two
    /// individuals play in the round-robin tournament.
    pub ctdl_match_pairs: u64,
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
            td_heuristic_games: 0.0,
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
            learner: Learner::Td,
            es_parents: 2,
            es_offspring: 8,
            es_sigma: 0.1,
            es_sigma_decay: 0,
            es_recombine: false,
            es_fitness_pairs: 100,
            es_fitness_pairs_max: 0,
            es_fitness_step: 0.0,
            es_fitness_margin: 0.0,
            es_random_pairs: 0,
            es_elite_pairs: 0,
            es_elite_every: 10,
            es_mean_rate: 1.0,
            es_normalize: 0.0,
            es_split_games: 0,
            es_portfolio: 1,
            es_portfolio_games: 0,
            es_portfolio_pairs: 3000,
            es_strategy: EsStrategy::Plus,
            ctdl_population: 8,
            ctdl_td_games: 512,
            ctdl_match_pairs: 8,
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
        check(
            "td_heuristic_games",
            self.td_heuristic_games,
            0.0,
            1.0,
            "0.0 (self-play only) to 1.0 (every game against the heuristic)",
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
        check("es_parents", self.es_parents, 1, 64, "1 to 64")?;
        check("es_offspring", self.es_offspring, 1, 256, "1 to 256")?;
        check("es_sigma", self.es_sigma, 1e-6, 10.0, "1e-6 to 10.0")?;
        check(
            "es_sigma_decay",
            self.es_sigma_decay,
            0,
            1 << 40,
            "0 (constant) to 1099511627776",
        )?;
        check(
            "es_fitness_pairs",
            self.es_fitness_pairs,
            1,
            100_000,
            "1 to 100000",
        )?;
        if self.es_fitness_pairs_max != 0 {
            check(
                "es_fitness_pairs_max",
                self.es_fitness_pairs_max,
                self.es_fitness_pairs,
                100_000,
                &format!(
                    "0 (a fixed sample) or es_fitness_pairs ({}) to 100000",
                    self.es_fitness_pairs
                ),
            )?;
        }
        if self.es_fitness_step != 0.0 {
            check(
                "es_fitness_step",
                self.es_fitness_step,
                1e-4,
                10.0,
                "0.0 (key on the step itself) or 0.0001 to 10.0",
            )?;
        }
        check(
            "es_fitness_margin",
            self.es_fitness_margin,
            0.0,
            100.0,
            "0.0 (points only) to 100.0",
        )?;
        check(
            "es_random_pairs",
            self.es_random_pairs,
            0,
            100_000,
            "0 (the heuristic only) to 100000",
        )?;
        check(
            "es_elite_pairs",
            self.es_elite_pairs,
            0,
            100_000,
            "0 (off) to 100000",
        )?;
        check(
            "es_elite_every",
            self.es_elite_every,
            1,
            1_000_000,
            "1 to 1000000",
        )?;
        check("es_mean_rate", self.es_mean_rate, 0.01, 1.0, "0.01 to 1.0")?;
        if self.es_normalize != 0.0 {
            check(
                "es_normalize",
                self.es_normalize,
                1e-3,
                1e3,
                "0.0 (off) or 0.001 to 1000.0",
            )?;
        }
        check(
            "es_split_games",
            self.es_split_games,
            0,
            1 << 40,
            "0 (off) to 1099511627776",
        )?;
        if self.es_split_games != 0
            && (self.es_strategy != EsStrategy::SepCma || self.n_phases == 1)
        {
            return Err(EngineError::config(
                "es_split_games",
                "0 unless es_strategy is 'sep-cma' and n_phases is above 1 (it splits shared phase tables)",
                self.es_split_games,
            ));
        }
        check(
            "es_portfolio",
            self.es_portfolio,
            1,
            16,
            "1 (one search) to 16",
        )?;
        if self.es_portfolio == 1 {
            check(
                "es_portfolio_games",
                self.es_portfolio_games,
                0,
                0,
                "0 unless es_portfolio is above 1 (the games at which its race ends)",
            )?;
        } else {
            check(
                "es_portfolio_games",
                self.es_portfolio_games,
                1,
                1 << 40,
                "1 to 1099511627776 when es_portfolio is above 1 (the games at which its race ends)",
            )?;
        }
        check(
            "es_portfolio_pairs",
            self.es_portfolio_pairs,
            1,
            100_000,
            "1 to 100000",
        )?;
        if self.es_strategy == EsStrategy::SepCma && self.es_parents > self.es_offspring {
            return Err(EngineError::config(
                "es_parents",
                &format!(
                    "1 to es_offspring ({}) when es_strategy is 'sep-cma' (the best mu of lambda are recombined)",
                    self.es_offspring
                ),
                self.es_parents,
            ));
        }
        check("ctdl_population", self.ctdl_population, 2, 64, "2 to 64")?;
        if self.ctdl_population % 2 != 0 {
            return Err(EngineError::config(
                "ctdl_population",
                "an even number from 2 to 64 (the better half replaces the worse)",
                self.ctdl_population,
            ));
        }
        check(
            "ctdl_td_games",
            self.ctdl_td_games,
            1,
            10_000_000,
            "1 to 10000000",
        )?;
        check(
            "ctdl_match_pairs",
            self.ctdl_match_pairs,
            1,
            10_000,
            "1 to 10000",
        )?;
        if self.learner == Learner::Ctdl
            && (self.optimizer != Optimizer::Td || self.lr_decay_visits != 0)
        {
            // Per-weight optimizer state (Adam, TC, visit counts) is not kept per individual.
            return Err(EngineError::config(
                "optimizer",
                "'td' with lr_decay_visits 0 when learner is 'ctdl'",
                format!(
                    "{} (lr_decay_visits {})",
                    self.optimizer, self.lr_decay_visits
                ),
            ));
        }
        PatternSet::named(&self.pattern_set)?;
        Ok(())
    }

    /// The `es` mutation's standard deviation in generation `g`.
    #[must_use]
    pub fn es_sigma_at(&self, g: u64) -> f64 {
        let s = f64::from(self.es_sigma);
        if self.es_sigma_decay == 0 {
            return s;
        }
        let d = self.es_sigma_decay as f64;
        s * d / (d + g as f64)
    }

    /// The `es` fitness pairs for a search step `step` around weights of
    /// root mean square `rms` (see `es_fitness_pairs_max` and
    /// `es_fitness_step`).
    #[must_use]
    pub fn es_pairs_for(&self, step: f64, rms: f64) -> u64 {
        if self.es_fitness_step > 0.0 {
            self.es_pairs_at(step / (rms * self.es_fitness_step))
        } else {
            self.es_pairs_at(step / f64::from(self.es_sigma))
        }
    }

    /// The `es` fitness pairs when the search step is `ratio` times the
    /// reference one (see `es_fitness_pairs_max`).
    #[must_use]
    pub fn es_pairs_at(&self, ratio: f64) -> u64 {
        if self.es_fitness_pairs_max == 0 || ratio.is_nan() || ratio <= 0.0 {
            return self.es_fitness_pairs;
        }
        let grown = (self.es_fitness_pairs as f64 / (ratio * ratio)).ceil();
        (grown as u64).clamp(self.es_fitness_pairs, self.es_fitness_pairs_max)
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
