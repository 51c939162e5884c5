"""Each run's metric history, kept by the service and served by ``GetRunMetrics``.

Every frame's metrics go into the run's `MetricHistory` (bounded, evenly thinned,
always spanning the run). The history is written to ``<run dir>/metrics-history.json``
(a temporary file renamed over the old one: a reader or a crash never sees half a
file) at most every ``flush_s`` seconds while the run trains and when it ends, and
read back from there for a run that is not in memory (finished before a restart).
A lost history costs curves, never the run: errors are logged, not raised.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from trainsvc_api.history import MetricHistory, Point

log = logging.getLogger("trainsvc.history")

FILE_NAME = "metrics-history.json"
CAPACITY = 512
"""Points kept per run before thinning (the dashboard draws a few hundred)."""


class RunMetricHistories:
    """The metric histories of the service's runs.

    Args:
        run_dir: the directory of a run (where its history file lives).
        flush_s: the longest a training run's file lags behind its frames.
    """

    def __init__(self, run_dir: Callable[[str], Path], *, flush_s: float = 10.0) -> None:
        self.run_dir = run_dir
        self.flush_s = flush_s
        self._lock = threading.Lock()
        self._live: dict[str, MetricHistory] = {}
        self._flushed: dict[str, float] = {}

    def add(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        """Records a frame's metrics (frames without metrics are not points)."""
        if not metrics:
            return
        with self._lock:
            history = self._live.get(run_id)
            if history is None:
                history = self._live[run_id] = self._load(run_id)
                self._flushed[run_id] = time.monotonic()
            history.add(step, metrics)
            due = time.monotonic() - self._flushed[run_id] >= self.flush_s
            points = history.points() if due else None
            if due:
                self._flushed[run_id] = time.monotonic()
        if points is not None:
            self._write(run_id, points)

    def end(self, run_id: str) -> None:
        """Writes the run's history now and lets go of it (the run stopped for now)."""
        with self._lock:
            history = self._live.pop(run_id, None)
            self._flushed.pop(run_id, None)
        if history is not None:
            self._write(run_id, history.points())

    def points(self, run_id: str) -> list[Point]:
        """The run's history, oldest first (empty for a run without frames)."""
        with self._lock:
            history = self._live.get(run_id)
            if history is not None:
                return history.points()
        return self._load(run_id).points()

    def _load(self, run_id: str) -> MetricHistory:
        history = MetricHistory(CAPACITY)
        path = self.run_dir(run_id) / FILE_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            for step, metrics in data["points"]:
                history.add(int(step), {str(k): float(v) for k, v in metrics.items()})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable metric history %s: %s", path, exc)
        return history

    def _write(self, run_id: str, points: list[Point]) -> None:
        path = self.run_dir(run_id) / FILE_NAME
        tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
        clean = [
            (step, {k: v for k, v in metrics.items() if math.isfinite(v)})
            for step, metrics in points
        ]
        try:
            tmp.write_text(json.dumps({"points": clean}), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:  # a full disk costs the curves, never the run
            log.warning("cannot write the metric history %s: %s", path, exc)
            tmp.unlink(missing_ok=True)


__all__ = ["CAPACITY", "FILE_NAME", "RunMetricHistories"]
