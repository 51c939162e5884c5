"""A run's checkpoint index against its directory: checks of files a client names, and
reconciliation after a restart (the directory is the truth)."""

from __future__ import annotations

import logging
from pathlib import Path

from trainsvc._domain import CheckpointRecord, Event, EventType, InvalidArgumentError, NotFoundError
from trainsvc._registry import Registry

log = logging.getLogger("trainsvc.manager")


def verified(
    record: CheckpointRecord, run_dir: Path, field: str = "checkpoint"
) -> CheckpointRecord:
    """An indexed checkpoint a client chose: inside its run's directory, present and valid.

    Raises:
        InvalidArgumentError: outside the run directory, or corrupt (every CRC is checked,
            so that a run never resumes into a crash loop on a file that cannot load).
        NotFoundError: the file is gone.
    """
    from trainsvc_checkpoint import CheckpointNotFoundError, CorruptCheckpointError, verify

    root = run_dir.resolve()
    path = Path(record.path).resolve()
    if root not in path.parents:
        raise InvalidArgumentError(field, f"{record.name} lies outside its run directory")
    if not path.exists():
        raise NotFoundError(f"{record.name}: the file {path} is gone")
    try:
        verify(path)
    except CheckpointNotFoundError:
        raise NotFoundError(f"{record.name}: the file {path} is gone") from None
    except CorruptCheckpointError as exc:
        raise InvalidArgumentError(
            field, f"{record.name} is corrupt and cannot be restored: {str(exc)[:300]}"
        ) from None
    return record


def reconcile(registry: Registry, run_id: str, ckpt_dir: Path, *, verify_all: bool) -> Event | None:
    """Make a run's checkpoint index match its directory, which is the truth.

    On recovery the index can be stale: a SIGKILL may land between a save (or a
    retention delete) and its message to the service. Files the index lacks are
    verified and indexed, entries whose file is gone or unusable are dropped, and
    ``verify_all`` (runs that may resume) verifies every indexed file too.

    Returns:
        The event that says what changed, or None when nothing did.
    """
    from trainsvc_checkpoint import reconcile as reconcile_dir

    indexed = registry.list_checkpoints(run_id)
    result = reconcile_dir(
        ckpt_dir, [c.checkpoint_id for c in indexed], trust_indexed=not verify_all
    )
    if not result.added and not result.removed:
        return None
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
    parts = []
    if added:
        parts.append("indexed " + ", ".join(c.checkpoint_id for c in added))
    for cid in result.removed:
        why = f"unusable: {unusable[cid][:300]}" if cid in unusable else "the file is gone"
        parts.append(f"dropped {cid} ({why})")
    message = f"checkpoint index reconciled with {ckpt_dir}: " + "; ".join(parts)
    etype = EventType.WARNING if unusable else EventType.LOG
    event = registry.reconcile_checkpoints(run_id, added, list(result.removed), message, etype)
    log.warning(message, extra={"run": run_id})
    return event
