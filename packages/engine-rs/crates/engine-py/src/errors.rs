//! The Python exception hierarchy: one class per core error variant.
//!
//! Every class derives from `EngineError`; the ones about bad input also derive
//! from `ValueError` (set up in [`register`]), so `except ValueError` works.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use othello_core::EngineError as Core;

create_exception!(
    trainsvc_engine,
    EngineError,
    PyException,
    "Base class of every trainsvc_engine error."
);
create_exception!(
    trainsvc_engine,
    InvalidBoardError,
    EngineError,
    "A board is malformed (also a ValueError)."
);
create_exception!(
    trainsvc_engine,
    InvalidMoveError,
    EngineError,
    "A move is illegal or not a square (also a ValueError)."
);
create_exception!(
    trainsvc_engine,
    ConfigError,
    EngineError,
    "A configuration field is out of range (also a ValueError)."
);
create_exception!(
    trainsvc_engine,
    CorruptCheckpointError,
    EngineError,
    "A checkpoint fails an integrity check."
);
create_exception!(
    trainsvc_engine,
    IncompatibleVersionError,
    EngineError,
    "A checkpoint's format version is unknown."
);
create_exception!(
    trainsvc_engine,
    CheckpointNotFoundError,
    EngineError,
    "No checkpoint where one was expected."
);
create_exception!(
    trainsvc_engine,
    EngineIOError,
    EngineError,
    "An operating-system I/O failure."
);
create_exception!(
    trainsvc_engine,
    InvalidStateError,
    EngineError,
    "The training state machine forbids this call now."
);
create_exception!(
    trainsvc_engine,
    TrainingError,
    EngineError,
    "Training diverged or failed."
);
create_exception!(
    trainsvc_engine,
    EnginePanicError,
    EngineError,
    "A bug: the Rust engine panicked (the process survives)."
);

/// A `ConfigError` about `field` (its `field` attribute), with the message
/// `"{field}: {detail}"` (detail: `got ...; allowed: ...`).
pub fn config(field: &str, detail: impl std::fmt::Display) -> PyErr {
    with_field(ConfigError::new_err(format!("{field}: {detail}")), field)
}

/// Sets the `field` attribute of a `ConfigError`: what a caller maps to its own
/// request field, with no parsing of the message.
fn with_field(err: PyErr, field: &str) -> PyErr {
    Python::attach(|py| {
        // Setting an attribute on a fresh exception instance cannot fail in practice;
        // if it did, the error would still carry the field in its message.
        let _ = err.value(py).setattr("field", field);
    });
    err
}

/// The Python exception for a core error.
pub fn to_py(e: Core) -> PyErr {
    let msg = e.to_string();
    match e {
        Core::InvalidBoard(_) => InvalidBoardError::new_err(msg),
        Core::InvalidMove(_) => InvalidMoveError::new_err(msg),
        Core::InvalidConfig { field, .. } => with_field(ConfigError::new_err(msg), &field),
        Core::CorruptCheckpoint(_) => CorruptCheckpointError::new_err(msg),
        Core::IncompatibleVersion(_) => IncompatibleVersionError::new_err(msg),
        Core::CheckpointNotFound(_) => CheckpointNotFoundError::new_err(msg),
        Core::Io(_) => EngineIOError::new_err(msg),
        Core::InvalidState(_) => InvalidStateError::new_err(msg),
        Core::Training(_) => TrainingError::new_err(msg),
    }
}

/// Adds every class to the module; input errors also become ValueErrors.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EngineError", py.get_type::<EngineError>())?;
    let value_error = py.get_type::<PyValueError>();
    let base = py.get_type::<EngineError>();
    // The field a ConfigError is about (None on one raised from Python code).
    py.get_type::<ConfigError>().setattr("field", py.None())?;
    for (name, t) in [
        ("InvalidBoardError", py.get_type::<InvalidBoardError>()),
        ("InvalidMoveError", py.get_type::<InvalidMoveError>()),
        ("ConfigError", py.get_type::<ConfigError>()),
    ] {
        t.setattr(
            "__bases__",
            PyTuple::new(py, [base.clone(), value_error.clone()])?,
        )?;
        m.add(name, t)?;
    }
    m.add(
        "CorruptCheckpointError",
        py.get_type::<CorruptCheckpointError>(),
    )?;
    m.add(
        "IncompatibleVersionError",
        py.get_type::<IncompatibleVersionError>(),
    )?;
    m.add(
        "CheckpointNotFoundError",
        py.get_type::<CheckpointNotFoundError>(),
    )?;
    m.add("EngineIOError", py.get_type::<EngineIOError>())?;
    m.add("InvalidStateError", py.get_type::<InvalidStateError>())?;
    m.add("TrainingError", py.get_type::<TrainingError>())?;
    m.add("EnginePanicError", py.get_type::<EnginePanicError>())?;
    Ok(())
}

/// Runs Rust work with the GIL released, catching panics and converting errors.
pub fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Core> + Send) -> PyResult<T> {
    let out = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(e)),
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(EnginePanicError::new_err(what))
        }
    }
}
