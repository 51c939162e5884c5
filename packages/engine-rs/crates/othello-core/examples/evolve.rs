//! Trains one learner (`td`, `ctdl` or `es`) for a wall-clock budget and
//! prints its League score against the WPC heuristic at fixed training times
//! (the evaluation's own time is not counted), one CSV line per point:
//! `learner,seed,train_s,games,generation,score,ci95,best_fitness,sigma,rms_mean`
//! (the last two for `sep-cma`), then with `AVG` one score per rate (below), then a
//! `#` line with the final network's score against the random player (same protocol).
//!
//! Settings from the environment: `LEARNER`, `SEED`, `THREADS`, `SECONDS`
//! (training budget; with `CPU=1` in CPU seconds), `EVERY` (seconds between evaluations), `PAIRS` (League
//! pairs per evaluation, 1,000 = the League protocol), `SET`, `PHASES`,
//! `SAVE` (write the final weights as an engine checkpoint here), `RESUME`
//! (continue from such a checkpoint with the settings given here; the
//! budget and the printed seconds then count from the resumption),
//! `RESTART_RMS` (with `RESUME`: a new `sep-cma` search from the saved mean
//! scaled to that root mean square), `SPLIT=k` (with `RESUME` of a one-phase
//! `sep-cma` run and `PHASES=k`: its tables copied into k phases, searched on
//! their own from there, as `es_split_games` does within a run),
//! `RACE=a,b,...` (instead of `RESUME`: the checkpoints of one-search `es`
//! runs of seeds `SEED + j * 2^32`, which are the searches of an
//! `es_portfolio` of seed `SEED`, raced now as the learner does when its
//! race ends; the winner goes on, with `SPLIT` applied after), and the
//! learner fields `MU`, `LAMBDA_ES`, `SIGMA`, `SIGMA_DECAY`, `RECOMBINE`, `FIT_PAIRS`, `FIT_MAX`, `FIT_STEP`,
//! `STRATEGY`, `MARGIN`, `MEAN_RATE`, `NORMALIZE`, `SPLIT_GAMES`, `PORTFOLIO`,
//! `PORTFOLIO_GAMES`, `PORTFOLIO_PAIRS`, `RANDOM_PAIRS`, `ELITE_PAIRS`, `ELITE_EVERY`, `POP`, `TD_GAMES`,
//! `MATCH_PAIRS`, `LR`, `TARGET`, `LAMBDA`, `BATCH`, `EPS`, `DECAY`; `AVG=a,b,...`
//! (`sep-cma`) also scores, at each point, exponential moving averages of the
//! search mean scaled to unit rms, one per rate `a` per generation (iterate averaging).
//! With `ELITE_PAIRS` the weights scored are the elite, and a last column
//! `mean S` scores the search mean at the same point.
//!
//! `cargo run --release --example evolve`

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use othello_core::checkpoint;
use othello_core::league::{league_match, Player};
use othello_core::state::{trainer_from_checkpoint, trainer_to_checkpoint};
use othello_core::train::evolve::{copy_first_phase, searched_entries, ParkedSearch};
use othello_core::train::{Learner, TrainConfig, Trainer};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse().ok().unwrap_or_else(|| panic!("bad {name}"))
    })
}

/// This process's CPU seconds (user + system, all threads; Linux), or
/// `None` where /proc is not there.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `RACE`: the one-search runs `runs` (run `j` of seed `cfg.seed + j * 2^32`)
/// made the searches of an `es_portfolio` of `cfg.seed` whose race ends now;
/// returns the trainer of the winner, configured with `cfg`.
fn race(runs: Vec<Trainer>, cfg: &TrainConfig) -> Trainer {
    let mut runs = runs.into_iter();
    let mut t = runs.next().expect("RACE names at least one checkpoint");
    for (j, run) in (1u64..).zip(runs) {
        assert_eq!(
            run.config.seed,
            cfg.seed.wrapping_add(j << 32),
            "RACE: run {j}'s seed"
        );
        t.stats.games += run.stats.games;
        let mut population = run.population;
        population.search = j;
        t.population.parked.push(ParkedSearch {
            weights: run.weights.w,
            population,
        });
    }
    assert_eq!(t.config.seed, cfg.seed, "RACE: run 0's seed");
    t.config = TrainConfig {
        es_portfolio: 1 + t.population.parked.len() as u64,
        es_portfolio_games: t.stats.games,
        ..cfg.clone()
    };
    t.apply_config().expect("valid configuration");
    t.end_portfolio_race();
    println!(
        "# race: points per game {:?}, search {} goes on",
        t.population.last_race, t.population.search
    );
    t
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
        es_fitness_pairs_max: env("FIT_MAX", d.es_fitness_pairs_max),
        es_fitness_step: env("FIT_STEP", d.es_fitness_step),
        es_strategy: env("STRATEGY", d.es_strategy),
        es_fitness_margin: env("MARGIN", d.es_fitness_margin),
        es_mean_rate: env("MEAN_RATE", d.es_mean_rate),
        es_normalize: env("NORMALIZE", d.es_normalize),
        es_split_games: env("SPLIT_GAMES", d.es_split_games),
        es_portfolio: env("PORTFOLIO", d.es_portfolio),
        es_portfolio_games: env("PORTFOLIO_GAMES", d.es_portfolio_games),
        es_portfolio_pairs: env("PORTFOLIO_PAIRS", d.es_portfolio_pairs),
        es_random_pairs: env("RANDOM_PAIRS", d.es_random_pairs),
        es_elite_pairs: env("ELITE_PAIRS", d.es_elite_pairs),
        es_elite_every: env("ELITE_EVERY", d.es_elite_every),
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
    // CPU=1: SECONDS and EVERY count this process's CPU seconds (training
    // only), which the neighbours of a shared machine disturb much less.
    let cpu_budget = env("CPU", 0u8) == 1 && cpu_seconds().is_some();
    let every: f64 = env("EVERY", 15.0);
    let pairs: u64 = env("PAIRS", 1000);
    let load = |path: &str| {
        let saved = checkpoint::load(std::path::Path::new(path)).expect("a checkpoint");
        trainer_from_checkpoint(&saved).expect("a trainer checkpoint")
    };
    let mut t = match (std::env::var("RESUME"), std::env::var("RACE")) {
        (Ok(path), _) => {
            let mut t = load(&path);
            t.config = cfg.clone();
            t.apply_config().expect("valid configuration");
            t
        }
        (_, Ok(paths)) => race(paths.split(',').map(load).collect(), &cfg),
        _ => Trainer::new(cfg.clone()).expect("valid configuration"),
    };
    // RESTART_RMS=r (with RESUME of a `sep-cma` run): a restart. The search
    // mean, scaled to root mean square r (a 1-ply player's moves do not
    // change with the scale), starts a new search with the step `SIGMA`.
    if let Ok(v) = std::env::var("RESTART_RMS") {
        let r: f64 = v.parse().expect("bad RESTART_RMS");
        let cma = t
            .population
            .cma
            .take()
            .expect("RESTART_RMS needs a sep-cma checkpoint");
        let scale = r / cma.mean_rms().max(1e-300);
        for (i, m) in searched_entries(&t.weights).into_iter().zip(&cma.mean) {
            t.weights.w[i] = (m * scale) as f32;
        }
        t.population.elite = None;
    }
    // SPLIT=k (with RESUME of a one-phase `sep-cma` run): the saved weights
    // copied into each of k phases, and a new `sep-cma` search over all of
    // them from there, its step size and variances carried over.
    // A new trainer of k phases takes over the search, so that the rest of its
    // state (the optimizer's, which `es` does not use) is sized for k phases.
    if let Ok(v) = std::env::var("SPLIT") {
        let k: usize = v.parse().expect("bad SPLIT");
        assert_eq!(t.weights.n_phases, 1, "SPLIT needs a one-phase checkpoint");
        let cma = t
            .population
            .cma
            .take()
            .expect("SPLIT needs a sep-cma checkpoint");
        let mut split = Trainer::new(TrainConfig {
            n_phases: k,
            ..t.config.clone()
        })
        .expect("valid configuration");
        let plen = t.weights.set.phase_len;
        split.weights.w[..plen].copy_from_slice(&t.weights.w);
        copy_first_phase(&mut split.weights.w, plen);
        split.population = std::mem::take(&mut t.population);
        split.population.cma = Some(cma.repeated(k));
        split.population.elite = None;
        split.stats = t.stats.clone();
        t = split;
    }
    // AVG=a,b,...: also score exponential moving averages (rate a per
    // generation) of the sep-CMA mean scaled to unit rms.
    let rates: Vec<f64> = std::env::var("AVG").map_or(Vec::new(), |v| {
        v.split(',').map(|x| x.parse().expect("bad AVG")).collect()
    });
    let mut averages: Vec<Vec<f64>> = vec![Vec::new(); rates.len()];
    let stop = AtomicBool::new(false);
    let (mut trained, mut next_eval) = (0.0, every);
    loop {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let next = t.stats.games + if learner == Learner::Td { 2048 } else { 1 };
        t.train(next, &stop, |_| {});
        if let Some(cma) = t.population.cma.as_ref() {
            let rms = cma.mean_rms().max(1e-300);
            for (avg, a) in averages.iter_mut().zip(&rates) {
                if avg.is_empty() {
                    avg.extend(cma.mean.iter().map(|m| m / rms));
                } else {
                    for (x, m) in avg.iter_mut().zip(&cma.mean) {
                        *x = (1.0 - a) * *x + a * m / rms;
                    }
                }
            }
        }
        trained += match (c0, cpu_seconds()) {
            (Some(a), Some(b)) if cpu_budget => b - a,
            _ => t0.elapsed().as_secs_f64(),
        };
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
            let (sigma, rms) = t
                .population
                .cma
                .as_ref()
                .map_or((f64::NAN, f64::NAN), |c| (c.sigma, c.mean_rms()));
            let live = searched_entries(&t.weights);
            // The League score of the weights with the searched entries set to `searched`.
            let score_of = |searched: &[f64]| {
                let mut w = t.weights.clone();
                for (&i, &v) in live.iter().zip(searched) {
                    w.w[i] = v as f32;
                }
                league_match(&Player::greedy(&w), &Player::Heuristic, pairs, 0.1, 7).score
            };
            let avg_scores: Vec<String> = averages
                .iter()
                .filter(|avg| !avg.is_empty())
                .map(|avg| format!(",{:.4}", score_of(avg)))
                .collect();
            // With an elite, the weights are the elite: score the search mean as well.
            let mean_score = match (&t.population.elite, &t.population.cma) {
                (Some(_), Some(cma)) => format!(",mean {:.4}", score_of(&cma.mean)),
                _ => String::new(),
            };
            println!(
                "{},{},{:.1},{},{},{:.4},{:.4},{:.4},{:.4},{:.4}{}{}",
                learner,
                cfg.seed,
                trained,
                t.stats.games,
                t.population.generation,
                r.score,
                r.ci95,
                best,
                sigma,
                rms,
                avg_scores.concat(),
                mean_score
            );
        }
        if trained >= seconds {
            break;
        }
    }
    let r = league_match(&Player::greedy(&t.weights), &Player::Random, pairs, 0.1, 7);
    println!("# final network vs random: {:.4} ± {:.4}", r.score, r.ci95);
    if let Ok(path) = std::env::var("SAVE") {
        let (tree, md) = trainer_to_checkpoint(&t);
        checkpoint::save(std::path::Path::new(&path), &tree, &md, false).expect("saved");
    }
}
