//! Trains from scratch and prints the League score at milestones.
//!
//! `cargo run --release --example learn -- GAMES THREADS LR LAMBDA PHASES SET BATCH`

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use othello_core::league::{league_match, Player};
use othello_core::train::{TrainConfig, Trainer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_owned());
    let total: u64 = arg(1, "50000").parse().expect("games");
    let threads: usize = arg(2, "2").parse().expect("threads");
    let lr: f32 = arg(3, "0.001").parse().expect("lr");
    let lambda: f32 = arg(4, "0.5").parse().expect("lambda");
    let n_phases: usize = arg(5, "6").parse().expect("phases");
    let pattern_set = arg(6, "default");
    let batch_games: usize = arg(7, "64").parse().expect("batch");
    let cfg = TrainConfig {
        threads,
        learning_rate: lr,
        lambda,
        n_phases,
        pattern_set,
        batch_games,
        adam_eps: std::env::var("ADAM_EPS")
            .ok()
            .map_or(1e-8, |v| v.parse().expect("ADAM_EPS")),
        beta1: std::env::var("BETA1")
            .ok()
            .map_or(0.9, |v| v.parse().expect("BETA1")),
        epsilon_start: std::env::var("EPS")
            .ok()
            .map_or(0.1, |v| v.parse().expect("EPS")),
        epsilon_end: std::env::var("EPS")
            .ok()
            .map_or(0.1, |v| v.parse().expect("EPS")),
        optimizer: std::env::var("OPT").unwrap_or_else(|_| "adam".into()),
        lr_decay_games: std::env::var("DECAY")
            .ok()
            .map_or(50_000, |v| v.parse().expect("DECAY")),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(cfg).expect("config");
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut milestone = 25_000u64.min(total);
    while t.stats.games < total {
        t.train(milestone, &stop, |_| {});
        let el = start.elapsed().as_secs_f64();
        let w = &t.weights;
        let h = league_match(&Player::Engine(w, 1), &Player::Heuristic, 300, 0.1, 9);
        let r = league_match(&Player::Engine(w, 1), &Player::Random, 100, 0.1, 9);
        println!(
            "games {:>7}  {:>7.0} games/s  vs heuristic {:.3} ± {:.3}  vs random {:.3}",
            t.stats.games,
            t.stats.games as f64 / el,
            h.score,
            h.ci95,
            r.score
        );
        milestone = (milestone * 2).min(total);
    }
}
