//! Python bindings of othello-core: the `trainsvc_engine._engine` module.
//!
//! A thin layer: argument validation, GIL release (`py.detach`) around every
//! piece of Rust work, panics caught and errors mapped in `errors.rs`.

mod errors;
mod manager;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use othello_core::board::{parse_square, square_name};
use othello_core::checkpoint::{self, CheckpointDir, CheckpointInfo};
use othello_core::eval::Weights;
use othello_core::league::{league_match, Player};
use othello_core::search::{search, Limits, TranspositionTable};
use othello_core::state::{trainer_to_checkpoint, weights_from_checkpoint};
use othello_core::train::{TrainConfig, Trainer};
use othello_core::{Board, Color, EngineError as Core, PatternSet};

use errors::{run, InvalidBoardError, InvalidMoveError};

/// The most empty squares a League match may solve exactly: every engine
/// move from there on is a full solve, and thousands of games are played.
const MAX_LEAGUE_EXACT_EMPTIES: u32 = 16;

/// Converts a JSON value to a Python object.
pub(crate) fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let text = v.to_string();
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// Converts a Python mapping to a JSON object via `json.dumps`.
pub(crate) fn py_to_json(
    obj: &Bound<'_, PyAny>,
) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    let text: String = obj
        .py()
        .import("json")?
        .call_method1("dumps", (obj,))?
        .extract()?;
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(errors::config(
            "config",
            "expected a mapping of field names to JSON values",
        )),
    }
}

fn color_from(player: i64) -> PyResult<Color> {
    match player {
        1 => Ok(Color::Black),
        2 => Ok(Color::White),
        p => Err(InvalidBoardError::new_err(format!(
            "player: got {p}; allowed: 1 (black) or 2 (white)"
        ))),
    }
}

fn cells_from(obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let obj = if obj.hasattr("ravel")? && obj.hasattr("tolist")? {
        obj.call_method0("ravel")?.call_method0("tolist")?
    } else {
        obj.clone()
    };
    if obj.is_instance_of::<PyString>() {
        return Err(InvalidBoardError::new_err(
            "board: expected 64 integers, got a str",
        ));
    }
    obj.extract::<Vec<i64>>().map_err(|_| {
        InvalidBoardError::new_err(
            "board: expected a sequence of 64 integers (0 empty, 1 black, 2 white) or a numpy array",
        )
    })
}

fn cells_to_board(v: &[i64], color: Color) -> PyResult<Board> {
    if v.len() != 64 {
        return Err(InvalidBoardError::new_err(format!(
            "board must have 64 cells, got {}",
            v.len()
        )));
    }
    let mut cells = [0u8; 64];
    for (i, (&x, c)) in v.iter().zip(cells.iter_mut()).enumerate() {
        if !(0..=2).contains(&x) {
            return Err(InvalidBoardError::new_err(format!(
                "cell {i} has value {x}; allowed: 0 (empty), 1 (black), 2 (white)"
            )));
        }
        *c = x as u8;
    }
    Board::from_cells(&cells, color).map_err(errors::to_py)
}

/// A board and the colour to move from Python arguments (a `Board`, or cells and a player).
fn board_arg(obj: &Bound<'_, PyAny>, player: Option<i64>) -> PyResult<(Board, Color)> {
    if let Ok(b) = obj.extract::<PyRef<'_, PyBoard>>() {
        if let Some(p) = player {
            if color_from(p)? != b.color {
                return Err(InvalidBoardError::new_err(
                    "player: differs from the Board's side to move",
                ));
            }
        }
        return Ok((b.board, b.color));
    }
    let color = color_from(player.ok_or_else(|| {
        InvalidBoardError::new_err(
            "player: required with a list or array board; allowed 1 (black) or 2 (white)",
        )
    })?)?;
    Ok((cells_to_board(&cells_from(obj)?, color)?, color))
}

fn bits(mut m: u64) -> Vec<u32> {
    let mut out = Vec::new();
    while m != 0 {
        out.push(m.trailing_zeros());
        m &= m - 1;
    }
    out
}

fn move_arg(obj: &Bound<'_, PyAny>) -> PyResult<u32> {
    if let Ok(s) = obj.extract::<String>() {
        return parse_square(&s).map_err(errors::to_py);
    }
    match obj.extract::<i64>() {
        Ok(v) if (0..64).contains(&v) => Ok(v as u32),
        Ok(v) => Err(InvalidMoveError::new_err(format!(
            "move: got {v}; allowed 0..63 or a square name a1..h8"
        ))),
        Err(_) => Err(InvalidMoveError::new_err(
            "move: expected an int 0..63 or a square name a1..h8",
        )),
    }
}

/// Leaf count of the game tree from the initial position to `depth` plies.
#[pyfunction]
fn perft(py: Python<'_>, depth: u32) -> PyResult<u64> {
    if depth > 20 {
        return Err(errors::config(
            "depth",
            format!("got {depth}; allowed: 0 to 20"),
        ));
    }
    run(py, || Ok(othello_core::perft(&Board::initial(), depth)))
}

/// Perft with the straightforward reference generator (array board, ray walking): the bench baseline.
#[pyfunction]
fn reference_perft(py: Python<'_>, depth: u32) -> PyResult<u64> {
    if depth > 20 {
        return Err(errors::config(
            "depth",
            format!("got {depth}; allowed: 0 to 20"),
        ));
    }
    run(py, || {
        Ok(othello_core::refgen::perft(
            &othello_core::refgen::ArrayBoard::initial(),
            depth,
        ))
    })
}

/// The CPU variant the engine's hot functions run on now (`x86-64-v4`,
/// `x86-64-v3`, `aarch64-neon` or `baseline`): the best this CPU supports,
/// unless `TRAINSVC_ENGINE_CPU` or [`set_cpu_variant`] chose another.
#[pyfunction]
fn cpu_variant() -> &'static str {
    othello_core::isa::active().name()
}

/// The CPU variants compiled into this module that this CPU can run, from the
/// most portable to the best.
#[pyfunction]
fn cpu_variants() -> Vec<&'static str> {
    othello_core::isa::supported()
        .into_iter()
        .map(othello_core::isa::Variant::name)
        .collect()
}

/// Runs the hot functions on the named variant from now on (every variant
/// computes the same results; for tests and benchmarks). Raises `ConfigError`
/// for an unknown name or a variant this CPU cannot run.
#[pyfunction]
fn set_cpu_variant(name: &str) -> PyResult<()> {
    othello_core::isa::Variant::parse(name)
        .and_then(othello_core::isa::set_active)
        .map_err(errors::to_py)
}

/// An Othello position with the side to move.
#[pyclass(frozen, module = "trainsvc_engine", name = "Board")]
#[derive(Clone)]
struct PyBoard {
    board: Board,
    color: Color,
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

/// Square name ("d3") of an index.
#[pyfunction(name = "square_name")]
fn py_square_name(index: u32) -> PyResult<String> {
    if index >= 64 {
        return Err(InvalidMoveError::new_err(format!(
            "index: got {index}; allowed 0..63"
        )));
    }
    Ok(square_name(index))
}

/// The outcome of `Evaluator.best_move`.
#[pyclass(frozen, module = "trainsvc_engine", get_all)]
struct MoveResult {
    /// The chosen square index, or None when the side to move must pass or the game is over.
    r#move: Option<u32>,
    /// Its name ("d3"), or None.
    square: Option<String>,
    /// Score for the side to move in (-1, 1).
    score: f32,
    /// Exact final disc difference when solved to the end, else None.
    exact_diff: Option<i32>,
    /// Deepest completed depth.
    depth: u32,
    /// Nodes searched.
    nodes: u64,
}

#[pymethods]
impl MoveResult {
    fn __repr__(&self) -> String {
        format!(
            "MoveResult(square={:?}, score={:.4}, depth={}, nodes={})",
            self.square, self.score, self.depth, self.nodes
        )
    }
}

/// Pattern evaluation with search: positive values favour black.
#[pyclass(frozen, module = "trainsvc_engine")]
struct Evaluator {
    weights: Arc<Weights>,
    config: TrainConfig,
    tt: Mutex<TranspositionTable>,
    source: Option<String>,
}

impl Evaluator {
    fn from_weights(weights: Weights, config: TrainConfig, source: Option<String>) -> Evaluator {
        Evaluator {
            weights: Arc::new(weights),
            config,
            tt: Mutex::new(TranspositionTable::with_bytes(16 << 20)),
            source,
        }
    }
}

fn black_view(v: f32, color: Color) -> f32 {
    if color == Color::Black {
        v
    } else {
        -v
    }
}

#[pymethods]
impl Evaluator {
    #[new]
    #[pyo3(signature = (checkpoint = None, *, pattern_set = "default", n_phases = 6))]
    fn new(
        py: Python<'_>,
        checkpoint: Option<PathBuf>,
        pattern_set: &str,
        n_phases: usize,
    ) -> PyResult<Self> {
        let pattern_set = pattern_set.to_owned();
        run(py, move || {
            if let Some(path) = checkpoint {
                let d = checkpoint::load(&path)?;
                let (w, cfg) = weights_from_checkpoint(&d)?;
                return Ok(Evaluator::from_weights(
                    w,
                    cfg,
                    Some(path.display().to_string()),
                ));
            }
            let cfg = TrainConfig {
                pattern_set,
                n_phases,
                ..TrainConfig::default()
            };
            cfg.validate()?;
            let w = Weights::new(Arc::new(PatternSet::named(&cfg.pattern_set)?), n_phases)?;
            Ok(Evaluator::from_weights(w, cfg, None))
        })
    }

    /// Value of `board` with `player` to move, in (-1, 1); positive favours black.
    #[pyo3(signature = (board, player = None))]
    fn evaluate(
        &self,
        py: Python<'_>,
        board: &Bound<'_, PyAny>,
        player: Option<i64>,
    ) -> PyResult<f32> {
        let (b, color) = board_arg(board, player)?;
        let w = &self.weights;
        run(py, || Ok(black_view(w.value(&b), color)))
    }

    /// Values of many boards at once: `boards` is an (N, 64) array or a sequence of boards.
    ///
    /// `players` is one player for all boards or one per board.
    fn evaluate_batch(
        &self,
        py: Python<'_>,
        boards: &Bound<'_, PyAny>,
        players: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<f32>> {
        let flat: Vec<i64> = if boards.hasattr("astype")? && boards.hasattr("tobytes")? {
            let raw: Vec<u8> = boards
                .call_method1("astype", ("<i8",))?
                .call_method0("tobytes")?
                .extract()?;
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        } else {
            let mut v = Vec::new();
            for item in boards.try_iter()? {
                v.extend(cells_from(&item?)?);
            }
            v
        };
        if flat.len() % 64 != 0 {
            return Err(InvalidBoardError::new_err(format!(
                "boards: {} cells is not a multiple of 64",
                flat.len()
            )));
        }
        let n = flat.len() / 64;
        let ps: Vec<i64> = match players.extract::<i64>() {
            Ok(p) => vec![p; n],
            Err(_) => cells_from(players).map_err(|_| {
                InvalidBoardError::new_err("players: expected an int or one int per board")
            })?,
        };
        if ps.len() != n {
            return Err(InvalidBoardError::new_err(format!(
                "players: expected {n} entries, got {}",
                ps.len()
            )));
        }
        let mut items = Vec::with_capacity(n);
        for (i, (chunk, &p)) in flat.chunks_exact(64).zip(&ps).enumerate() {
            let color =
                color_from(p).map_err(|e| InvalidBoardError::new_err(format!("board {i}: {e}")))?;
            let b = cells_to_board(chunk, color)
                .map_err(|e| InvalidBoardError::new_err(format!("board {i}: {e}")))?;
            items.push((b, color));
        }
        let w = &self.weights;
        run(py, || {
            Ok(items
                .iter()
                .map(|(b, c)| black_view(w.value(b), *c))
                .collect())
        })
    }

    /// The best move for `player` by alpha-beta search (exact when few squares are empty).
    #[pyo3(signature = (board, player = None, depth = 6, time_ms = None, exact_empties = 12))]
    fn best_move(
        &self,
        py: Python<'_>,
        board: &Bound<'_, PyAny>,
        player: Option<i64>,
        depth: u32,
        time_ms: Option<u64>,
        exact_empties: u32,
    ) -> PyResult<MoveResult> {
        let (b, _) = board_arg(board, player)?;
        if !(1..=60).contains(&depth) {
            return Err(errors::config(
                "depth",
                format!("got {depth}; allowed: 1 to 60"),
            ));
        }
        if exact_empties > 24 {
            return Err(errors::config(
                "exact_empties",
                format!("got {exact_empties}; allowed: 0 to 24"),
            ));
        }
        let limits = Limits {
            depth,
            time: time_ms.map(Duration::from_millis),
            exact_empties,
        };
        let w = &self.weights;
        let tt = &self.tt;
        let r = run(py, || {
            // Concurrent calls never wait for each other: a busy table means a private one.
            Ok(match tt.try_lock() {
                Ok(mut t) => search(&b, w, &mut t, &limits),
                Err(_) => search(&b, w, &mut TranspositionTable::with_bytes(1 << 20), &limits),
            })
        })?;
        Ok(MoveResult {
            r#move: r.best_move,
            square: r.best_move.map(square_name),
            score: r.score,
            exact_diff: r.exact_diff,
            depth: r.depth,
            nodes: r.nodes,
        })
    }

    /// Legal moves (square indices) of `player` on `board`.
    #[pyo3(signature = (board, player = None))]
    fn legal_moves(&self, board: &Bound<'_, PyAny>, player: Option<i64>) -> PyResult<Vec<u32>> {
        let (b, _) = board_arg(board, player)?;
        Ok(bits(b.moves()))
    }

    /// Names of the pattern shapes, in table order.
    #[getter]
    fn pattern_names(&self) -> Vec<String> {
        self.weights
            .set
            .shapes
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// Number of phases.
    #[getter]
    fn n_phases(&self) -> usize {
        self.weights.n_phases
    }

    /// Total number of weights.
    #[getter]
    fn weight_count(&self) -> usize {
        self.weights.w.len()
    }

    /// The checkpoint it was loaded from, if any.
    #[getter]
    fn source(&self) -> Option<String> {
        self.source.clone()
    }

    /// The training configuration (a dict) the weights belong to.
    fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &othello_core::state::config_to_json(&self.config))
    }

    /// The table of `pattern` in `phase` (3^n values), or the bias as a 1-element list.
    fn weights(&self, pattern: &str, phase: usize) -> PyResult<Vec<f32>> {
        let w = &self.weights;
        if phase >= w.n_phases {
            return Err(errors::config(
                "phase",
                format!("got {phase}; allowed: 0 to {}", w.n_phases - 1),
            ));
        }
        let base = phase * w.set.phase_len;
        if pattern == "bias" {
            return Ok(vec![w.w[base + w.set.phase_len - 1]]);
        }
        let Some(s) = w.set.shapes.iter().position(|s| s.name == pattern) else {
            return Err(errors::config(
                "pattern",
                format!(
                    "got {pattern:?}; allowed: bias or one of {:?}",
                    self.pattern_names()
                ),
            ));
        };
        let start = base + w.set.offsets[s];
        let len = 3usize.pow(w.set.shapes[s].squares.len() as u32);
        Ok(w.w[start..start + len].to_vec())
    }

    /// An ASCII picture of a pattern's squares (digits give the index order).
    fn pattern_ascii(&self, pattern: &str) -> PyResult<String> {
        let set = &self.weights.set;
        let s = set
            .shapes
            .iter()
            .position(|s| s.name == pattern)
            .ok_or_else(|| {
                errors::config(
                    "pattern",
                    format!("got {pattern:?}; allowed: {:?}", self.pattern_names()),
                )
            })?;
        Ok(set.ascii_shape(s))
    }

    /// Saves these weights as an engine checkpoint file (atomically); returns its size in bytes.
    #[pyo3(signature = (path, compress = false))]
    fn save(&self, py: Python<'_>, path: PathBuf, compress: bool) -> PyResult<u64> {
        let (w, cfg) = ((*self.weights).clone(), self.config.clone());
        run(py, move || {
            let t = Trainer::with_weights(TrainConfig { threads: 1, ..cfg }, w)?;
            let (tree, md) = trainer_to_checkpoint(&t);
            checkpoint::save(&path, &tree, &md, compress)
        })
    }

    /// League match against "random" or "heuristic": returns a dict with the score and its 95% interval.
    ///
    /// The engine plays at `depth` (1 = greedy, the League's rule) and, with
    /// `exact_empties` > 0, solves the rest of the game exactly once that few
    /// squares are empty (0, the League's rule, never does).
    #[pyo3(signature = (opponent, pairs = 500, depth = 1, random_rate = 0.1, seed = 0, exact_empties = 0))]
    #[allow(clippy::too_many_arguments)]
    fn league(
        &self,
        py: Python<'_>,
        opponent: &str,
        pairs: u64,
        depth: u32,
        random_rate: f64,
        seed: u64,
        exact_empties: u32,
    ) -> PyResult<Py<PyAny>> {
        let opp = match opponent {
            "random" => Player::Random,
            "heuristic" => Player::Heuristic,
            other => {
                return Err(errors::config(
                    "opponent",
                    format!("got {other:?}; allowed: 'random' or 'heuristic'"),
                ))
            }
        };
        let out_of_range = if !(1..=100_000).contains(&pairs) {
            Some(("pairs", pairs.to_string(), "1 to 100000".to_owned()))
        } else if !(1..=8).contains(&depth) {
            Some(("depth", depth.to_string(), "1 to 8".to_owned()))
        } else if !(0.0..=1.0).contains(&random_rate) {
            Some((
                "random_rate",
                random_rate.to_string(),
                "0.0 to 1.0".to_owned(),
            ))
        } else if exact_empties > MAX_LEAGUE_EXACT_EMPTIES {
            let allowed = format!("0 to {MAX_LEAGUE_EXACT_EMPTIES}");
            Some(("exact_empties", exact_empties.to_string(), allowed))
        } else {
            None
        };
        if let Some((field, got, allowed)) = out_of_range {
            return Err(errors::config(
                field,
                format!("got {got}; allowed: {allowed}"),
            ));
        }
        let engine = Player::Engine {
            weights: &self.weights,
            depth,
            exact_empties,
        };
        let r = run(py, || {
            Ok(league_match(&engine, &opp, pairs, random_rate, seed))
        })?;
        let d = PyDict::new(py);
        d.set_item("opponent", opponent)?;
        d.set_item("games", r.games)?;
        d.set_item("wins", r.wins)?;
        d.set_item("draws", r.draws)?;
        d.set_item("losses", r.losses)?;
        d.set_item("score", r.score)?;
        d.set_item("ci95", r.ci95)?;
        Ok(d.into_any().unbind())
    }

    /// Replays one self-play game as training plays it and logs both training targets of every position.
    ///
    /// Returns one dict per position: ply, player, move, explored (a random
    /// move), value (black's view), td_error, lambda_target (TD(lambda)'s
    /// target, folded as training folds it: cut at exploration moves) and
    /// search_target (the 2-ply value, the default's target).
    #[pyo3(signature = (seed = 0, epsilon = 0.0, lambda_ = 0.5))]
    fn replay(&self, py: Python<'_>, seed: u64, epsilon: f64, lambda_: f32) -> PyResult<Py<PyAny>> {
        let w = &self.weights;
        let rows = run(py, || {
            Ok(othello_core::replay::replay_game(w, seed, epsilon, lambda_))
        })?;
        let list = PyList::empty(py);
        for r in rows {
            let d = PyDict::new(py);
            d.set_item("ply", r.ply)?;
            d.set_item("player", r.player)?;
            d.set_item("move", square_name(r.square))?;
            d.set_item("explored", r.explored)?;
            d.set_item("value", r.value)?;
            d.set_item("td_error", r.td_error)?;
            d.set_item("lambda_target", r.lambda_target)?;
            d.set_item("search_target", r.search_target)?;
            list.append(d)?;
        }
        Ok(list.into_any().unbind())
    }

    fn __repr__(&self) -> String {
        format!(
            "Evaluator(patterns={}, phases={}, weights={}, source={:?})",
            self.weights.set.shapes.len(),
            self.weights.n_phases,
            self.weights.w.len(),
            self.source
        )
    }
}

/// Weight changes between two evaluators: a summary per pattern and phase, and anomalies.
///
/// Returns `(summary, anomalies)`: summary rows `(pattern, phase, max_abs, mean_abs)`,
/// anomalies `(pattern, phase, index, before, after)` for changes above `threshold`.
#[pyfunction]
#[pyo3(signature = (before, after, threshold = 0.5, limit = 100))]
#[allow(clippy::type_complexity)]
fn weight_diff(
    py: Python<'_>,
    before: &Evaluator,
    after: &Evaluator,
    threshold: f32,
    limit: usize,
) -> PyResult<(
    Vec<(String, usize, f32, f32)>,
    Vec<(String, usize, usize, f32, f32)>,
)> {
    let (a, b) = (&before.weights, &after.weights);
    if a.w.len() != b.w.len() || a.set.shapes != b.set.shapes {
        return Err(errors::config(
            "after",
            "different pattern set or phase count than before",
        ));
    }
    run(py, || {
        let plen = a.set.phase_len;
        let mut summary = Vec::new();
        let mut anomalies = Vec::new();
        for phase in 0..a.n_phases {
            for (s, shape) in a.set.shapes.iter().enumerate() {
                let start = phase * plen + a.set.offsets[s];
                let len = 3usize.pow(shape.squares.len() as u32);
                let (mut mx, mut sum) = (0f32, 0f64);
                for i in start..start + len {
                    let d = (b.w[i] - a.w[i]).abs();
                    mx = mx.max(d);
                    sum += f64::from(d);
                    if d > threshold && anomalies.len() < limit {
                        anomalies.push((shape.name.clone(), phase, i - start, a.w[i], b.w[i]));
                    }
                }
                summary.push((shape.name.clone(), phase, mx, (sum / len as f64) as f32));
            }
        }
        Ok((summary, anomalies))
    })
}

/// One checkpoint file.
#[pyclass(frozen, module = "trainsvc_engine", name = "CheckpointInfo", get_all)]
#[derive(Clone)]
struct PyCheckpointInfo {
    /// Full path.
    path: String,
    /// Step (games played).
    step: u64,
    /// Size in bytes.
    size: u64,
    /// Saved on a signal, an error or a stop request; never deleted by retention.
    emergency: bool,
    /// zstd-compressed.
    compressed: bool,
    /// Seconds the save took (0.0 for listed files).
    seconds: f64,
}

impl From<CheckpointInfo> for PyCheckpointInfo {
    fn from(c: CheckpointInfo) -> Self {
        PyCheckpointInfo {
            path: c.path.display().to_string(),
            step: c.step,
            size: c.size,
            emergency: c.emergency,
            compressed: c.compressed,
            seconds: 0.0,
        }
    }
}

#[pymethods]
impl PyCheckpointInfo {
    fn __repr__(&self) -> String {
        format!(
            "CheckpointInfo(path={:?}, step={}, size={})",
            self.path, self.step, self.size
        )
    }
}

/// A loaded engine checkpoint.
#[pyclass(frozen, module = "trainsvc_engine")]
struct Checkpoint {
    info: PyCheckpointInfo,
    metadata: serde_json::Value,
    weights: Arc<Weights>,
    config: TrainConfig,
    warnings: Vec<String>,
}

#[pymethods]
impl Checkpoint {
    /// The file.
    #[getter]
    fn info(&self) -> PyCheckpointInfo {
        self.info.clone()
    }

    /// Games played when it was saved.
    #[getter]
    fn step(&self) -> u64 {
        self.info.step
    }

    /// The metadata object (trainer, config, pattern shapes, step).
    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.metadata)
    }

    /// Corrupt newer checkpoints that were skipped to find this one.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// An evaluator with these weights.
    fn evaluator(&self) -> Evaluator {
        Evaluator {
            weights: Arc::clone(&self.weights),
            config: self.config.clone(),
            tt: Mutex::new(TranspositionTable::with_bytes(16 << 20)),
            source: Some(self.info.path.clone()),
        }
    }
}

fn load_checkpoint(
    path: &std::path::Path,
    info: CheckpointInfo,
    warnings: Vec<String>,
) -> Result<Checkpoint, Core> {
    let d = checkpoint::load(path)?;
    let (w, config) = weights_from_checkpoint(&d)?;
    Ok(Checkpoint {
        info: info.into(),
        metadata: d.metadata,
        weights: Arc::new(w),
        config,
        warnings,
    })
}

/// A directory of engine checkpoints: save, load, list, verify, retention, compression.
#[pyclass(module = "trainsvc_engine")]
struct CheckpointManager {
    dir: CheckpointDir,
}

#[pymethods]
impl CheckpointManager {
    #[new]
    #[pyo3(signature = (directory, *, keep_last = 5, keep_every = 0, compress = false))]
    fn new(
        py: Python<'_>,
        directory: PathBuf,
        keep_last: usize,
        keep_every: u64,
        compress: bool,
    ) -> PyResult<Self> {
        let dir = run(py, || {
            CheckpointDir::open(&directory, keep_last, keep_every, compress)
        })?;
        Ok(CheckpointManager { dir })
    }

    /// The directory.
    #[getter]
    fn directory(&self) -> String {
        self.dir.dir.display().to_string()
    }

    /// How many newest periodic checkpoints retention keeps.
    #[getter]
    fn get_keep_last(&self) -> usize {
        self.dir.keep_last
    }

    #[setter]
    fn set_keep_last(&mut self, v: usize) -> PyResult<()> {
        if v == 0 {
            return Err(errors::config("keep_last", "got 0; allowed: at least 1"));
        }
        self.dir.keep_last = v;
        Ok(())
    }

    /// Steps that are multiples of this are kept too (0 = off).
    #[getter]
    fn get_keep_every(&self) -> u64 {
        self.dir.keep_every
    }

    #[setter]
    fn set_keep_every(&mut self, v: u64) {
        self.dir.keep_every = v;
    }

    /// Whether new checkpoints are zstd-compressed.
    #[getter]
    fn get_compress(&self) -> bool {
        self.dir.compress
    }

    #[setter]
    fn set_compress(&mut self, v: bool) {
        self.dir.compress = v;
    }

    /// Saves the weights of an Evaluator, or the full state of a TrainingManager.
    ///
    /// Returns the new file's info (path, size and the seconds the save took).
    #[pyo3(signature = (source, step = None, emergency = false))]
    fn save(
        &self,
        py: Python<'_>,
        source: &Bound<'_, PyAny>,
        step: Option<u64>,
        emergency: bool,
    ) -> PyResult<PyCheckpointInfo> {
        let start = std::time::Instant::now();
        let (tree, md, games) = if let Ok(ev) = source.extract::<PyRef<'_, Evaluator>>() {
            let (w, cfg) = ((*ev.weights).clone(), ev.config.clone());
            run(py, move || {
                let t = Trainer::with_weights(TrainConfig { threads: 1, ..cfg }, w)?;
                let (tree, md) = trainer_to_checkpoint(&t);
                Ok((tree, md, 0))
            })?
        } else if let Ok(m) = source.extract::<PyRef<'_, manager::TrainingManager>>() {
            m.checkpoint_tree(py)?
        } else {
            return Err(errors::config(
                "source",
                "expected an Evaluator or a TrainingManager",
            ));
        };
        let dir = &self.dir;
        let step = step.unwrap_or(games);
        let info = run(py, || dir.save(step, &tree, &md, emergency))?;
        let mut out = PyCheckpointInfo::from(info);
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Loads a checkpoint file (any path).
    fn load(&self, py: Python<'_>, path: PathBuf) -> PyResult<Checkpoint> {
        run(py, move || {
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            let info = CheckpointInfo {
                path: path.clone(),
                step: 0,
                emergency: false,
                size,
                compressed: false,
            };
            let mut c = load_checkpoint(&path, info, Vec::new())?;
            c.info.step = c
                .metadata
                .get("step")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            Ok(c)
        })
    }

    /// Loads the newest valid checkpoint, skipping corrupt ones (see `Checkpoint.warnings`).
    fn load_latest(&self, py: Python<'_>) -> PyResult<Checkpoint> {
        let dir = &self.dir;
        run(py, || {
            let (_, info, warnings) = dir.load_latest()?;
            load_checkpoint(&info.path.clone(), info, warnings)
        })
    }

    /// Every checkpoint file, oldest first.
    fn list(&self, py: Python<'_>) -> PyResult<Vec<PyCheckpointInfo>> {
        let dir = &self.dir;
        Ok(run(py, || dir.list())?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Checks a file completely (header, layout, every CRC) without keeping it; raises if corrupt.
    fn verify(&self, py: Python<'_>, path: PathBuf) -> PyResult<PyCheckpointInfo> {
        run(py, move || {
            let d = checkpoint::load(&path)?;
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            let step = d
                .metadata
                .get("step")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(PyCheckpointInfo {
                path: path.display().to_string(),
                step,
                size,
                emergency: name.starts_with("emergency_"),
                compressed: name.ends_with(".zst"),
                seconds: 0.0,
            })
        })
    }
}

/// The compiled module.
#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(perft, m)?)?;
    m.add_function(wrap_pyfunction!(reference_perft, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_variant, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_variants, m)?)?;
    m.add_function(wrap_pyfunction!(set_cpu_variant, m)?)?;
    m.add_function(wrap_pyfunction!(py_square_name, m)?)?;
    m.add_function(wrap_pyfunction!(weight_diff, m)?)?;
    m.add_function(wrap_pyfunction!(manager::shutdown_all, m)?)?;
    m.add_class::<PyBoard>()?;
    m.add_class::<MoveResult>()?;
    m.add_class::<Evaluator>()?;
    m.add_class::<PyCheckpointInfo>()?;
    m.add_class::<Checkpoint>()?;
    m.add_class::<CheckpointManager>()?;
    m.add_class::<manager::TrainingManager>()?;
    m.add_class::<manager::TrainingResult>()?;
    m.add_class::<manager::Statistics>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
