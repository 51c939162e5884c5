//! Perft leaves/s and training games/s of every CPU variant this machine
//! supports, interleaved over rounds so that they share the machine's load
//! (the best round of each is shown), and a check that every variant trains
//! the same weights: `cargo run --release --example variants [depth] [rounds] [games] [variant]`
//! (a variant name runs that one alone, for `perf stat`).

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use othello_core::train::{TrainConfig, Trainer};

use othello_core::board::{perft_on, Board};
use othello_core::isa;

fn main() {
    let mut args = std::env::args().skip(1);
    let depth: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let games: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let only = args.next();
    let variants: Vec<_> = isa::supported()
        .into_iter()
        .filter(|v| only.as_deref().map_or(true, |name| name == v.name()))
        .collect();
    let mut best = vec![0f64; variants.len()];
    let mut train = vec![[0f64; 3]; variants.len()];
    let mut weights: Vec<Vec<u32>> = Vec::new();
    for _ in 0..rounds {
        for (i, &v) in variants.iter().enumerate() {
            let t = Instant::now();
            let leaves = perft_on(v, &Board::initial(), depth);
            let rate = leaves as f64 / t.elapsed().as_secs_f64();
            best[i] = best[i].max(rate);
            for (k, (threads, target_depth)) in [(1, 2), (2, 2), (2, 1)].into_iter().enumerate() {
                let cfg = TrainConfig {
                    threads,
                    target_depth,
                    ..TrainConfig::default()
                };
                let mut tr = Trainer::new(cfg).expect("valid config");
                tr.variant = Some(v);
                let t = Instant::now();
                tr.train(games, &AtomicBool::new(false), |_| {});
                train[i][k] = train[i][k].max(games as f64 / t.elapsed().as_secs_f64());
                if k == 1 && weights.len() <= i {
                    weights.push(tr.weights.w.iter().map(|x| x.to_bits()).collect());
                }
            }
        }
    }
    let same = weights.windows(2).all(|p| p[0] == p[1]);
    println!("every variant trained bitwise the same weights: {same}");
    for (v, r) in variants.iter().zip(&best) {
        println!(
            "{:<14} perft({depth}) {:>7.1} M leaves/s  {:.2}x baseline (best of {rounds})",
            v.name(),
            r / 1e6,
            r / best[0]
        );
    }
    for (v, t) in variants.iter().zip(&train) {
        println!(
            "{:<14} training {games} games: {:>6.0} games/s 1 thread, {:>6.0} 2 threads, {:>6.0} 2 threads target_depth=1",
            v.name(),
            t[0],
            t[1],
            t[2]
        );
    }
}
