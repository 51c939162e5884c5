"""A fast Othello engine with self-play TD(lambda) training (Rust core, Python API).

Everything heavy runs in Rust with the GIL released. See the package README for
the API, and ``trainsvc-othello --help`` for the command-line tools.
"""

import atexit

from trainsvc_engine._debug import Debug
from trainsvc_engine._engine import (
    Board,
    Checkpoint,
    CheckpointInfo,
    CheckpointManager,
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    EngineError,
    EngineIOError,
    EnginePanicError,
    Evaluator,
    IncompatibleVersionError,
    InvalidBoardError,
    InvalidMoveError,
    InvalidStateError,
    MoveResult,
    Statistics,
    TrainingError,
    TrainingManager,
    TrainingResult,
    __version__,
    cpu_variant,
    cpu_variants,
    perft,
    reference_perft,
    set_cpu_variant,
    shutdown_all,
    square_name,
    weight_diff,
)
from trainsvc_engine.presets import PRESETS

atexit.register(shutdown_all)

__all__ = [
    "PRESETS",
    "Board",
    "Checkpoint",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "ConfigError",
    "CorruptCheckpointError",
    "Debug",
    "EngineError",
    "EngineIOError",
    "EnginePanicError",
    "Evaluator",
    "IncompatibleVersionError",
    "InvalidBoardError",
    "InvalidMoveError",
    "InvalidStateError",
    "MoveResult",
    "Statistics",
    "TrainingError",
    "TrainingManager",
    "TrainingResult",
    "__version__",
    "cpu_variant",
    "cpu_variants",
    "perft",
    "reference_perft",
    "set_cpu_variant",
    "shutdown_all",
    "square_name",
    "weight_diff",
]
