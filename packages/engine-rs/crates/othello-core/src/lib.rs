//! othello-core: a bitboard Othello engine with n-tuple evaluation, alpha-beta
//! search, self-play TD(lambda) training and trainsvc checkpoints. No Python here:
//! the `trainsvc-engine-py` crate binds it.

pub mod board;
pub mod checkpoint;
pub mod error;
pub mod eval;
pub mod isa;
pub mod league;
pub mod pattern;
pub mod refgen;
pub mod replay;
pub mod rng;
pub mod search;
pub mod session;
pub mod state;
pub mod train;

pub use board::{perft, Board, Color};
pub use error::EngineError;
pub use eval::Weights;
pub use pattern::PatternSet;
