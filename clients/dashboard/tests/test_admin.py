"""The admin view's message checks and converters (no service needed)."""

from __future__ import annotations

import pytest
from trainsvc_api.v1 import models_pb2 as mpb
from trainsvc_api.v1 import trajectories_pb2 as tpb
from trainsvc_dashboard._admin import promote_args
from trainsvc_dashboard._convert import model_event_json, model_json, window_json


def test_promote_args_name_the_bad_field() -> None:
    ok = {"model": " trader ", "version": 2, "fraction": 1}
    assert promote_args(ok) == ("trader", 2, 1.0, "from the dashboard")
    assert promote_args({**ok, "reason": "canary"})[3] == "canary"
    cases = [
        ({**ok, "model": ""}, "model"),
        ({**ok, "model": "x" * 101}, "model"),
        ({**ok, "version": 0}, "version"),
        ({**ok, "version": 2.0}, "version"),
        ({**ok, "version": False}, "version"),
        ({**ok, "fraction": 0}, "fraction"),
        ({**ok, "fraction": 1.01}, "fraction"),
        ({**ok, "fraction": "0.5"}, "fraction"),
        ({**ok, "fraction": float("nan")}, "fraction"),
        ({**ok, "reason": ["x"]}, "reason"),
    ]
    for msg, field in cases:
        with pytest.raises(ValueError, match=f"^{field}: "):
            promote_args(msg)


def test_model_json_gives_each_version_its_share() -> None:
    model = mpb.Model(
        name="models/trader",
        versions=[
            mpb.ModelVersion(version=1, metrics={"reward": 0.4}),
            mpb.ModelVersion(version=2, evaluation="failed"),
            mpb.ModelVersion(version=3),
        ],
        deployment=mpb.Deployment(model="trader", traffic={1: 0.8, 2: 0.2}),
    )
    data = model_json(model)
    assert data["model"] == "trader" and data["deployed"]
    assert data["traffic"] == {"1": 0.8, "2": 0.2}
    assert [(v["version"], v["share"], v["evaluation"]) for v in data["versions"]] == [
        (1, 0.8, "none"),
        (2, 0.2, "failed"),
        (3, 0.0, "none"),
    ]
    assert not model_json(mpb.Model(name="models/new"))["deployed"]


def test_model_event_json_keeps_the_severity_or_null() -> None:
    event = mpb.ModelEvent(sequence=4, model="models/trader", version=2, type="promoted")
    assert model_event_json(event)["severity"] is None
    if "severity" in mpb.ModelEvent.DESCRIPTOR.fields_by_name:
        event.severity = "warning"  # type: ignore[attr-defined,unused-ignore]
        assert model_event_json(event)["severity"] == "warning"


def test_window_json_leaves_an_absent_mean_reward_null() -> None:
    window = tpb.TrajectoryWindow(window_id="w", trajectories=2, passed=False, failures=["x"])
    assert window_json(window)["mean_reward"] is None
    window.mean_reward = 0.0
    assert window_json(window)["mean_reward"] == 0.0
