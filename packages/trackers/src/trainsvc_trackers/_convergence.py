"""ConvergenceMonitor and DivergenceDetector: is a series settling, or blowing up?"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from trainsvc_trackers._history import (
    History,
    JsonValue,
    check_positive_int,
    decode_float,
    encode_float,
)


class ConvergenceMonitor:
    """Rolling mean and variance of a scalar series, with stagnation detection.

    The window holds the last ``window`` values. Once it is full, each update
    compares the window's variance with the lowest variance seen so far: if it
    is lower by more than ``min_delta`` it becomes the new best and the counter
    resets, otherwise ``updates_since_improvement`` grows. The series is
    *stagnant* when that counter reaches ``patience``.

    Args:
        window: number of latest values in the rolling statistics.
        patience: updates without a variance decrease before ``stagnant``.
        min_delta: how much lower the variance must be to count as a decrease.
    """

    def __init__(
        self,
        window: int = 100,
        patience: int = 200,
        min_delta: float = 0.0,
        *,
        recent_size: int = 256,
        longterm_size: int = 512,
    ) -> None:
        check_positive_int("window", window)
        check_positive_int("patience", patience)
        if not (min_delta >= 0.0 and math.isfinite(min_delta)):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta}")
        self.window = window
        self.patience = patience
        self.min_delta = float(min_delta)
        self.values: deque[float] = deque(maxlen=window)
        self.best_var = math.inf
        self.updates_since_improvement = 0
        self.history = History(recent_size, longterm_size)

    @property
    def count(self) -> int:
        """Number of updates so far."""
        return self.history.count

    @property
    def mean(self) -> float:
        """Mean of the window (NaN when empty)."""
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def var(self) -> float:
        """Population variance of the window (NaN when empty)."""
        return float(np.var(self.values)) if self.values else math.nan

    @property
    def stagnant(self) -> bool:
        """True when the variance has not decreased for ``patience`` updates."""
        return self.updates_since_improvement >= self.patience

    def update(self, value: float) -> dict[str, float]:
        """Adds one value; returns :meth:`summary`."""
        value = float(value)
        self.values.append(value)
        self.history.append(value)
        if len(self.values) == self.window:
            var = self.var
            if var < self.best_var - self.min_delta:
                self.best_var = var
                self.updates_since_improvement = 0
            else:
                self.updates_since_improvement += 1
        return self.summary()

    def summary(self) -> dict[str, float]:
        """Flat metrics: mean, var, std, updates_since_improvement, stagnant (0/1), count."""
        var = self.var
        return {
            "mean": self.mean,
            "var": var,
            "std": math.sqrt(var) if var == var else math.nan,
            "updates_since_improvement": float(self.updates_since_improvement),
            "stagnant": float(self.stagnant),
            "count": float(self.count),
        }

    def to_dict(self) -> dict[str, JsonValue]:
        """JSON-safe state; :meth:`from_dict` restores it exactly."""
        return {
            "window": self.window,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "values": [encode_float(v) for v in self.values],
            "best_var": encode_float(self.best_var),
            "updates_since_improvement": self.updates_since_improvement,
            "history": self.history.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, JsonValue]) -> ConvergenceMonitor:
        """Rebuilds a monitor saved by :meth:`to_dict`."""
        mon = cls(int(data["window"]), int(data["patience"]), float(data["min_delta"]))
        mon.values.extend(decode_float(v) for v in data["values"])
        mon.best_var = decode_float(data["best_var"])
        mon.updates_since_improvement = int(data["updates_since_improvement"])
        mon.history = History.from_dict(data["history"])
        return mon


@dataclass(frozen=True)
class DivergenceEvent:
    """One non-finite or out-of-range value.

    Attributes:
        step: the training step passed to :meth:`DivergenceDetector.update`.
        name: the value's name (a metric or a parameter's tree path).
        kind: ``"nan"``, ``"inf"`` or ``"out_of_range"``.
        index: the first offending element's index (empty for a scalar).
        count: how many elements of the value had this problem.
        value: the first offending element.
    """

    step: int
    name: str
    kind: str
    index: tuple[int, ...]
    count: int
    value: float

    def describe(self) -> str:
        """A one-line human description."""
        where = f"{self.name}[{', '.join(map(str, self.index))}]" if self.index else self.name
        return f"step {self.step}: {self.kind} in {where} = {self.value} ({self.count} element(s))"


class DivergenceDetector:
    """Finds NaN, Inf and out-of-range values and reports where they occurred.

    Args:
        bounds: optional ``{name: (low, high)}``; finite values of ``name``
            outside ``[low, high]`` are ``out_of_range``.
        max_events: how many of the latest events to keep (counters cover all).
    """

    KINDS = ("nan", "inf", "out_of_range")

    def __init__(
        self, bounds: Mapping[str, tuple[float, float]] | None = None, max_events: int = 100
    ) -> None:
        check_positive_int("max_events", max_events)
        self.bounds = {k: (float(lo), float(hi)) for k, (lo, hi) in (bounds or {}).items()}
        for name, (lo, hi) in self.bounds.items():
            if not lo <= hi:
                raise ValueError(f"bounds[{name!r}]: low {lo} must be <= high {hi}")
        self.max_events = max_events
        self.events: deque[DivergenceEvent] = deque(maxlen=max_events)
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.first_step: int | None = None
        self.updates = 0

    @property
    def diverged(self) -> bool:
        """True once any event was seen."""
        return self.first_step is not None

    def update(self, step: int, values: Mapping[str, npt.ArrayLike]) -> list[DivergenceEvent]:
        """Checks every named value; records and returns the events found."""
        found: list[DivergenceEvent] = []
        for name, raw in values.items():
            arr = np.asarray(raw)
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.integer):
                continue
            masks = {"nan": np.isnan(arr), "inf": np.isinf(arr)}
            if name in self.bounds:
                lo, hi = self.bounds[name]
                masks["out_of_range"] = np.isfinite(arr) & ((arr < lo) | (arr > hi))
            for kind, mask in masks.items():
                n_bad = int(np.count_nonzero(mask))
                if n_bad:
                    index = tuple(int(i) for i in np.argwhere(mask)[0]) if arr.ndim else ()
                    value = float(arr[index]) if arr.ndim else float(arr)
                    found.append(DivergenceEvent(int(step), name, kind, index, n_bad, value))
        for event in found:
            self.events.append(event)
            self.counts[event.kind] += 1
        if found and self.first_step is None:
            self.first_step = int(step)
        self.updates += 1
        return found

    def summary(self) -> dict[str, float]:
        """Flat metrics: events of each kind so far, and ``diverged`` (0/1)."""
        out = {f"{kind}_events": float(n) for kind, n in self.counts.items()}
        out["diverged"] = float(self.diverged)
        return out

    def to_dict(self) -> dict[str, JsonValue]:
        """JSON-safe state; :meth:`from_dict` restores it exactly."""
        events: list[dict[str, Any]] = []
        for e in self.events:
            d = asdict(e)
            d["index"] = list(e.index)
            d["value"] = encode_float(e.value)
            events.append(d)
        return {
            "bounds": {
                k: [encode_float(lo), encode_float(hi)] for k, (lo, hi) in self.bounds.items()
            },
            "max_events": self.max_events,
            "events": events,
            "counts": dict(self.counts),
            "first_step": self.first_step,
            "updates": self.updates,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, JsonValue]) -> DivergenceDetector:
        """Rebuilds a detector saved by :meth:`to_dict`."""
        bounds = {k: (decode_float(lo), decode_float(hi)) for k, (lo, hi) in data["bounds"].items()}
        det = cls(bounds, int(data["max_events"]))
        for e in data["events"]:
            det.events.append(
                DivergenceEvent(
                    int(e["step"]),
                    str(e["name"]),
                    str(e["kind"]),
                    tuple(int(i) for i in e["index"]),
                    int(e["count"]),
                    decode_float(e["value"]),
                )
            )
        det.counts = {k: int(v) for k, v in data["counts"].items()}
        det.first_step = None if data["first_step"] is None else int(data["first_step"])
        det.updates = int(data["updates"])
        return det
