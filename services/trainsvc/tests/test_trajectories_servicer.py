"""trainsvc.v1.TrajectoryService over a real gRPC socket, on a real SQLite trajectory store
with trajectories recorded into two windows: each window's numbers are its quality
report's, failing windows say why, trajectories are counted per time bucket, pages
follow, and bad requests (or no store at all) get statuses that name the field."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trainsvc_trajectories as tt
from trainsvc._metrics import Metrics
from trainsvc._trajectories_servicer import TrajectoryServicer
from trainsvc_api.v1 import trajectories_pb2 as tpb
from trainsvc_api.v1 import trajectories_pb2_grpc as tpb_grpc
from trainsvc_api.v1.errors import read_details

WINDOWING = tt.Windowing(3600)
GOOD = WINDOWING.window_id(1_800_000_000)  # 20270115T080000Z-3600s
BAD = WINDOWING.window_id(1_800_000_000 + 3600)


def record_windows(url: str) -> None:
    """GOOD: 3 scenarios x 2 agents, every step with an LLM call and a reward.
    BAD: 2 completed trajectories without LLM calls and 2 failed ones."""
    with tt.TrajectoryRecorder(url) as rec:
        for s in range(3):
            for a in range(2):
                with rec.trajectory(f"agent-{a}", window_id=GOOD, scenario_id=f"s{s}") as t:
                    for step in range(2):
                        rec.start_step(t, {"price": s * 10 + step, "agent": a})
                        rec.log_llm_call(t, "trader@v1", "sys", f"p{s}{a}{step}", "buy")
                        rec.complete_step(t, "buy", 0.25 * (s + a))
        for a in range(2):
            with rec.trajectory(f"agent-{a}", window_id=BAD, scenario_id="s0") as t:
                rec.start_step(t, {"price": a})
                rec.complete_step(t, "hold", 1.0)
        for a in range(2):
            with pytest.raises(RuntimeError), rec.trajectory("agent-9", window_id=BAD) as t:
                rec.start_step(t, {"price": a})
                raise RuntimeError("the agent crashed")


def serve(serve_grpc: Any, servicer: TrajectoryServicer) -> tpb_grpc.TrajectoryServiceStub:
    """A stub to a real gRPC server on loopback with ``servicer``."""
    channel = serve_grpc(
        lambda server: tpb_grpc.add_TrajectoryServiceServicer_to_server(servicer, server)
    )
    return tpb_grpc.TrajectoryServiceStub(channel)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'trajectories.db'}"
    record_windows(url)
    return url


@pytest.fixture
def stub(store_url: str, serve_grpc: Any) -> Iterator[tpb_grpc.TrajectoryServiceStub]:
    servicer = TrajectoryServicer(store_url, Metrics())
    yield serve(serve_grpc, servicer)
    servicer.close()


def _error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_windows_carry_their_quality_reports(
    stub: tpb_grpc.TrajectoryServiceStub, store_url: str
) -> None:
    started = time.time()
    reply = stub.ListWindows(tpb.ListWindowsRequest())
    assert [w.window_id for w in reply.windows] == [BAD, GOOD]  # newest first
    bad, good = reply.windows
    with tt.Store(store_url) as store:
        reports = {w: tt.quality_report(store, w) for w in (GOOD, BAD)}

    assert good.name == f"windows/{GOOD}" and good.passed and list(good.failures) == []
    assert good.start_time.ToSeconds() == 1_800_000_000
    assert good.end_time.ToSeconds() == 1_800_000_000 + 3600
    assert good.trajectories == 6 and good.completed == 6
    assert dict(good.trajectories_by_status) == reports[GOOD].by_status
    assert good.steps == 12 and good.steps_with_llm_calls == 12 and good.llm_calls == 12
    assert good.reward_coverage == 1.0 and good.complete_groups == 3 and good.scenarios == 3
    # a trajectory's reward is the sum of its steps' rewards: 2 * 0.25 * (s + a)
    mean = sum(0.5 * (s + a) for s in range(3) for a in range(2)) / 6
    assert good.HasField("mean_reward") and good.mean_reward == pytest.approx(mean)
    assert good.rewarded_trajectories == 6
    assert [(c.scenario_id, c.trajectories, c.completed) for c in good.scenario_counts] == [
        ("s0", 2, 2),
        ("s1", 2, 2),
        ("s2", 2, 2),
    ]
    assert good.quality_score == pytest.approx(1.0)
    assert good.thresholds.min_complete_fraction == 0.8

    assert not bad.passed and list(bad.failures) == reports[BAD].failures
    assert any(f.startswith("complete_fraction") for f in bad.failures)
    assert any(f.startswith("llm_step_fraction") for f in bad.failures)
    assert dict(bad.trajectories_by_status) == {
        "open": 0,
        "completed": 2,
        "failed": 2,
        "abandoned": 0,
    }
    assert bad.complete_fraction == 0.5 and bad.llm_step_fraction == 0.0
    assert bad.mean_reward == pytest.approx(1.0)
    assert [(c.scenario_id, c.trajectories, c.completed) for c in bad.scenario_counts] == [
        ("", 2, 0),
        ("s0", 2, 2),
    ]
    # (0.5 + 0 + 1 + 1) / 4: the fractions of the report, duplicates counted against it
    assert bad.quality_score == pytest.approx(0.625)

    # collection over time: every trajectory started in the last few seconds
    assert reply.total_trajectories == 10 and reply.bucket_seconds == 3600
    (bucket,) = reply.collection
    assert bucket.trajectories == 10 and bucket.completed == 8
    assert started - 3600 < bucket.start_time.ToSeconds() <= started


def test_pages_and_buckets(stub: tpb_grpc.TrajectoryServiceStub) -> None:
    first = stub.ListWindows(tpb.ListWindowsRequest(page_size=1, bucket_seconds=60))
    assert [w.window_id for w in first.windows] == [BAD] and first.next_page_token
    second = stub.ListWindows(tpb.ListWindowsRequest(page_size=1, page_token=first.next_page_token))
    assert [w.window_id for w in second.windows] == [GOOD] and second.next_page_token == ""
    assert first.bucket_seconds == 60 and sum(b.trajectories for b in first.collection) == 10


def test_the_report_follows_new_trajectories(
    stub: tpb_grpc.TrajectoryServiceStub, store_url: str
) -> None:
    first = stub.ListWindows(tpb.ListWindowsRequest())
    before = first.windows[0]
    with (  # a third completed one in BAD
        tt.TrajectoryRecorder(store_url) as rec,
        rec.trajectory("agent-5", window_id=BAD, scenario_id="s1") as t,
    ):
        rec.start_step(t, {"price": 7})
        rec.complete_step(t, "sell", 0.0)
    second = stub.ListWindows(tpb.ListWindowsRequest())
    after = second.windows[0]
    assert (before.completed, after.completed) == (2, 3)
    # the cached collection series follows too
    assert (first.total_trajectories, second.total_trajectories) == (10, 11)
    assert sum(b.completed for b in second.collection) == 9
    assert after.complete_fraction == pytest.approx(0.6)


def test_bad_requests_name_the_field(stub: tpb_grpc.TrajectoryServiceStub) -> None:
    cases = [
        (tpb.ListWindowsRequest(page_size=-1), "page_size"),
        (tpb.ListWindowsRequest(page_size=5000), "page_size"),
        (tpb.ListWindowsRequest(bucket_seconds=5), "bucket_seconds"),
        (tpb.ListWindowsRequest(page_token="not-ours"), "page_token"),
    ]
    for request, field in cases:
        err = _error(lambda r=request: stub.ListWindows(r))  # type: ignore[misc]
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert read_details(err.trailing_metadata()).field == field  # type: ignore[attr-defined]
        assert field in (err.details() or "")


def test_without_a_store_calls_fail_with_a_clear_message(serve_grpc: Any) -> None:
    stub = serve(serve_grpc, TrajectoryServicer("", Metrics()))
    err = _error(lambda: stub.ListWindows(tpb.ListWindowsRequest()))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--trajectory-db" in (err.details() or "")
