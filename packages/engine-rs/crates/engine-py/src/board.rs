//! `Board`: an Othello position with the side to move, for Python.

use super::*;

/// An Othello position with the side to move.
#[pyclass(frozen, module = "trainsvc_engine", name = "Board")]
#[derive(Clone)]
pub(crate) struct PyBoard {
    pub(crate) board: Board,
    pub(crate) color: Color,
}

#[pymethods]
impl PyBoard {
    #[new]
    #[pyo3(signature = (cells = None, player = 1))]
    fn new(cells: Option<&Bound<'_, PyAny>>, player: i64) -> PyResult<Self> {
        let color = color_from(player)?;
        let board = match cells {
            None => {
                if color != Color::Black {
                    return Err(InvalidBoardError::new_err(
                        "player: the initial position has black (1) to move",
                    ));
                }
                Board::initial()
            }
            Some(c) => cells_to_board(&cells_from(c)?, color)?,
        };
        Ok(PyBoard { board, color })
    }

    /// The 64 cells: 0 empty, 1 black, 2 white (index = row * 8 + column, a1 = 0).
    fn cells(&self) -> Vec<u32> {
        self.board
            .to_cells(self.color)
            .iter()
            .map(|&c| u32::from(c))
            .collect()
    }

    /// The side to move: 1 black, 2 white.
    #[getter]
    fn player(&self) -> u8 {
        match self.color {
            Color::Black => 1,
            Color::White => 2,
        }
    }

    /// Legal moves of the side to move (square indices, ascending).
    fn legal_moves(&self) -> Vec<u32> {
        bits(self.board.moves())
    }

    /// The position after playing `move` (an index 0..63 or a name such as "d3").
    #[pyo3(name = "play")]
    fn play_move(&self, r#move: &Bound<'_, PyAny>) -> PyResult<PyBoard> {
        let sq = move_arg(r#move)?;
        if self.board.moves() >> sq & 1 == 0 {
            return Err(InvalidMoveError::new_err(format!(
                "move {} is not legal here; legal: {:?}",
                square_name(sq),
                bits(self.board.moves())
                    .into_iter()
                    .map(square_name)
                    .collect::<Vec<_>>()
            )));
        }
        Ok(PyBoard {
            board: self.board.play(sq),
            color: self.color.other(),
        })
    }

    /// The position after the side to move passes (only legal when it has no move).
    fn pass_turn(&self) -> PyResult<PyBoard> {
        if self.board.moves() != 0 {
            return Err(InvalidMoveError::new_err(
                "pass: the side to move has a legal move",
            ));
        }
        Ok(PyBoard {
            board: self.board.pass(),
            color: self.color.other(),
        })
    }

    /// Whether neither side can move.
    fn is_game_over(&self) -> bool {
        self.board.is_game_over()
    }

    /// Disc counts (black, white).
    fn disc_counts(&self) -> (u32, u32) {
        let (p, o) = (
            self.board.player.count_ones(),
            self.board.opponent.count_ones(),
        );
        match self.color {
            Color::Black => (p, o),
            Color::White => (o, p),
        }
    }

    /// An ASCII picture (X black, O white, * legal move).
    fn ascii(&self) -> String {
        self.board.ascii(self.color)
    }

    fn __repr__(&self) -> String {
        let (b, w) = self.disc_counts();
        format!(
            "Board(black={b}, white={w}, to_move={})",
            if self.color == Color::Black {
                "black"
            } else {
                "white"
            }
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .extract::<PyRef<'_, PyBoard>>()
            .is_ok_and(|o| o.board == self.board && o.color == self.color)
    }

    fn __hash__(&self) -> u64 {
        self.board.player.wrapping_mul(31)
            ^ self.board.opponent.rotate_left(17)
            ^ u64::from(self.color == Color::Black)
    }
}
