"""Run selection and message conversion."""

from __future__ import annotations

from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_dashboard import PRESETS, is_loopback
from trainsvc_dashboard._convert import most_active, run_json


def _run(name: str, state: int, start: int, update: int) -> pb.Run:
    run = pb.Run(name=name, state=state, kind=pb.Run.EMERGENCE)  # type: ignore[arg-type]
    run.start_time.FromSeconds(start)
    run.create_time.FromSeconds(start)
    run.update_time.FromSeconds(update)
    return run


def test_most_active_prefers_the_newest_running_run() -> None:
    runs = [
        _run("runs/old", pb.Run.RUNNING, 100, 900),
        _run("runs/new", pb.Run.RUNNING, 200, 300),
        _run("runs/paused", pb.Run.PAUSED, 300, 1000),
    ]
    assert most_active(runs) == "runs/new"


def test_most_active_falls_back_to_the_latest_touched_run() -> None:
    runs = [
        _run("runs/a", pb.Run.COMPLETED, 100, 500),
        _run("runs/b", pb.Run.PAUSED, 50, 700),
    ]
    assert most_active(runs) == "runs/b"
    assert most_active([]) is None


def test_run_json_names_states_and_kinds() -> None:
    data = run_json(_run("runs/x", pb.Run.FAILED, 1, 2))
    assert data["id"] == "x"
    assert data["state"] == "FAILED"
    assert data["kind"] == "emergence"
    assert data["end_time"] is None


def test_presets_build_valid_requests() -> None:
    for preset in PRESETS.values():
        request = preset.request(seed=3)
        assert request.run.step_budget > 0
        assert request.run.seed == 3
        assert request.run.WhichOneof("config") == preset.kind


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.0.2.1")
    assert not is_loopback("example.org")
