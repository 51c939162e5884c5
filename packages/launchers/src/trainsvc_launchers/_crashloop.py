"""Crash-loop detection with ``resume_metadata.json`` beside the checkpoints.

Each time a launcher resumes a run it records the checkpoint and step it
resumes from. Resuming from the same step again and again means the run dies
before it makes progress: after ``max_same_step`` resumes from one step the
launcher stops with exit code 2 instead of burning GPU hours. Any progress
(a higher step) resets the count.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from trainsvc_launchers._files import read_json, write_json_atomic

__all__ = ["METADATA_FILE", "CrashLoopError", "ResumeMetadata", "correct_resume", "record_resume"]

METADATA_FILE = "resume_metadata.json"
DEFAULT_MAX_SAME_STEP = 3


class CrashLoopError(RuntimeError):
    """The run was resumed from the same step too many times without progress."""

    def __init__(self, metadata: ResumeMetadata) -> None:
        self.metadata = metadata
        super().__init__(
            f"crash loop: resumed from step {metadata.last_step} "
            f"({metadata.last_checkpoint or 'no checkpoint'}) {metadata.resume_count} times "
            "without progress; fix the cause (see the log) before resuming again"
        )


@dataclass
class ResumeMetadata:
    """What ``resume_metadata.json`` holds."""

    last_checkpoint: str | None
    last_step: int
    resume_count: int
    time: str

    @classmethod
    def load(cls, directory: Path) -> ResumeMetadata | None:
        """Read the metadata in ``directory``; ``None`` when absent or unreadable."""
        path = directory / METADATA_FILE
        try:
            raw = read_json(path)
            return cls(
                last_checkpoint=raw["last_checkpoint"],
                last_step=int(raw["last_step"]),
                resume_count=int(raw["resume_count"]),
                time=str(raw["time"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def record_resume(
    directory: Path,
    checkpoint: str | None,
    step: int,
    max_same_step: int = DEFAULT_MAX_SAME_STEP,
) -> ResumeMetadata:
    """Record a resume from ``checkpoint`` at ``step`` and detect a crash loop.

    Args:
        directory: the run's checkpoint directory (the file is written there).
        checkpoint: the checkpoint file name resumed from, ``None`` for a fresh start.
        step: the step resumed from (0 for a fresh start).
        max_same_step: resumes from one step that make a crash loop.

    Returns:
        The metadata now on disk.

    Raises:
        CrashLoopError: this is resume number ``max_same_step`` from the same step.
    """
    previous = ResumeMetadata.load(directory)
    count = 1
    if previous is not None and previous.last_step == step:
        count = previous.resume_count + 1
    meta = ResumeMetadata(
        last_checkpoint=checkpoint,
        last_step=step,
        resume_count=count,
        time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    write_json_atomic(directory / METADATA_FILE, asdict(meta))
    if count >= max_same_step:
        raise CrashLoopError(meta)
    return meta


def correct_resume(
    directory: Path, step: int, checkpoint: str | None = None
) -> ResumeMetadata | None:
    """Record that the resume just recorded actually restored ``step`` (the service may
    fall back to an older checkpoint than the newest file on disk, e.g. one that the
    registry had not indexed before a SIGKILL). The resume count is kept; returns the
    metadata now on disk, ``None`` when there was none."""
    meta = ResumeMetadata.load(directory)
    if meta is None:
        return None
    if meta.last_step != step:
        meta.last_step = step
        meta.last_checkpoint = checkpoint
        write_json_atomic(directory / METADATA_FILE, asdict(meta))
    return meta
