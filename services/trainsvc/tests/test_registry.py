"""The SQLite registry: transactions, events, the checkpoint index, reopening."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from trainsvc._domain import (
    AlreadyExistsError,
    CheckpointRecord,
    EventType,
    NotFoundError,
    RunRecord,
    RunSpec,
    State,
)
from trainsvc._registry import Registry


def _record(run_id: str) -> RunRecord:
    now = time.time()
    spec = RunSpec(kind="emergence", step_budget=10, seed=1, config={"num_agents": 4})
    return RunRecord(id=run_id, spec=spec, state=State.PENDING, create_time=now, update_time=now)


def test_runs_events_and_checkpoints_survive_reopening(tmp_path: Path) -> None:
    db = tmp_path / "registry.sqlite3"
    reg = Registry(db)
    first = reg.insert_run(_record("a"), "run created")
    reg.set_state("a", State.RUNNING, "started", step=0)
    ckpt = CheckpointRecord("a", "step_5", 5, str(tmp_path / "step_5.safetensors"), 10, time.time())
    reg.add_checkpoint(ckpt)
    reg.add_event("a", EventType.WARNING, "careful")
    with pytest.raises(AlreadyExistsError):
        reg.insert_run(_record("a"), "again")
    reg.close()

    reg = Registry(db)
    run = reg.get_run("a")
    assert run.state == State.RUNNING and run.step == 5
    assert run.spec.config == {"num_agents": 4}
    assert run.latest_checkpoint == "runs/a/checkpoints/step_5"
    events = reg.events("a", first.sequence)
    assert [e.type for e in events] == [
        EventType.STATE_CHANGED,
        EventType.STATE_CHANGED,
        EventType.CHECKPOINT_SAVED,
        EventType.WARNING,
    ]
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert events[1].previous_state == State.PENDING
    assert reg.get_checkpoint("a", "step_5").step == 5
    reg.remove_checkpoints("a", ["step_5"])
    with pytest.raises(NotFoundError):
        reg.get_checkpoint("a", "step_5")
    with pytest.raises(NotFoundError):
        reg.get_run("b")


def test_list_pages_newest_first_and_filters_by_state(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite3")
    for i in range(5):
        reg.insert_run(_record(f"r{i}"), "created")
        time.sleep(0.002)
    reg.set_state("r1", State.STOPPED, "stopped")
    page = reg.list_runs(state=None, limit=2, before=None)
    assert [r.id for r in page] == ["r4", "r3"]
    rest = reg.list_runs(state=None, limit=10, before=(page[-1].create_time, page[-1].id))
    assert [r.id for r in rest] == ["r2", "r1", "r0"]
    assert [r.id for r in reg.list_runs(state=State.STOPPED, limit=10, before=None)] == ["r1"]
    assert reg.get_run("r1").end_time > 0


def test_reads_come_from_memory_and_equal_the_database(tmp_path: Path) -> None:
    """GetRun/ListRuns read an in-memory copy of every run, refreshed after each write."""
    db = tmp_path / "registry.sqlite3"
    reg = Registry(db)
    for i in range(6):
        reg.insert_run(_record(f"r{i}"), "run created")
    reg.set_state("r2", State.RUNNING, "started", step=3)
    reg.update_progress("r2", 7, 1.5, {"reward": 0.25})
    reg.add_checkpoint(
        CheckpointRecord("r2", "step_9", 9, str(tmp_path / "step_9.safetensors"), 1, time.time())
    )
    with pytest.raises(AlreadyExistsError):
        reg.insert_run(_record("r1"), "again")  # a rolled-back write leaves the copy alone

    run = reg.get_run("r2")
    assert (run.state, run.step, run.metrics) == (State.RUNNING, 9, {"reward": 0.25})
    assert run.latest_checkpoint == "runs/r2/checkpoints/step_9"
    run.step = 1000  # a caller's copy: the registry's is unchanged
    assert reg.get_run("r2").step == 9

    def pages(r: Registry, state: State | None) -> list[list[str]]:
        out, before = [], None
        while True:
            page = r.list_runs(state=state, limit=4, before=before)
            out.append([x.id for x in page])
            if len(page) < 4:
                return out
            before = (page[-1].create_time, page[-1].id)

    live = (pages(reg, None), pages(reg, State.RUNNING), reg.get_run("r2"))
    reg.close()
    reopened = Registry(db)  # loaded from the database: the same answers
    assert (pages(reopened, None), pages(reopened, State.RUNNING), reopened.get_run("r2")) == live
    assert live[0] == [["r5", "r4", "r3", "r2"], ["r1", "r0"]] and live[1] == [["r2"]]
