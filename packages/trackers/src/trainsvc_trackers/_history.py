"""Bounded-memory history of a scalar series.

A :class:`History` keeps two views of a series that may run for millions of
updates in constant memory:

* ``recent``: the last ``recent_size`` values, exactly (a ring buffer);
* ``longterm``: a decimated record of the whole run. Every ``stride``-th value
  is appended; when the record reaches ``longterm_size`` entries, every other
  entry is dropped and ``stride`` doubles. After ``n`` updates the record holds
  at most ``longterm_size`` points spaced ``stride`` updates apart, with
  ``stride`` the smallest power of two that makes them fit.

Both views are plain lists of floats, so ``to_dict``/``from_dict`` round trips
are exact (JSON stores Python floats by ``repr``, which round-trips). NaN and
infinities are stored as the strings ``"nan"``, ``"inf"`` and ``"-inf"``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

JsonValue = Any
"""A value that ``json.dumps(..., allow_nan=False)`` accepts."""


def encode_float(value: float) -> float | str:
    """Returns ``value`` as JSON-safe data: finite floats as is, others as strings."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def decode_float(value: float | int | str) -> float:
    """Inverse of :func:`encode_float`."""
    if isinstance(value, str):
        if value not in ("nan", "inf", "-inf"):
            raise ValueError(f"expected a number or 'nan'/'inf'/'-inf', found {value!r}")
        return float(value)
    return float(value)


def check_positive_int(name: str, value: int, maximum: int = 10**9) -> int:
    """Validates a size argument; raises ``ValueError`` naming it and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [1, {maximum}], got {value!r}")
    return value


class History:
    """A bounded record of a float series: exact recent values plus a decimated long-term view.

    Args:
        recent_size: how many of the latest values to keep exactly.
        longterm_size: the most points of the decimated whole-run record; must be even.
    """

    def __init__(self, recent_size: int = 256, longterm_size: int = 512) -> None:
        check_positive_int("recent_size", recent_size)
        check_positive_int("longterm_size", longterm_size)
        if longterm_size < 2 or longterm_size % 2:
            raise ValueError(f"longterm_size must be an even integer >= 2, got {longterm_size}")
        self.recent_size = recent_size
        self.longterm_size = longterm_size
        self.count = 0
        self.stride = 1
        self.recent: deque[float] = deque(maxlen=recent_size)
        self.longterm: list[float] = []

    def append(self, value: float) -> None:
        """Adds one value to the series."""
        value = float(value)
        self.recent.append(value)
        if self.count % self.stride == 0:
            self.longterm.append(value)
            if len(self.longterm) >= self.longterm_size:
                self.longterm = self.longterm[::2]
                self.stride *= 2
        self.count += 1

    def longterm_steps(self) -> list[int]:
        """The update indices (0-based) of the entries of ``longterm``."""
        return [i * self.stride for i in range(len(self.longterm))]

    def to_dict(self) -> dict[str, JsonValue]:
        """JSON-safe state; :meth:`from_dict` rebuilds an identical history."""
        return {
            "recent_size": self.recent_size,
            "longterm_size": self.longterm_size,
            "count": self.count,
            "stride": self.stride,
            "recent": [encode_float(v) for v in self.recent],
            "longterm": [encode_float(v) for v in self.longterm],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, JsonValue]) -> History:
        """Rebuilds a history saved by :meth:`to_dict`."""
        history = cls(int(data["recent_size"]), int(data["longterm_size"]))
        history.count = int(data["count"])
        history.stride = int(data["stride"])
        history.recent.extend(decode_float(v) for v in data["recent"])
        history.longterm = [decode_float(v) for v in data["longterm"]]
        return history

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        return _same_json(self.to_dict(), other.to_dict())

    __hash__ = None  # type: ignore[assignment]


def _same_json(a: JsonValue, b: JsonValue) -> bool:
    import json

    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class RecordedMetrics:
    """A named set of metrics, each with its :class:`History`, shared by the trackers.

    A tracker sets ``METRICS`` (the metric names), calls :meth:`_init_metrics` in its
    constructor and :meth:`_record` once per update, and stores :meth:`_metrics_to_dict`
    beside its own fields; :meth:`_restore_metrics` undoes that exactly.
    """

    METRICS: tuple[str, ...] = ()
    histories: dict[str, History]
    latest: dict[str, float]

    def _init_metrics(self, recent_size: int, longterm_size: int) -> None:
        self.histories = {m: History(recent_size, longterm_size) for m in self.METRICS}
        self.latest = {}

    def _record(self, values: dict[str, float]) -> dict[str, float]:
        for name, value in values.items():
            self.histories[name].append(value)
        self.latest = values
        return dict(values)

    @property
    def count(self) -> int:
        """Number of updates so far."""
        return self.histories[self.METRICS[0]].count

    def summary(self) -> dict[str, float]:
        """Latest value and mean over the recent window of every metric (empty before updates)."""
        out: dict[str, float] = {}
        for name in self.METRICS:
            hist = self.histories[name]
            if hist.recent:
                out[name] = self.latest[name]
                out[f"{name}_mean"] = float(np.mean(hist.recent))
        return out

    def _metrics_to_dict(self) -> dict[str, JsonValue]:
        return {
            "histories": {m: h.to_dict() for m, h in self.histories.items()},
            "latest": {m: encode_float(v) for m, v in self.latest.items()},
        }

    def _restore_metrics(self, data: Mapping[str, Any]) -> None:
        self.histories = {m: History.from_dict(h) for m, h in data["histories"].items()}
        self.latest = {m: decode_float(v) for m, v in data["latest"].items()}
