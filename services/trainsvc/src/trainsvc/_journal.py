"""A run's journal: where its controller records what happens to the run.

Every state change, checkpoint and event is committed to the registry, told to
event followers and reflected in the metrics here, for one run. The controller
sees only this (and `RunHost`), never the registry or the manager as a whole.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from trainsvc_checkpoint import checkpoint_id

from trainsvc._domain import CheckpointRecord, Event, EventType, State
from trainsvc._metrics import Metrics
from trainsvc._registry import Registry
from trainsvc._remote_store import is_url


class RunJournal:
    """Records one run's progress, states, checkpoints and events."""

    def __init__(
        self,
        run_id: str,
        registry: Registry,
        metrics: Metrics,
        emit: Callable[[Event], None],
    ) -> None:
        self.run_id = run_id
        self._registry = registry
        self._metrics = metrics
        self._emit = emit

    # -- progress and state ---------------------------------------------------

    def progress(
        self, step: int, steps_per_second: float, metrics: dict[str, float], *, persist: bool
    ) -> None:
        """Show the run's progress in the metrics; with ``persist``, store it too."""
        self._metrics.steps_per_second.labels(self.run_id).set(steps_per_second)
        self._metrics.run_step.labels(self.run_id).set(step)
        if persist:
            self._registry.update_progress(self.run_id, step, steps_per_second, metrics)

    def state(
        self,
        state: State,
        message: str,
        *,
        step: int,
        steps_per_second: float,
        metrics: dict[str, float],
        **kw: Any,
    ) -> None:
        """Store the run's progress and its new state (a STATE_CHANGED event)."""
        self._registry.update_progress(self.run_id, step, steps_per_second, metrics)
        self._emit(self._registry.set_state(self.run_id, state, message, step=step, **kw))

    def stored_state(self) -> State:
        """The run's state as the registry has it (a client may have changed it)."""
        return self._registry.get_run(self.run_id).state

    def worker_gone(self) -> None:
        """The worker exited: its per-run gauges go."""
        for gauge in (self._metrics.steps_per_second, self._metrics.run_step):
            with contextlib.suppress(KeyError):
                gauge.remove(self.run_id)

    def worker_restarted(self) -> None:
        """Count a restart after a crash."""
        self._metrics.worker_restarts.inc()

    @property
    def write_error(self) -> str | None:
        """Why the registry cannot write (a full disk), or None."""
        return self._registry.write_error

    # -- events and checkpoints -----------------------------------------------

    def event(self, type_: EventType, message: str, *, step: int | None = None) -> None:
        """Add an event to the run's stream."""
        self._emit(self._registry.add_event(self.run_id, type_, message, step=step))

    def checkpoint_saved(self, path: str, step: int, emergency: bool, size_bytes: int = 0) -> None:
        """Index a checkpoint the worker saved (a CHECKPOINT_SAVED event); ``size_bytes``
        0: the size of the file at ``path``."""
        p = Path(path)
        size = size_bytes or (p.stat().st_size if p.exists() else 0)
        record = CheckpointRecord(
            self.run_id, checkpoint_id(p), step, path, size, time.time(), emergency
        )
        self._emit(self._registry.add_checkpoint(record))

    def checkpoints_gone(self, paths: Iterable[str]) -> None:
        """Drop checkpoints whose files left the run's directory from the index."""
        self._registry.remove_checkpoints(self.run_id, [checkpoint_id(p) for p in paths])

    def latest_checkpoint_step(self) -> int:
        """Step of the run's newest indexed checkpoint, -1 when none."""
        return latest_checkpoint_step(self._registry, self.run_id)

    def latest_checkpoint_path(self) -> str | None:
        """Path of the run's newest indexed checkpoint that still exists."""
        return latest_checkpoint_path(self._registry, self.run_id)


def latest_checkpoint_step(registry: Registry, run_id: str) -> int:
    """Step of a run's newest indexed checkpoint, -1 when none."""
    return max((c.step for c in registry.list_checkpoints(run_id)), default=-1)


def latest_checkpoint_path(registry: Registry, run_id: str) -> str | None:
    """Path of a run's newest indexed checkpoint that still exists (a remote one's URL: the
    worker that restores it falls back to an older one when it is gone)."""
    ckpts = [
        c for c in registry.list_checkpoints(run_id) if is_url(c.path) or Path(c.path).exists()
    ]
    if not ckpts:
        return None
    return max(ckpts, key=lambda c: (c.step, c.create_time)).path
