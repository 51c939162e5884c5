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
//! depends only on the seed and the configuration, not on the threads.

use super::evolve::{
    as_weights, black_score, gaussian, into_vectors, live_entries, play_jobs, ranking, Job, Side,
};
use super::Trainer;
use crate::rng::Rng;

/// Stream salts, so that mutation and fitness draws never share a stream.
const MUTATION_SALT: u64 = 0x6573_5F6D_7574_6174;
const FITNESS_SALT: u64 = 0x6573_5F66_6974_6E73;

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

impl Trainer {
    /// Runs one generation of the evolution strategy (see the module docs).
    pub(super) fn es_generation(&mut self) {
        let c = &self.config;
        let (mu, lambda) = (c.es_parents, c.es_offspring);
        self.population.resize(mu, &self.weights.w);
        let g = self.population.generation;
        let (sigma, pairs) = (c.es_sigma_at(g), c.es_fitness_pairs);
        let seed = c.seed;
        let set = &self.weights.set;
        let plen = set.phase_len;
        let live = live_entries(set);
        let mut cands = std::mem::take(&mut self.population.individuals);
        let centroid = c.es_recombine.then(|| mean(&cands));
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
        // Every candidate plays the same games: game j of a generation has
        // stream (g, j) whoever plays it; even games the candidate is black.
        let games = 2 * pairs;
        let jobs: Vec<Job> = (0..cands.len())
            .flat_map(|ci| {
                (0..games).map(move |j| {
                    let me = Side::Candidate(ci);
                    let (black, white) = if j % 2 == 0 {
                        (me, Side::Heuristic)
                    } else {
                        (Side::Heuristic, me)
                    };
                    Job {
                        black,
                        white,
                        stream: g.wrapping_mul(games) + j,
                    }
                })
            })
            .collect();
        let weights = as_weights(set, self.weights.n_phases, cands);
        let pool = self.pool.as_ref().expect("pool built in apply_config");
        let diffs = play_jobs(pool, &weights, &jobs, seed ^ FITNESS_SALT);
        let mut fitness = vec![0.0; weights.len()];
        for (job, &d) in jobs.iter().zip(&diffs) {
            let Side::Candidate(ci) = (if job.black == Side::Heuristic {
                job.white
            } else {
                job.black
            }) else {
                unreachable!("every job has one candidate")
            };
            let s = black_score(d);
            fitness[ci] += if job.black == Side::Heuristic {
                1.0 - s
            } else {
                s
            };
            self.record_game(Some(d));
        }
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
}
