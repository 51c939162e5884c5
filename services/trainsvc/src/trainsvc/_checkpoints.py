"""A run's checkpoint index against its storage: checks of files a client names, and
reconciliation after a restart (the directory, or the remote prefix, is the truth)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from trainsvc._domain import (
    CheckpointRecord,
    Event,
    EventType,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from trainsvc._registry import Registry
from trainsvc._remote_store import RemoteStore, is_url, redact_url

log = logging.getLogger("trainsvc.manager")


def verified(
    record: CheckpointRecord,
    run_dir: Path,
    field: str = "checkpoint",
    remote: RemoteStore | None = None,
) -> CheckpointRecord:
    """An indexed checkpoint a client chose: inside its run's directory (or remote prefix),
    present and valid.

    Raises:
        InvalidArgumentError: outside the run directory, or corrupt (every CRC is checked,
            so that a run never resumes into a crash loop on a file that cannot load).
        NotFoundError: the file is gone.
        UnavailableError: the remote storage failed.
    """
    from trainsvc_checkpoint import verify

    if is_url(record.path):
        store = _owning_store(record, remote, field)
        with _storage_errors(record, record.path, field):
            store.verify(record.path)
        return record
    root = run_dir.resolve()
    path = Path(record.path).resolve()
    if root not in path.parents:
        raise InvalidArgumentError(field, f"{record.name} lies outside its run directory")
    if not path.exists():
        raise NotFoundError(f"{record.name}: the file {path} is gone")
    with _storage_errors(record, str(path), field):
        verify(str(path))
    return record


def local_file(
    record: CheckpointRecord,
    directory: Path,
    field: str = "checkpoint",
    remote: RemoteStore | None = None,
) -> Path:
    """The checkpoint's file on this machine: its path, or, when the run's checkpoints are
    in the ``--data-dir`` object storage, a copy downloaded into ``directory`` (read-only
    on the storage: safe while the run's worker writes). Not verified here.

    Raises:
        InvalidArgumentError: the object lies outside its run's storage.
        NotFoundError: the object is gone.
        UnavailableError: the remote storage failed.
    """
    if not is_url(record.path):
        return Path(record.path)
    store = _owning_store(record, remote, field)
    with _storage_errors(record, record.path, field):
        return store.download(record.path, directory)


def _owning_store(record: CheckpointRecord, remote: RemoteStore | None, field: str) -> RemoteStore:
    """The storage that holds ``record``'s object under its run's prefix."""
    if remote is None or not remote.owns(record.run_id, record.path):
        raise InvalidArgumentError(field, f"{record.name} lies outside its run's storage")
    return remote


@contextlib.contextmanager
def _storage_errors(record: CheckpointRecord, where: str, field: str) -> Iterator[None]:
    """trainsvc-checkpoint's errors on ``record``'s file or object as service errors."""
    from trainsvc_checkpoint import (
        CheckpointNotFoundError,
        CorruptCheckpointError,
        RemoteStorageError,
    )

    try:
        yield
    except CheckpointNotFoundError:
        raise NotFoundError(f"{record.name}: the file {where} is gone") from None
    except CorruptCheckpointError as exc:
        raise InvalidArgumentError(
            field, f"{record.name} is corrupt and cannot be restored: {str(exc)[:300]}"
        ) from None
    except RemoteStorageError as exc:
        raise UnavailableError(f"{record.name}: --data-dir storage failed: {exc}") from None


def _local_changes(
    run_id: str, ckpt_dir: Path, indexed: list[str], verify_all: bool
) -> tuple[list[CheckpointRecord], list[str], dict[str, str]]:
    from trainsvc_checkpoint import reconcile as reconcile_dir

    result = reconcile_dir(ckpt_dir, indexed, trust_indexed=not verify_all)
    added = [
        CheckpointRecord(
            run_id,
            v.file.checkpoint_id,
            v.file.step,
            str(v.file.path),
            v.size_bytes,
            v.mtime,
            v.file.emergency,
        )
        for v in result.added
    ]
    unusable = {u.file.checkpoint_id: u.reason for u in result.unusable}
    return added, list(result.removed), unusable


def _remote_changes(
    run_id: str, remote: RemoteStore, indexed: list[str], verify_all: bool
) -> tuple[list[CheckpointRecord], list[str], dict[str, str]]:
    from trainsvc_checkpoint import RemoteStorageError

    try:
        result = remote.reconcile(run_id, set(indexed), trust_indexed=not verify_all)
    except RemoteStorageError as exc:
        raise UnavailableError(
            f"runs/{run_id}: cannot list its checkpoints (--data-dir storage failed): {exc}"
        ) from None
    added = [
        CheckpointRecord(run_id, o.checkpoint_id, o.step, o.url, o.size_bytes, o.mtime, o.emergency)
        for o in result.added
    ]
    return added, list(result.removed), dict(result.unusable)


def reconcile(
    registry: Registry,
    run_id: str,
    ckpt_dir: Path,
    *,
    verify_all: bool,
    remote: RemoteStore | None = None,
) -> Event | None:
    """Make a run's checkpoint index match its directory (or, with ``remote``, its remote
    prefix), which is the truth.

    On recovery the index can be stale: a SIGKILL may land between a save (or a
    retention delete) and its message to the service. Files the index lacks are
    verified and indexed, entries whose file is gone or unusable are dropped, and
    ``verify_all`` (runs that may resume) verifies every indexed file too.

    Returns:
        The event that says what changed, or None when nothing did.

    Raises:
        UnavailableError: the remote storage failed (the index is left as it was).
    """
    indexed = [c.checkpoint_id for c in registry.list_checkpoints(run_id)]
    if remote is not None:
        added, removed, unusable = _remote_changes(run_id, remote, indexed, verify_all)
        where = redact_url(remote.run_url(run_id))
    else:
        added, removed, unusable = _local_changes(run_id, ckpt_dir, indexed, verify_all)
        where = str(ckpt_dir)
    if not added and not removed:
        return None
    parts = []
    if added:
        parts.append("indexed " + ", ".join(c.checkpoint_id for c in added))
    for cid in removed:
        why = f"unusable: {unusable[cid][:300]}" if cid in unusable else "the file is gone"
        parts.append(f"dropped {cid} ({why})")
    message = f"checkpoint index reconciled with {where}: " + "; ".join(parts)
    etype = EventType.WARNING if unusable else EventType.LOG
    event = registry.reconcile_checkpoints(run_id, added, list(removed), message, etype)
    log.warning(message, extra={"run": run_id})
    return event
