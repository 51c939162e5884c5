"""trainsvc.v1.ModelService over a real gRPC socket: register from an input directory,
list, promote, roll back, events with the principal; bad requests name the field in
google.rpc.BadRequest details that a raw client reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from trainsvc._artifacts import ArtifactStore
from trainsvc._metrics import Metrics
from trainsvc._model_registry import ModelRegistry
from trainsvc._models_servicer import ModelServicer
from trainsvc._paths import InputRoots
from trainsvc_api.v1 import models_pb2 as mpb
from trainsvc_api.v1 import models_pb2_grpc as mpb_grpc
from trainsvc_api.v1.errors import read_details


@pytest.fixture
def stub(tmp_path: Path, serve_grpc: Any) -> mpb_grpc.ModelServiceStub:
    servicer = ModelServicer(
        ModelRegistry(tmp_path / "models.db"),
        ArtifactStore(tmp_path / "artifacts"),
        InputRoots.of([tmp_path / "inputs"]),
        Metrics(),
        lambda _ctx: "alice",
    )
    channel = serve_grpc(
        lambda server: mpb_grpc.add_ModelServiceServicer_to_server(servicer, server)
    )
    return mpb_grpc.ModelServiceStub(channel)


def _adapter(root: Path, rank: int) -> Path:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (root / "adapter_model.safetensors").write_bytes(bytes(range(256)) * rank)
    return root


def _field(exc: grpc.RpcError) -> str | None:
    return read_details(exc.trailing_metadata()).field  # type: ignore[attr-defined]


def test_register_promote_rollback_over_grpc(
    stub: mpb_grpc.ModelServiceStub, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    versions = []
    for rank in (4, 8):
        request = mpb.RegisterModelVersionRequest(
            model="models/trader",
            artifact_dir=str(_adapter(inputs / f"adapter-r{rank}", rank)),
            artifact_kind="adapter",
            base_model="tiny-llama",
            source_run="runs/abc",
            metrics={"reward": 0.1 * rank},
            windows=["w1"],
            reason="trained",
        )
        versions.append(stub.RegisterModelVersion(request))
    assert [v.name for v in versions] == ["models/trader/versions/1", "models/trader/versions/2"]
    assert versions[1].artifact_sha256 != versions[0].artifact_sha256
    assert Path(versions[1].artifact_uri).is_relative_to(tmp_path / "artifacts")
    got = stub.GetModelVersion(mpb.GetModelVersionRequest(name="models/trader/versions/2"))
    assert got.metrics["reward"] == pytest.approx(0.8) and list(got.windows) == ["w1"]

    stub.Promote(mpb.PromoteRequest(name="models/trader/versions/1", reason="first"))
    canary = stub.Promote(mpb.PromoteRequest(name="models/trader/versions/2", fraction=0.2))
    assert dict(canary.traffic) == pytest.approx({1: 0.8, 2: 0.2})
    (model,) = stub.ListModels(mpb.ListModelsRequest()).models
    assert model.name == "models/trader" and len(model.versions) == 2
    assert dict(model.deployment.traffic) == pytest.approx({1: 0.8, 2: 0.2})
    back = stub.Rollback(mpb.RollbackRequest(model="models/trader", reason="regression"))
    assert dict(back.traffic) == {1: 1.0}
    events = stub.ListModelEvents(mpb.ListModelEventsRequest(model="models/trader")).events
    assert [e.type for e in events][-1] == "rolled_back"
    assert {e.principal for e in events} == {"alice"} and events[-1].reason == "regression"
    assert json.loads(events[-1].details_json)["before"] == {"1": 0.8, "2": 0.2}
    (deployment,) = stub.ListDeployments(mpb.ListDeploymentsRequest()).deployments
    assert deployment.name == "models/trader/deployment"


def test_bad_requests_name_the_field(stub: mpb_grpc.ModelServiceStub, tmp_path: Path) -> None:
    outside = _adapter(tmp_path / "elsewhere", 4)
    cases = [
        (
            stub.RegisterModelVersion,
            mpb.RegisterModelVersionRequest(model="models/Bad", artifact_dir=str(outside)),
            "model",
        ),
        (
            stub.RegisterModelVersion,
            mpb.RegisterModelVersionRequest(model="models/ok", artifact_dir=str(outside)),
            "artifact_dir",
        ),
        (stub.GetModelVersion, mpb.GetModelVersionRequest(name="models/x/versions/0"), "name"),
        (stub.Promote, mpb.PromoteRequest(name="trader"), "name"),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            method(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert _field(info.value) == field, (request, info.value)
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelVersion(mpb.GetModelVersionRequest(name="models/nobody/versions/1"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        stub.Rollback(mpb.RollbackRequest(model="models/nobody"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]


def test_an_external_server_is_checked_when_set_and_local_routes_back(
    stub: mpb_grpc.ModelServiceStub, tmp_path: Path
) -> None:
    request = mpb.RegisterModelVersionRequest(
        model="models/big",
        artifact_dir=str(_adapter(tmp_path / "inputs" / "a", 4)),
        artifact_kind="adapter",
        base_model="llama-70b",
    )
    stub.RegisterModelVersion(request)
    for url in ("ftp://gpu-box:8000", "vllm+http://", "http://box:8000/v1?key=1"):
        with pytest.raises(grpc.RpcError) as info:
            stub.SetTraffic(
                mpb.SetTrafficRequest(model="big", traffic={1: 1.0}, external_base_url=url)
            )
        assert _field(info.value) == "external_base_url", url
    assert stub.ListDeployments(mpb.ListDeploymentsRequest()).deployments == []  # nothing saved

    on_vllm = stub.SetTraffic(
        mpb.SetTrafficRequest(
            model="big", traffic={1: 1.0}, external_base_url="vllm+http://gpu-box:8000"
        )
    )
    assert on_vllm.external_base_url == "vllm+http://gpu-box:8000"
    kept = stub.SetTraffic(mpb.SetTrafficRequest(model="big", traffic={1: 1.0}))
    assert kept.external_base_url == "vllm+http://gpu-box:8000"
    with pytest.raises(grpc.RpcError) as info:
        stub.SetTraffic(
            mpb.SetTrafficRequest(
                model="big", traffic={1: 1.0}, local=True, external_base_url="http://x:1"
            )
        )
    assert _field(info.value) == "local"
    local = stub.SetTraffic(mpb.SetTrafficRequest(model="big", traffic={1: 1.0}, local=True))
    assert local.external_base_url == ""


def test_automation_without_a_trajectory_store_says_how_to_get_one(
    stub: mpb_grpc.ModelServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.GetAutomation(mpb.GetAutomationRequest(name="models/trader/automation"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "--trajectory-db" in info.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        stub.RunAutomation(mpb.RunAutomationRequest(name="models/trader"))
    assert _field(info.value) == "name"
    with pytest.raises(grpc.RpcError) as info:
        stub.SetAutomation(mpb.SetAutomationRequest(model="models/trader"))
    assert _field(info.value) == "policy"
    bad = mpb.AutomationPolicy(interval_seconds=60, cron="* * * * *", judge="task:sort4")
    with pytest.raises(grpc.RpcError) as info:
        stub.SetAutomation(mpb.SetAutomationRequest(model="models/trader", policy=bad))
    assert _field(info.value) == "policy.interval_seconds"
