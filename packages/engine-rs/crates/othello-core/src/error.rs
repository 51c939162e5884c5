//! The engine's error type: each variant maps to its own Python exception class.

use std::fmt;

/// Everything that can go wrong in the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineError {
    /// A board given by the caller is malformed.
    InvalidBoard(String),
    /// A move is not legal or not a square.
    InvalidMove(String),
    /// A configuration field is out of its allowed range.
    InvalidConfig {
        /// The field's name.
        field: String,
        /// What is allowed, in words.
        allowed: String,
        /// The value that was given.
        got: String,
    },
    /// A checkpoint fails an integrity or structure check.
    CorruptCheckpoint(String),
    /// A checkpoint has a format version this build cannot read.
    IncompatibleVersion(String),
    /// No checkpoint where one was expected.
    CheckpointNotFound(String),
    /// An operating-system I/O failure.
    Io(String),
    /// The training state machine forbids this call now.
    InvalidState(String),
    /// Training diverged or produced too many errors.
    Training(String),
}

impl EngineError {
    /// An [`EngineError::InvalidConfig`] for `field`.
    pub fn config(field: &str, allowed: &str, got: impl fmt::Display) -> EngineError {
        EngineError::InvalidConfig {
            field: field.to_owned(),
            allowed: allowed.to_owned(),
            got: got.to_string(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::InvalidBoard(m)
            | EngineError::InvalidMove(m)
            | EngineError::CorruptCheckpoint(m)
            | EngineError::IncompatibleVersion(m)
            | EngineError::CheckpointNotFound(m)
            | EngineError::Io(m)
            | EngineError::InvalidState(m)
            | EngineError::Training(m) => f.write_str(m),
            EngineError::InvalidConfig {
                field,
                allowed,
                got,
            } => {
                write!(f, "{field}: got {got}; allowed: {allowed}")
            }
        }
    }
}

impl std::error::Error for EngineError {}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        EngineError::Io(e.to_string())
    }
}
