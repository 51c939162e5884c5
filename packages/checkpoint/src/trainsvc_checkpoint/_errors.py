"""The exception hierarchy of trainsvc_checkpoint."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "InvalidTreeError",
    "RemoteStorageError",
]


class CheckpointError(Exception):
    """Base class of every error this library raises on purpose."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is damaged, truncated or hostile.

    The message names the tensor or header field that failed a check, with what
    was expected and what was found.
    """


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint is well formed but cannot be used here.

    Raised for an unknown format version, and for a file whose tree does not
    match the ``target`` given to ``load`` (the message names the path).
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint exists at the given path, step or directory."""


class InvalidTreeError(CheckpointError, ValueError):
    """A tree or metadata given to ``save`` cannot be stored.

    The message names the tree path and says what is allowed: dicts with str
    keys, lists, tuples, NamedTuples, None, arrays of a supported dtype, bool,
    int in the signed 64-bit range, finite float, str.
    """


class RemoteStorageError(CheckpointError):
    """Remote storage (an fsspec URL: S3...) could not be used.

    The message says what failed and names the setting to check: an
    unreachable endpoint (``storage_options`` ``endpoint_url`` or
    ``AWS_ENDPOINT_URL``), refused credentials (``key``/``secret`` or
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), a missing package. It
    never contains a secret.
    """
