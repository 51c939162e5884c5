//! Running totals of a training run and its memory use.

use crate::eval::NonFinite;

/// Memory use by component, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Pattern weight tables.
    pub pattern_tables: usize,
    /// Adam first and second moments.
    pub adam_state: usize,
    /// Transposition tables (all worker threads).
    pub transposition_table: usize,
    /// Gradient buffers, traces and bookkeeping.
    pub other: usize,
    /// The configured budget.
    pub budget: usize,
}

impl MemoryReport {
    /// Sum of the components.
    #[must_use]
    pub fn total(&self) -> usize {
        self.pattern_tables + self.adam_state + self.transposition_table + self.other
    }
}

/// Running totals of a training run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Games finished (and learnt from).
    pub games: u64,
    /// Games black won.
    pub black_wins: u64,
    /// Games white won.
    pub white_wins: u64,
    /// Drawn games.
    pub draws: u64,
    /// Sum over games of (black discs - white discs).
    pub stone_diff_sum: i64,
    /// Games lost to a caught panic.
    pub errors: u64,
    /// Weights found NaN/Inf and reset.
    pub nan_resets: u64,
    /// The last reported non-finite weights (at most 100).
    pub last_non_finite: Vec<NonFinite>,
    /// Recent stone differences (black - white), newest last, at most 10,000.
    pub recent_diffs: std::collections::VecDeque<i8>,
    /// Recent error flags for the error-rate window.
    pub recent_errors: std::collections::VecDeque<bool>,
    /// Why training paused itself, if it did.
    pub auto_paused: Option<String>,
}

/// Size of the rolling stone-difference window.
pub const RECENT_WINDOW: usize = 10_000;

impl Stats {
    /// Mean stone difference (black - white) over the recent window.
    #[must_use]
    pub fn recent_stone_diff(&self) -> f64 {
        if self.recent_diffs.is_empty() {
            return 0.0;
        }
        self.recent_diffs.iter().map(|&d| f64::from(d)).sum::<f64>()
            / self.recent_diffs.len() as f64
    }

    /// Black's win rate over the recent window (draws count half).
    #[must_use]
    pub fn recent_black_win_rate(&self) -> f64 {
        if self.recent_diffs.is_empty() {
            return 0.0;
        }
        let s: f64 = self
            .recent_diffs
            .iter()
            .map(|&d| {
                if d > 0 {
                    1.0
                } else if d == 0 {
                    0.5
                } else {
                    0.0
                }
            })
            .sum();
        s / self.recent_diffs.len() as f64
    }

    /// Errors in the current error window.
    #[must_use]
    pub fn window_errors(&self) -> u64 {
        self.recent_errors.iter().filter(|&&e| e).count() as u64
    }
}
