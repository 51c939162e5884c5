//! Trains one learner (`td`, `ctdl` or `es`) for a wall-clock budget and
//! prints its League score against the WPC heuristic at fixed training times
//! (the evaluation's own time is not counted), one CSV line per point:
//! `learner,seed,train_s,games,generation,score,ci95,best_fitness`.
//!
//! Settings from the environment: `LEARNER`, `SEED`, `THREADS`, `SECONDS`
//! (training budget), `EVERY` (seconds between evaluations), `PAIRS` (League
//! pairs per evaluation, 1,000 = the League protocol), `SET`, `PHASES`,
//! `SAVE` (write the final weights as an engine checkpoint here), and the
//! learner fields `MU`, `LAMBDA_ES`, `SIGMA`, `SIGMA_DECAY`, `RECOMBINE`, `FIT_PAIRS`, `POP`, `TD_GAMES`,
//! `MATCH_PAIRS`, `LR`, `TARGET`, `LAMBDA`, `BATCH`, `EPS`, `DECAY`.
//!
//! `cargo run --release --example evolve`

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use othello_core::checkpoint;
use othello_core::league::{league_match, Player};
use othello_core::state::trainer_to_checkpoint;
use othello_core::train::{Learner, TrainConfig, Trainer};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse().ok().unwrap_or_else(|| panic!("bad {name}"))
    })
}

fn main() {
    let d = TrainConfig::default();
    let learner: Learner = env("LEARNER", Learner::Es);
    let eps = env("EPS", d.epsilon_start);
    let cfg = TrainConfig {
        learner,
        seed: env("SEED", 0),
        threads: env("THREADS", 2),
        pattern_set: env("SET", "straight2".to_owned()),
        n_phases: env("PHASES", 1),
        es_parents: env("MU", d.es_parents),
        es_offspring: env("LAMBDA_ES", d.es_offspring),
        es_sigma: env("SIGMA", d.es_sigma),
        es_sigma_decay: env("SIGMA_DECAY", d.es_sigma_decay),
        es_recombine: env("RECOMBINE", d.es_recombine),
        es_fitness_pairs: env("FIT_PAIRS", d.es_fitness_pairs),
        ctdl_population: env("POP", d.ctdl_population),
        ctdl_td_games: env("TD_GAMES", d.ctdl_td_games),
        ctdl_match_pairs: env("MATCH_PAIRS", d.ctdl_match_pairs),
        learning_rate: env("LR", d.learning_rate),
        target_depth: env("TARGET", d.target_depth),
        lambda: env("LAMBDA", d.lambda),
        batch_games: env("BATCH", d.batch_games),
        lr_decay_games: env("DECAY", d.lr_decay_games),
        epsilon_start: eps,
        epsilon_end: eps,
        ..d
    };
    let seconds: f64 = env("SECONDS", 60.0);
    let every: f64 = env("EVERY", 15.0);
    let pairs: u64 = env("PAIRS", 1000);
    let mut t = Trainer::new(cfg.clone()).expect("valid configuration");
    let stop = AtomicBool::new(false);
    let (mut trained, mut next_eval) = (0.0, every);
    loop {
        let t0 = Instant::now();
        let next = t.stats.games + if learner == Learner::Td { 2048 } else { 1 };
        t.train(next, &stop, |_| {});
        trained += t0.elapsed().as_secs_f64();
        if trained >= next_eval || trained >= seconds {
            next_eval += every;
            let r = league_match(
                &Player::greedy(&t.weights),
                &Player::Heuristic,
                pairs,
                0.1,
                7,
            );
            let best = t
                .population
                .last_fitness
                .first()
                .copied()
                .unwrap_or(f64::NAN);
            println!(
                "{},{},{:.1},{},{},{:.4},{:.4},{:.4}",
                learner,
                cfg.seed,
                trained,
                t.stats.games,
                t.population.generation,
                r.score,
                r.ci95,
                best
            );
        }
        if trained >= seconds {
            break;
        }
    }
    if let Ok(path) = std::env::var("SAVE") {
        let (tree, md) = trainer_to_checkpoint(&t);
        checkpoint::save(std::path::Path::new(&path), &tree, &md, false).expect("saved");
    }
}
