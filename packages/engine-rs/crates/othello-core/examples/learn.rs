//! Trains from scratch and prints the League score at milestones.
//!
//! Every setting comes from the environment (unset = the library default):
//! `MILESTONES` (comma-separated games, default `10000,50000,200000`),
//! `THREADS`, `SEED`, `PAIRS` (League pairs per milestone vs the heuristic),
//! and the training fields `LR`, `LAMBDA`, `PHASES`, `SET`, `BATCH`, `OPT`,
//! `DECAY`, `VISITS`, `EPS`, `EPS_END`, `EPS_DECAY`, `ADAM_EPS`, `BETA1`, `DEPTH`
//! (the training search depth), `TARGET` (`target_depth`), `VS_H` (`td_heuristic_games`); `WARM`
//! plays that many games online (batch 1, 1 thread) before the configuration.
//! `EXACT=n` also plays the League match with the endgame solved from `n`
//! empty squares on. `CALIBRATION=1` also prints, per phase, how the values
//! compare with the outcomes of 300 self-play games (1-ply, 10% random
//! moves): see [`calibration`].
//!
//! `cargo run --release --example learn`

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use othello_core::eval::reward;
use othello_core::league::{league_match, Player};
use othello_core::pattern::MAX_INSTANCES;
use othello_core::rng::Rng;
use othello_core::train::{TrainConfig, Trainer};
use othello_core::{Board, Weights};

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
        td_heuristic_games: env("VS_H", d.td_heuristic_games),
        n_phases: env("PHASES", d.n_phases),
        pattern_set: env("SET", d.pattern_set.clone()),
        batch_games: env("BATCH", d.batch_games),
        optimizer: env("OPT", d.optimizer),
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
        let h = league_match(&Player::greedy(w), &Player::Heuristic, pairs, 0.1, 9);
        let r = league_match(&Player::greedy(w), &Player::Random, pairs / 4, 0.1, 9);
        let maxw = w.w.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
        println!(
            "games {:>7}  {:>5.0} games/s  vs heuristic {:.3} ± {:.3}  vs random {:.3}  max|w| {maxw:.2}  ({train_s:.0} s)",
            t.stats.games,
            (t.stats.games - before) as f64 / el,
            h.score,
            h.ci95,
            r.score
        );
        let exact: u32 = env("EXACT", 0);
        if exact > 0 {
            let solver = Player::Engine {
                weights: w,
                depth: 1,
                exact_empties: exact,
            };
            let h = league_match(&solver, &Player::Heuristic, pairs, 0.1, 9);
            println!(
                "  solving from {exact} empties: vs heuristic {:.3} ± {:.3}",
                h.score, h.ci95
            );
        }
        if std::env::var("CALIBRATION").is_ok() {
            calibration(w);
        }
    }
}

/// Prints, per phase, the mean value of the positions met in 300 self-play
/// games (1-ply greedy, 10% random moves, the League's conditions) and the
/// mean reward those games ended with, both in the view of the side to move,
/// and the share of positions whose value is saturated (|V| > 0.999, where
/// the tanh derivative, and so learning, vanishes). Calibrated values have
/// both means close; the game is symmetric, so the mean reward is near 0.
fn calibration(w: &Weights) {
    let set = &*w.set;
    let mut rng = Rng::new(123, 0);
    // Per phase: positions, sum of values, sum of outcomes, saturated positions.
    let mut rows = vec![(0u32, 0f64, 0f64, 0u32); w.n_phases];
    let (mut mine, mut theirs) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
    for _ in 0..300 {
        let mut b = Board::initial();
        let mut seen: Vec<(usize, bool)> = Vec::new(); // (phase, black to move)
        let mut black = true;
        while let Some((moves, passed)) = b.next_turn() {
            black ^= passed;
            let v = w.value(&b);
            let row = &mut rows[w.phase(&b)];
            row.0 += 1;
            row.1 += f64::from(v);
            row.3 += u32::from(v.abs() > 0.999);
            seen.push((w.phase(&b), black));
            let sq = if rng.next_f64() < 0.1 {
                rng.pick_bit(moves)
            } else {
                set.raw_index_pair(&b, &mut mine, &mut theirs);
                w.greedy_child(&b, moves, &theirs)
            };
            b = b.play(sq);
            black = !black;
        }
        let mover_diff = b.final_score();
        let black_reward = f64::from(reward(if black { mover_diff } else { -mover_diff }));
        for (phase, black_to_move) in seen {
            rows[phase].2 += if black_to_move {
                black_reward
            } else {
                -black_reward
            };
        }
    }
    for (phase, &(n, values, outcomes, saturated)) in rows.iter().enumerate() {
        let n = f64::from(n.max(1));
        println!(
            "  phase {phase}: mean value {:+.3}  mean outcome {:+.3}  saturated {:.2}",
            values / n,
            outcomes / n,
            f64::from(saturated) / n
        );
    }
}
