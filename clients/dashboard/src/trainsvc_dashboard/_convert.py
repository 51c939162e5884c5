"""Service messages to the JSON the page reads (one converter, one place)."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from trainsvc_api.v1 import trainsvc_pb2 as pb


def _time(ts: Timestamp) -> float | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.seconds + ts.nanos / 1e9


def state_name(state: int) -> str:
    """`Run.State` value to its name ("RUNNING")."""
    return pb.Run.State.Name(state)  # type: ignore[arg-type]


def run_json(run: pb.Run) -> dict[str, Any]:
    """A run as the page's `runs` message lists it."""
    return {
        "name": run.name,
        "id": run.name.removeprefix("runs/"),
        "display_name": run.display_name,
        "kind": pb.Run.Kind.Name(run.kind).lower(),
        "state": state_name(run.state),
        "step": run.step,
        "step_budget": run.step_budget,
        "steps_per_second": run.steps_per_second,
        "state_message": run.state_message,
        "restarts": run.restarts,
        "latest_checkpoint": run.latest_checkpoint,
        "metrics": dict(run.metrics),
        "create_time": _time(run.create_time),
        "start_time": _time(run.start_time),
        "update_time": _time(run.update_time),
        "end_time": _time(run.end_time),
    }


def event_json(event: pb.Event) -> dict[str, Any]:
    """An event as the page's `event` and `events` messages carry it."""
    return {
        "sequence": event.sequence,
        "run": event.run,
        "type": pb.Event.Type.Name(event.type),
        "time": _time(event.time),
        "message": event.message,
        "state": state_name(event.state),
        "previous_state": state_name(event.previous_state),
        "checkpoint": event.checkpoint,
        "step": event.step,
    }


def checkpoint_json(ckpt: pb.Checkpoint) -> dict[str, Any]:
    """A checkpoint as the page's `checkpoints` message lists it."""
    return {
        "name": ckpt.name,
        "step": ckpt.step,
        "size_bytes": ckpt.size_bytes,
        "create_time": _time(ckpt.create_time),
        "emergency": ckpt.emergency,
    }


ACTIVE_STATES = frozenset({pb.Run.PENDING, pb.Run.RUNNING})


def most_active(runs: list[pb.Run]) -> str | None:
    """The run a silent client watches: the newest started active run, else the latest touched.

    Among PENDING/RUNNING runs, the one started (or created) last; when none is
    active, the one whose state changed last (just paused, finished, failed).
    """
    if not runs:
        return None

    def started(r: pb.Run) -> float:
        return _time(r.start_time) or _time(r.create_time) or 0.0

    def touched(r: pb.Run) -> float:
        return max(_time(r.update_time) or 0.0, _time(r.end_time) or 0.0, started(r))

    active = [r for r in runs if r.state in ACTIVE_STATES]
    if active:
        return max(active, key=started).name
    return max(runs, key=touched).name
