"""The recorder: what it stores, bad input, the context managers, async, back-pressure."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import trainsvc_trajectories as tt


def record_one(rec: tt.TrajectoryRecorder, scenario: str = "s1", reward: float = 1.0) -> str:
    t = rec.start_trajectory("agent-1", window_id="w1", scenario_id=scenario, metadata={"k": [1]})
    rec.start_step(t, {"price": 10})
    rec.log_provider_access(t, "prices", {"AAPL": 1.5}, purpose="quote")
    rec.log_llm_call(
        t,
        "m",
        "sys",
        "buy?",
        "yes",
        temperature=0.5,
        max_tokens=8,
        purpose="decide",
        action_type="trade",
        latency=0.01,
        tokens=(3, 1),
    )
    rec.complete_step(t, {"buy": 1}, reward)
    rec.end_trajectory(t, {"pnl": 2.0})
    return t.id


def test_records_every_field(db_url: str) -> None:
    with tt.TrajectoryRecorder(db_url) as rec:
        tid = record_one(rec, reward=0.25)
    with tt.Store(db_url) as store:
        t = store.trajectory(tid)
    assert (t.status, t.agent_id, t.window_id, t.scenario_id) == (
        "completed",
        "agent-1",
        "w1",
        "s1",
    )
    assert t.metadata == {"k": [1]} and t.final_metrics == {"pnl": 2.0}
    assert t.reward == 0.25 and t.n_steps == 1
    [s] = t.steps
    assert (s.environment_state, s.action, s.reward) == ({"price": 10}, {"buy": 1}, 0.25)
    [c] = t.llm_calls
    assert (c.model, c.system_prompt, c.user_prompt, c.response) == ("m", "sys", "buy?", "yes")
    assert (c.temperature, c.max_tokens, c.purpose, c.action_type) == (0.5, 8, "decide", "trade")
    assert (c.prompt_tokens, c.completion_tokens, c.total_tokens, c.step_index) == (3, 1, 4, 0)
    [a] = t.provider_accesses
    assert (a.provider, a.data, a.purpose, a.step_index) == ("prices", {"AAPL": 1.5}, "quote", 0)


def test_bad_input_names_the_field_and_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with tt.TrajectoryRecorder(url) as rec:
        t = rec.start_trajectory("a", window_id="w", scenario_id="s")
        with pytest.raises(
            tt.UnknownTrajectoryError, match="trajectory: unknown trajectory id 'nope'"
        ):
            rec.start_step("nope", {})
        rec.start_step(t, {"x": 1})
        with pytest.raises(tt.InvalidRecordError, match=r"^reward: must be finite") as e:
            rec.complete_step(t, "a", math.nan)
        assert e.value.field == "reward"
        with pytest.raises(tt.InvalidRecordError, match="environment_state"):
            rec.start_step(t, {"x": math.inf})  # (the open step is untouched)
        rec.complete_step(t, "a", 1.0)  # the step survived the refused calls
        with pytest.raises(
            tt.StepStateError, match=r"step 0 of trajectory .* is already completed"
        ):
            rec.complete_step(t, "a", 1.0)
        with pytest.raises(tt.InvalidRecordError, match=r"^final_metrics"):
            rec.end_trajectory(t, {"bad": math.nan})
        rec.end_trajectory(t)
        with pytest.raises(tt.UnknownTrajectoryError):
            rec.end_trajectory(t)
        with pytest.raises(tt.InvalidRecordError, match=r"^agent_id"):
            rec.start_trajectory("")
    with tt.Store(url) as store:
        [got] = store.trajectories()
    assert got.status == "completed" and [s.reward for s in got.steps] == [1.0]


def test_context_manager_marks_failed_when_the_tick_raises(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with tt.TrajectoryRecorder(url) as rec:
        with pytest.raises(RuntimeError, match="boom"), rec.trajectory("a", scenario_id="s") as t:
            assert tt.current_trajectory() == t
            rec.start_step(t, {"s": 0})
            rec.log_llm_call(t, "m", None, "u", "r")
            raise RuntimeError("boom")
        assert tt.current_trajectory() is None
        with rec.trajectory("a", scenario_id="s") as ok:
            rec.start_step(ok, {})
            rec.complete_step(ok, 1, 2.0)
    with tt.Store(url) as store:
        failed = store.trajectory(t.id)
        done = store.trajectory(ok.id)
    assert failed.status == "failed" and failed.error == "RuntimeError: boom"
    assert failed.steps[0].completed_at is None and len(failed.llm_calls) == 1  # nothing lost
    assert done.status == "completed" and done.reward == 2.0


def test_async_api_from_many_tasks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"

    async def agent(arec: tt.AsyncTrajectoryRecorder, i: int) -> None:
        async with arec.trajectory(f"agent-{i}", window_id="w", scenario_id=f"s{i % 3}") as t:
            for k in range(3):
                await arec.start_step(t, {"k": k})
                await arec.log_llm_call(t, "m", "s", f"u{k}", "r")
                await asyncio.sleep(0)
                await arec.complete_step(t, k, 1.0)

    async def main(rec: tt.TrajectoryRecorder) -> None:
        await asyncio.gather(*(agent(rec.aio, i) for i in range(20)))
        await rec.aio.flush()

    # max_pending=2 forces the tasks to wait for queue space (in a thread, not the loop).
    with tt.TrajectoryRecorder(url, max_pending=2, batch_size=4) as rec:
        asyncio.run(main(rec))
    with tt.Store(url) as store:
        ts = store.trajectories("w")
    assert len(ts) == 20 and all(t.status == "completed" and t.n_steps == 3 for t in ts)
    assert all(len(t.llm_calls) == 3 and t.reward == 3.0 for t in ts)


def test_back_pressure_blocks_never_drops(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with tt.TrajectoryRecorder(url, max_pending=1, batch_size=1, commit="step") as rec:
        for _ in range(30):
            record_one(rec)
            assert rec.pending <= 1 + 1  # the queue bound plus the batch being written
    with tt.Store(url) as store:
        assert len(store.trajectories(status="completed")) == 30


def test_a_failing_writer_is_reported_not_silent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    rec = tt.TrajectoryRecorder(url)
    with tt.Store(url) as store:
        store.db.execute("DROP TABLE steps")
    t = rec.start_trajectory("a")
    rec.start_step(t, {})
    rec.complete_step(t, 1, 1.0)
    rec.end_trajectory(t)
    with pytest.raises(tt.RecorderClosedError, match="writer failed"):
        rec.flush()
    with pytest.raises(tt.RecorderClosedError):
        rec.start_trajectory("b")
    with pytest.raises(tt.RecorderClosedError):
        rec.close()


def test_windows_by_time(tmp_path: Path) -> None:
    w = tt.Windowing(600)
    wid = w.window_id(1_700_000_123.0)
    assert wid == "20231114T221000Z-600s"
    assert tt.window_bounds(wid) == (1_699_999_800.0, 1_700_000_400.0)
    assert tt.window_bounds("custom") is None
    with pytest.raises(tt.InvalidRecordError, match="length_s"):
        tt.Windowing(0)
    url = f"sqlite:///{tmp_path}/t.db"
    with tt.TrajectoryRecorder(url, windowing=tt.Windowing(60)) as rec:
        t = rec.start_trajectory("a")
        rec.end_trajectory(t)
    assert t.window_id.endswith("-60s")


def test_postgres_writer_reconnects_after_the_server_drops_it(pg_url: str) -> None:
    import psycopg

    with tt.TrajectoryRecorder(pg_url) as rec:
        record_one(rec)
        rec.flush()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        record_one(rec)
        rec.flush()
    with tt.Store(pg_url) as store:
        assert len(store.trajectories(status="completed")) == 2


def test_callers_blocked_on_a_full_queue_see_a_dead_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    rec = tt.TrajectoryRecorder(url, max_pending=1, commit="step")
    with tt.Store(url) as store:
        store.db.execute("DROP TABLE llm_calls")
    t = rec.start_trajectory("a")
    with pytest.raises(tt.RecorderClosedError, match="writer failed"):
        for _ in range(1_000_000):  # the queue fills behind the failed batch, then blocks
            rec.log_llm_call(t, "m", None, "u", "r")
    with pytest.raises(tt.RecorderClosedError):
        rec.close()  # returns (raising) instead of hanging on the full queue
