//! Python bindings of othello-core: the `trainsvc_engine._engine` module.
//!
//! A thin layer: argument validation, GIL release (`py.detach`) around every
//! piece of Rust work, panics caught and errors mapped in `errors.rs`.

mod board;
mod checkpoints;
mod errors;
mod evaluator;
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
pub(crate) const MAX_LEAGUE_EXACT_EMPTIES: u32 = 16;

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

pub(crate) fn color_from(player: i64) -> PyResult<Color> {
    match player {
        1 => Ok(Color::Black),
        2 => Ok(Color::White),
        p => Err(InvalidBoardError::new_err(format!(
            "player: got {p}; allowed: 1 (black) or 2 (white)"
        ))),
    }
}

pub(crate) fn cells_from(obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
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

pub(crate) fn cells_to_board(v: &[i64], color: Color) -> PyResult<Board> {
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
pub(crate) fn board_arg(obj: &Bound<'_, PyAny>, player: Option<i64>) -> PyResult<(Board, Color)> {
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

pub(crate) fn bits(mut m: u64) -> Vec<u32> {
    let mut out = Vec::new();
    while m != 0 {
        out.push(m.trailing_zeros());
        m &= m - 1;
    }
    out
}

pub(crate) fn move_arg(obj: &Bound<'_, PyAny>) -> PyResult<u32> {
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
pub(crate) fn perft(py: Python<'_>, depth: u32) -> PyResult<u64> {
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
pub(crate) fn reference_perft(py: Python<'_>, depth: u32) -> PyResult<u64> {
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
pub(crate) fn cpu_variant() -> &'static str {
    othello_core::isa::active().name()
}

/// The CPU variants compiled into this module that this CPU can run, from the
/// most portable to the best.
#[pyfunction]
pub(crate) fn cpu_variants() -> Vec<&'static str> {
    othello_core::isa::supported()
        .into_iter()
        .map(othello_core::isa::Variant::name)
        .collect()
}

/// Runs the hot functions on the named variant from now on (every variant
/// computes the same results; for tests and benchmarks). Raises `ConfigError`
/// for an unknown name or a variant this CPU cannot run.
#[pyfunction]
pub(crate) fn set_cpu_variant(name: &str) -> PyResult<()> {
    othello_core::isa::Variant::parse(name)
        .and_then(othello_core::isa::set_active)
        .map_err(errors::to_py)
}

pub(crate) use board::PyBoard;
pub(crate) use checkpoints::{Checkpoint, CheckpointManager, PyCheckpointInfo};
pub(crate) use evaluator::{weight_diff, Evaluator, MoveResult};

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
