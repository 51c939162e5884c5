//! Othello League matches: an engine against a random player or the standard
//! weighted-piece-counter (WPC) heuristic, both sides playing a random move 10%
//! of the time, colours swapped in each pair of games.

use rayon::prelude::*;

use crate::board::Board;
use crate::eval::Weights;
use crate::pattern::MAX_INSTANCES;
use crate::rng::Rng;
use crate::search::{search, Limits, TranspositionTable};

/// The standard heuristic WPC of the Othello League (Yoshioka et al.), row-major.
pub const HEURISTIC_WPC: [f32; 64] = [
    1.00, -0.25, 0.10, 0.05, 0.05, 0.10, -0.25, 1.00, //
    -0.25, -0.25, 0.01, 0.01, 0.01, 0.01, -0.25, -0.25, //
    0.10, 0.01, 0.05, 0.02, 0.02, 0.05, 0.01, 0.10, //
    0.05, 0.01, 0.02, 0.01, 0.01, 0.02, 0.01, 0.05, //
    0.05, 0.01, 0.02, 0.01, 0.01, 0.02, 0.01, 0.05, //
    0.10, 0.01, 0.05, 0.02, 0.02, 0.05, 0.01, 0.10, //
    -0.25, -0.25, 0.01, 0.01, 0.01, 0.01, -0.25, -0.25, //
    1.00, -0.25, 0.10, 0.05, 0.05, 0.10, -0.25, 1.00,
];

/// A player in a match.
#[derive(Clone, Copy, Debug)]
pub enum Player<'a> {
    /// Uniformly random legal moves.
    Random,
    /// 1-ply greedy on [`HEURISTIC_WPC`].
    Heuristic,
    /// The pattern evaluation, searched to `depth` plies (1 = greedy, the
    /// League's own rule), solving the game exactly once at most
    /// `exact_empties` squares are empty (0 = never, as in the League).
    Engine {
        /// The evaluation.
        weights: &'a Weights,
        /// Search depth in plies.
        depth: u32,
        /// Empty squares at or below which the rest of the game is solved.
        exact_empties: u32,
    },
}

fn wpc(b: &Board) -> f32 {
    let mut s = 0.0;
    for (i, w) in HEURISTIC_WPC.iter().enumerate() {
        s += w * (((b.player >> i) & 1) as f32 - ((b.opponent >> i) & 1) as f32);
    }
    s
}

/// The WPC heuristic's move among `moves` (greedy at 1 ply).
pub(crate) fn heuristic_move(b: &Board, moves: u64) -> u32 {
    greedy(b, moves, wpc)
}

fn greedy(b: &Board, moves: u64, score_for_opponent: impl Fn(&Board) -> f32) -> u32 {
    let mut best = (f32::INFINITY, moves.trailing_zeros());
    let mut m = moves;
    while m != 0 {
        let sq = m.trailing_zeros();
        m &= m - 1;
        let v = score_for_opponent(&b.play(sq));
        if v < best.0 {
            best = (v, sq);
        }
    }
    best.1
}

impl<'a> Player<'a> {
    /// The League's engine player: greedy at 1 ply on `weights`, no solver.
    #[must_use]
    pub fn greedy(weights: &'a Weights) -> Player<'a> {
        Player::Engine {
            weights,
            depth: 1,
            exact_empties: 0,
        }
    }

    /// The move this player picks; `tt` is created on the first search (a
    /// greedy player never needs one, and a 1-ply game then allocates nothing).
    fn choose(&self, b: &Board, rng: &mut Rng, tt: &mut Option<TranspositionTable>) -> u32 {
        let moves = b.moves();
        match *self {
            Player::Random => rng.pick_bit(moves),
            Player::Heuristic => greedy(b, moves, wpc),
            Player::Engine {
                weights,
                depth,
                exact_empties,
            } if depth <= 1 && b.empties() > exact_empties => {
                let mut mine = [0u32; MAX_INSTANCES];
                let mut theirs = [0u32; MAX_INSTANCES];
                weights.set.raw_index_pair(b, &mut mine, &mut theirs);
                weights.greedy_child(b, moves, &theirs)
            }
            Player::Engine {
                weights,
                depth,
                exact_empties,
            } => search(
                b,
                weights,
                tt.get_or_insert_with(|| TranspositionTable::with_bytes(1 << 16)),
                &Limits {
                    depth,
                    time: None,
                    exact_empties,
                },
            )
            .best_move
            .unwrap_or(moves.trailing_zeros()),
        }
    }
}

/// Plays one game; returns the disc difference from `first`'s (black's) view.
pub fn play(black: &Player<'_>, white: &Player<'_>, random_rate: f64, rng: &mut Rng) -> i32 {
    let mut tt = None;
    let mut b = Board::initial();
    let mut black_to_move = true;
    while let Some((moves, passed)) = b.next_turn() {
        black_to_move ^= passed;
        let sq = if rng.next_f64() < random_rate {
            rng.pick_bit(moves)
        } else if black_to_move {
            black.choose(&b, rng, &mut tt)
        } else {
            white.choose(&b, rng, &mut tt)
        };
        b = b.play(sq);
        black_to_move = !black_to_move;
    }
    let d = b.final_score();
    if black_to_move {
        d
    } else {
        -d
    }
}

/// The result of a match.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchResult {
    /// Games played.
    pub games: u64,
    /// Wins of the tested player.
    pub wins: u64,
    /// Draws.
    pub draws: u64,
    /// Losses of the tested player.
    pub losses: u64,
    /// (wins + draws / 2) / games.
    pub score: f64,
    /// Half-width of the 95% confidence interval of the score (normal approximation).
    pub ci95: f64,
}

/// Plays `pairs` pairs of games (colours swapped in each pair) of `player` against `opponent`.
#[must_use]
pub fn league_match(
    player: &Player<'_>,
    opponent: &Player<'_>,
    pairs: u64,
    random_rate: f64,
    seed: u64,
) -> MatchResult {
    let diffs: Vec<i32> = (0..pairs * 2)
        .into_par_iter()
        .map(|g| {
            let mut rng = Rng::new(seed ^ 0x5EED_1EA6, g);
            if g % 2 == 0 {
                play(player, opponent, random_rate, &mut rng)
            } else {
                -play(opponent, player, random_rate, &mut rng)
            }
        })
        .collect();
    let games = diffs.len() as u64;
    let wins = diffs.iter().filter(|&&d| d > 0).count() as u64;
    let draws = diffs.iter().filter(|&&d| d == 0).count() as u64;
    let score = if games == 0 {
        0.0
    } else {
        (wins as f64 + 0.5 * draws as f64) / games as f64
    };
    let var: f64 = if games < 2 {
        0.0
    } else {
        diffs
            .iter()
            .map(|&d| {
                let s = if d > 0 {
                    1.0
                } else if d == 0 {
                    0.5
                } else {
                    0.0
                };
                (s - score) * (s - score)
            })
            .sum::<f64>()
            / (games - 1) as f64
    };
    MatchResult {
        games,
        wins,
        draws,
        losses: games - wins - draws,
        score,
        ci95: 1.96 * (var / games.max(1) as f64).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_empties_make_the_engine_play_perfect_endgames() {
        use crate::search::solve_exact;
        // Zero weights: the greedy player takes the lowest square, so it
        // often throws away a won endgame; with the solver it never does.
        let w = Weights::default_weights();
        let solver = Player::Engine {
            weights: &w,
            depth: 1,
            exact_empties: 10,
        };
        let mut tt = None;
        let mut rng = Rng::new(3, 0);
        let (mut checked, mut greedy_blunders) = (0, 0);
        while checked < 40 {
            let plies = 52 + rng.below(4);
            let b = Board::initial().random_walk(&mut rng, plies);
            let moves = b.moves();
            if moves == 0 || b.empties() > 10 {
                continue;
            }
            let exact_after = |sq: u32| -solve_exact(&b.play(sq)).0;
            let mut best = i32::MIN;
            let mut m = moves;
            while m != 0 {
                best = best.max(exact_after(m.trailing_zeros()));
                m &= m - 1;
            }
            let chosen = solver.choose(&b, &mut rng, &mut tt);
            assert_eq!(
                exact_after(chosen),
                best,
                "{}",
                b.ascii(crate::board::Color::Black)
            );
            let greedy = Player::greedy(&w).choose(&b, &mut rng, &mut tt);
            greedy_blunders += u32::from(exact_after(greedy) < best);
            checked += 1;
        }
        assert!(
            greedy_blunders > 0,
            "the check needs positions the greedy player gets wrong"
        );
    }

    #[test]
    fn heuristic_beats_random_and_match_is_reproducible() {
        let a = league_match(&Player::Heuristic, &Player::Random, 100, 0.1, 1);
        let b = league_match(&Player::Heuristic, &Player::Random, 100, 0.1, 1);
        assert_eq!(a, b);
        assert_eq!(a.games, 200);
        assert!(a.score > 0.6, "{a:?}");
        assert!(a.ci95 > 0.0 && a.ci95 < 0.2);
    }
}
