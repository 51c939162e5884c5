//! What the evolving learners (`ctdl`, `es`) share: the population they keep
//! between generations (checkpointed as the `population` node) and the games
//! they play to rank it, on the trainer's thread pool.
//!
//! Every game has its own random stream, given by the caller, and the results
//! come back in job order, so a generation's outcome depends on the seed and
//! the configuration only, never on the thread count.

use std::sync::Arc;

use rayon::prelude::*;

use super::cma::SepCma;
use crate::eval::Weights;
use crate::league::{play, Player};
use crate::pattern::PatternSet;
use crate::rng::Rng;

/// The League's rate of random moves, for both sides of every ranking game.
pub const RANKING_RANDOM_RATE: f64 = 0.1;

/// The individuals of an evolving learner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Population {
    /// Each individual's weights, best first after every generation.
    pub individuals: Vec<Vec<f32>>,
    /// Generations completed.
    pub generation: u64,
    /// The ranking scores of the last generation, best first (not checkpointed).
    pub last_fitness: Vec<f64>,
    /// The search distribution of `es_strategy = "sep-cma"` (its mean is the
    /// trainer's weights; `individuals` then holds only that).
    pub cma: Option<SepCma>,
    /// The best network met so far under `es_elite_pairs` (then the
    /// trainer's weights).
    pub elite: Option<Elite>,
    /// Which search of an `es_portfolio` this is (0 without one, or once
    /// its race has ended: then the winner's).
    pub search: u64,
    /// The other searches of an `es_portfolio` race, in the order of their
    /// next turns (empty without one, or once the race has ended).
    pub parked: Vec<ParkedSearch>,
    /// When an `es_portfolio` race has ended: each search's points per game
    /// in its final comparison, by search (not checkpointed).
    pub last_race: Vec<f64>,
}

/// A search of an `es_portfolio` race waiting for its turn.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParkedSearch {
    /// The search's network (what the trainer's weights are on its turn).
    pub weights: Vec<f32>,
    /// The search's own state (its `search` is its index; its `parked` is
    /// empty).
    pub population: Population,
}

/// The network `es` hands over with `es_elite_pairs`: the best search point
/// met so far, by paired comparisons on fresh games.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Elite {
    /// Its weights (all phases).
    pub weights: Vec<f32>,
    /// Its points in the last comparison (wins plus half the draws, out of
    /// `2 * es_elite_pairs` games).
    pub points: f64,
}

impl Population {
    /// Makes the population hold `n` individuals: a new one starts as a copy
    /// of `seed_weights` (the trainer's weights), extra ones are dropped.
    pub fn resize(&mut self, n: usize, seed_weights: &[f32]) {
        self.individuals.truncate(n);
        while self.individuals.len() < n {
            self.individuals.push(seed_weights.to_vec());
        }
    }
}

/// One side of a ranking game.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Candidate `i`, greedy at 1 ply.
    Candidate(usize),
    /// The League's WPC heuristic.
    Heuristic,
    /// Uniformly random moves.
    Random,
}

/// A ranking game: who plays black and white, and its random stream.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// Black.
    pub black: Side,
    /// White.
    pub white: Side,
    /// The game's random stream (with the caller's seed).
    pub stream: u64,
}

/// Weights for each candidate vector (moved in; [`into_vectors`] gives them back).
pub fn as_weights(set: &Arc<PatternSet>, n_phases: usize, vectors: Vec<Vec<f32>>) -> Vec<Weights> {
    vectors
        .into_iter()
        .map(|w| Weights {
            set: Arc::clone(set),
            n_phases,
            w,
        })
        .collect()
}

/// The vectors of [`as_weights`] back.
#[must_use]
pub fn into_vectors(weights: Vec<Weights>) -> Vec<Vec<f32>> {
    weights.into_iter().map(|w| w.w).collect()
}

/// Plays every job on `pool` (1-ply greedy players, 10% random moves on both
/// sides, as in the League); returns each game's disc difference for black,
/// in job order.
#[must_use]
pub fn play_jobs(pool: &rayon::ThreadPool, cands: &[Weights], jobs: &[Job], seed: u64) -> Vec<i32> {
    let player = |s: Side| match s {
        Side::Candidate(i) => Player::greedy(&cands[i]),
        Side::Heuristic => Player::Heuristic,
        Side::Random => Player::Random,
    };
    pool.install(|| {
        jobs.par_iter()
            .map(|j| {
                let mut rng = Rng::new(seed, j.stream);
                play(
                    &player(j.black),
                    &player(j.white),
                    RANKING_RANDOM_RATE,
                    &mut rng,
                )
            })
            .collect()
    })
}

/// A game's score for black: 1 a win, 0.5 a draw, 0 a loss.
#[must_use]
pub fn black_score(diff: i32) -> f64 {
    match diff.signum() {
        1 => 1.0,
        0 => 0.5,
        _ => 0.0,
    }
}

/// Indices ordered by `fitness`, best first; ties keep the lower index first.
#[must_use]
pub fn ranking(fitness: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..fitness.len()).collect();
    order.sort_by(|&a, &b| fitness[b].total_cmp(&fitness[a]).then(a.cmp(&b)));
    order
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.next_f64();
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// For every weight of one phase: whether the evaluation ever reads it (a
/// table entry that is its symmetry class's representative, or the bias).
#[must_use]
pub fn live_entries(set: &PatternSet) -> Vec<bool> {
    (0..set.phase_len)
        .map(|i| i + 1 == set.phase_len || set.canonical(i as u32) as usize == i)
        .collect()
}

/// The indices (all phases) of the weights `es_strategy = "sep-cma"`
/// searches, in the order of its mean's coordinates: every phase's live
/// entries ([`live_entries`]).
#[must_use]
pub fn searched_entries(weights: &Weights) -> Vec<usize> {
    let live = live_entries(&weights.set);
    let plen = weights.set.phase_len;
    (0..weights.w.len()).filter(|i| live[i % plen]).collect()
}

/// Copies the first phase's `phase_len` weights over every other phase's
/// (the phases' tables shared, see `es_split_games`).
pub fn copy_first_phase(w: &mut [f32], phase_len: usize) {
    let (first, rest) = w.split_at_mut(phase_len);
    for phase in rest.chunks_exact_mut(phase_len) {
        phase.copy_from_slice(first);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::checkpoint::{decode, encode};
    use crate::league::league_match;
    use crate::state::{config_update, trainer_from_checkpoint, trainer_to_checkpoint};
    use crate::train::{EsStrategy, Learner, Optimizer, TrainConfig, Trainer};

    fn cfg(learner: Learner, threads: usize) -> TrainConfig {
        TrainConfig {
            learner,
            threads,
            seed: 3,
            pattern_set: "straight2".into(),
            n_phases: 1,
            batch_games: 8,
            es_parents: 2,
            es_offspring: 4,
            es_fitness_pairs: 6,
            ctdl_population: 4,
            ctdl_td_games: 16,
            ctdl_match_pairs: 2,
            ..TrainConfig::default()
        }
    }

    /// The `es` learner with separable CMA-ES and a growing fitness sample.
    fn sep_cma(threads: usize) -> TrainConfig {
        TrainConfig {
            es_strategy: EsStrategy::SepCma,
            es_parents: 3,
            es_offspring: 6,
            es_fitness_pairs_max: 12,
            es_fitness_margin: 0.5,
            es_mean_rate: 0.5,
            es_random_pairs: 2,
            ..cfg(Learner::Es, threads)
        }
    }

    /// [`sep_cma`] with the mean's rms capped (below its first update's).
    fn normalized(threads: usize) -> TrainConfig {
        TrainConfig {
            es_normalize: 0.01,
            ..sep_cma(threads)
        }
    }

    /// [`sep_cma`] keeping an elite, compared every second generation.
    fn with_elite(threads: usize) -> TrainConfig {
        TrainConfig {
            es_elite_pairs: 5,
            es_elite_every: 2,
            ..sep_cma(threads)
        }
    }

    /// [`sep_cma`] over two phases whose tables are shared for the games of
    /// the first two generations (as many as the one-phase search plays).
    fn split(threads: usize) -> TrainConfig {
        let games = evolved(sep_cma(1), 2).stats.games;
        TrainConfig {
            n_phases: 2,
            es_split_games: games,
            ..sep_cma(threads)
        }
    }

    /// [`sep_cma`] with a race of two searches until `games` (each search
    /// has had `generations` generations after a run's first `train` calls;
    /// with an `es_portfolio`, [`evolved`] counts whole rounds).
    fn portfolio(threads: usize, games: u64) -> TrainConfig {
        TrainConfig {
            es_portfolio: 2,
            es_portfolio_games: games,
            es_portfolio_pairs: 40,
            ..sep_cma(threads)
        }
    }

    /// `p` without what checkpoints leave out (the last generation's
    /// ranking scores and the last race's), its parked searches' included.
    fn without_fitness(p: &Population) -> Population {
        Population {
            last_fitness: Vec::new(),
            last_race: Vec::new(),
            parked: p
                .parked
                .iter()
                .map(|s| ParkedSearch {
                    population: without_fitness(&s.population),
                    ..s.clone()
                })
                .collect(),
            ..p.clone()
        }
    }

    /// The games of [`portfolio`]'s race after `rounds` whole rounds.
    fn race_games(rounds: u64) -> u64 {
        evolved(portfolio(1, 1 << 40), rounds).stats.games
    }

    /// A trainer after `generations` generations (one `train` call per generation).
    fn evolved(config: TrainConfig, generations: u64) -> Trainer {
        let mut t = Trainer::new(config).unwrap();
        let stop = AtomicBool::new(false);
        while t.population.generation < generations {
            t.train(t.stats.games + 1, &stop, |_| {});
        }
        t
    }

    #[test]
    fn each_learner_is_reproducible_for_a_seed_on_any_thread_count() {
        for learner in [Learner::Es, Learner::Ctdl] {
            let one = evolved(cfg(learner, 1), 3);
            let two = evolved(cfg(learner, 2), 3);
            assert_eq!(one.weights.w, two.weights.w, "{learner}");
            assert_eq!(one.population, two.population, "{learner}");
            assert_eq!(one.stats, two.stats, "{learner}");
            assert!(
                one.weights.w.iter().any(|&v| v != 0.0),
                "{learner}: weights must move"
            );
            let other = evolved(
                TrainConfig {
                    seed: 4,
                    ..cfg(learner, 1)
                },
                3,
            );
            assert_ne!(one.weights.w, other.weights.w, "{learner}");
        }
        let (one, two) = (evolved(sep_cma(1), 3), evolved(sep_cma(2), 3));
        assert_eq!(one.weights.w, two.weights.w);
        assert_eq!(one.population, two.population);
        assert_eq!(one.stats, two.stats);
        let cma = one
            .population
            .cma
            .as_ref()
            .expect("sep-cma keeps its distribution");
        assert_eq!(cma.updates, 3);
        // The weights are the distribution's mean; dead entries stay zero.
        let moved = one.weights.w.iter().filter(|&&v| v != 0.0).count();
        assert_eq!(moved, cma.mean.len());
        assert_ne!(
            one.weights.w,
            evolved(
                TrainConfig {
                    seed: 4,
                    ..sep_cma(1)
                },
                3
            )
            .weights
            .w
        );
        // es_normalize: the same determinism, the mean held at the cap, and
        // the same first update as without it, rescaled (the cap changes
        // only the scale of the first step and the sampling after it).
        let (one, two) = (evolved(normalized(1), 3), evolved(normalized(2), 3));
        assert_eq!(one.weights.w, two.weights.w);
        assert_eq!(one.population, two.population);
        let cma = one.population.cma.as_ref().unwrap();
        assert!((cma.mean_rms() - 0.01).abs() < 1e-12, "{}", cma.mean_rms());
        let (plain, unit) = (evolved(sep_cma(1), 1), evolved(normalized(1), 1));
        let (p, u) = (plain.population.cma.unwrap(), unit.population.cma.unwrap());
        let s = p.mean_rms() / 0.01;
        assert!(s > 1.0, "{s}");
        for (a, b) in p.mean.iter().zip(&u.mean) {
            assert!((a / s - b).abs() < 1e-12);
        }
        assert_eq!((p.sigma, &p.diag), (u.sigma, &u.diag));
        assert_ne!(
            evolved(sep_cma(1), 2).weights.w,
            evolved(normalized(1), 2).weights.w
        );
        // With recombination the weights are the mean of the selected parents.
        let rec = |threads| TrainConfig {
            es_recombine: true,
            ..cfg(Learner::Es, threads)
        };
        let (one, two) = (evolved(rec(1), 3), evolved(rec(2), 3));
        assert_eq!(one.weights.w, two.weights.w);
        let p = &one.population.individuals;
        let mean: Vec<f32> = p[0].iter().zip(&p[1]).map(|(a, b)| (a + b) / 2.0).collect();
        assert_eq!(one.weights.w, mean);
        assert_ne!(p[0], p[1]);
    }

    #[test]
    fn shared_phases_search_like_one_phase_until_the_split_then_each_its_own() {
        let one_phase = evolved(sep_cma(1), 2);
        let shared = evolved(split(1), 2);
        let plen = shared.weights.set.phase_len;
        let (first, second) = shared.weights.w.split_at(plen);
        assert_eq!(
            first,
            &one_phase.weights.w[..],
            "the same search as one phase"
        );
        assert_eq!(second, first, "both phases share the tables");
        assert_eq!(shared.population.cma, one_phase.population.cma);
        assert_eq!(shared.stats, one_phase.stats);
        // After the split: one coordinate per phase's entry, the phases apart,
        // on any thread count.
        let (one, two) = (evolved(split(1), 4), evolved(split(2), 4));
        assert_eq!(one.weights.w, two.weights.w);
        assert_eq!(one.population, two.population);
        let cma = one.population.cma.as_ref().unwrap();
        assert_eq!(
            cma.mean.len(),
            2 * one_phase.population.cma.as_ref().unwrap().mean.len()
        );
        assert_eq!(cma.updates, 2, "a new search from the split on");
        let (first, second) = one.weights.w.split_at(plen);
        assert_ne!(first, second, "each phase searched on its own");
        let joint = evolved(
            TrainConfig {
                es_split_games: 0,
                ..split(1)
            },
            4,
        );
        assert_ne!(joint.weights.w, one.weights.w);
    }

    #[test]
    fn a_portfolio_races_the_searches_of_their_own_seeds_then_keeps_the_best() {
        let seeded = |seed: u64| evolved(TrainConfig { seed, ..sep_cma(1) }, 2);
        let (zero, one) = (seeded(3), seeded(3 + (1 << 32)));
        // In the race: search 0 is the run of seed 3, search 1 that of seed
        // 3 + 2^32, generation for generation, on any thread count.
        let racing = evolved(portfolio(1, 1 << 40), 2);
        let two_threads = evolved(portfolio(2, 1 << 40), 2);
        assert_eq!(racing.weights.w, two_threads.weights.w);
        assert_eq!(racing.population, two_threads.population);
        assert_eq!(racing.stats, two_threads.stats);
        assert_eq!(racing.population.search, 0);
        assert_eq!(racing.weights.w, zero.weights.w);
        assert_eq!(racing.population.cma, zero.population.cma);
        let parked = &racing.population.parked;
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].population.search, 1);
        assert_eq!(parked[0].weights, one.weights.w);
        assert_eq!(parked[0].population.cma, one.population.cma);
        assert_ne!(zero.weights.w, one.weights.w);
        assert_eq!(racing.stats.games, zero.stats.games + one.stats.games);
        // The race ends at the first round from its games: each network
        // plays 80 games, and the better goes on alone from its own point.
        let t = evolved(portfolio(1, racing.stats.games), 3);
        assert!(t.population.parked.is_empty());
        let points = &t.population.last_race;
        assert_eq!(points.len(), 2);
        let best = u64::from(points[1] > points[0]);
        assert_eq!(t.population.search, best);
        let alone = evolved(
            TrainConfig {
                seed: 3 + (best << 32),
                ..sep_cma(1)
            },
            3,
        );
        assert_eq!(t.weights.w, alone.weights.w);
        assert_eq!(t.population.cma, alone.population.cma);
        let third = alone.stats.games - [&zero, &one][best as usize].stats.games;
        assert_eq!(t.stats.games, racing.stats.games + 2 * 80 + third);
    }

    #[test]
    fn the_race_keeps_the_network_that_wins_more_games() {
        let good = evolved(sep_cma(1), 4).weights.w;
        let bad: Vec<f32> = good.iter().map(|v| -v).collect();
        for (mine, other, winner) in [(&good, &bad, 0), (&bad, &good, 1)] {
            let mut race = evolved(portfolio(1, 1 << 40), 1);
            race.weights.w.clone_from(mine);
            race.population.parked[0].weights.clone_from(other);
            race.end_portfolio_race();
            assert_eq!(race.population.search, winner);
            assert_eq!(&race.weights.w, &good);
            let p = &race.population.last_race;
            assert!(p[winner as usize] > p[1 - winner as usize] + 0.1, "{p:?}");
            assert!(race.population.parked.is_empty());
        }
        // Without a race there is nothing to end.
        let mut t = evolved(sep_cma(1), 1);
        let before = (t.weights.w.clone(), t.population.clone(), t.stats.clone());
        t.end_portfolio_race();
        assert_eq!((t.weights.w, t.population, t.stats), before);
    }

    #[test]
    fn a_generation_plays_and_counts_the_games_its_settings_say() {
        let es = evolved(cfg(Learner::Es, 1), 1);
        // (mu + lambda) candidates x 2 games per pair x 6 pairs.
        assert_eq!(es.stats.games, 6 * 2 * 6);
        assert_eq!(es.population.individuals.len(), 2);
        assert_eq!(es.population.individuals[0], es.weights.w);
        let f = &es.population.last_fitness;
        assert!(f.windows(2).all(|p| p[0] >= p[1]), "{f:?}");
        // sep-cma: lambda candidates x 2 games x (6 heuristic + 2 random pairs).
        let cma = evolved(sep_cma(1), 1);
        assert_eq!(cma.stats.games, 6 * 2 * (6 + 2));
        assert_eq!(cma.population.last_fitness.len(), 6);
        let ctdl = evolved(cfg(Learner::Ctdl, 1), 1);
        // 4 x 16 TD games, then 6 pairings x 2 pairs x 2 games.
        assert_eq!(ctdl.stats.games, 4 * 16 + 6 * 4);
        // The better half is copied over the worse one.
        let pop = &ctdl.population.individuals;
        assert_eq!(
            (pop[0].clone(), pop[1].clone()),
            (pop[2].clone(), pop[3].clone())
        );
        assert_ne!(pop[0], pop[1]);
    }

    #[test]
    fn resuming_from_a_checkpoint_equals_never_stopping() {
        for config in [
            cfg(Learner::Es, 2),
            cfg(Learner::Ctdl, 2),
            sep_cma(2),
            normalized(2),
            TrainConfig {
                es_fitness_step: 0.5,
                ..sep_cma(2)
            },
            with_elite(2),
            TrainConfig {
                es_elite_every: 1,
                ..with_elite(1)
            },
            split(2),
            portfolio(2, 1 << 40),
            portfolio(1, race_games(2)),
            TrainConfig {
                es_portfolio: 3,
                n_phases: 2,
                es_split_games: race_games(1),
                ..portfolio(2, race_games(1))
            },
        ] {
            let learner = config.learner;
            let straight = evolved(config.clone(), 4);
            let first = evolved(config.clone(), 2);
            let (tree, md) = trainer_to_checkpoint(&first);
            let bytes = encode(&tree, &md).unwrap();
            let mut resumed = trainer_from_checkpoint(&decode(&bytes).unwrap()).unwrap();
            assert_eq!(resumed.config, first.config);
            assert_eq!(resumed.population.individuals, first.population.individuals);
            assert_eq!(resumed.population.cma, first.population.cma);
            assert_eq!(resumed.population.elite, first.population.elite);
            assert_eq!(
                without_fitness(&resumed.population),
                without_fitness(&first.population)
            );
            let stop = AtomicBool::new(false);
            while resumed.population.generation < 4 {
                resumed.train(resumed.stats.games + 1, &stop, |_| {});
            }
            assert_eq!(resumed.weights.w, straight.weights.w, "{learner}");
            assert_eq!(
                resumed.population.individuals, straight.population.individuals,
                "{learner}"
            );
            assert_eq!(resumed.stats, straight.stats, "{learner}");
            assert_eq!(resumed.population.cma, straight.population.cma);
            assert_eq!(resumed.population.elite, straight.population.elite);
            assert_eq!(resumed.population.search, straight.population.search);
        }
        // Mid-round, the search whose turn is next has not run yet.
        let mut t = Trainer::new(portfolio(1, 1 << 40)).unwrap();
        t.train(1, &AtomicBool::new(false), |_| {});
        assert_eq!((t.population.search, t.population.generation), (1, 0));
        let (tree, md) = trainer_to_checkpoint(&t);
        let back = trainer_from_checkpoint(&decode(&encode(&tree, &md).unwrap()).unwrap()).unwrap();
        assert_eq!(back.population, without_fitness(&t.population));
        assert_eq!(back.weights.w, t.weights.w);
    }

    #[test]
    fn the_elite_is_the_better_of_search_point_and_elite_on_the_same_fresh_games() {
        // plus: the parents (and the sample keyed on the search point) are as without an elite.
        let plus = TrainConfig {
            es_recombine: true,
            es_fitness_pairs_max: 1000,
            es_fitness_step: 10.0,
            ..cfg(Learner::Es, 1)
        };
        let plus_elite = TrainConfig {
            es_elite_pairs: 5,
            es_elite_every: 1,
            ..plus.clone()
        };
        let (alone, kept) = (evolved(plus, 4), evolved(plus_elite, 4));
        assert_eq!(kept.population.individuals, alone.population.individuals);
        assert_eq!(
            kept.weights.w,
            kept.population.elite.as_ref().unwrap().weights
        );
        let plain = evolved(sep_cma(1), 4);
        // Generations 1 and 3 are as without an elite; 2 and 4 add a comparison.
        let t = evolved(with_elite(1), 4);
        assert_eq!(
            t.population.cma, plain.population.cma,
            "the search goes on alone"
        );
        assert_eq!(t.population.individuals[0], plain.weights.w);
        // Generation 2: the point alone (10 games); generation 4: point and elite (20).
        assert_eq!(t.stats.games, plain.stats.games + 10 + 20);
        let elite = t
            .population
            .elite
            .as_ref()
            .expect("compared at generation 4");
        assert_eq!(t.weights.w, elite.weights, "the elite is handed over");
        // Generation 4's comparison, played again: the elite is the side with more points.
        let after_two = evolved(with_elite(1), 2);
        let first_elite = after_two.population.elite.clone().unwrap();
        assert_eq!(first_elite.weights, evolved(sep_cma(1), 2).weights.w);
        let mut shadow = evolved(with_elite(1), 3);
        let cands = as_weights(
            &shadow.weights.set,
            1,
            vec![plain.weights.w.clone(), first_elite.weights.clone()],
        );
        let first = 2 * 10; // comparison 2 of 10 games each
        let scores = shadow.play_candidates(
            &cands,
            &[(Side::Heuristic, 10, first)],
            shadow.config.seed ^ super::super::es::ELITE_SALT,
        );
        let winner = if scores[1].0 >= scores[0].0 {
            &first_elite.weights
        } else {
            &plain.weights.w
        };
        assert_eq!(&elite.weights, winner);
        assert_eq!(elite.points, scores[0].0.max(scores[1].0));
    }

    #[test]
    fn evolution_beats_the_untrained_network_against_the_heuristic() {
        let config = TrainConfig {
            es_fitness_pairs: 20,
            es_offspring: 6,
            ..cfg(Learner::Es, 2)
        };
        let zero = Trainer::new(config.clone()).unwrap();
        let t = evolved(config, 12);
        let score = |w| league_match(&Player::greedy(w), &Player::Heuristic, 150, 0.1, 11).score;
        let (before, after) = (score(&zero.weights), score(&t.weights));
        assert!(
            after > before + 0.15,
            "untrained {before:.3}, evolved {after:.3}"
        );
    }

    #[test]
    fn sep_cma_beats_the_untrained_network_and_its_sample_grows() {
        let config = TrainConfig {
            es_fitness_pairs: 20,
            es_fitness_pairs_max: 80,
            es_parents: 6,
            es_offspring: 12,
            ..sep_cma(2)
        };
        let zero = Trainer::new(config.clone()).unwrap();
        let t = evolved(config.clone(), 12);
        let score = |w| league_match(&Player::greedy(w), &Player::Heuristic, 150, 0.1, 11).score;
        let (before, after) = (score(&zero.weights), score(&t.weights));
        assert!(
            after > before + 0.15,
            "untrained {before:.3}, evolved {after:.3}"
        );
        // A narrower search plays more games per candidate, up to the cap.
        assert_eq!(config.es_pairs_at(1.0), 20);
        assert_eq!(config.es_pairs_at(0.5), 80);
        assert_eq!(config.es_pairs_at(0.8), 32);
        assert_eq!(config.es_pairs_at(2.0), 20);
        // Keyed on the step alone (against es_sigma 0.1), or on the step
        // relative to the weights (against es_fitness_step).
        assert_eq!(config.es_pairs_for(0.05, 1e6), 80);
        let relative = TrainConfig {
            es_fitness_step: 0.05,
            ..config.clone()
        };
        assert_eq!(relative.es_pairs_for(0.5, 10.0), 20);
        assert_eq!(relative.es_pairs_for(0.4, 10.0), 32);
        assert_eq!(relative.es_pairs_for(0.5, 1e6), 80);
        assert_eq!(relative.es_pairs_for(0.5, 0.0), 20);
        let fixed = TrainConfig {
            es_fitness_pairs_max: 0,
            ..config
        };
        assert_eq!(fixed.es_pairs_at(0.1), 20);
        // In a run: the sample grows once the step is small beside the
        // weights, for both strategies (generation 0 starts from zero weights).
        for base in [sep_cma(1), cfg(Learner::Es, 1)] {
            let grow = |step| TrainConfig {
                es_fitness_pairs_max: 1000,
                es_fitness_step: step,
                ..base.clone()
            };
            let (by_step, by_relative) = (evolved(grow(0.0), 3), evolved(grow(10.0), 3));
            let first = evolved(grow(10.0), 1).stats.games;
            assert_eq!(first, evolved(grow(0.0), 1).stats.games);
            assert!(
                by_relative.stats.games > by_step.stats.games + 2 * first,
                "{} vs {}",
                by_relative.stats.games,
                by_step.stats.games
            );
        }
    }

    #[test]
    fn learner_settings_are_validated_naming_the_field_and_range() {
        let base = TrainConfig::default();
        let err = |v: serde_json::Value| {
            config_update(&base, v.as_object().unwrap())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(serde_json::json!({"learner": "ga"})),
            "learner: got ga; allowed: 'td', 'ctdl' or 'es'"
        );
        assert!(err(serde_json::json!({"learner": 1})).starts_with("learner: got 1"));
        assert_eq!(
            err(serde_json::json!({"es_sigma": 0.0})),
            "es_sigma: got 0; allowed: 1e-6 to 10.0"
        );
        assert_eq!(
            err(serde_json::json!({"es_parents": 0})),
            "es_parents: got 0; allowed: 1 to 64"
        );
        assert_eq!(
            err(serde_json::json!({"es_offspring": 300})),
            "es_offspring: got 300; allowed: 1 to 256"
        );
        assert!(
            err(serde_json::json!({"es_fitness_pairs": 0})).starts_with("es_fitness_pairs: got 0")
        );
        assert_eq!(
            err(serde_json::json!({"es_strategy": "cma"})),
            "es_strategy: got cma; allowed: 'plus' or 'sep-cma'"
        );
        assert_eq!(
            err(serde_json::json!({"es_fitness_pairs_max": 50})),
            "es_fitness_pairs_max: got 50; allowed: 0 (a fixed sample) or es_fitness_pairs (100) to 100000"
        );
        assert!(
            err(serde_json::json!({"es_strategy": "sep-cma", "es_parents": 9}))
                .starts_with("es_parents: got 9; allowed: 1 to es_offspring (8)")
        );
        assert_eq!(
            err(serde_json::json!({"es_fitness_step": 20.0})),
            "es_fitness_step: got 20; allowed: 0.0 (key on the step itself) or 0.0001 to 10.0"
        );
        assert_eq!(
            err(serde_json::json!({"td_heuristic_games": 1.5})),
            "td_heuristic_games: got 1.5; allowed: 0.0 (self-play only) to 1.0 (every game against the heuristic)"
        );
        assert_eq!(
            err(serde_json::json!({"es_elite_pairs": 100_001})),
            "es_elite_pairs: got 100001; allowed: 0 (off) to 100000"
        );
        assert_eq!(
            err(serde_json::json!({"es_elite_every": 0})),
            "es_elite_every: got 0; allowed: 1 to 1000000"
        );
        assert_eq!(
            err(serde_json::json!({"es_normalize": -1.0})),
            "es_normalize: got -1; allowed: 0.0 (off) or 0.001 to 1000.0"
        );
        assert!(err(serde_json::json!({"es_normalize": 1e4})).starts_with("es_normalize: got"));
        let split_needs = "allowed: 0 unless es_strategy is 'sep-cma' and n_phases is above 1";
        assert!(err(serde_json::json!({"es_split_games": 1000}))
            .starts_with(&format!("es_split_games: got 1000; {split_needs}")));
        assert!(err(
            serde_json::json!({"es_split_games": 1000, "es_strategy": "sep-cma", "n_phases": 1})
        )
        .starts_with(&format!("es_split_games: got 1000; {split_needs}")));
        assert!(err(serde_json::json!({"es_split_games": -1})).starts_with("es_split_games"));
        assert!(config_update(
            &base,
            serde_json::json!({"es_split_games": 1000, "es_strategy": "sep-cma", "n_phases": 2})
                .as_object()
                .unwrap()
        )
        .is_ok());
        assert!(config_update(
            &base,
            serde_json::json!({"es_normalize": 0.0})
                .as_object()
                .unwrap()
        )
        .is_ok());
        assert_eq!(
            err(serde_json::json!({"es_portfolio": 0})),
            "es_portfolio: got 0; allowed: 1 (one search) to 16"
        );
        assert!(err(serde_json::json!({"es_portfolio": 17})).starts_with("es_portfolio: got 17"));
        assert_eq!(
            err(serde_json::json!({"es_portfolio_games": 5})),
            "es_portfolio_games: got 5; allowed: 0 unless es_portfolio is above 1 (the games at which its race ends)"
        );
        assert!(err(serde_json::json!({"es_portfolio": 2})).starts_with(
            "es_portfolio_games: got 0; allowed: 1 to 1099511627776 when es_portfolio is above 1"
        ));
        assert!(err(serde_json::json!({"es_portfolio_pairs": 0}))
            .starts_with("es_portfolio_pairs: got 0; allowed: 1 to 100000"));
        assert!(config_update(
            &base,
            serde_json::json!({"es_portfolio": 2, "es_portfolio_games": 1000})
                .as_object()
                .unwrap()
        )
        .is_ok());
        assert!(err(serde_json::json!({"ctdl_population": 5}))
            .starts_with("ctdl_population: got 5; allowed: an even number"));
        assert!(err(serde_json::json!({"ctdl_td_games": 0})).starts_with("ctdl_td_games: got 0"));
        assert!(
            err(serde_json::json!({"ctdl_match_pairs": 0})).starts_with("ctdl_match_pairs: got 0")
        );
        let adam = TrainConfig {
            learner: Learner::Ctdl,
            optimizer: Optimizer::Adam,
            ..base.clone()
        };
        assert!(adam
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("optimizer: got adam"));
        for s in [EsStrategy::Plus, EsStrategy::SepCma] {
            assert_eq!(s.name().parse::<EsStrategy>().unwrap(), s);
        }
        for l in [Learner::Td, Learner::Ctdl, Learner::Es] {
            assert_eq!(l.name().parse::<Learner>().unwrap(), l);
        }
    }
}
