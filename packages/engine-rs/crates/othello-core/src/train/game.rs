//! One training game (self-play, or against the League heuristic), compiled
//! for each CPU variant, and the gradient scales of its positions under
//! either training rule.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::board::Board;
use crate::eval::{reward, FeatureBuf, Weights};
use crate::isa::Kernels;
use crate::pattern::MAX_INSTANCES;
use crate::rng::Rng;
use crate::search::{search_until, Limits, TranspositionTable};

use super::evolve::RANKING_RANDOM_RATE;
use super::{Optimizer, TrainConfig};
use crate::league::heuristic_move;

/// The stream salt of the draw that decides whether a game is against the heuristic.
const HEURISTIC_SALT: u64 = 0x7464_5F68_6575_7269;

/// One finished self-play game: what the learner needs. Records are recycled
/// (the trainer keeps the ones it applied for the next batch), so a game
/// allocates nothing once its buffers have grown to a game's size.
#[derive(Default)]
pub(super) struct GameRecord {
    /// Per position: coefficient-free features (n per position) and the gradient scale.
    pub(super) features: Vec<u32>,
    pub(super) scales: Vec<f32>,
    pub(super) n_feat: usize,
    pub(super) black_diff: i32,
    // Per position, while the game is played: the value (mover's view and
    // black's), the mover's sign, whether it explored, its 2-ply target; and
    // the folded TD errors.
    values: Vec<f32>,
    black: Vec<f32>,
    signs: Vec<f32>,
    explored: Vec<bool>,
    targets: Vec<f32>,
    folds: Vec<Option<f32>>,
}

/// The move an exploration step or a deeper search picks, or `None`: play
/// the greedy move.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pick_move(
    b: &Board,
    moves: u64,
    w: &Weights,
    rng: &mut Rng,
    eps: f64,
    depth: u32,
    tt: Option<&mut TranspositionTable>,
    stop: &AtomicBool,
) -> Option<(u32, bool)> {
    if eps > 0.0 && rng.next_f64() < eps {
        return Some((rng.pick_bit(moves), true));
    }
    if depth > 1 {
        if let Some(tt) = tt {
            // A pause must not wait for a deep search: it polls `stop`, and the
            // game loop then abandons the game (the batch is discarded).
            let r = search_until(
                b,
                w,
                tt,
                &Limits {
                    depth,
                    time: None,
                    exact_empties: 0,
                },
                Some(stop),
            );
            if let Some(m) = r.best_move {
                return Some((m, false));
            }
        }
    }
    None
}

/// The heuristic's move in a game against it, and whether it was random
/// (the League's rate of random moves).
fn heuristic_turn(b: &Board, moves: u64, rng: &mut Rng) -> (u32, bool) {
    if rng.next_f64() < RANKING_RANDOM_RATE {
        (rng.pick_bit(moves), true)
    } else {
        (heuristic_move(b, moves), false)
    }
}

crate::multiversion! {
    /// Plays training game `game` and returns what the learner needs (`None`
    /// when `stop` was raised), compiled for the CPU variant.
    #[allow(dead_code)]
    pub(super) fn play_game / play_game_on (
        w: &Weights,
        cfg: &TrainConfig,
        game: u64,
        tt: Option<&mut TranspositionTable>,
        stop: &AtomicBool,
        rec: GameRecord,
    ) -> Option<GameRecord> = play_game_k;
}

#[inline(always)]
fn play_game_k<K: Kernels>(
    w: &Weights,
    cfg: &TrainConfig,
    game: u64,
    mut tt: Option<&mut TranspositionTable>,
    stop: &AtomicBool,
    mut rec: GameRecord,
) -> Option<GameRecord> {
    if cfg.inject_panic_every > 0 && game % cfg.inject_panic_every == 0 {
        panic!("injected fault in game {game}");
    }
    let mut rng = Rng::new(cfg.seed, game);
    let eps = cfg.epsilon(game);
    // Games against the heuristic: it plays black in even games, white in odd.
    let heuristic_black = (cfg.td_heuristic_games > 0.0
        && Rng::new(cfg.seed ^ HEURISTIC_SALT, game).next_f64() < cfg.td_heuristic_games)
        .then_some(game % 2 == 0);
    let n_feat = w.set.n_instances() + 1;
    rec.features.clear();
    rec.values.clear();
    rec.signs.clear();
    rec.explored.clear();
    // With `target_depth` 2: each position's own 2-ply value (mover's view).
    rec.targets.clear();
    let GameRecord {
        features,
        values,
        signs,
        explored,
        targets,
        ..
    } = &mut rec;
    let mut b = Board::initial();
    let mut black_to_move = true;
    let mut buf: FeatureBuf = [0; MAX_INSTANCES + 1];
    let set = &*w.set;
    let n_inst = set.n_instances();
    // Both views' raw indices: this position's features from the mover's
    // view, and every child's starting point from the opponent's. Computed
    // once from the board, then updated per move (only the instances of the
    // move's square and of the flipped discs change).
    let (mut mine, mut theirs) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
    set.raw_index_pair(&b, &mut mine, &mut theirs);
    while let Some((moves, passed)) = b.next_turn_k::<K>() {
        black_to_move ^= passed;
        if passed {
            std::mem::swap(&mut mine, &mut theirs);
        }
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let base = (w.phase(&b) * set.phase_len) as u32;
        for (o, &r) in buf[..n_inst].iter_mut().zip(&mine[..n_inst]) {
            *o = set.canonical(r) + base;
        }
        buf[n_inst] = base + set.phase_len as u32 - 1;
        let raw: f32 = buf[..n_feat].iter().map(|&i| w.w[i as usize]).sum();
        features.extend_from_slice(&buf[..n_feat]);
        // The greedy move, computed at most once: the 2-ply target scores it
        // first, and greedy play (no exploration, depth 1) plays it.
        let mut greedy = None;
        if cfg.target_depth == 2 {
            let g = w.greedy_child_k::<K>(&b, moves, &theirs).0;
            greedy = Some(g);
            targets.push(w.two_ply_k::<K>(&b, &mine, g));
        }
        values.push(raw.tanh());
        signs.push(if black_to_move { 1.0f32 } else { -1.0 });
        let tt = tt.as_deref_mut();
        // No closure for the greedy move: closures are not inlined into the
        // variant's code reliably, and this one is the game's hot path.
        let (sq, random) = if heuristic_black == Some(black_to_move) {
            heuristic_turn(&b, moves, &mut rng)
        } else {
            match pick_move(&b, moves, w, &mut rng, eps, cfg.search_depth, tt, stop) {
                Some(chosen) => chosen,
                None => match greedy {
                    Some(g) => (g, false),
                    None => (w.greedy_child_k::<K>(&b, moves, &theirs).0, false),
                },
            }
        };
        explored.push(random);
        let flips = K::flips(b.player, b.opponent, sq);
        // The new mover's view is the old `theirs` with the square 0 -> 2 and
        // each flipped disc 1 -> 2; the other view the old `mine` with the
        // square 0 -> 1 and each flipped disc 2 -> 1.
        for (i, p) in set.square_terms(sq as usize) {
            theirs[i] += 2 * p;
            mine[i] += p;
        }
        let mut f = flips;
        while f != 0 {
            for (i, p) in set.square_terms(f.trailing_zeros() as usize) {
                theirs[i] += p;
                mine[i] -= p;
            }
            f &= f - 1;
        }
        std::mem::swap(&mut mine, &mut theirs);
        b = b.play_flips(sq, flips);
        black_to_move = !black_to_move;
        debug_assert!({
            let (mut m2, mut t2) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
            set.raw_index_pair(&b, &mut m2, &mut t2);
            m2 == mine && t2 == theirs
        });
    }
    let side_diff = b.final_score();
    let black_diff = if black_to_move { side_diff } else { -side_diff };
    if cfg.target_depth == 2 {
        search_target_scales(&rec.values, &rec.targets, &mut rec.scales);
    } else {
        td_lambda_scales(cfg, &mut rec, reward(black_diff));
    }
    rec.n_feat = n_feat;
    rec.black_diff = black_diff;
    Some(rec)
}

/// Gradient scales towards each position's own 2-ply value: `(S_t - V_t)
/// (1 - V_t^2)`, both in the mover's view (the tables are shared between
/// colours, so the mover's view is the weights' own). The target does not
/// depend on the move played next, so positions where an exploration move
/// followed learn too, and a position's siblings' replies shape its target
/// where TD only sees the one line played.
fn search_target_scales(values: &[f32], targets: &[f32], scales: &mut Vec<f32>) {
    scales.clear();
    scales.extend(
        values
            .iter()
            .zip(targets)
            .map(|(&v, &s)| (s - v) * (1.0 - v * v)),
    );
}

/// The TD(lambda) errors folded backwards, `c_t = delta_t + lambda * c_{t+1}`
/// with `delta_t = V_{t+1} - V_t` (`values` and the result `r` in black's
/// view): the accumulated `sum_t delta_t * e_t` of accumulating traces. With
/// `cut_at_exploration`, a position where an exploration move was played gets
/// `None` (no update: the move says nothing about the greedy policy's value)
/// and the trace is cut there. Training (`td_lambda_scales`) and
/// [`crate::replay::replay_game`] both fold with this.
#[must_use]
pub fn td_lambda_folds(
    lambda: f32,
    cut_at_exploration: bool,
    values: &[f32],
    explored: &[bool],
    r: f32,
) -> Vec<Option<f32>> {
    let mut folds = Vec::new();
    td_lambda_folds_into(lambda, cut_at_exploration, values, explored, r, &mut folds);
    folds
}

/// [`td_lambda_folds`] into a reused buffer.
pub(super) fn td_lambda_folds_into(
    lambda: f32,
    cut_at_exploration: bool,
    values: &[f32],
    explored: &[bool],
    r: f32,
    folds: &mut Vec<Option<f32>>,
) {
    let t_len = values.len();
    folds.clear();
    folds.resize(t_len, None);
    let mut c = 0.0f32;
    for t in (0..t_len).rev() {
        if explored[t] && cut_at_exploration {
            c = 0.0;
            continue;
        }
        let v_next = if t + 1 < t_len { values[t + 1] } else { r };
        c = (v_next - values[t]) + lambda * c;
        folds[t] = Some(c);
    }
}

/// Gradient scales of TD(lambda) along the game played ([`td_lambda_folds`]);
/// `r` is the result in black's view.
fn td_lambda_scales(cfg: &TrainConfig, rec: &mut GameRecord, r: f32) {
    let GameRecord {
        values,
        black,
        signs,
        explored,
        folds,
        scales,
        ..
    } = rec;
    black.clear();
    black.extend(values.iter().zip(signs.iter()).map(|(v, s)| s * v));
    let cut_at_exploration = cfg.optimizer != Optimizer::Adam;
    td_lambda_folds_into(cfg.lambda, cut_at_exploration, black, explored, r, folds);
    scales.clear();
    scales.extend(
        folds
            .iter()
            .enumerate()
            // dV_black/dw = sign * (1 - tanh^2) on each active weight.
            .map(|(t, c)| c.map_or(0.0, |c| c * signs[t] * (1.0 - values[t] * values[t]))),
    );
}
