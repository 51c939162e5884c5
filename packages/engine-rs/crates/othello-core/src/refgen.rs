//! A straightforward reference move generator: an array board and ray walking.
//!
//! It is the baseline of the perft benchmark and an independent check of the
//! bitboard generator in the tests; it is deliberately simple, not fast.

const DIRS: [(i32, i32); 8] = [
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
];

/// An array board: 0 empty, 1 side to move, 2 the other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayBoard {
    /// The 64 cells, row-major, relative to the side to move.
    pub cells: [u8; 64],
}

impl ArrayBoard {
    /// The standard initial position.
    #[must_use]
    pub fn initial() -> ArrayBoard {
        let mut cells = [0u8; 64];
        cells[28] = 1;
        cells[35] = 1;
        cells[27] = 2;
        cells[36] = 2;
        ArrayBoard { cells }
    }

    fn flips_in(&self, sq: usize, (dr, dc): (i32, i32)) -> usize {
        let (mut r, mut c) = ((sq / 8) as i32 + dr, (sq % 8) as i32 + dc);
        let mut n = 0;
        while (0..8).contains(&r) && (0..8).contains(&c) {
            match self.cells[(r * 8 + c) as usize] {
                2 => n += 1,
                1 => return n,
                _ => return 0,
            }
            r += dr;
            c += dc;
        }
        0
    }

    /// Whether the side to move may play on `sq`.
    #[must_use]
    pub fn is_legal(&self, sq: usize) -> bool {
        self.cells[sq] == 0 && DIRS.iter().any(|&d| self.flips_in(sq, d) > 0)
    }

    /// The legal moves of the side to move.
    #[must_use]
    pub fn moves(&self) -> Vec<usize> {
        (0..64).filter(|&s| self.is_legal(s)).collect()
    }

    /// Plays `sq` and hands the move to the other side.
    #[must_use]
    pub fn play(&self, sq: usize) -> ArrayBoard {
        let mut next = *self;
        for &(dr, dc) in &DIRS {
            let n = self.flips_in(sq, (dr, dc)) as i32;
            for k in 1..=n {
                let r = (sq / 8) as i32 + dr * k;
                let c = (sq % 8) as i32 + dc * k;
                next.cells[(r * 8 + c) as usize] = 1;
            }
        }
        next.cells[sq] = 1;
        next.pass()
    }

    /// Hands the move to the other side.
    #[must_use]
    pub fn pass(&self) -> ArrayBoard {
        let mut next = *self;
        for c in &mut next.cells {
            *c = match *c {
                1 => 2,
                2 => 1,
                v => v,
            };
        }
        next
    }
}

/// Perft with the reference generator, same conventions as [`crate::board::perft`].
#[must_use]
pub fn perft(board: &ArrayBoard, depth: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    let moves = board.moves();
    if moves.is_empty() {
        let passed = board.pass();
        if passed.moves().is_empty() {
            return 1;
        }
        return if depth == 1 {
            1
        } else {
            perft(&passed, depth - 1)
        };
    }
    if depth == 1 {
        return moves.len() as u64;
    }
    moves
        .iter()
        .map(|&m| perft(&board.play(m), depth - 1))
        .sum()
}
