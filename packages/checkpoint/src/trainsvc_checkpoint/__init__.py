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

    # Remote storage (pip install 'trainsvc-checkpoint[s3]'): any fsspec URL
    opts = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    ckpt.save("s3://bucket/run/state.safetensors", state, storage_options=opts)
    w = ckpt.read_tensor("s3://bucket/run/state.safetensors", "params/w", storage_options=opts)
    remote = ckpt.RemoteCheckpointManager("s3://bucket/run", storage_options=opts)

    ckpt.checkpoint_file_name(12, emergency=True)     # "emergency_step_12.safetensors"
    ckpt.parse_checkpoint_file_name("runs/demo/step_12.safetensors.zst")
    # CheckpointName(step=12, emergency=False, compression='zstd')
"""

from ._errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    InvalidTreeError,
    RemoteStorageError,
)
from ._format import FORMAT_NAME, FORMAT_VERSION, MAX_DIMS, MAX_HEADER_BYTES, MAX_TREE_DEPTH
from ._io import CheckpointInfo, load, load_with_info, read_info, read_tensor, save, verify
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
from ._names import (
    MAX_STEP,
    CheckpointName,
    RetentionPolicy,
    checkpoint_file_name,
    parse_checkpoint_file_name,
)
from ._remote_manager import (
    Published,
    RemoteCheckpoint,
    RemoteCheckpointManager,
    download_remote_checkpoint,
    list_remote_checkpoints,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_DIMS",
    "MAX_HEADER_BYTES",
    "MAX_STEP",
    "MAX_TREE_DEPTH",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointFile",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointName",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "GetState",
    "IncompatibleCheckpointError",
    "InvalidTreeError",
    "Published",
    "Reconciliation",
    "RemoteCheckpoint",
    "RemoteCheckpointManager",
    "RemoteStorageError",
    "Restored",
    "RetentionPolicy",
    "UnusableCheckpoint",
    "VerifiedCheckpoint",
    "checkpoint_file_name",
    "checkpoint_id",
    "download_remote_checkpoint",
    "list_remote_checkpoints",
    "load",
    "load_with_info",
    "parse_checkpoint_file_name",
    "read_info",
    "read_tensor",
    "reconcile",
    "save",
    "scan",
    "verify",
]
