//! The evaluation function: per-phase pattern weights summed and squashed by tanh.
//!
//! `value(board)` is in (-1, 1) from the side to move's view. Game results use
//! the same scale through [`reward`], so search, training targets and
//! evaluations agree.

use std::sync::Arc;

use crate::board::Board;
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
        let discs = (b.player | b.opponent).count_ones() as usize;
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
