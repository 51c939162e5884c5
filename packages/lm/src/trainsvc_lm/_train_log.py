"""Where a LoRA run's metrics go: key=value console lines, a JSONL file, Weights & Biases.

Every sink has ``log(step, metrics)``, ``message(text)`` and ``close()``. Console
lines are meant for people and agents alike: one line per log interval, space-separated
``key=value`` pairs, first ``step=N/TOTAL``, e.g.::

    step=20/200 loss=1.9231 lr=1.9e-04 tok_s=5321 val_loss=2.0140 elapsed_s=12.4 eta_s=111.6
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO


class Sink(Protocol):
    """What the trainer calls; none of these may raise on odd metric values."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records the metrics of step ``step``."""

    def message(self, text: str) -> None:
        """An event in words (a checkpoint saved, a sample completion)."""

    def close(self) -> None:
        """Flushes; the sink may be used again afterwards."""


def format_value(value: float) -> str:
    """A metric as console text: 4 significant digits, learning rates in e-notation."""
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v != 0 and abs(v) < 1e-2:
        return f"{v:.2e}"
    if v.is_integer() and abs(v) < 1e12:
        return str(int(v))
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


class ConsoleLines:
    """One ``key=value`` line per :meth:`log` call.

    Args:
        total_steps: the run's length, shown as ``step=N/TOTAL`` and used for ``eta_s``.
        stream: where to write (default stdout).
        keys: the metrics shown, in order, when present.
    """

    def __init__(
        self,
        total_steps: int,
        stream: TextIO | None = None,
        keys: Sequence[str] = ("loss", "lr", "tok_s", "val_loss", "grad_norm"),
    ) -> None:
        self.total_steps = total_steps
        self._stream = stream
        self._keys = tuple(keys)
        self._start: tuple[float, int] | None = None

    @property
    def stream(self) -> TextIO:
        """The stream written (stdout, looked up at each write, when none was given)."""
        return self._stream or sys.stdout

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Prints ``step=N/TOTAL`` then the chosen metrics, elapsed and remaining seconds."""
        now = time.monotonic()
        if self._start is None:
            self._start = (now, step - 1)
        t0, s0 = self._start
        parts = [f"step={step}/{self.total_steps}"]
        parts += [f"{k}={format_value(metrics[k])}" for k in self._keys if k in metrics]
        elapsed = now - t0
        parts.append(f"elapsed_s={elapsed:.1f}")
        done = step - s0
        if done > 0 and self.total_steps > step:
            parts.append(f"eta_s={elapsed / done * (self.total_steps - step):.1f}")
        self.stream.write(" ".join(parts) + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Prints the text on its own line."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Forgets the start time (a later run measures anew)."""
        self._start = None


class JsonlMetrics:
    """Appends ``{"step": N, "time": t, "metrics": {...}}`` lines (non-finite values as strings)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: TextIO | None = None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Writes one line (opening the file in append mode on first use)."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        values = {k: _json_safe(v) for k, v in metrics.items()}
        record = {"step": step, "time": time.time(), "metrics": values}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def message(self, text: str) -> None:
        """Ignored: the file holds metrics only."""

    def close(self) -> None:
        """Closes the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _json_safe(value: float) -> float | str:
    v = float(value)
    return v if math.isfinite(v) else str(v)


class WandbUnavailableError(RuntimeError):
    """``log.wandb`` is on but the ``wandb`` package is not installed."""


class WandbSink:
    """Weights & Biases, offline by default, one run id across resumes, ``step=`` always passed.

    Raises:
        WandbUnavailableError: ``wandb`` cannot be imported.
    """

    def __init__(
        self,
        project: str,
        run_name: str,
        run_id: str,
        *,
        mode: str = "offline",
        directory: str | Path | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise WandbUnavailableError(
                "log.wandb is on but 'wandb' is not installed: install 'trainsvc-lm[wandb]', "
                "or set log.wandb=false"
            ) from exc
        self._wandb: Any = wandb
        self._dir = None if directory is None else Path(directory)
        self._init: dict[str, Any] = {
            "project": project,
            "name": run_name,
            "id": run_id,
            "resume": "allow",
            "mode": mode,
            "dir": None if self._dir is None else str(self._dir),
            "config": dict(config or {}),
        }
        self._run: Any = None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Logs the finite metrics at ``step``."""
        if self._run is None:
            if self._dir is not None:
                self._dir.mkdir(parents=True, exist_ok=True)
            settings = self._wandb.Settings(silent=True, console="off")
            self._run = self._wandb.init(settings=settings, **self._init)
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        self._run.log(finite, step=step)

    def message(self, text: str) -> None:
        """Ignored."""

    def close(self) -> None:
        """Finishes the run; offline files stay for ``wandb sync``."""
        if self._run is not None:
            self._run.finish()
            self._run = None


class Sinks:
    """Fans every call out to several sinks."""

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Logs to every sink."""
        for s in self.sinks:
            s.log(step, metrics)

    def message(self, text: str) -> None:
        """Passes the message to every sink."""
        for s in self.sinks:
            s.message(text)

    def close(self) -> None:
        """Closes every sink."""
        for s in self.sinks:
            s.close()
