"""trainsvc-checkpoint: atomic, integrity-checked, safetensors-compatible checkpoints.

One file holds a whole training state (a nest of dicts, lists, tuples,
NamedTuples and None with arrays and Python scalars at the leaves) in the
safetensors layout, with a CRC32C per tensor and for the header, the tree
structure in ``__metadata__``, and optional zstd compression. See
``docs/checkpoint-format.md`` for the normative format.

Quick start::

    import trainsvc_checkpoint as ckpt

    ckpt.save("state.safetensors", {"params": params, "step": 10})
    state = ckpt.load("state.safetensors")

    manager = ckpt.CheckpointManager("runs/demo", keep_last=3)
    manager.save(step, state)          # async: returns once the arrays are copied
    manager.wait()
    state = manager.restore()          # newest valid checkpoint
"""

from ._errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    InvalidTreeError,
)
from ._format import FORMAT_NAME, FORMAT_VERSION, MAX_DIMS, MAX_HEADER_BYTES, MAX_TREE_DEPTH
from ._io import CheckpointInfo, load, load_with_info, read_info, save, verify
from ._manager import (
    CheckpointFallbackWarning,
    CheckpointFile,
    CheckpointManager,
    GetState,
    Reconciliation,
    Restored,
    UnusableCheckpoint,
    VerifiedCheckpoint,
    checkpoint_id,
    reconcile,
    scan,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_DIMS",
    "MAX_HEADER_BYTES",
    "MAX_TREE_DEPTH",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointFile",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "GetState",
    "IncompatibleCheckpointError",
    "InvalidTreeError",
    "Reconciliation",
    "Restored",
    "UnusableCheckpoint",
    "VerifiedCheckpoint",
    "checkpoint_id",
    "load",
    "load_with_info",
    "read_info",
    "reconcile",
    "save",
    "scan",
    "verify",
]
