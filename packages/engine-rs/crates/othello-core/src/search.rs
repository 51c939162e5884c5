//! Negamax alpha-beta with a transposition table, move ordering, iterative
//! deepening under a depth and/or time limit, and an exact endgame solver.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::board::{get_moves, Board};
use crate::eval::{reward, Weights};

const NO_MOVE: u8 = 255;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    player: u64,
    opponent: u64,
    score: f32,
    depth: u8,
    bound: u8, // 0 empty, 1 exact, 2 lower, 3 upper
    mv: u8,
    generation: u32, // the table's generation when stored; others are forgotten
}

/// A transposition table: a power-of-two array of always-replace entries.
#[derive(Clone, Debug)]
pub struct TranspositionTable {
    entries: Vec<Entry>,
    generation: u32,
}

/// Bytes of one table entry.
pub const TT_ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

#[inline]
fn hash(b: &Board) -> u64 {
    let h = b.player.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ b.opponent
            .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            .rotate_left(31);
    h ^ (h >> 29)
}

impl TranspositionTable {
    /// The largest power-of-two table that fits in `bytes` (at least 1 entry).
    #[must_use]
    pub fn with_bytes(bytes: usize) -> TranspositionTable {
        TranspositionTable {
            entries: vec![Entry::default(); Self::entries_for(bytes)],
            generation: 1, // entries start at generation 0: empty
        }
    }

    /// Bytes that [`TranspositionTable::with_bytes`] would hold, without allocating them.
    #[must_use]
    pub fn bytes_for(bytes: usize) -> usize {
        Self::entries_for(bytes) * TT_ENTRY_BYTES
    }

    fn entries_for(bytes: usize) -> usize {
        let n = (bytes / TT_ENTRY_BYTES).max(1);
        1usize << (usize::BITS - 1 - n.leading_zeros())
    }

    /// Bytes held by the table.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * TT_ENTRY_BYTES
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries (never: it has at least one).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every entry, in constant time: entries stored before are of an older
    /// generation and never match again (the memory is rewritten only when the
    /// generation counter wraps, once in 2^32 clears).
    pub fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.entries.fill(Entry::default());
            self.generation = 1;
        }
    }

    #[inline]
    fn slot(&self, b: &Board) -> usize {
        (hash(b) as usize) & (self.entries.len() - 1)
    }

    fn probe(&self, b: &Board) -> Option<Entry> {
        let e = self.entries[self.slot(b)];
        (e.bound != 0
            && e.generation == self.generation
            && e.player == b.player
            && e.opponent == b.opponent)
            .then_some(e)
    }

    fn store(&mut self, b: &Board, e: Entry) {
        let s = self.slot(b);
        self.entries[s] = Entry {
            generation: self.generation,
            ..e
        };
    }
}

/// Limits of one search.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Maximum depth in plies (at least 1).
    pub depth: u32,
    /// Wall-clock budget; the best move of the last finished iteration is returned.
    pub time: Option<Duration>,
    /// Solve exactly when at most this many squares are empty at the root.
    pub exact_empties: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            depth: 6,
            time: None,
            exact_empties: 12,
        }
    }
}

/// The outcome of a search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchResult {
    /// The chosen square, or `None` when the side to move must pass or the game is over.
    pub best_move: Option<u32>,
    /// The score in reward units (-1..1) for the side to move.
    pub score: f32,
    /// For an exact solve, the final disc difference with best play.
    pub exact_diff: Option<i32>,
    /// The deepest fully searched depth.
    pub depth: u32,
    /// Nodes visited.
    pub nodes: u64,
}

struct Searcher<'a> {
    w: &'a Weights,
    tt: &'a mut TranspositionTable,
    nodes: u64,
    deadline: Option<Instant>,
    abort: Option<&'a AtomicBool>,
    stopped: bool,
}

impl Searcher<'_> {
    /// Polls the deadline and the abort flag every 1024 nodes (well under a
    /// millisecond of search), so a stop request ends even a deep search promptly.
    fn out_of_time(&mut self) -> bool {
        if !self.stopped && self.nodes & 1023 == 0 {
            if let Some(d) = self.deadline {
                self.stopped = Instant::now() >= d;
            }
            if let Some(a) = self.abort {
                self.stopped |= a.load(Ordering::Relaxed);
            }
        }
        self.stopped
    }

    fn ordered(&self, b: &Board, moves: u64, tt_move: u8) -> ([u8; 32], usize) {
        let mut list = [(0f32, 0u8); 32];
        let mut n = 0;
        let mut m = moves;
        while m != 0 {
            let sq = m.trailing_zeros();
            m &= m - 1;
            let child = b.play(sq);
            // Lower value for the opponent first; the TT move before everything.
            let key = if sq as u8 == tt_move {
                -10.0
            } else {
                self.w.raw(&child)
            };
            list[n] = (key, sq as u8);
            n += 1;
        }
        list[..n].sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let mut out = [0u8; 32];
        for (o, l) in out.iter_mut().zip(&list[..n]) {
            *o = l.1;
        }
        (out, n)
    }

    fn negamax(&mut self, b: &Board, depth: u32, mut alpha: f32, beta: f32) -> (f32, u8) {
        self.nodes += 1;
        if self.out_of_time() {
            return (0.0, NO_MOVE);
        }
        let moves = b.moves();
        if moves == 0 {
            let passed = b.pass();
            if passed.moves() == 0 {
                return (reward(b.final_score()), NO_MOVE);
            }
            let (s, _) = self.negamax(&passed, depth, -beta, -alpha);
            return (-s, NO_MOVE);
        }
        if depth == 0 {
            return (self.w.value(b), NO_MOVE);
        }
        let alpha0 = alpha;
        let mut tt_move = NO_MOVE;
        if let Some(e) = self.tt.probe(b) {
            tt_move = e.mv;
            if u32::from(e.depth) >= depth {
                match e.bound {
                    1 => return (e.score, e.mv),
                    2 if e.score >= beta => return (e.score, e.mv),
                    3 if e.score <= alpha => return (e.score, e.mv),
                    _ => {}
                }
            }
        }
        let (order, n) = if depth >= 2 {
            self.ordered(b, moves, tt_move)
        } else {
            let mut out = [0u8; 32];
            let mut k = 0;
            let mut m = moves;
            while m != 0 {
                out[k] = m.trailing_zeros() as u8;
                m &= m - 1;
                k += 1;
            }
            (out, k)
        };
        let mut best = (-2.0f32, order[0]);
        for &sq in &order[..n] {
            let (s, _) = self.negamax(&b.play(u32::from(sq)), depth - 1, -beta, -alpha);
            let s = -s;
            if self.stopped {
                return (best.0, best.1);
            }
            if s > best.0 {
                best = (s, sq);
                if s > alpha {
                    alpha = s;
                    if alpha >= beta {
                        break;
                    }
                }
            }
        }
        let bound = if best.0 <= alpha0 {
            3
        } else if best.0 >= beta {
            2
        } else {
            1
        };
        self.tt.store(
            b,
            Entry {
                player: b.player,
                opponent: b.opponent,
                score: best.0,
                depth: depth as u8,
                bound,
                mv: best.1,
                generation: 0, // set by store
            },
        );
        best
    }
}

/// The exact final disc difference of the position `(p, o)` (`p` to move)
/// within the window `(alpha, beta)` (fail-soft), counting nodes in `nodes`;
/// `passed` says the previous ply was a pass.
fn solve_window(p: u64, o: u64, mut alpha: i32, beta: i32, passed: bool, nodes: &mut u64) -> i32 {
    *nodes += 1;
    let moves = get_moves(p, o);
    if moves == 0 {
        if passed {
            return Board {
                player: p,
                opponent: o,
            }
            .final_score();
        }
        return -solve_window(o, p, -beta, -alpha, true, nodes);
    }
    let empties = 64 - (p | o).count_ones();
    let mut list = [(0u32, 0u32); 32];
    let mut n = 0;
    let mut m = moves;
    while m != 0 {
        let sq = m.trailing_zeros();
        m &= m - 1;
        let key = if empties > 6 {
            let c = Board {
                player: p,
                opponent: o,
            }
            .play(sq);
            c.moves().count_ones()
        } else {
            0
        };
        list[n] = (key, sq);
        n += 1;
    }
    if empties > 6 {
        list[..n].sort_unstable_by_key(|x| x.0);
    }
    let mut best = -65;
    for &(_, sq) in &list[..n] {
        let c = Board {
            player: p,
            opponent: o,
        }
        .play(sq);
        let s = -solve_window(c.player, c.opponent, -beta, -alpha, false, nodes);
        if s > best {
            best = s;
            if s > alpha {
                alpha = s;
                if alpha >= beta {
                    break;
                }
            }
        }
    }
    best
}

/// The exact final disc difference of `b` with perfect play (side to move's
/// view), and the nodes visited. It needs no weights and no table, so it
/// allocates nothing: cheap enough to call once per position.
#[must_use]
pub fn solve_exact(b: &Board) -> (i32, u64) {
    let mut nodes = 0;
    let v = solve_window(b.player, b.opponent, -64, 64, false, &mut nodes);
    (v, nodes)
}

/// Searches `b` for the best move within `limits`.
#[must_use]
pub fn search(
    b: &Board,
    w: &Weights,
    tt: &mut TranspositionTable,
    limits: &Limits,
) -> SearchResult {
    search_until(b, w, tt, limits, None)
}

/// [`search`] that also ends early (like a time limit: the best move of the
/// last finished iteration) once `abort` is raised; it is polled every 1024 nodes.
#[must_use]
pub fn search_until(
    b: &Board,
    w: &Weights,
    tt: &mut TranspositionTable,
    limits: &Limits,
    abort: Option<&AtomicBool>,
) -> SearchResult {
    let deadline = limits.time.map(|t| Instant::now() + t);
    let mut s = Searcher {
        w,
        tt,
        nodes: 0,
        deadline,
        abort,
        stopped: false,
    };
    let moves = b.moves();
    if moves == 0 {
        let over = b.pass().moves() == 0;
        let score = if over {
            reward(b.final_score())
        } else {
            -w.value(&b.pass())
        };
        return SearchResult {
            best_move: None,
            score,
            exact_diff: over.then(|| b.final_score()),
            depth: 0,
            nodes: 0,
        };
    }
    if b.empties() <= limits.exact_empties {
        let mut best = (-65, moves.trailing_zeros());
        let mut m = moves;
        while m != 0 {
            let sq = m.trailing_zeros();
            m &= m - 1;
            let c = b.play(sq);
            let v = -solve_window(c.player, c.opponent, -64, -best.0, false, &mut s.nodes);
            if v > best.0 {
                best = (v, sq);
            }
        }
        return SearchResult {
            best_move: Some(best.1),
            score: reward(best.0),
            exact_diff: Some(best.0),
            depth: b.empties(),
            nodes: s.nodes,
        };
    }
    let mut result = SearchResult {
        best_move: Some(moves.trailing_zeros()),
        score: 0.0,
        exact_diff: None,
        depth: 0,
        nodes: 0,
    };
    for depth in 1..=limits.depth.max(1) {
        let (score, mv) = s.negamax(b, depth, -2.0, 2.0);
        if s.stopped {
            break;
        }
        result.best_move = (mv != NO_MOVE)
            .then_some(u32::from(mv))
            .or(result.best_move);
        result.score = score;
        result.depth = depth;
    }
    result.nodes = s.nodes;
    result
}

#[cfg(test)]
mod tests {

    #[test]
    fn clear_forgets_every_entry_without_rewriting_the_table() {
        let mut tt = TranspositionTable::with_bytes(1 << 12);
        let b = Board::initial();
        let e = Entry {
            player: b.player,
            opponent: b.opponent,
            score: 0.5,
            depth: 3,
            bound: 1,
            mv: 19,
            generation: 0,
        };
        tt.store(&b, e);
        assert_eq!(tt.probe(&b).map(|e| e.mv), Some(19));
        tt.clear();
        assert!(tt.probe(&b).is_none());
        tt.store(&b, e);
        assert_eq!(tt.probe(&b).map(|e| e.score), Some(0.5));
        tt.generation = u32::MAX; // the counter wraps: the table is rewritten once
        tt.store(&b, e);
        tt.clear();
        assert_eq!(tt.generation, 1);
        assert!(tt.probe(&b).is_none());
    }

    use super::*;
    use crate::board::perft;
    use crate::rng::Rng;

    fn random_position(seed: u64, plies: u32) -> Board {
        Board::initial().random_walk(&mut Rng::new(seed, 1), plies)
    }

    fn minimax_exact(b: &Board) -> i32 {
        let m = b.moves();
        if m == 0 {
            let p = b.pass();
            if p.moves() == 0 {
                return b.final_score();
            }
            return -minimax_exact(&p);
        }
        let mut best = -65;
        let mut mm = m;
        while mm != 0 {
            let sq = mm.trailing_zeros();
            mm &= mm - 1;
            best = best.max(-minimax_exact(&b.play(sq)));
        }
        best
    }

    #[test]
    fn solver_matches_plain_minimax_on_late_positions() {
        for seed in 0..20 {
            let b = random_position(seed, 52);
            if b.is_game_over() {
                continue;
            }
            let (v, _) = solve_exact(&b);
            assert_eq!(v, minimax_exact(&b), "seed {seed}");
        }
    }

    #[test]
    fn search_returns_a_legal_move_and_alpha_beta_agrees_with_itself_across_tt_sizes() {
        let mut w = Weights::default_weights();
        let mut rng = Rng::new(3, 3);
        for v in &mut w.w {
            *v = (rng.next_f64() as f32 - 0.5) * 0.2;
        }
        let limits = Limits {
            depth: 4,
            time: None,
            exact_empties: 0,
        };
        for seed in 0..10 {
            let b = random_position(seed, 20);
            let mut big = TranspositionTable::with_bytes(1 << 20);
            let mut tiny = TranspositionTable::with_bytes(TT_ENTRY_BYTES);
            let r1 = search(&b, &w, &mut big, &limits);
            let r2 = search(&b, &w, &mut tiny, &limits);
            if let Some(m) = r1.best_move {
                assert!(b.moves() >> m & 1 == 1);
            }
            assert!(
                (r1.score - r2.score).abs() < 1e-5,
                "seed {seed}: {} vs {}",
                r1.score,
                r2.score
            );
        }
        assert_eq!(perft(&Board::initial(), 1), 4);
    }

    #[test]
    fn time_limit_stops_a_deep_search() {
        let w = Weights::default_weights();
        let mut tt = TranspositionTable::with_bytes(1 << 16);
        let limits = Limits {
            depth: 60,
            time: Some(Duration::from_millis(50)),
            exact_empties: 0,
        };
        let r = search(&Board::initial(), &w, &mut tt, &limits);
        assert!(r.depth < 60);
        assert!(r.best_move.is_some());
    }

    #[test]
    fn abort_flag_stops_a_deep_search_from_another_thread() {
        let w = Weights::default_weights();
        let mut tt = TranspositionTable::with_bytes(1 << 16);
        let limits = Limits {
            depth: 60,
            time: None,
            exact_empties: 0,
        };
        let abort = AtomicBool::new(true);
        let r = search_until(&Board::initial(), &w, &mut tt, &limits, Some(&abort));
        assert!(r.depth < 60 && r.best_move.is_some());
        // Without the flag a depth-60 search would not end: raised while it runs, it must.
        let abort = AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                abort.store(true, Ordering::Relaxed);
            });
            let r = search_until(&Board::initial(), &w, &mut tt, &limits, Some(&abort));
            assert!(r.depth < 60 && r.best_move.is_some());
        });
    }
}
