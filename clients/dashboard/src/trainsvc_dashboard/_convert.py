"""Service messages to the JSON the page reads (one converter, one place)."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from trainsvc_api.v1 import models_pb2 as mpb
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trajectories_pb2 as tpb


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


# ---------------------------------------------------------------- the admin view


def window_json(w: tpb.TrajectoryWindow) -> dict[str, Any]:
    """A trajectory window with its data-quality report, as the `admin` message lists it."""
    return {
        "id": w.window_id,
        "start_time": _time(w.start_time),
        "end_time": _time(w.end_time),
        "first_start_time": _time(w.first_start_time),
        "last_start_time": _time(w.last_start_time),
        "trajectories": w.trajectories,
        "by_status": dict(w.trajectories_by_status),
        "completed": w.completed,
        "complete_fraction": w.complete_fraction,
        "steps": w.steps,
        "steps_with_llm_calls": w.steps_with_llm_calls,
        "llm_step_fraction": w.llm_step_fraction,
        "reward_coverage": w.reward_coverage,
        "duplicates": w.duplicates,
        "duplicate_fraction": w.duplicate_fraction,
        "mean_reward": w.mean_reward if w.HasField("mean_reward") else None,
        "scenarios": [
            {"id": s.scenario_id, "trajectories": s.trajectories, "completed": s.completed}
            for s in w.scenario_counts
        ],
        "complete_groups": w.complete_groups,
        "quality_score": w.quality_score,
        "passed": w.passed,
        "failures": list(w.failures),
    }


def trajectories_json(reply: tpb.ListWindowsResponse) -> dict[str, Any]:
    """The windows and the collection series of a ListWindows reply."""
    return {
        "total": reply.total_trajectories,
        "bucket_seconds": reply.bucket_seconds,
        "collection": [
            {"time": _time(b.start_time), "trajectories": b.trajectories, "completed": b.completed}
            for b in reply.collection
        ],
        "windows": [window_json(w) for w in reply.windows],
    }


def model_json(m: mpb.Model) -> dict[str, Any]:
    """A registered model with its versions and traffic split."""
    traffic = {int(v): share for v, share in m.deployment.traffic.items()}
    return {
        "name": m.name,
        "model": m.name.removeprefix("models/"),
        "deployed": m.HasField("deployment"),
        "traffic": {str(v): s for v, s in sorted(traffic.items())},
        "update_time": _time(m.deployment.update_time),
        "versions": [
            {
                "version": v.version,
                "artifact_kind": v.artifact_kind,
                "base_model": v.base_model,
                "source_run": v.source_run,
                "metrics": dict(v.metrics),
                "windows": list(v.windows),
                "evaluation": v.evaluation or "none",
                "evaluation_metrics": dict(v.evaluation_metrics),
                "create_time": _time(v.create_time),
                "share": traffic.get(v.version, 0.0),
            }
            for v in m.versions
        ],
    }


def model_event_json(e: mpb.ModelEvent) -> dict[str, Any]:
    """A model event; ``severity`` is null for a service whose events have none."""
    has_severity = "severity" in e.DESCRIPTOR.fields_by_name
    return {
        "sequence": e.sequence,
        "model": e.model.removeprefix("models/"),
        "version": e.version,
        "type": e.type,
        "time": _time(e.time),
        "principal": e.principal,
        "reason": e.reason,
        "details": e.details_json,
        "severity": (getattr(e, "severity", "") or None) if has_severity else None,
    }
