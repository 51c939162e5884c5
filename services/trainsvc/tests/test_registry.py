"""The run registry: transactions, events, the checkpoint index, reopening — on the
embedded SQLite file and on a real PostgreSQL server (skipped where its binaries are
missing; `.ci/run` installs them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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
from trainsvc_trajectories.testing import create_database, postgres_server_or_skip

Location = Callable[[], "Path | str"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """One throwaway PostgreSQL server for the module (a fresh database per test)."""
    with postgres_server_or_skip() as url:
        yield url


@pytest.fixture
def open_registry() -> Iterator[Callable[[Path | str], Registry]]:
    """``open_registry(location)``: a `Registry`, closed after the test."""
    opened: list[Registry] = []

    def open_(location: Path | str) -> Registry:
        opened.append(Registry(location))
        return opened[-1]

    yield open_
    for reg in opened:
        reg.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """``new_location()``: where a fresh, empty registry goes (a path or a URL)."""
    if request.param == "sqlite":
        return lambda: tmp_path / "registry.sqlite3"
    server: str = request.getfixturevalue("postgres")
    return lambda: create_database(server)


def _record(run_id: str) -> RunRecord:
    now = time.time()
    spec = RunSpec(kind="emergence", step_budget=10, seed=1, config={"num_agents": 4})
    return RunRecord(id=run_id, spec=spec, state=State.PENDING, create_time=now, update_time=now)


def test_runs_events_and_checkpoints_survive_reopening(
    tmp_path: Path, new_location: Location, open_registry: Callable[[Path | str], Registry]
) -> None:
    db = new_location()
    reg = open_registry(db)
    first = reg.insert_run(_record("a"), "run created")
    reg.set_state("a", State.RUNNING, "started", step=0)
    ckpt = CheckpointRecord("a", "step_5", 5, str(tmp_path / "step_5.safetensors"), 10, time.time())
    reg.add_checkpoint(ckpt)
    reg.add_event("a", EventType.WARNING, "careful")
    with pytest.raises(AlreadyExistsError):
        reg.insert_run(_record("a"), "again")
    reg.close()

    reg = open_registry(db)
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


def test_list_pages_newest_first_and_filters_by_state(
    new_location: Location, open_registry: Callable[[Path | str], Registry]
) -> None:
    reg = open_registry(new_location())
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


def test_reads_come_from_memory_and_equal_the_database(
    tmp_path: Path, new_location: Location, open_registry: Callable[[Path | str], Registry]
) -> None:
    """GetRun/ListRuns read an in-memory copy of every run, refreshed after each write."""
    db = new_location()
    reg = open_registry(db)
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
    reopened = open_registry(db)  # loaded from the database: the same answers
    assert (pages(reopened, None), pages(reopened, State.RUNNING), reopened.get_run("r2")) == live
    assert live[0] == [["r5", "r4", "r3", "r2"], ["r1", "r0"]] and live[1] == [["r2"]]


def test_a_registry_from_before_versioned_migrations_is_adopted(
    tmp_path: Path, open_registry: Callable[[Path | str], Registry]
) -> None:
    """A SQLite registry written by a trainsvc without ``schema_migrations`` opens with its
    runs and events, gains the lease table, and is marked as at the current version."""
    import sqlite3

    from trainsvc._registry_schema import SCHEMA_VERSION

    db = tmp_path / "registry.sqlite3"
    old = sqlite3.connect(db)
    old.executescript(
        """
        CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL,
            resolved_config TEXT NOT NULL, state TEXT NOT NULL,
            step INTEGER NOT NULL DEFAULT 0, steps_per_second REAL NOT NULL DEFAULT 0,
            state_message TEXT NOT NULL DEFAULT '', restarts INTEGER NOT NULL DEFAULT 0,
            latest_checkpoint TEXT NOT NULL DEFAULT '', metrics TEXT NOT NULL DEFAULT '{}',
            create_time REAL NOT NULL, start_time REAL NOT NULL DEFAULT 0,
            update_time REAL NOT NULL, end_time REAL NOT NULL DEFAULT 0);
        CREATE TABLE events (sequence INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
            type TEXT NOT NULL, time REAL NOT NULL, message TEXT NOT NULL DEFAULT '',
            state TEXT, previous_state TEXT, checkpoint TEXT NOT NULL DEFAULT '',
            step INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE write_probe (id INTEGER PRIMARY KEY, time REAL NOT NULL);
        CREATE TABLE checkpoints (run_id TEXT NOT NULL, checkpoint_id TEXT NOT NULL,
            step INTEGER NOT NULL, path TEXT NOT NULL, size_bytes INTEGER NOT NULL,
            create_time REAL NOT NULL, emergency INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, checkpoint_id));
        INSERT INTO runs (id, kind, spec, resolved_config, state, step, create_time, update_time)
            VALUES ('old', 'emergence', '{"kind": "emergence", "step_budget": 10, "seed": 1,
            "config": {}, "policy": {}}', '{}', 'PAUSED', 4, 1.0, 1.0);
        INSERT INTO events (run_id, type, time, message) VALUES ('old', 'LOG', 1.0, 'before');
        """
    )
    old.close()
    reg = open_registry(db)
    assert reg.get_run("old").state == State.PAUSED and reg.get_run("old").step == 4
    event = reg.add_event("old", EventType.LOG, "after")
    assert [e.message for e in reg.events("old", 0)] == ["before", "after"]
    assert event.sequence == 2
    check = sqlite3.connect(db)
    versions = [r[0] for r in check.execute("SELECT version FROM schema_migrations")]
    lease_table = check.execute("SELECT count(*) FROM registry_lease").fetchone()
    check.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1)) and lease_table == (0,)


def test_a_dropped_postgresql_connection_fails_one_write_then_reconnects(
    postgres: str, open_registry: Callable[[Path | str], Registry]
) -> None:
    """The server ends the registry's connections (a restart, a proxy's idle timeout): the
    write that finds its connection dead is UNAVAILABLE naming the cause, changes nothing,
    and the registry reconnects for the next one (the health probe's, or any other)."""
    import psycopg
    from trainsvc._domain import RegistryUnwritableError

    url = create_database(postgres)
    reg = open_registry(url)
    reg.insert_run(_record("a"), "created")
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(RegistryUnwritableError, match="cannot write"):
        reg.set_state("a", State.RUNNING, "started")
    assert reg.write_error
    assert reg.get_run("a").state == State.PENDING
    assert reg.probe_write() and reg.write_error is None
    reg.set_state("a", State.RUNNING, "started")
    assert [e.message for e in reg.events("a", 0)] == ["created", "started"]  # reads reconnect
    assert reg.runs_in_states((State.RUNNING,))[0].id == "a"
