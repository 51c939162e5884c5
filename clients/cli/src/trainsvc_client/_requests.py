"""The requests of every trainsvc.v1 call, built once for the sync and the asyncio client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, Unpack

from google.protobuf.message import Message
from trainsvc_api.v1 import trainsvc_pb2 as pb

from trainsvc_client._channel import run_name
from trainsvc_client._config import config_field, config_message, kind_value


class RunFields(TypedDict, total=False):
    """The optional fields of a new run (`Client.create_run` documents each)."""

    seed: int
    config: Mapping[str, Any] | Message | None
    checkpoint_policy: pb.CheckpointPolicy | None
    max_restarts: int | None
    display_name: str
    run_id: str
    resume_from: str
    resources: pb.Resources | Mapping[str, Any] | None


def create_run(
    kind: str | int, step_budget: int, **fields: Unpack[RunFields]
) -> pb.CreateRunRequest:
    """The `CreateRun` request (see `Client.create_run` for the arguments)."""
    run = pb.Run(
        kind=kind_value(kind),  # type: ignore[arg-type]
        seed=fields.get("seed", 0),
        step_budget=step_budget,
        display_name=fields.get("display_name", ""),
    )
    if (max_restarts := fields.get("max_restarts")) is not None:
        run.max_restarts = max_restarts
    if (policy := fields.get("checkpoint_policy")) is not None:
        run.checkpoint_policy.CopyFrom(policy)
    if (resources := fields.get("resources")) is not None:
        run.resources.CopyFrom(
            resources if isinstance(resources, pb.Resources) else pb.Resources(**resources)
        )
    if (config := fields.get("config")) is not None:
        msg = config if isinstance(config, Message) else config_message(kind, config)
        getattr(run, config_field(msg)).CopyFrom(msg)
    return pb.CreateRunRequest(
        run=run, run_id=fields.get("run_id", ""), resume_from=fields.get("resume_from", "")
    )


def list_runs(state: int, page_size: int, page_token: str) -> pb.ListRunsRequest:
    """A `ListRuns` page request."""
    return pb.ListRunsRequest(
        state=state,  # type: ignore[arg-type]
        page_size=page_size,
        page_token=page_token,
    )


def stream_events(run: str, from_sequence: int, follow: bool) -> pb.StreamEventsRequest:
    """A `StreamEvents` request for one run or, with "runs/-", all of them."""
    name = run if run == "runs/-" else run_name(run)
    return pb.StreamEventsRequest(name=name, from_sequence=from_sequence, follow=follow)
