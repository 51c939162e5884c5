"""Time windows: fixed-length UTC intervals that group trajectories for training."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from ._errors import InvalidRecordError

_ID = re.compile(r"^\d{8}T\d{6}Z-(\d+)s$")


@dataclass(frozen=True)
class Windowing:
    """Cuts time into windows of ``length_s`` seconds aligned to the Unix epoch.

    A window's id names its UTC start and length, e.g. ``20261202T170000Z-3600s``, so
    ids sort by time and ``window_bounds`` recovers the interval.
    """

    length_s: int = 3600

    def __post_init__(self) -> None:
        if not isinstance(self.length_s, int) or isinstance(self.length_s, bool):
            raise InvalidRecordError("length_s", "must be an integer number of seconds")
        if not 1 <= self.length_s <= 366 * 86400:
            raise InvalidRecordError(
                "length_s", f"must be between 1 and {366 * 86400} seconds, got {self.length_s}"
            )

    def window_id(self, timestamp: float) -> str:
        """The id of the window holding ``timestamp`` (seconds since the epoch)."""
        if not math.isfinite(timestamp):
            raise InvalidRecordError("timestamp", f"must be finite, got {timestamp!r}")
        start = math.floor(timestamp / self.length_s) * self.length_s
        stamp = datetime.fromtimestamp(start, UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"{stamp}-{self.length_s}s"


def window_bounds(window_id: str) -> tuple[float, float] | None:
    """``(start, end)`` in epoch seconds for a generated id; ``None`` for a custom one."""
    m = _ID.match(window_id)
    if m is None:
        return None
    start = datetime.strptime(window_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    return start, start + int(m.group(1))
