//! The `ctdl` learner: coevolutionary temporal-difference learning (Szubert,
//! Jaśkowski and Krawiec): a population of TD learners whose local search is
//! self-play TD and whose selection is a round-robin tournament.
//!
//! A generation: each of the `ctdl_population` individuals plays
//! `ctdl_td_games` self-play games and learns from them exactly as the `td`
//! learner does (the trainer's TD rule, batches, targets and rate schedule,
//! on its own weights, with the rate decaying by its own games,
//! `generation * ctdl_td_games`; game indices continue the run's count, so
//! every game has its own random stream); then every two individuals play
//! `ctdl_match_pairs` pairs of games (1-ply, 10% random moves on both sides,
//! colours swapped), and each scores its wins plus half its draws. The better
//! half (ties to the earlier individual) survives and is copied over the
//! worse half, best first. The trainer's weights are the best individual.
//!
//! A pause or stop takes effect between generations (a generation is never
//! cut in half), so resuming from a checkpoint continues exactly.

use std::sync::atomic::AtomicBool;

use super::evolve::{as_weights, black_score, into_vectors, play_jobs, ranking, Job, Side};
use super::Trainer;

/// Stream salt of the tournament games.
const TOURNAMENT_SALT: u64 = 0x6374_646C_5F72_7272;

impl Trainer {
    /// Runs one generation of coevolutionary TD learning (see the module docs).
    pub(super) fn ctdl_generation(&mut self) {
        let n = self.config.ctdl_population;
        self.population.resize(n, &self.weights.w);
        let never = AtomicBool::new(false);
        for i in 0..n {
            std::mem::swap(&mut self.weights.w, &mut self.population.individuals[i]);
            let target = self.stats.games + self.config.ctdl_td_games;
            while self.stats.games < target {
                let start = self.stats.games;
                let end = (start + self.config.batch_games as u64).min(target);
                self.run_batch(start, end, &never);
            }
            std::mem::swap(&mut self.weights.w, &mut self.population.individuals[i]);
        }
        let g = self.population.generation;
        let games = 2 * self.config.ctdl_match_pairs;
        let mut jobs = Vec::new();
        for a in 0..n {
            for b in a + 1..n {
                for j in 0..games {
                    let (x, y) = (Side::Candidate(a), Side::Candidate(b));
                    let (black, white) = if j % 2 == 0 { (x, y) } else { (y, x) };
                    let stream = (g << 32) | (jobs.len() as u64);
                    jobs.push(Job {
                        black,
                        white,
                        stream,
                    });
                }
            }
        }
        let individuals = std::mem::take(&mut self.population.individuals);
        let weights = as_weights(&self.weights.set, self.weights.n_phases, individuals);
        let pool = self.pool.as_ref().expect("pool built in apply_config");
        let diffs = play_jobs(pool, &weights, &jobs, self.config.seed ^ TOURNAMENT_SALT);
        let mut score = vec![0.0; n];
        for (job, &d) in jobs.iter().zip(&diffs) {
            let (Side::Candidate(b), Side::Candidate(w)) = (job.black, job.white) else {
                unreachable!("tournament games are between individuals")
            };
            let s = black_score(d);
            score[b] += s;
            score[w] += 1.0 - s;
            self.record_game(Some(d));
        }
        let order = ranking(&score);
        let mut all = into_vectors(weights);
        let survivors: Vec<Vec<f32>> = order[..n / 2]
            .iter()
            .map(|&i| std::mem::take(&mut all[i]))
            .collect();
        let mut next = survivors.clone();
        next.extend(survivors);
        self.weights.w.clone_from(&next[0]);
        self.population.individuals = next;
        let per_individual = (games * (n as u64 - 1)) as f64;
        self.population.last_fitness = order.iter().map(|&i| score[i] / per_individual).collect();
        self.population.generation += 1;
    }
}
