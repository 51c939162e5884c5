//! The exact endgame solver through the public API: `solve_exact` against the
//! search's own exact mode and against the best move it returns.

use othello_core::rng::Rng;
use othello_core::search::{search, solve_exact, Limits, TranspositionTable};
use othello_core::{Board, Weights};

#[test]
fn solve_exact_agrees_with_the_searchs_exact_mode_and_its_best_move() {
    let w = Weights::default_weights();
    let limits = Limits {
        depth: 1,
        time: None,
        exact_empties: 64,
    };
    let mut checked = 0;
    for seed in 0..40 {
        let b = Board::initial().random_walk(&mut Rng::new(seed, 7), 50 + (seed % 5) as u32);
        if b.moves() == 0 {
            continue;
        }
        let (value, nodes) = solve_exact(&b);
        assert!(nodes > 0);
        let mut tt = TranspositionTable::with_bytes(1 << 16);
        let r = search(&b, &w, &mut tt, &limits);
        assert_eq!(r.exact_diff, Some(value), "seed {seed}");
        // The returned move achieves the value: the opponent's exact result
        // after it is minus the value, and no other move does better.
        let best = r.best_move.expect("a legal move");
        assert_eq!(-solve_exact(&b.play(best)).0, value, "seed {seed}");
        let mut m = b.moves();
        while m != 0 {
            let sq = m.trailing_zeros();
            m &= m - 1;
            assert!(
                -solve_exact(&b.play(sq)).0 <= value,
                "seed {seed}, move {sq}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} positions had a move");
}
