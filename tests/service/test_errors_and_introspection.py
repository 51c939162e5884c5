"""Status codes for bad input, health checks and server reflection."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from trainsvc_client import InvalidArgumentError, NotFoundError, pb


def _create(stub: Any, run: pb.Run, **kw: Any) -> None:
    stub.CreateRun(pb.CreateRunRequest(run=run, **kw), timeout=10)


@pytest.mark.parametrize(
    ("run", "extra", "field"),
    [
        (pb.Run(kind=99, step_budget=10), {}, "run.kind"),  # type: ignore[arg-type]
        (pb.Run(step_budget=10), {}, "run.kind"),
        (pb.Run(kind=pb.Run.EMERGENCE, step_budget=-5), {}, "run.step_budget"),
        (pb.Run(kind=pb.Run.EMERGENCE, step_budget=0), {}, "run.step_budget"),
        (
            pb.Run(
                kind=pb.Run.EMERGENCE,
                step_budget=10,
                checkpoint_policy=pb.CheckpointPolicy(interval_steps=-1),
            ),
            {},
            "run.checkpoint_policy.interval_steps",
        ),
        (
            pb.Run(
                kind=pb.Run.EMERGENCE, step_budget=10, emergence=pb.EmergenceConfig(num_agents=1)
            ),
            {},
            "run.emergence.num_agents",
        ),
        (
            pb.Run(
                kind=pb.Run.EMERGENCE,
                step_budget=10,
                emergence=pb.EmergenceConfig(overrides={"env.bogus": "1"}),
            ),
            {},
            "run.emergence.overrides[env.bogus]",
        ),
        (
            pb.Run(kind=pb.Run.EMERGENCE, step_budget=10, othello=pb.OthelloConfig()),
            {},
            "run.othello",
        ),
        (pb.Run(kind=pb.Run.EMERGENCE, step_budget=10), {"run_id": "../../etc"}, "run_id"),
        (
            pb.Run(kind=pb.Run.EMERGENCE, step_budget=10),
            {"resume_from": "runs/a/checkpoints/../../../etc/passwd"},
            "resume_from",
        ),
        (
            pb.Run(kind=pb.Run.EMERGENCE, step_budget=10),
            {"resume_from": "/etc/passwd"},
            "resume_from",
        ),
    ],
)
def test_invalid_create_names_the_field(
    shared_service: Any, run: pb.Run, extra: dict[str, str], field: str
) -> None:
    with shared_service.client() as c, pytest.raises(InvalidArgumentError) as info:
        c._unary(c._stub.CreateRun, pb.CreateRunRequest(run=run, **extra), 10)
    assert info.value.field == field
    assert info.value.details.startswith(field)


def test_other_bad_requests(shared_service: Any) -> None:
    with shared_service.client() as c:
        with pytest.raises(NotFoundError):
            c.get_run("runs/no-such-run")
        with pytest.raises(NotFoundError):
            c.pause_run("no-such-run")
        with pytest.raises(InvalidArgumentError) as info:
            c.get_run("runs/../x")
        assert info.value.field == "name"
        with pytest.raises(InvalidArgumentError) as info:
            c.list_runs_page(state=42)
        assert info.value.field == "state"
        with pytest.raises(InvalidArgumentError) as info:
            c.resume_run("runs/no-such-run", checkpoint="../../registry.sqlite3")
        assert info.value.field == "checkpoint"
        with pytest.raises(InvalidArgumentError) as info:
            list(c.stream_frames("runs/no-such-run", max_rate_hz=-1))
        assert info.value.field == "max_rate_hz"
        with pytest.raises(NotFoundError):
            list(c.stream_frames("runs/no-such-run"))
        with pytest.raises(InvalidArgumentError):
            list(c.stream_events("runs/no-such-run", from_sequence=-1))


def test_health_and_reflection(shared_service: Any) -> None:
    with grpc.insecure_channel(shared_service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "trainsvc.v1.TrainService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # A reflection client learns the API without the .proto files.
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reqs = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="trainsvc.v1.TrainService"
            ),
        ]
        replies = list(stub.ServerReflectionInfo(iter(reqs), timeout=5))
        listed = {s.name for s in replies[0].list_services_response.service}
        assert {"trainsvc.v1.TrainService", "grpc.health.v1.Health"} <= listed
        from google.protobuf import descriptor_pb2

        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in replies[1].file_descriptor_response.file_descriptor_proto
        ]
        mine = next(f for f in files if f.name == "trainsvc/v1/trainsvc.proto")
        methods = {m.name for m in mine.service[0].method}
        assert {"CreateRun", "StreamFrames", "StreamEvents", "ListRuns"} <= methods


@pytest.mark.parametrize("bad", ["ab\n", "ab\r\n", "ab\n\n"])
def test_ids_with_a_trailing_newline_are_invalid(shared_service: Any, bad: str) -> None:
    # `re.match` with `$` accepted "ab\n" (issue 24, item 5): a second run and a
    # directory "runs/ab\n"; "step_1\n" got NOT_FOUND instead of INVALID_ARGUMENT.
    run = pb.Run(kind=pb.Run.EMERGENCE, step_budget=10)
    with shared_service.client() as c:
        with pytest.raises(InvalidArgumentError) as info:
            c._unary(c._stub.CreateRun, pb.CreateRunRequest(run=run, run_id=bad), 10)
        assert info.value.field == "run_id"
        with pytest.raises(InvalidArgumentError) as info:
            c.get_run(f"runs/{bad}")
        assert info.value.field == "name"
        with pytest.raises(InvalidArgumentError) as info:
            c.resume_run("runs/no-such-run", checkpoint=bad.replace("ab", "step_1"))
        assert info.value.field == "checkpoint"
        with pytest.raises(InvalidArgumentError) as info:
            c._unary(
                c._stub.CreateRun,
                pb.CreateRunRequest(run=run, resume_from=f"runs/{bad}/checkpoints/step_1"),
                10,
            )
        assert info.value.field == "resume_from"


def _override(key: str, text: str) -> pb.CreateRunRequest:
    config = pb.EmergenceConfig(overrides={key: text})
    return pb.CreateRunRequest(run=pb.Run(kind=pb.Run.EMERGENCE, step_budget=10, emergence=config))


def _token(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_override("env.num_agents", "1" * 5000), "run.emergence.overrides[env.num_agents]"),
        (_override("env.num_agents", "9" * 30), "run.emergence.overrides[env.num_agents]"),
        (
            _override("env.num_agents", "[" * 100_000 + "]" * 100_000),
            "run.emergence.overrides[env.num_agents]",
        ),
        (_override("env.num_agents", "NaN"), "run.emergence.overrides[env.num_agents]"),
        (_override("env.num_agents", "1e999"), "run.emergence.overrides[env.num_agents]"),
        (_override("env.num_agents", "1" * 100_000), "run.emergence.overrides[env.num_agents]"),
        (_override("x" * 5000, "1"), "run.emergence.overrides"),
        (_override("env.\u00e9", "1"), "run.emergence.overrides[env.\\xe9]"),
        (pb.ListRunsRequest(page_token=_token("[" * 50_000 + "]" * 50_000)), "page_token"),
        (pb.ListRunsRequest(page_token=_token('[NaN, "a"]')), "page_token"),
        (pb.ListRunsRequest(page_token=_token('[1e999, "a"]')), "page_token"),
        (pb.ListRunsRequest(page_token=_token('[1, "a\\n"]')), "page_token"),
        (pb.ListRunsRequest(page_token="x" * 100_000), "page_token"),
        (pb.GetRunRequest(name="runs/" + "a" * 1_000_000), "name"),
        (
            pb.CreateRunRequest(
                run=pb.Run(kind=pb.Run.EMERGENCE, step_budget=10), run_id="A" * 1_000_000
            ),
            "run_id",
        ),
    ],
)
def test_hostile_values_are_invalid_argument_with_a_short_reply(
    shared_service: Any, request_: Any, field: str
) -> None:
    # Issue 24, item 11: these gave INTERNAL, were accepted (NaN), or echoed 1 MB
    # back (RESOURCE_EXHAUSTED at the client, whose metadata limit is 8 KiB).
    method = {
        pb.CreateRunRequest: "CreateRun",
        pb.ListRunsRequest: "ListRuns",
        pb.GetRunRequest: "GetRun",
    }[type(request_)]
    with shared_service.client() as c, pytest.raises(InvalidArgumentError) as info:
        c._unary(getattr(c._stub, method), request_, 30)
    assert info.value.field == field
    assert len(info.value.details) < 2500


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (pb.CheckpointPolicy(keep_every=10), "run.checkpoint_policy.keep_every"),
        (pb.CheckpointPolicy(compress=True), "run.checkpoint_policy.compress"),
    ],
)
def test_emergence_refuses_a_checkpoint_policy_it_would_ignore(
    shared_service: Any, policy: pb.CheckpointPolicy, field: str
) -> None:
    # Issue 24, item 14: compress and keep_every were echoed back but not applied.
    run = pb.Run(kind=pb.Run.EMERGENCE, step_budget=10, checkpoint_policy=policy)
    with shared_service.client() as c, pytest.raises(InvalidArgumentError) as info:
        c._unary(c._stub.CreateRun, pb.CreateRunRequest(run=run), 10)
    assert info.value.field == field
    assert "not supported by emergence runs" in info.value.details


@pytest.mark.parametrize(
    "key", ["train.compile_cache_dir", "log.metrics_file", "log.wandb_dir", "env.some_path"]
)
def test_path_overrides_are_refused(shared_service: Any, tmp_path: Any, key: str) -> None:
    # Issue 24, item 3: train.compile_cache_dir = "DIR/../DIR/deep" outside the data
    # dir was accepted and JAX wrote its cache there.
    outside = tmp_path / "outside"
    outside.mkdir()
    target = f"{outside}/../{outside.name}/deep"
    with shared_service.client() as c, pytest.raises(InvalidArgumentError) as info:
        c._unary(c._stub.CreateRun, _override(key, json.dumps(target)), 10)
    assert info.value.field == f"run.emergence.overrides[{key}]"
    assert "is a path" in info.value.details
    assert list(outside.iterdir()) == []


def test_path_keys_are_recognised() -> None:
    from trainsvc.kinds import is_path_key

    for key in ("train.compile_cache_dir", "log.metrics_file", "model.dir", "a.b_path", "x.DIR"):
        assert is_path_key(key), key
    for key in ("train.learning_rate", "log.frame_dtype", "env.width", "policy.hidden"):
        assert not is_path_key(key), key
