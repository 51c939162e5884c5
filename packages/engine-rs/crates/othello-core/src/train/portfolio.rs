//! The `es` portfolio (`es_portfolio` = k above 1): k independent searches
//! of one run, a generation each in turn, race until `es_portfolio_games`;
//! then every search's network plays the same `es_portfolio_pairs` pairs of
//! League games against the WPC heuristic, and the best by points (the
//! lowest-numbered on a tie) goes on alone.
//!
//! Seeds settle in optima of different height, and more budget does not
//! lift a search out of a lower one (docs/othello-engine.md); the race keeps
//! one search's lower optimum from being the run's result.
//!
//! Search `j` draws every stream from seed `seed + j * 2^32` (search 0 from
//! the run's own) and keeps its own population (generations, search
//! distribution, elite), so until the race ends it is, generation for
//! generation, the search that a one-search run of that seed makes; what the
//! searches share is the run's game count, which `es_split_games` and the
//! race's end read. A run still depends only on its seed and configuration.
//! During the race the trainer's weights are the network of the search whose
//! turn is next.

use super::evolve::{as_weights, ParkedSearch, Population, Side};
use super::Trainer;

/// The stream salt of the race's games.
const RACE_SALT: u64 = 0x6573_5F72_6163_6573;

impl Trainer {
    /// The seed of the search whose generation runs now: the run's own for
    /// search 0 (and without a portfolio), `seed + j * 2^32` for search `j`.
    pub(super) fn search_seed(&self) -> u64 {
        self.config.seed.wrapping_add(self.population.search << 32)
    }

    /// Before a generation: at a run's first generation, parks the other
    /// searches of a portfolio at the starting weights; when the race is due
    /// to end and every search has had as many generations (search 0's
    /// turn), ends it.
    pub(super) fn portfolio_before_generation(&mut self) {
        let (k, pop) = (self.config.es_portfolio, &self.population);
        let racing = self.stats.games < self.config.es_portfolio_games;
        if k > 1 && racing && pop.generation == 0 && pop.search == 0 && pop.parked.is_empty() {
            self.population.parked = (1..k)
                .map(|search| ParkedSearch {
                    weights: self.weights.w.clone(),
                    population: Population {
                        search,
                        ..Population::default()
                    },
                })
                .collect();
        } else if !racing && pop.search == 0 && !pop.parked.is_empty() {
            self.end_portfolio_race();
        }
    }

    /// After a generation: the next search in turn takes the trainer's
    /// weights and population; the one that ran is parked last.
    pub(super) fn portfolio_after_generation(&mut self) {
        if self.population.parked.is_empty() {
            return;
        }
        let mut parked = std::mem::take(&mut self.population.parked);
        let next = parked.remove(0);
        let weights = std::mem::replace(&mut self.weights.w, next.weights);
        let population = std::mem::replace(&mut self.population, next.population);
        parked.push(ParkedSearch {
            weights,
            population,
        });
        self.population.parked = parked;
    }

    /// Ends an `es_portfolio` race now (the learner does at its end): every
    /// search's network (the trainer's, then the parked ones in order) plays
    /// the same `es_portfolio_pairs` pairs of games against the heuristic,
    /// and the best by points goes on alone. The points per game, in that
    /// order, are left in `population.last_race`. Nothing happens without a
    /// race (no parked searches).
    pub fn end_portfolio_race(&mut self) {
        if self.population.parked.is_empty() {
            return;
        }
        let parked = std::mem::take(&mut self.population.parked);
        let mut networks = vec![self.weights.w.clone()];
        networks.extend(parked.iter().map(|p| p.weights.clone()));
        let games = 2 * self.config.es_portfolio_pairs;
        let weights = as_weights(&self.weights.set, self.weights.n_phases, networks);
        let opponents = [(Side::Heuristic, games, 0)];
        let scores = self.play_candidates(&weights, &opponents, self.config.seed ^ RACE_SALT);
        let best = (1..scores.len()).fold(0, |b, i| if scores[i].0 > scores[b].0 { i } else { b });
        if best > 0 {
            let winner = parked
                .into_iter()
                .nth(best - 1)
                .expect("one parked search per index");
            self.weights.w = winner.weights;
            self.population = winner.population;
        }
        self.population.last_race = scores.iter().map(|s| s.0 / games as f64).collect();
    }
}
