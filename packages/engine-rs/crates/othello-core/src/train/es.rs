//! The `es` learner: a (mu + lambda) evolution strategy on the weights, the
//! way Jaśkowski (2014) evolved his systematic 2-tuple network to the League's
//! record.
//!
//! A generation: each of the `es_offspring` (lambda) offspring is a copy of
//! parent `k mod mu` with every live weight moved by `sigma * N(0, 1)`
//! (`sigma` is `es_sigma`, decaying as `d / (d + generation)` with
//! `es_sigma_decay` = d > 0);
//! the mu parents and the lambda offspring then each play `es_fitness_pairs`
//! pairs of League games against the WPC heuristic (1-ply, 10% random moves on
//! both sides, colours swapped), all on the same random streams (common
//! random numbers: candidates are compared on the same games), and the best
//! mu of the mu + lambda become the next parents. Parents are re-evaluated on
//! each generation's new games, so a parent that was lucky once does not
//! stay on top. The trainer's weights are the best parent; with
//! `es_recombine` every offspring mutates the parents' mean instead, and the
//! weights are the mean of the selected parents ((mu/mu + lambda)).
//!
//! Every game counts as a game of the run (`stats.games`). The mutation and
//! the games draw from streams of `(seed, generation, index)`, so the run
//! depends only on the seed and the configuration, not on the threads. With
//! `es_portfolio` several such searches race (the `portfolio` module), each
//! on its own seed.

use super::cma::SepCma;
use super::config::EsStrategy;
use super::evolve::{
    as_weights, black_score, copy_first_phase, gaussian, into_vectors, live_entries, play_jobs,
    ranking, searched_entries, Elite, Job, Side,
};
use super::Trainer;
use crate::eval::Weights;
use crate::rng::Rng;
use std::sync::Arc;

/// Stream salts, so that mutation and fitness draws never share a stream.
const MUTATION_SALT: u64 = 0x6573_5F6D_7574_6174;
const FITNESS_SALT: u64 = 0x6573_5F66_6974_6E73;
pub(super) const ELITE_SALT: u64 = 0x6573_5F65_6C69_7465;

/// The mean of equally long vectors.
fn mean(vectors: &[Vec<f32>]) -> Vec<f32> {
    let mut m = vec![0.0f32; vectors[0].len()];
    for v in vectors {
        for (a, b) in m.iter_mut().zip(v) {
            *a += b;
        }
    }
    let n = vectors.len() as f32;
    m.iter_mut().for_each(|a| *a /= n);
    m
}

/// The root mean square of the live entries of weights laid out in phases
/// (`live` marks one phase's).
fn live_rms(w: &[f32], live: &[bool]) -> f64 {
    let (sum, n) = w
        .iter()
        .zip(live.iter().cycle())
        .filter(|(_, &l)| l)
        .fold((0.0, 0usize), |(s, n), (&v, _)| {
            (s + f64::from(v) * f64::from(v), n + 1)
        });
    (sum / n.max(1) as f64).sqrt()
}

/// A candidate's fitness from its points and summed disc difference (see
/// `es_fitness_margin`), summed over its games like the points.
fn fitness_of((points, diff): (f64, i64), margin: f64) -> f64 {
    points + margin * diff as f64 / 64.0
}

impl Trainer {
    /// Plays every candidate against the WPC heuristic on `pairs` pairs of
    /// League games (1-ply, 10% random moves on both sides, colours swapped)
    /// and against the random player on `es_random_pairs` pairs, every
    /// candidate on the same random streams: game `j` against an opponent in
    /// generation `g` has stream `(g, j)` whoever plays it, and in even games
    /// the candidate is black. Counts the games; returns each candidate's
    /// points (wins plus half the draws) and disc difference summed over all
    /// its games.
    fn score_candidates(&mut self, cands: &[Weights], pairs: u64, g: u64) -> Vec<(f64, i64)> {
        let random_games = 2 * self.config.es_random_pairs;
        let opponents = [
            (Side::Heuristic, 2 * pairs, g.wrapping_mul(2 * pairs)),
            (
                Side::Random,
                random_games,
                (1 << 63) | g.wrapping_mul(random_games),
            ),
        ];
        self.play_candidates(cands, &opponents, self.search_seed() ^ FITNESS_SALT)
    }

    /// Plays each candidate `games` games against each `(opponent, games,
    /// first stream)`, game `j` on stream `first + j` for every candidate
    /// (black in even games); counts the games and returns each candidate's
    /// points and summed disc difference.
    pub(super) fn play_candidates(
        &mut self,
        cands: &[Weights],
        opponents: &[(Side, u64, u64)],
        seed: u64,
    ) -> Vec<(f64, i64)> {
        let jobs: Vec<Job> = (0..cands.len())
            .flat_map(|ci| {
                opponents.iter().flat_map(move |&(opp, games, first)| {
                    (0..games).map(move |j| {
                        let me = Side::Candidate(ci);
                        let (black, white) = if j % 2 == 0 { (me, opp) } else { (opp, me) };
                        Job {
                            black,
                            white,
                            stream: first.wrapping_add(j),
                        }
                    })
                })
            })
            .collect();
        let pool = self.pool.as_ref().expect("pool built in apply_config");
        let diffs = play_jobs(pool, cands, &jobs, seed);
        let mut score = vec![(0.0, 0i64); cands.len()];
        for (job, &d) in jobs.iter().zip(&diffs) {
            let (ci, mine) = match (job.black, job.white) {
                (Side::Candidate(ci), _) => (ci, d),
                (_, Side::Candidate(ci)) => (ci, -d),
                _ => unreachable!("every job has one candidate"),
            };
            score[ci].0 += black_score(mine);
            score[ci].1 += i64::from(mine);
            self.record_game(Some(d));
        }
        score
    }

    /// Runs one generation of the evolution strategy (see the module docs).
    pub(super) fn es_generation(&mut self) {
        self.portfolio_before_generation();
        match self.config.es_strategy {
            EsStrategy::Plus => self.plus_generation(),
            EsStrategy::SepCma => self.sep_cma_generation(),
        }
        self.keep_elite();
        self.portfolio_after_generation();
    }

    /// With `es_elite_pairs`: every `es_elite_every` generations the search
    /// point (the weights the generation left) and the elite play the same
    /// fresh `es_elite_pairs` pairs of League games against the heuristic
    /// (comparison `e` on streams `(e, j)`), and the better one by points
    /// (the elite on a tie) stays the elite. The elite, once there is one,
    /// becomes the trainer's weights.
    fn keep_elite(&mut self) {
        let (pairs, every) = (self.config.es_elite_pairs, self.config.es_elite_every);
        if pairs == 0 {
            return;
        }
        let g = self.population.generation;
        if g % every == 0 {
            let mut cands = vec![self.weights.w.clone()];
            cands.extend(self.population.elite.take().map(|e| e.weights));
            let games = 2 * pairs;
            let first = (g / every).wrapping_mul(games);
            let weights = as_weights(&self.weights.set, self.weights.n_phases, cands);
            let opponents = [(Side::Heuristic, games, first)];
            let scores =
                self.play_candidates(&weights, &opponents, self.search_seed() ^ ELITE_SALT);
            let points: Vec<f64> = scores.iter().map(|s| s.0).collect();
            let best = usize::from(points.len() == 2 && points[1] >= points[0]);
            let mut cands = into_vectors(weights);
            self.population.elite = Some(Elite {
                weights: std::mem::take(&mut cands[best]),
                points: points[best],
            });
        }
        if let Some(elite) = &self.population.elite {
            self.weights.w.clone_from(&elite.weights);
        }
    }

    /// A generation of the (mu + lambda) strategy with isotropic mutation.
    fn plus_generation(&mut self) {
        let c = &self.config;
        let (mu, lambda) = (c.es_parents, c.es_offspring);
        self.population.resize(mu, &self.weights.w);
        let g = self.population.generation;
        let sigma = c.es_sigma_at(g);
        let seed = self.search_seed();
        let set = &self.weights.set;
        let plen = set.phase_len;
        let live = live_entries(set);
        let mut cands = std::mem::take(&mut self.population.individuals);
        let centroid = c.es_recombine.then(|| mean(&cands));
        // The sample is keyed on the search point (not the trainer's weights,
        // which are the elite when there is one).
        let point = centroid.as_ref().unwrap_or(&cands[0]);
        let pairs = c.es_pairs_for(sigma, live_rms(point, &live));
        for k in 0..lambda {
            let mut child = centroid.clone().unwrap_or_else(|| cands[k % mu].clone());
            let mut rng = Rng::new(seed ^ MUTATION_SALT, (g << 16) | k as u64);
            for (i, w) in child.iter_mut().enumerate() {
                if live[i % plen] {
                    *w += (sigma * gaussian(&mut rng)) as f32;
                }
            }
            cands.push(child);
        }
        let weights = as_weights(set, self.weights.n_phases, cands);
        let margin = self.config.es_fitness_margin;
        let fitness: Vec<f64> = self
            .score_candidates(&weights, pairs, g)
            .iter()
            .map(|s| fitness_of(*s, margin))
            .collect();
        let games = 2 * (pairs + self.config.es_random_pairs);
        let order = ranking(&fitness);
        let mut all = into_vectors(weights);
        let parents: Vec<Vec<f32>> = order[..mu]
            .iter()
            .map(|&i| std::mem::take(&mut all[i]))
            .collect();
        if self.config.es_recombine {
            self.weights.w = mean(&parents);
        } else {
            self.weights.w.clone_from(&parents[0]);
        }
        self.population.individuals = parents;
        self.population.last_fitness = order.iter().map(|&i| fitness[i] / games as f64).collect();
        self.population.generation += 1;
    }

    /// A generation of separable CMA-ES: lambda candidates drawn from the
    /// search distribution, ranked by points (ties: by disc difference), the
    /// distribution updated from the best mu (its mean's rms then capped at
    /// `es_normalize` when that is set, and the candidates of a capped mean
    /// sampled across it); the weights are its mean.
    fn sep_cma_generation(&mut self) {
        let set = Arc::clone(&self.weights.set);
        let mut dims = searched_entries(&self.weights);
        let phases = self.weights.n_phases;
        let per_phase = dims.len() / phases;
        // Shared until the split; a search once split stays split.
        let shared = self.stats.games < self.config.es_split_games
            && self
                .population
                .cma
                .as_ref()
                .map_or(true, |c| c.mean.len() == per_phase);
        if shared {
            dims.truncate(per_phase);
        } else if let Some(cma) = self.population.cma.as_mut() {
            if phases > 1 && cma.mean.len() == per_phase {
                *cma = cma.repeated(phases);
            }
        }
        let seed = self.search_seed();
        let c = &self.config;
        let cma = self.population.cma.get_or_insert_with(|| {
            let mean = dims.iter().map(|&i| f64::from(self.weights.w[i])).collect();
            SepCma::new(mean, f64::from(c.es_sigma))
        });
        let g = self.population.generation;
        let zs: Vec<Vec<f64>> = (0..c.es_offspring)
            .map(|k| {
                let mut rng = Rng::new(seed ^ MUTATION_SALT, (g << 16) | k as u64);
                let mut z: Vec<f64> = dims.iter().map(|_| gaussian(&mut rng)).collect();
                if c.es_normalize > 0.0 && cma.mean_rms() >= c.es_normalize * (1.0 - 1e-9) {
                    cma.tangent(&mut z);
                }
                z
            })
            .collect();
        let spread = (cma.diag.iter().sum::<f64>() / dims.len() as f64).sqrt();
        let pairs = c.es_pairs_for(cma.sigma * spread, cma.mean_rms());
        let cands: Vec<Vec<f32>> = zs
            .iter()
            .map(|z| {
                let mut w = self.weights.w.clone();
                for (&i, v) in dims.iter().zip(cma.candidate(z)) {
                    w[i] = v as f32;
                }
                if shared {
                    copy_first_phase(&mut w, set.phase_len);
                }
                w
            })
            .collect();
        let weights = as_weights(&set, self.weights.n_phases, cands);
        let scores = self.score_candidates(&weights, pairs, g);
        let margin = self.config.es_fitness_margin;
        let fitness: Vec<f64> = scores.iter().map(|s| fitness_of(*s, margin)).collect();
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| {
            let (sa, sb) = (scores[a], scores[b]);
            fitness[b]
                .total_cmp(&fitness[a])
                .then(sb.1.cmp(&sa.1))
                .then(a.cmp(&b))
        });
        let mu = self.config.es_parents.min(order.len());
        let selected: Vec<&[f64]> = order[..mu].iter().map(|&i| zs[i].as_slice()).collect();
        let cma = self.population.cma.as_mut().expect("created above");
        cma.update(&selected, self.config.es_mean_rate);
        if self.config.es_normalize > 0.0 && cma.mean_rms() > self.config.es_normalize {
            cma.rescale_mean(self.config.es_normalize);
        }
        for (&i, &v) in dims.iter().zip(&cma.mean) {
            self.weights.w[i] = v as f32;
        }
        if shared {
            copy_first_phase(&mut self.weights.w, set.phase_len);
        }
        self.population.individuals = vec![self.weights.w.clone()];
        let games = (2 * (pairs + self.config.es_random_pairs)) as f64;
        self.population.last_fitness = order.iter().map(|&i| fitness[i] / games).collect();
        self.population.generation += 1;
    }
}
