"""Metrics logging behind one small interface: console progress, JSONL file, Weights & Biases."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO


class WandbUnavailableError(RuntimeError):
    """W&B logging was requested but the ``wandb`` package is not installed."""


class MetricsLogger(Protocol):
    """What the trainer calls. Every method must be cheap; none may raise on bad metrics."""

    def start(self, *, total_steps: int, initial_step: int) -> None:
        """Called once before the first step of a :meth:`Trainer.run`."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records the metrics of training step ``step``."""

    def message(self, text: str) -> None:
        """Shows a human-readable event (a checkpoint saved, a warning)."""

    def close(self) -> None:
        """Flushes and releases resources; the logger may be started again."""


class NullLogger:
    """Discards everything."""

    def start(self, *, total_steps: int, initial_step: int) -> None:
        """Does nothing."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Does nothing."""

    def message(self, text: str) -> None:
        """Does nothing."""

    def close(self) -> None:
        """Does nothing."""


class ConsoleLogger:
    """A rich progress bar (steps, rate, ETA, a few metrics) and event lines.

    Args:
        stream: where to write (default stderr, so stdout stays clean for ``--json``).
        show: metric names shown beside the bar.
        progress: False prints event lines only.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        show: Sequence[str] = ("reward", "episode_return"),
        progress: bool = True,
    ) -> None:
        from rich.console import Console

        self._console = Console(file=stream or sys.stderr, highlight=False)
        self._show = tuple(show)
        self._enabled = progress
        self._progress: Any = None
        self._task: Any = None

    def start(self, *, total_steps: int, initial_step: int) -> None:
        """Starts the bar at ``initial_step`` of ``total_steps``."""
        if not self._enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.close()
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed_text]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self._console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=initial_step, info="", speed_text=""
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Advances the bar to ``step`` and shows the chosen metrics."""
        if self._progress is None:
            return
        info = "  ".join(f"{k}={metrics[k]:.4g}" for k in self._show if k in metrics)
        task = self._progress.tasks[0]
        speed = task.speed
        speed_text = f"{speed:,.0f} steps/s" if speed else ""
        self._progress.update(self._task, completed=step, info=info, speed_text=speed_text)

    def message(self, text: str) -> None:
        """Prints a line above the bar."""
        self._console.print(text, markup=False, soft_wrap=True)

    def close(self) -> None:
        """Stops the bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class JsonlLogger:
    """Appends one JSON object per logged step: ``{"step": N, "time": t, "metrics": {...}}``.

    Non-finite values are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``.
    The file is opened in append mode, so a resumed run continues the same file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: TextIO | None = None

    def start(self, *, total_steps: int, initial_step: int) -> None:
        """Opens the file."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Writes one line."""
        if self._file is None:
            self.start(total_steps=0, initial_step=step)
        assert self._file is not None
        import time

        record = {
            "step": step,
            "time": time.time(),
            "metrics": {k: _json_float(v) for k, v in metrics.items()},
        }
        self._file.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")

    def message(self, text: str) -> None:
        """Ignored (the file holds metrics only)."""

    def close(self) -> None:
        """Flushes and closes the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


class WandbLogger:
    """Weights & Biases logging; offline by default, one stable run id across resumes.

    Every ``log`` passes ``step=`` so that a resumed run continues its own x axis.

    Args:
        project: the W&B project.
        run_id: the stable id (the trainer keeps it in its checkpoints).
        mode: ``offline`` (default: nothing leaves the machine), ``online`` or ``disabled``.
        directory: where W&B writes its files.
        config: the run's config, recorded once.

    Raises:
        WandbUnavailableError: ``wandb`` is not installed.
    """

    def __init__(
        self,
        project: str,
        run_id: str,
        *,
        mode: str = "offline",
        directory: str | os.PathLike[str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise WandbUnavailableError(
                "log.wandb is on but the 'wandb' package is not installed: install "
                "'trainsvc-trainer[wandb]' (or 'pip install wandb'), or pass --no-wandb"
            ) from exc
        self._wandb: Any = wandb
        self.project = project
        self.run_id = run_id
        self.mode = mode
        self.directory = Path(directory) if directory is not None else None
        self.config = dict(config or {})
        self._run: Any = None

    def start(self, *, total_steps: int, initial_step: int) -> None:
        """Starts (or resumes) the run."""
        if self._run is not None:
            return
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._run = self._wandb.init(
            project=self.project,
            id=self.run_id,
            resume="allow",
            mode=self.mode,
            dir=str(self.directory) if self.directory is not None else None,
            config=self.config,
            settings=self._wandb.Settings(silent=True, console="off"),
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Logs at ``step`` (always passed explicitly)."""
        if self._run is None:
            self.start(total_steps=0, initial_step=step)
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        self._run.log(finite, step=step)

    def message(self, text: str) -> None:
        """Ignored."""

    def close(self) -> None:
        """Finishes the run (its files stay for ``wandb sync`` when offline)."""
        if self._run is not None:
            self._run.finish()
            self._run = None


class MultiLogger:
    """Fans every call out to several loggers."""

    def __init__(self, loggers: Sequence[MetricsLogger]) -> None:
        self.loggers = list(loggers)

    def start(self, *, total_steps: int, initial_step: int) -> None:
        """Starts every logger."""
        for lg in self.loggers:
            lg.start(total_steps=total_steps, initial_step=initial_step)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Logs to every logger."""
        for lg in self.loggers:
            lg.log(step, metrics)

    def message(self, text: str) -> None:
        """Shows the message on every logger."""
        for lg in self.loggers:
            lg.message(text)

    def close(self) -> None:
        """Closes every logger."""
        for lg in self.loggers:
            lg.close()


def _json_float(value: float) -> float | str:
    v = float(value)
    if math.isfinite(v):
        return v
    return "nan" if v != v else ("inf" if v > 0 else "-inf")
