//! Trains from scratch and prints the League score at milestones.
//!
//! Every setting comes from the environment (unset = the library default):
//! `MILESTONES` (comma-separated games, default `10000,50000,200000`),
//! `THREADS`, `SEED`, `PAIRS` (League pairs per milestone vs the heuristic),
//! and the training fields `LR`, `LAMBDA`, `PHASES`, `SET`, `BATCH`, `OPT`,
//! `DECAY`, `VISITS`, `EPS`, `EPS_END`, `EPS_DECAY`, `ADAM_EPS`, `BETA1`, `DEPTH`
//! (the training search depth), `TARGET` (`target_depth`); `WARM`
//! plays that many games online (batch 1, 1 thread) before the configuration.
//!
//! `cargo run --release --example learn`

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use othello_core::league::{league_match, Player};
use othello_core::train::{TrainConfig, Trainer};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse().ok().unwrap_or_else(|| panic!("bad {name}"))
    })
}

fn main() {
    let d = TrainConfig::default();
    let eps_start = env("EPS", d.epsilon_start);
    let cfg = TrainConfig {
        seed: env("SEED", 0),
        threads: env("THREADS", 2),
        learning_rate: env("LR", d.learning_rate),
        lambda: env("LAMBDA", d.lambda),
        n_phases: env("PHASES", d.n_phases),
        pattern_set: env("SET", d.pattern_set.clone()),
        batch_games: env("BATCH", d.batch_games),
        optimizer: env("OPT", d.optimizer.clone()),
        lr_decay_games: env("DECAY", d.lr_decay_games),
        epsilon_start: eps_start,
        epsilon_end: env(
            "EPS_END",
            if std::env::var("EPS").is_ok() {
                eps_start
            } else {
                d.epsilon_end
            },
        ),
        epsilon_decay_games: env("EPS_DECAY", d.epsilon_decay_games),
        adam_eps: env("ADAM_EPS", d.adam_eps),
        beta1: env("BETA1", d.beta1),
        lr_decay_visits: env("VISITS", d.lr_decay_visits),
        search_depth: env("DEPTH", d.search_depth),
        target_depth: env("TARGET", d.target_depth),
        ..d
    };
    eprintln!("{cfg:?}");
    let pairs: u64 = env("PAIRS", 500);
    let milestones: Vec<u64> = env("MILESTONES", "10000,50000,200000".to_owned())
        .split(',')
        .map(|x| x.parse().expect("MILESTONES"))
        .collect();
    let warm: u64 = env("WARM", 0);
    let stop = AtomicBool::new(false);
    let mut t = if warm > 0 {
        // Warm-up: the first WARM games online (batch 1, 1 thread), then the configuration.
        let mut t = Trainer::new(TrainConfig {
            batch_games: 1,
            threads: 1,
            ..cfg.clone()
        })
        .expect("config");
        t.train(warm, &stop, |_| {});
        t.config = cfg;
        t.apply_config().expect("config");
        t
    } else {
        Trainer::new(cfg).expect("config")
    };
    let mut train_s = 0.0;
    for m in milestones {
        let start = Instant::now();
        let before = t.stats.games;
        t.train(m, &stop, |_| {});
        let el = start.elapsed().as_secs_f64();
        train_s += el;
        let w = &t.weights;
        let h = league_match(&Player::Engine(w, 1), &Player::Heuristic, pairs, 0.1, 9);
        let r = league_match(&Player::Engine(w, 1), &Player::Random, pairs / 4, 0.1, 9);
        let maxw = w.w.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
        println!(
            "games {:>7}  {:>5.0} games/s  vs heuristic {:.3} ± {:.3}  vs random {:.3}  max|w| {maxw:.2}  ({train_s:.0} s)",
            t.stats.games,
            (t.stats.games - before) as f64 / el,
            h.score,
            h.ci95,
            r.score
        );
    }
}
