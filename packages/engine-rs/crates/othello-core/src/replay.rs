//! Diagnostics of a learner: one game replayed as training plays it with both
//! training rules' targets per position, and the coverage and spread of an
//! evaluation (what the Python bindings report; here so `cargo test` covers them).

use crate::board::Board;
use crate::eval::{reward, Weights};
use crate::pattern::MAX_INSTANCES;
use crate::rng::Rng;
use crate::train::td_lambda_folds;

/// One position of a replayed game ([`replay_game`]); values in black's view.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayRow {
    /// Plies played before this position (passes not counted).
    pub ply: u32,
    /// The side to move: 1 black, 2 white.
    pub player: u8,
    /// The square played.
    pub square: u32,
    /// Whether the move was an exploration (random) move.
    pub explored: bool,
    /// The position's value.
    pub value: f32,
    /// `V(next position) - V(this one)`; the last uses the game's reward.
    pub td_error: f32,
    /// The TD(lambda) target (`target_depth` 1): the value plus the folded
    /// errors, folded exactly as training folds them ([`td_lambda_folds`]: the
    /// trace is cut at an exploration move, whose position keeps its value, no update).
    pub lambda_target: f32,
    /// The 2-ply minimax value (`target_depth` 2, the default's target).
    pub search_target: f32,
}

/// Plays game `seed` as training does (the greedy 1-ply move, or a random one
/// at rate `epsilon`, drawn like training draws it) and logs, per position,
/// both training rules' targets.
#[must_use]
pub fn replay_game(w: &Weights, seed: u64, epsilon: f64, lambda: f32) -> Vec<ReplayRow> {
    let set = &*w.set;
    let (mut mine, mut theirs) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
    let mut rng = Rng::new(seed, 0);
    let mut b = Board::initial();
    let mut black = true;
    let mut rows: Vec<ReplayRow> = Vec::new();
    while let Some((m, passed)) = b.next_turn() {
        black ^= passed;
        set.raw_index_pair(&b, &mut mine, &mut theirs);
        let greedy = w.greedy_child(&b, m, &theirs);
        let explored = epsilon > 0.0 && rng.next_f64() < epsilon;
        let square = if explored { rng.pick_bit(m) } else { greedy };
        let sign = if black { 1.0 } else { -1.0 };
        rows.push(ReplayRow {
            ply: rows.len() as u32,
            player: if black { 1 } else { 2 },
            square,
            explored,
            value: sign * w.value(&b),
            td_error: 0.0,
            lambda_target: 0.0,
            search_target: sign * w.two_ply(&b, &mine, greedy),
        });
        b = b.play(square);
        black = !black;
    }
    let d = b.final_score();
    let r = reward(if black { d } else { -d });
    let values: Vec<f32> = rows.iter().map(|row| row.value).collect();
    let explored: Vec<bool> = rows.iter().map(|row| row.explored).collect();
    let folds = td_lambda_folds(lambda, true, &values, &explored, r);
    for (t, fold) in folds.into_iter().enumerate() {
        let next = values.get(t + 1).copied().unwrap_or(r);
        rows[t].td_error = next - values[t];
        rows[t].lambda_target = values[t] + fold.unwrap_or(0.0);
    }
    rows
}

/// Fixed sample positions (32 random games, every 8th ply) for the evaluation variance.
#[must_use]
pub fn sample_positions() -> Vec<Board> {
    let mut rng = Rng::new(12345, 0);
    let mut out = Vec::new();
    for g in 0..32 {
        let mut b = Board::initial();
        for ply in 0..60 {
            let Some((m, _)) = b.next_turn() else {
                break;
            };
            b = b.play(rng.pick_bit(m));
            if (ply + g) % 8 == 0 {
                out.push(b);
            }
        }
    }
    out
}

/// The share of weights that are not zero (learnt), and the variance of the
/// evaluation over [`sample_positions`] (0 for untrained weights).
#[must_use]
pub fn coverage_and_variance(w: &Weights) -> (f64, f64) {
    let nonzero = w.w.iter().filter(|&&v| v != 0.0).count();
    let vals: Vec<f64> = sample_positions()
        .iter()
        .map(|b| f64::from(w.value(b)))
        .collect();
    let mean = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
    let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len().max(1) as f64;
    (nonzero as f64 / w.w.len().max(1) as f64, var)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{TrainConfig, Trainer};
    use std::sync::atomic::AtomicBool;

    fn trained() -> Weights {
        let cfg = TrainConfig {
            threads: 1,
            batch_games: 16,
            pattern_set: "small".into(),
            n_phases: 2,
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(cfg).unwrap();
        t.train(256, &AtomicBool::new(false), |_| {});
        t.weights
    }

    #[test]
    fn the_lambda_target_is_cut_at_exploration_moves_as_training_cuts_it() {
        let w = trained();
        let rows = replay_game(&w, 3, 0.3, 0.5);
        let explored = rows.iter().filter(|r| r.explored).count();
        assert!(explored > 3 && explored < rows.len(), "{explored}");
        for (t, row) in rows.iter().enumerate() {
            if row.explored {
                // No update: the target is the value itself.
                assert_eq!(row.lambda_target, row.value, "ply {t}");
            } else if rows.get(t + 1).is_some_and(|n| n.explored) {
                // The trace is cut after this position: the target is the one-step one.
                let next = rows[t + 1].value;
                assert!((row.lambda_target - next).abs() < 1e-6, "ply {t}");
            }
        }
        // Without exploration, the folds chain to the end: the first target
        // sums every later error.
        let rows = replay_game(&w, 3, 0.0, 1.0);
        assert!(rows.iter().all(|r| !r.explored));
        let end = rows.last().unwrap();
        let r = end.value + end.td_error;
        assert!((rows[0].lambda_target - r).abs() < 1e-4);
    }

    #[test]
    fn coverage_and_variance_grow_with_training() {
        let zero = Weights::new(
            std::sync::Arc::new(crate::PatternSet::named("small").unwrap()),
            2,
        )
        .unwrap();
        assert_eq!(coverage_and_variance(&zero), (0.0, 0.0));
        let (c, v) = coverage_and_variance(&trained());
        assert!(c > 0.0 && c < 1.0 && v > 0.0, "{c} {v}");
        assert_eq!(sample_positions().len(), sample_positions().len());
        assert!(sample_positions().len() > 100);
    }
}
