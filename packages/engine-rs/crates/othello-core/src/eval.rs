//! The evaluation function: per-phase pattern weights summed and squashed by tanh.
//!
//! `value(board)` is in (-1, 1) from the side to move's view. Game results use
//! the same scale through [`reward`], so search, training targets and
//! evaluations agree.

use std::sync::Arc;

use crate::board::{get_flips, Board};
use crate::error::EngineError;
use crate::pattern::{PatternSet, MAX_INSTANCES};

/// The value of a finished game with disc difference `diff` (side's view), in [-1, 1].
///
/// A win is worth at least 0.5 and more for a larger margin: `sign(diff)/2 + diff/128`.
#[inline]
#[must_use]
pub fn reward(diff: i32) -> f32 {
    0.5 * (diff.signum() as f32) + diff as f32 / 128.0
}

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
    #[inline]
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
    #[inline]
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
    #[must_use]
    pub fn greedy_child(&self, b: &Board, moves: u64, theirs: &[u32]) -> u32 {
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
            let mut add = |q: usize, mul: u32| {
                for (i, p) in set.square_terms(q) {
                    if delta[i] == 0 {
                        touched[nt] = i as u8;
                        nt += 1;
                    }
                    delta[i] += mul * p;
                }
            };
            // In the opponent's view the mover's discs are digit 2: the new disc
            // goes 0 -> 2 and each flipped disc 1 -> 2.
            add(sq as usize, 2);
            let mut f = get_flips(b.player, b.opponent, sq);
            while f != 0 {
                add(f.trailing_zeros() as usize, 1);
                f &= f - 1;
            }
            let mut v = total;
            for &i in &touched[..nt] {
                let i = usize::from(i);
                v += table[set.canonical(theirs[i] + delta[i]) as usize] - shared[i];
                delta[i] = 0;
            }
            if v < best.0 {
                best = (v, sq);
            }
        }
        best.1
    }

    /// The value in (-1, 1) for the side to move.
    #[inline]
    #[must_use]
    pub fn value(&self, b: &Board) -> f32 {
        self.raw(b).tanh()
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
        let mut w = Weights::default_weights();
        let mut rng = crate::rng::Rng::new(3, 0);
        for v in &mut w.w {
            *v = (rng.next_f64() as f32 - 0.5) * 0.2;
        }
        let set = w.set.clone();
        let (mut mine, mut theirs) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
        let mut checked = 0;
        for game in 0..20 {
            let mut rng = crate::rng::Rng::new(7, game);
            let mut b = Board::initial();
            for _ in 0..60 {
                let moves = b.moves();
                if moves == 0 {
                    b = b.pass();
                    if b.moves() == 0 {
                        break;
                    }
                    continue;
                }
                set.raw_index_pair(&b, &mut mine, &mut theirs);
                let sq = w.greedy_child(&b, moves, &theirs);
                assert!(moves >> sq & 1 == 1);
                let mut best = f32::INFINITY;
                let mut m = moves;
                while m != 0 {
                    best = best.min(w.raw(&b.play(m.trailing_zeros())));
                    m &= m - 1;
                }
                assert!((w.raw(&b.play(sq)) - best).abs() < 1e-4, "game {game}");
                checked += 1;
                b = b.play(rng.pick_bit(moves));
            }
        }
        assert!(checked > 1000);
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
