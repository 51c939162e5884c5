//! Python bindings of othello-core: the `trainsvc_engine._engine` module.

use pyo3::prelude::*;

/// Leaf count of the game tree from the initial position to `depth` plies.
#[pyfunction]
fn perft(py: Python<'_>, depth: u32) -> u64 {
    py.detach(|| othello_core::perft(&othello_core::Board::initial(), depth))
}

/// The compiled module.
#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(perft, m)?)?;
    Ok(())
}
