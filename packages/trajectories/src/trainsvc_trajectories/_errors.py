"""The package's exceptions: one base class, each error names what was wrong."""

from __future__ import annotations


class TrajectoryError(Exception):
    """Base of every error raised by trainsvc-trajectories."""


class InvalidRecordError(TrajectoryError, ValueError):
    """A value handed to the recorder, an exporter or a judge is not allowed.

    Attributes:
        field: the name of the offending field (``"reward"``, ``"trajectory"``...).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownTrajectoryError(InvalidRecordError, KeyError):
    """No open trajectory (or no stored trajectory) has this id."""

    def __init__(self, trajectory_id: str, message: str | None = None) -> None:
        super().__init__(
            "trajectory",
            message or f"unknown trajectory id {trajectory_id!r} (not open in this recorder)",
        )
        self.trajectory_id = trajectory_id

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class StepStateError(InvalidRecordError):
    """A step call out of order: a step completed twice, or none open."""


class NoCompleteGroupsError(TrajectoryError):
    """A window has no group of complete trajectories to export or judge."""

    def __init__(self, window_id: str, message: str) -> None:
        super().__init__(f"window {window_id!r}: {message}")
        self.window_id = window_id


class FormatError(TrajectoryError, ValueError):
    """An ART Parquet / JSONL file (or an archive) does not follow its format."""


class RecorderClosedError(TrajectoryError, RuntimeError):
    """The recorder is closed, or its background writer failed (the cause is chained)."""


class StoreError(TrajectoryError):
    """The store's URL, schema version or contents are not usable."""


class ArchiveVerificationError(StoreError):
    """An archive read back differs from the database rows; nothing was pruned."""
