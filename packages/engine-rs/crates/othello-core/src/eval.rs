//! The evaluation function: per-phase pattern weights summed and squashed by tanh.
//!
//! `value(board)` is in (-1, 1) from the side to move's view. Game results use
//! the same scale through [`reward`], so search, training targets and
//! evaluations agree.

use std::sync::Arc;

use crate::board::Board;
use crate::error::EngineError;
use crate::isa::Kernels;
use crate::pattern::{PatternSet, MAX_INSTANCES};

/// The value of a finished game with disc difference `diff` (side's view), in [-1, 1].
///
/// A win is worth at least 0.5 and more for a larger margin: `sign(diff)/2 + diff/128`.
#[inline]
#[must_use]
pub fn reward(diff: i32) -> f32 {
    0.5 * (diff.signum() as f32) + diff as f32 / 128.0
}

/// The largest reward magnitude turned into a raw value (`atanh(1)` is infinite).
const MAX_REWARD_VALUE: f32 = 0.999_999;

/// Per-phase pattern weights of one pattern set.
#[derive(Clone, Debug)]
pub struct Weights {
    /// The pattern set the tables belong to.
    pub set: Arc<PatternSet>,
    /// Number of phases (disc-count ranges), each with its own tables.
    pub n_phases: usize,
    /// All weights: phase-major, then the shapes' tables, then one bias per phase.
    pub w: Vec<f32>,
}

/// A weight that was NaN or infinite and has been reset to 0.
#[derive(Clone, Debug, PartialEq)]
pub struct NonFinite {
    /// The shape's name (or `bias`).
    pub pattern: String,
    /// The phase.
    pub phase: usize,
    /// The index within the shape's table.
    pub index: usize,
    /// The bad value, as text (`NaN`, `inf`, `-inf`).
    pub value: String,
}

/// Fixed-size buffer of global weight indices for one position (instances + bias).
pub type FeatureBuf = [u32; MAX_INSTANCES + 1];

impl Weights {
    /// Zero weights for `set` with `n_phases` phases.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] when `n_phases` is not in 1..=60.
    pub fn new(set: Arc<PatternSet>, n_phases: usize) -> Result<Weights, EngineError> {
        if !(1..=60).contains(&n_phases) {
            return Err(EngineError::config("n_phases", "1 to 60", n_phases));
        }
        let len = set.phase_len * n_phases;
        Ok(Weights {
            set,
            n_phases,
            w: vec![0.0; len],
        })
    }

    /// The default engine: default pattern set, 6 phases.
    #[must_use]
    pub fn default_weights() -> Weights {
        Weights::new(Arc::new(PatternSet::default_set()), 6).expect("valid defaults")
    }

    /// The phase of a position, from its disc count.
    #[inline]
    #[must_use]
    pub fn phase(&self, b: &Board) -> usize {
        self.phase_of_discs((b.player | b.opponent).count_ones() as usize)
    }

    /// The phase of a position with `discs` discs on the board.
    #[inline]
    #[must_use]
    pub fn phase_of_discs(&self, discs: usize) -> usize {
        (discs.saturating_sub(4) * self.n_phases / 61).min(self.n_phases - 1)
    }

    /// Writes the global indices of the active weights into `out`; returns how many.
    #[inline(always)]
    pub fn features(&self, b: &Board, out: &mut FeatureBuf) -> usize {
        let n = self.set.n_instances();
        self.set.indices(b, &mut out[..n]);
        let base = (self.phase(b) * self.set.phase_len) as u32;
        for v in &mut out[..n] {
            *v += base;
        }
        out[n] = base + self.set.phase_len as u32 - 1;
        n + 1
    }

    /// The weighted sum before squashing.
    #[inline(always)]
    #[must_use]
    pub fn raw(&self, b: &Board) -> f32 {
        let mut buf: FeatureBuf = [0; MAX_INSTANCES + 1];
        let n = self.features(b, &mut buf);
        buf[..n].iter().map(|&i| self.w[i as usize]).sum()
    }

    /// Scores every child of `b` (a position with legal `moves`) by its raw
    /// value for the opponent and returns the square of the lowest (the greedy
    /// 1-ply move; ties go to the lowest square), like minimising
    /// [`Weights::raw`] over `b.play(sq)` but incrementally.
    ///
    /// `theirs` holds `b`'s raw indices from the opponent's view
    /// ([`PatternSet::raw_index_pair`]). All children share the phase (one more
    /// disc) and start from those indices; a move only changes the instances of
    /// its square and of the flipped discs, so a child costs a few table reads
    /// on top of the shared sum instead of a full evaluation.
    ///
    /// A child whose mover has no legal move is scored like the search scores
    /// it (the patterns never learn such positions: training records only
    /// positions with a move): a finished game by its result, otherwise through
    /// the pass, as minus the raw value of the passed position. So the greedy
    /// move is the best move of a depth-1 [`crate::search::search`].
    #[must_use]
    pub fn greedy_child(&self, b: &Board, moves: u64, theirs: &[u32]) -> u32 {
        greedy_child_on(crate::isa::active(), self, b, moves, theirs).0
    }

    /// [`Weights::greedy_child`] with the kernels `K` (see [`crate::isa`]),
    /// with the chosen child's raw value for its mover.
    #[inline(always)]
    pub fn greedy_child_k<K: Kernels>(&self, b: &Board, moves: u64, theirs: &[u32]) -> (u32, f32) {
        self.best_child_k::<K>(b, moves, theirs, f32::NEG_INFINITY)
    }

    /// The 2-ply minimax value of `b` (a position with a legal move) for its
    /// side to move, in value units: the best over its moves of the worst over
    /// the replies of the value the side to move then faces; the same value as
    /// a depth-2 [`crate::search::search`] without the endgame solver.
    ///
    /// `mine` holds `b`'s raw indices from the mover's view
    /// ([`PatternSet::raw_index_pair`]), and `first` is the move to score
    /// first: the greedy move ([`Weights::greedy_child`]) is usually the best,
    /// and every other child is then dropped at its first reply that scores
    /// no better (alpha-beta at depth 2). A child's indices from the view of
    /// `b`'s mover (what its replies start from) are `mine` with the move's
    /// square turned to digit 1 and the flipped discs from 2 to 1; each child
    /// then costs one [`Weights::greedy_child`] pass.
    #[must_use]
    pub fn two_ply(&self, b: &Board, mine: &[u32], first: u32) -> f32 {
        two_ply_on(crate::isa::active(), self, b, mine, first)
    }

    /// [`Weights::two_ply`] with the kernels `K` (see [`crate::isa`]).
    #[inline(always)]
    #[must_use]
    pub fn two_ply_k<K: Kernels>(&self, b: &Board, mine: &[u32], first: u32) -> f32 {
        let set = &*self.set;
        let n = set.n_instances();
        let mut theirs = [0u32; MAX_INSTANCES];
        // The best child so far, as a raw value (`tanh` of it is the value).
        let mut best = f32::NEG_INFINITY;
        let mut m = b.moves_k::<K>() & !(1u64 << first);
        let mut sq = first;
        loop {
            let flips = K::flips(b.player, b.opponent, sq);
            let c = b.play_flips(sq, flips);
            let replies = c.moves_k::<K>();
            let v = if replies != 0 {
                theirs[..n].copy_from_slice(&mine[..n]);
                for (i, p) in set.square_terms(sq as usize) {
                    theirs[i] += p;
                }
                let mut f = flips;
                while f != 0 {
                    for (i, p) in set.square_terms(f.trailing_zeros() as usize) {
                        theirs[i] -= p;
                    }
                    f &= f - 1;
                }
                self.best_child_k::<K>(&c, replies, &theirs, best).1
            } else {
                // The opponent passes, which costs no depth: `b`'s mover moves
                // again, and that move is scored at 1 ply (a finished game by its result).
                let passed = c.pass();
                let again = passed.moves_k::<K>();
                if again == 0 {
                    -self.forced_pass_raw_k::<K>(&c)
                } else {
                    let mut unused = [0u32; MAX_INSTANCES];
                    set.raw_index_pair(&passed, &mut unused, &mut theirs);
                    -self.greedy_child_k::<K>(&passed, again, &theirs).1
                }
            };
            best = best.max(v);
            if m == 0 {
                return best.tanh();
            }
            sq = m.trailing_zeros();
            m &= m - 1;
        }
    }

    /// The raw value, for its mover, of a position where that side has no legal
    /// move: the game's result (as the raw value whose `tanh` is the reward) when
    /// the other side has none either, else minus the raw value after the pass.
    #[inline(always)]
    fn forced_pass_raw_k<K: Kernels>(&self, c: &Board) -> f32 {
        let passed = c.pass();
        if passed.moves_k::<K>() == 0 {
            reward(c.final_score())
                .clamp(-MAX_REWARD_VALUE, MAX_REWARD_VALUE)
                .atanh()
        } else {
            -self.raw(&passed)
        }
    }

    /// The child of `b` with the lowest raw value for its mover, and that
    /// value (`theirs`: `b`'s raw indices from the opponent's view); the scan
    /// stops at the first child at or below `cutoff`, which is then returned.
    #[inline(always)]
    fn best_child_k<K: Kernels>(
        &self,
        b: &Board,
        moves: u64,
        theirs: &[u32],
        cutoff: f32,
    ) -> (u32, f32) {
        let set = &*self.set;
        let n = set.n_instances();
        let discs = (b.player | b.opponent).count_ones() as usize + 1;
        let base = self.phase_of_discs(discs) * set.phase_len;
        let table = &self.w[base..base + set.phase_len];
        let mut shared = [0f32; MAX_INSTANCES];
        for (v, &j) in shared[..n].iter_mut().zip(&theirs[..n]) {
            *v = table[set.canonical(j) as usize];
        }
        let total: f32 = shared[..n].iter().sum::<f32>() + table[set.phase_len - 1];
        let mut delta = [0u32; MAX_INSTANCES];
        let mut touched = [0u8; MAX_INSTANCES];
        let mut best = (f32::INFINITY, moves.trailing_zeros());
        let mut m = moves;
        while m != 0 {
            let sq = m.trailing_zeros();
            m &= m - 1;
            let mut nt = 0;
            // In the opponent's view the mover's discs are digit 2: the new disc
            // goes 0 -> 2 and each flipped disc 1 -> 2. (A loop, not a closure:
            // closures are not inlined into the variants' code reliably.)
            let flips = K::flips(b.player, b.opponent, sq);
            let (mut q, mut mul, mut f) = (sq as usize, 2, flips);
            loop {
                for (i, p) in set.square_terms(q) {
                    if delta[i] == 0 {
                        touched[nt] = i as u8;
                        nt += 1;
                    }
                    delta[i] += mul * p;
                }
                if f == 0 {
                    break;
                }
                (q, mul) = (f.trailing_zeros() as usize, 1);
                f &= f - 1;
            }
            let mut v = total;
            for &i in &touched[..nt] {
                let i = usize::from(i);
                v += table[set.canonical(theirs[i] + delta[i]) as usize] - shared[i];
                delta[i] = 0;
            }
            let child = b.play_flips(sq, flips);
            if child.moves_k::<K>() == 0 {
                v = self.forced_pass_raw_k::<K>(&child);
            }
            if v < best.0 {
                best = (v, sq);
                if v <= cutoff {
                    break;
                }
            }
        }
        (best.1, best.0)
    }

    /// The value in (-1, 1) for the side to move.
    #[inline]
    #[must_use]
    pub fn value(&self, b: &Board) -> f32 {
        value_on(crate::isa::active(), self, b)
    }

    /// Resets every NaN or infinite weight to 0 and reports each one.
    pub fn reset_non_finite(&mut self) -> Vec<NonFinite> {
        let mut out = Vec::new();
        let plen = self.set.phase_len;
        for (i, v) in self.w.iter_mut().enumerate() {
            if !v.is_finite() {
                let (pattern, index) = self.set.locate(i % plen);
                out.push(NonFinite {
                    pattern,
                    phase: i / plen,
                    index,
                    value: v.to_string(),
                });
                *v = 0.0;
            }
        }
        out
    }

    /// Bytes held by the weight tables.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.w.len() * std::mem::size_of::<f32>()
    }
}

#[inline(always)]
fn greedy_child_entry<K: Kernels>(
    w: &Weights,
    b: &Board,
    moves: u64,
    theirs: &[u32],
) -> (u32, f32) {
    w.greedy_child_k::<K>(b, moves, theirs)
}

#[inline(always)]
fn two_ply_entry<K: Kernels>(w: &Weights, b: &Board, mine: &[u32], first: u32) -> f32 {
    w.two_ply_k::<K>(b, mine, first)
}

/// Pattern indexing and the sum: no move generation, but `popcnt`/`tzcnt`
/// and wider loads where the variant has them.
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
fn value_entry<K: Kernels>(w: &Weights, b: &Board) -> f32 {
    w.raw(b).tanh()
}

crate::multiversion! {
    /// [`Weights::greedy_child`] and the chosen child's raw value, compiled for a CPU variant.
    pub fn greedy_child_active / greedy_child_on (w: &Weights, b: &Board, moves: u64, theirs: &[u32]) -> (u32, f32) = greedy_child_entry;
}

crate::multiversion! {
    /// [`Weights::two_ply`] compiled for a CPU variant.
    pub fn two_ply_active / two_ply_on (w: &Weights, b: &Board, mine: &[u32], first: u32) -> f32 = two_ply_entry;
}

crate::multiversion! {
    /// [`Weights::value`] (pattern indexing and the weighted sum) compiled for a CPU variant.
    pub fn value_active / value_on (w: &Weights, b: &Board) -> f32 = value_entry;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_weights_value_zero_and_reward_is_monotone() {
        let w = Weights::default_weights();
        assert_eq!(w.value(&Board::initial()), 0.0);
        for d in -64..64 {
            assert!(reward(d) < reward(d + 1));
        }
        assert_eq!(reward(0), 0.0);
    }

    #[test]
    fn non_finite_weights_are_reset_and_located() {
        let mut w = Weights::default_weights();
        let plen = w.set.phase_len;
        w.w[2 * plen + 5] = f32::NAN;
        w.w[plen - 1] = f32::INFINITY;
        let bad = w.reset_non_finite();
        assert_eq!(bad.len(), 2);
        assert_eq!(
            (bad[0].pattern.as_str(), bad[0].phase, bad[0].index),
            ("bias", 0, 0)
        );
        assert_eq!(
            (bad[1].pattern.as_str(), bad[1].phase, bad[1].index),
            ("corner3x3", 2, 5)
        );
        assert!(w.w.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn greedy_child_picks_the_child_with_the_lowest_raw_value() {
        let w = random_weights(3);
        let (mut mine, mut theirs) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
        // A child whose mover must pass is scored through the pass.
        let child_raw = |c: Board| {
            if c.moves() == 0 {
                w.forced_pass_raw_k::<crate::isa::Portable>(&c)
            } else {
                w.raw(&c)
            }
        };
        let positions = random_positions(20);
        assert!(positions.len() > 1000);
        for b in positions {
            let moves = b.moves();
            w.set.raw_index_pair(&b, &mut mine, &mut theirs);
            let sq = w.greedy_child(&b, moves, &theirs);
            assert!(moves >> sq & 1 == 1);
            let mut best = f32::INFINITY;
            let mut m = moves;
            while m != 0 {
                best = best.min(child_raw(b.play(m.trailing_zeros())));
                m &= m - 1;
            }
            assert!((child_raw(b.play(sq)) - best).abs() < 1e-4);
        }
    }

    /// Small random weights, so that values are not all zero.
    fn random_weights(seed: u64) -> Weights {
        let mut w = Weights::default_weights();
        let mut rng = crate::rng::Rng::new(seed, 0);
        for v in &mut w.w {
            *v = (rng.next_f64() as f32 - 0.5) * 0.2;
        }
        w
    }

    /// Every position with a legal move along `games` random games played to the end.
    fn random_positions(games: u64) -> Vec<Board> {
        let mut out = Vec::new();
        for game in 0..games {
            let mut rng = crate::rng::Rng::new(11, game);
            let mut b = Board::initial();
            while let Some((moves, _)) = b.next_turn() {
                out.push(b);
                b = b.play(rng.pick_bit(moves));
            }
        }
        out
    }

    fn search_score(w: &Weights, b: &Board, depth: u32) -> f32 {
        let mut tt = crate::search::TranspositionTable::with_bytes(1 << 16);
        let limits = crate::search::Limits {
            depth,
            time: None,
            exact_empties: 0,
        };
        crate::search::search(b, w, &mut tt, &limits).score
    }

    #[test]
    fn greedy_child_scores_children_like_a_depth_1_search() {
        let w = random_weights(5);
        let (mut mine, mut theirs) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
        let mut forced_passes = 0;
        for b in random_positions(40) {
            let moves = b.moves();
            let mut m = moves;
            while m != 0 {
                forced_passes += usize::from(b.play(m.trailing_zeros()).moves() == 0);
                m &= m - 1;
            }
            w.set.raw_index_pair(&b, &mut mine, &mut theirs);
            let (_, raw) = w.greedy_child_k::<crate::isa::Portable>(&b, moves, &theirs);
            let searched = search_score(&w, &b, 1);
            assert!((-raw.tanh() - searched).abs() < 1e-4, "{raw} vs {searched}");
        }
        // Children whose mover must pass (or that end the game) were among them:
        // scoring those by the patterns alone fails this test.
        assert!(forced_passes > 20, "{forced_passes}");
    }

    #[test]
    fn two_ply_is_the_value_of_a_depth_2_search() {
        let w = random_weights(6);
        let (mut mine, mut theirs) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
        let positions = random_positions(30);
        assert!(positions.len() > 1500);
        for b in positions {
            w.set.raw_index_pair(&b, &mut mine, &mut theirs);
            let searched = search_score(&w, &b, 2);
            let first = w.greedy_child(&b, b.moves(), &theirs);
            let v = w.two_ply(&b, &mine, first);
            // The first move only orders the scan: any legal one gives the same value.
            let last = 63 - b.moves().leading_zeros();
            assert!((w.two_ply(&b, &mine, last) - v).abs() < 1e-4);
            assert!(
                (v - searched).abs() < 1e-4,
                "{v} vs {searched}\n{}",
                b.ascii(crate::board::Color::Black)
            );
        }
    }

    #[test]
    fn phases_cover_the_game() {
        let w = Weights::default_weights();
        assert_eq!(w.phase(&Board::initial()), 0);
        let full = Board {
            player: u64::MAX,
            opponent: 0,
        };
        assert_eq!(w.phase(&full), 5);
    }
}
