//! Perft from the initial position against the standard table (to depth 11).

use othello_core::{board, perft, refgen, Board};

const TABLE: [u64; 11] = [
    4, 12, 56, 244, 1396, 8200, 55092, 390216, 3005288, 24571284, 212258800,
];

#[test]
fn perft_matches_the_standard_table_to_depth_11() {
    for (i, &expected) in TABLE.iter().enumerate() {
        let depth = i as u32 + 1;
        assert_eq!(perft(&Board::initial(), depth), expected, "depth {depth}");
    }
}

#[test]
fn reference_generator_agrees_to_depth_7() {
    for depth in 1..=7 {
        assert_eq!(
            refgen::perft(&refgen::ArrayBoard::initial(), depth),
            TABLE[depth as usize - 1]
        );
    }
}

#[test]
fn bitboard_and_reference_agree_on_random_games() {
    let mut rng = othello_core::rng::Rng::new(7, 0);
    for _ in 0..300 {
        let mut b = Board::initial();
        let mut a = refgen::ArrayBoard::initial();
        loop {
            let m = b.moves();
            let ref_moves: u64 = a.moves().iter().map(|&s| 1u64 << s).sum();
            assert_eq!(m, ref_moves);
            let cells = b.to_cells(othello_core::Color::Black);
            let ours: Vec<u8> = cells.to_vec();
            assert_eq!(ours, a.cells.to_vec());
            if m == 0 {
                if b.is_game_over() {
                    break;
                }
                b = b.pass();
                a = a.pass();
                continue;
            }
            let sq = rng.pick_bit(m);
            assert_ne!(board::get_flips(b.player, b.opponent, sq), 0);
            b = b.play(sq);
            a = a.play(sq as usize);
        }
    }
}
