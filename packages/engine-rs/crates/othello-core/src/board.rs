//! Bitboard Othello: move generation, flips, perft.
//!
//! Square `i` is row `i / 8`, column `i % 8` (a1 = 0, h1 = 7, a8 = 56, h8 = 63).
//! A [`Board`] is always stored relative to the side to move: `player` holds
//! the discs of the side to move, `opponent` those of the other side.

use crate::error::EngineError;
use crate::isa::Kernels;
use crate::rng::Rng;

/// Files b..g: masks off wrap-around for shifts with a horizontal component.
const NOT_EDGE_FILES: u64 = 0x7E7E_7E7E_7E7E_7E7E;

/// A colour: black moves first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Color {
    /// The first player.
    Black,
    /// The second player.
    White,
}

impl Color {
    /// The other colour.
    #[must_use]
    pub fn other(self) -> Color {
        match self {
            Color::Black => Color::White,
            Color::White => Color::Black,
        }
    }
}

/// A position: the discs of the side to move and of the other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Board {
    /// Discs of the side to move.
    pub player: u64,
    /// Discs of the side not to move.
    pub opponent: u64,
}

#[inline(always)]
fn some_moves(p: u64, mask: u64, dir: u32) -> u64 {
    // Parallel-prefix (Kogge-Stone) fill in both directions along one line.
    let mut fl = mask & (p << dir);
    fl |= mask & (fl << dir);
    let ml = mask & (mask << dir);
    fl |= ml & (fl << (2 * dir));
    fl |= ml & (fl << (2 * dir));
    let mut fr = mask & (p >> dir);
    fr |= mask & (fr >> dir);
    let mr = mask & (mask >> dir);
    fr |= mr & (fr >> (2 * dir));
    fr |= mr & (fr >> (2 * dir));
    (fl << dir) | (fr >> dir)
}

/// Legal moves of the player with discs `p` against discs `o`, as a bit set.
#[inline]
#[must_use]
pub fn get_moves(p: u64, o: u64) -> u64 {
    let mo = o & NOT_EDGE_FILES;
    (some_moves(p, mo, 1) | some_moves(p, o, 8) | some_moves(p, mo, 7) | some_moves(p, mo, 9))
        & !(p | o)
}

#[inline(always)]
fn flips_dir(p: u64, om: u64, x: u64, dir: u32) -> u64 {
    let mut fl = om & (x << dir);
    fl |= om & (fl << dir);
    let pl = om & (om << dir);
    fl |= pl & (fl << (2 * dir));
    fl |= pl & (fl << (2 * dir));
    let capped_l = ((fl << dir) & p != 0) as u64;
    let mut fr = om & (x >> dir);
    fr |= om & (fr >> dir);
    let pr = om & (om >> dir);
    fr |= pr & (fr >> (2 * dir));
    fr |= pr & (fr >> (2 * dir));
    let capped_r = ((fr >> dir) & p != 0) as u64;
    (fl & capped_l.wrapping_neg()) | (fr & capped_r.wrapping_neg())
}

/// Discs flipped when the player with discs `p` plays on square `sq` against `o`.
///
/// Returns 0 when the move flips nothing (an illegal move on an empty square).
#[inline]
#[must_use]
pub fn get_flips(p: u64, o: u64, sq: u32) -> u64 {
    let x = 1u64 << sq;
    let mo = o & NOT_EDGE_FILES;
    flips_dir(p, mo, x, 1) | flips_dir(p, o, x, 8) | flips_dir(p, mo, x, 7) | flips_dir(p, mo, x, 9)
}

impl Default for Board {
    fn default() -> Self {
        Board::initial()
    }
}

impl Board {
    /// The standard initial position, black to move.
    #[must_use]
    pub fn initial() -> Board {
        // d5 (27) and e4 (36) are black in the usual picture; rows count from the top.
        Board {
            player: (1 << 28) | (1 << 35),
            opponent: (1 << 27) | (1 << 36),
        }
    }

    /// Legal moves of the side to move.
    #[inline]
    #[must_use]
    pub fn moves(&self) -> u64 {
        get_moves(self.player, self.opponent)
    }

    /// [`Board::play`] with the kernels `K` (see [`crate::isa`]).
    #[inline(always)]
    #[must_use]
    pub fn play_k<K: Kernels>(&self, sq: u32) -> Board {
        self.play_flips(sq, K::flips(self.player, self.opponent, sq))
    }

    /// [`Board::moves`] with the kernels `K`.
    #[inline(always)]
    #[must_use]
    pub fn moves_k<K: Kernels>(&self) -> u64 {
        K::moves(self.player, self.opponent)
    }

    /// [`Board::next_turn`] with the kernels `K`.
    #[inline(always)]
    pub fn next_turn_k<K: Kernels>(&mut self) -> Option<(u64, bool)> {
        let moves = self.moves_k::<K>();
        if moves != 0 {
            return Some((moves, false));
        }
        let passed = self.pass();
        let replies = passed.moves_k::<K>();
        if replies == 0 {
            return None;
        }
        *self = passed;
        Some((replies, true))
    }

    /// The position after the side to move plays `sq` (which must be legal).
    #[inline]
    #[must_use]
    pub fn play(&self, sq: u32) -> Board {
        self.play_flips(sq, get_flips(self.player, self.opponent, sq))
    }

    /// [`Board::play`] when the move's flips (`get_flips`) are already known.
    #[inline]
    #[must_use]
    pub fn play_flips(&self, sq: u32, flips: u64) -> Board {
        Board {
            player: self.opponent ^ flips,
            opponent: self.player | flips | (1u64 << sq),
        }
    }

    /// Gives the turn to whoever can move. Returns the legal moves of the side
    /// then to move, and whether that took a forced pass (made on `self`: the
    /// side to move had no move, the other side has). Returns `None`, and
    /// leaves `self` as it is, when neither side can move: the game is over.
    /// Every game loop starts its turn with this.
    #[inline]
    pub fn next_turn(&mut self) -> Option<(u64, bool)> {
        let moves = self.moves();
        if moves != 0 {
            return Some((moves, false));
        }
        let passed = self.pass();
        let replies = passed.moves();
        if replies == 0 {
            return None;
        }
        *self = passed;
        Some((replies, true))
    }

    /// The position after the side to move passes.
    #[inline]
    #[must_use]
    pub fn pass(&self) -> Board {
        Board {
            player: self.opponent,
            opponent: self.player,
        }
    }

    /// The position after up to `plies` uniformly random moves from this one
    /// (a forced pass counts as a ply); stops early when the game ends. For
    /// tests and experiments that need varied positions.
    #[must_use]
    pub fn random_walk(&self, rng: &mut Rng, plies: u32) -> Board {
        let mut b = *self;
        for _ in 0..plies {
            let moves = b.moves();
            if moves != 0 {
                b = b.play(rng.pick_bit(moves));
            } else if b.is_game_over() {
                break;
            } else {
                b = b.pass();
            }
        }
        b
    }

    /// Whether neither side can move.
    #[inline]
    #[must_use]
    pub fn is_game_over(&self) -> bool {
        self.moves() == 0 && get_moves(self.opponent, self.player) == 0
    }

    /// Number of empty squares.
    #[inline]
    #[must_use]
    pub fn empties(&self) -> u32 {
        64 - (self.player | self.opponent).count_ones()
    }

    /// Disc difference from the side to move's view, empties going to the winner.
    #[must_use]
    pub fn final_score(&self) -> i32 {
        let p = self.player.count_ones() as i32;
        let o = self.opponent.count_ones() as i32;
        let e = self.empties() as i32;
        match p.cmp(&o) {
            std::cmp::Ordering::Greater => p - o + e,
            std::cmp::Ordering::Less => p - o - e,
            std::cmp::Ordering::Equal => 0,
        }
    }

    /// Builds a board from 64 cells (0 empty, 1 black, 2 white) and the side to move.
    ///
    /// # Errors
    /// [`EngineError::InvalidBoard`] when a cell is not 0, 1 or 2 or the length is not 64.
    pub fn from_cells(cells: &[u8], to_move: Color) -> Result<Board, EngineError> {
        if cells.len() != 64 {
            return Err(EngineError::InvalidBoard(format!(
                "board must have 64 cells, got {}",
                cells.len()
            )));
        }
        let (mut black, mut white) = (0u64, 0u64);
        for (i, &c) in cells.iter().enumerate() {
            match c {
                0 => {}
                1 => black |= 1 << i,
                2 => white |= 1 << i,
                v => {
                    return Err(EngineError::InvalidBoard(format!(
                        "cell {i} has value {v}; allowed: 0 (empty), 1 (black), 2 (white)"
                    )))
                }
            }
        }
        Ok(match to_move {
            Color::Black => Board {
                player: black,
                opponent: white,
            },
            Color::White => Board {
                player: white,
                opponent: black,
            },
        })
    }

    /// The 64 cells (0 empty, 1 black, 2 white) given which colour is to move.
    #[must_use]
    pub fn to_cells(&self, to_move: Color) -> [u8; 64] {
        let (black, white) = match to_move {
            Color::Black => (self.player, self.opponent),
            Color::White => (self.opponent, self.player),
        };
        let mut out = [0u8; 64];
        for (i, c) in out.iter_mut().enumerate() {
            if black >> i & 1 == 1 {
                *c = 1;
            } else if white >> i & 1 == 1 {
                *c = 2;
            }
        }
        out
    }

    /// An ASCII picture: `X` black, `O` white, `.` empty, `*` a legal move.
    #[must_use]
    pub fn ascii(&self, to_move: Color) -> String {
        let cells = self.to_cells(to_move);
        let moves = self.moves();
        let mut s = String::from("  a b c d e f g h\n");
        for r in 0..8 {
            s.push_str(&format!("{}", r + 1));
            for c in 0..8 {
                let i = r * 8 + c;
                let ch = match cells[i] {
                    1 => 'X',
                    2 => 'O',
                    _ if moves >> i & 1 == 1 => '*',
                    _ => '.',
                };
                s.push(' ');
                s.push(ch);
            }
            s.push('\n');
        }
        s
    }
}

/// Square name such as `d3` for index 19.
#[must_use]
pub fn square_name(sq: u32) -> String {
    let file = (b'a' + (sq % 8) as u8) as char;
    format!("{file}{}", sq / 8 + 1)
}

/// Parses a square name such as `d3`.
///
/// # Errors
/// [`EngineError::InvalidMove`] for anything but a file a-h followed by a rank 1-8.
pub fn parse_square(name: &str) -> Result<u32, EngineError> {
    let b = name.as_bytes();
    if b.len() == 2
        && (b'a'..=b'h').contains(&b[0].to_ascii_lowercase())
        && (b'1'..=b'8').contains(&b[1])
    {
        Ok(u32::from(b[1] - b'1') * 8 + u32::from(b[0].to_ascii_lowercase() - b'a'))
    } else {
        Err(EngineError::InvalidMove(format!(
            "square {name:?}: allowed a1..h8"
        )))
    }
}

crate::multiversion! {
    /// Leaf count of the game tree to `depth` plies (a pass is a ply; a finished
    /// game is one leaf), with the active CPU variant's code.
    pub fn perft / perft_on (board: &Board, depth: u32) -> u64 = perft_entry;
}

/// Perft without recursion (a recursive function cannot be inlined into the
/// variants' entry points, so it would be compiled for the baseline): a stack
/// of nodes still to expand, and the last two plies counted in bulk.
#[inline(always)]
fn perft_entry<K: Kernels>(board: &Board, depth: u32) -> u64 {
    let mut total = 0u64;
    // (position, its moves not yet expanded, its depth)
    let mut stack: Vec<(Board, u64, u32)> = Vec::with_capacity(depth as usize + 1);
    let mut next = Some((*board, depth));
    loop {
        if let Some((b, d)) = next.take() {
            if d <= 2 {
                total += perft_last_two::<K>(&b, d);
            } else {
                let moves = b.moves_k::<K>();
                if moves != 0 {
                    stack.push((b, moves, d));
                } else {
                    let passed = b.pass();
                    if passed.moves_k::<K>() == 0 {
                        total += 1;
                    } else {
                        next = Some((passed, d - 1));
                        continue;
                    }
                }
            }
        }
        let Some(top) = stack.last_mut() else {
            break;
        };
        if top.1 == 0 {
            stack.pop();
            continue;
        }
        let sq = top.1.trailing_zeros();
        top.1 &= top.1 - 1;
        next = Some((top.0.play_k::<K>(sq), top.2 - 1));
    }
    total
}

/// Perft to `depth` 0, 1 or 2: the leaves one ply down are counted by the
/// mobility's popcount (a position that must pass, or a finished game, is one leaf).
#[inline(always)]
fn perft_last_two<K: Kernels>(b: &Board, depth: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    let moves = b.moves_k::<K>();
    if depth == 1 || moves == 0 {
        if moves != 0 {
            return u64::from(moves.count_ones());
        }
        if depth == 1 {
            return 1;
        }
        let replies = b.pass().moves_k::<K>();
        return u64::from(replies.count_ones()).max(1);
    }
    let mut total = 0;
    let mut m = moves;
    while m != 0 {
        let sq = m.trailing_zeros();
        m &= m - 1;
        let replies = b.play_k::<K>(sq).moves_k::<K>();
        total += u64::from(replies.count_ones()).max(1);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_moves_are_the_four_standard_ones() {
        let b = Board::initial();
        let names: Vec<String> = bits(b.moves()).map(square_name).collect();
        assert_eq!(names, ["d3", "c4", "f5", "e6"]);
    }

    fn bits(mut m: u64) -> impl Iterator<Item = u32> {
        std::iter::from_fn(move || {
            (m != 0).then(|| {
                let s = m.trailing_zeros();
                m &= m - 1;
                s
            })
        })
    }

    #[test]
    fn cells_round_trip_and_reject_bad_values() {
        let b = Board::initial().play(19);
        let cells = b.to_cells(Color::White);
        assert_eq!(Board::from_cells(&cells, Color::White).unwrap(), b);
        let mut bad = cells;
        bad[5] = 3;
        let err = Board::from_cells(&bad, Color::Black)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cell 5"), "{err}");
        assert!(Board::from_cells(&cells[..63], Color::Black).is_err());
    }

    #[test]
    fn random_walk_plays_legal_moves_and_stops_at_the_end() {
        for seed in 0..50 {
            let mut rng = Rng::new(seed, 0);
            // Three plies from the start are three moves (no pass is possible
            // yet): each adds one disc.
            let b = Board::initial().random_walk(&mut rng, 3);
            assert_eq!(64 - b.empties(), 7, "seed {seed}");
            // A game lasts at most 60 moves and as many passes: 200 plies finish it.
            let end = Board::initial().random_walk(&mut rng, 200);
            assert!(end.is_game_over(), "seed {seed}");
            assert_eq!(end.random_walk(&mut rng, 5), end);
        }
    }

    #[test]
    fn next_turn_passes_only_when_forced_and_ends_with_the_game() {
        let (mut passes, mut games) = (0, 0);
        for seed in 0..400 {
            let mut rng = Rng::new(seed, 7);
            let mut b = Board::initial();
            while let Some((moves, passed)) = b.next_turn() {
                assert_eq!(moves, b.moves());
                assert_ne!(moves, 0);
                if passed {
                    // The side that passed (now the opponent) had no move.
                    assert_eq!(get_moves(b.opponent, b.player), 0);
                    passes += 1;
                }
                b = b.play(rng.pick_bit(moves));
            }
            assert!(b.is_game_over());
            let before = b;
            assert_eq!(b.next_turn(), None);
            assert_eq!(b, before, "a finished game is left as it is");
            games += 1;
        }
        assert!(
            passes > 0 && games == 400,
            "the games must include forced passes"
        );
    }

    #[test]
    fn square_names_round_trip() {
        for sq in 0..64 {
            assert_eq!(parse_square(&square_name(sq)).unwrap(), sq);
        }
        assert!(parse_square("i9").is_err());
    }
}
