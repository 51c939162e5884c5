"""The control-plane lease and the write fence, on SQLite and on a real PostgreSQL server.

(The PostgreSQL cases skip where its binaries are missing; `.ci/run` installs them.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from trainsvc._domain import RunRecord, RunSpec, State
from trainsvc._lease import Lease, LeaseKeeper
from trainsvc._registry import LEASE_NAME, NotLeaseHolderError, Registry
from trainsvc._registry_db import (
    Connection,
    RegistryConfigError,
    RegistryLocation,
    parse_location,
    redact_url,
)
from trainsvc_trajectories.testing import create_database, postgres_server_or_skip


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server_or_skip() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryLocation]:
    """A fresh registry (migrated: the lease table exists)."""
    if request.param == "sqlite":
        loc = parse_location(str(tmp_path / "registry.sqlite3"))
    else:
        loc = parse_location(create_database(request.getfixturevalue("postgres")))
    Registry(loc).close()
    yield loc


@pytest.fixture
def closing() -> Iterator[Callable[[Lease | Registry], None]]:
    """``closing(x)``: close a lease or a registry after the test."""
    items: list[Lease | Registry] = []
    yield items.append
    for item in items:
        item.close()


def _record(run_id: str) -> RunRecord:
    now = time.time()
    spec = RunSpec(kind="emergence", step_budget=10, seed=1, config={})
    return RunRecord(id=run_id, spec=spec, state=State.PENDING, create_time=now, update_time=now)


def test_one_holder_at_a_time_until_release_or_expiry(
    location: RegistryLocation, closing: Callable[[Lease | Registry], None]
) -> None:
    a, b = Lease(location, "a", ttl_s=30), Lease(location, "b", ttl_s=1)
    closing(a)
    closing(b)
    assert a.current() is None
    assert a.try_acquire() == 1
    assert b.try_acquire() is None  # a's lease runs 30 s
    now = b.current()
    assert now is not None and (now.holder, now.generation) == ("a", 1) and now.expires_in_s > 20
    assert a.renew(1)
    a.release(1)
    assert b.try_acquire() == 2  # released: taken at once, a new generation
    assert not a.renew(1)  # no longer a's: renewing fails, it does not steal it back
    assert a.try_acquire() is None
    time.sleep(1.3)  # b's 1 s lease runs out unrenewed
    assert a.try_acquire() == 3
    assert not b.renew(2)


def test_concurrent_takeovers_of_an_expired_lease_elect_one(
    location: RegistryLocation, closing: Callable[[Lease | Registry], None]
) -> None:
    """Eight instances race for the lease: exactly one wins (compare-and-set)."""
    leases = [Lease(location, f"i{i}", ttl_s=30) for i in range(8)]
    for lease in leases:
        closing(lease)
    results: list[int | None] = [None] * len(leases)
    start = threading.Barrier(len(leases))

    def race(i: int) -> None:
        start.wait()
        for _ in range(50):  # SQLite: a busy database is retried
            try:
                results[i] = leases[i].try_acquire()
                return
            except Exception:
                time.sleep(0.05)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(leases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r for r in results if r is not None) == [1]
    winner = results.index(1)
    held = leases[0].current()
    assert held is not None and held.holder == f"i{winner}"


def test_writes_are_fenced_by_the_lease(
    location: RegistryLocation, closing: Callable[[Lease | Registry], None]
) -> None:
    """A standby writes nothing; a holder that was taken over writes nothing more."""
    reg_a, reg_b = Registry(location), Registry(location)
    closing(reg_a)
    closing(reg_b)
    a, b = Lease(location, "a", ttl_s=30), Lease(location, "b", ttl_s=30)
    closing(a)
    closing(b)
    reg_b.require_lease(None)  # a standby
    with pytest.raises(NotLeaseHolderError, match="held by no instance"):
        reg_b.insert_run(_record("x"), "created")
    gen = a.try_acquire()
    assert gen == 1
    reg_a.require_lease("a", gen)
    reg_a.insert_run(_record("r"), "created")
    reg_a.set_state("r", State.RUNNING, "started")
    with pytest.raises(NotLeaseHolderError, match="held by a"):
        reg_b.set_state("r", State.INTERRUPTED, "standby")
    a.release(gen)
    gen_b = b.try_acquire()
    assert gen_b == 2
    reg_b.require_lease("b", gen_b)
    reg_b.reload()
    assert reg_b.get_run("r").state == State.RUNNING
    with pytest.raises(NotLeaseHolderError, match="held by b"):
        reg_a.set_state("r", State.COMPLETED, "the old holder")  # fenced: nothing written
    reg_b.set_state("r", State.INTERRUPTED, "taken over")
    reg_a.reload()
    assert reg_a.get_run("r").state == State.INTERRUPTED
    assert [e.message for e in reg_a.events("r", 0)] == ["created", "started", "taken over"]


def test_keeper_takes_over_and_calls_on_lost_when_taken_over(
    location: RegistryLocation,
) -> None:
    acquired: list[int] = []
    lost: list[str] = []
    done = threading.Event()
    keeper = LeaseKeeper(
        Lease(location, "k", ttl_s=10),
        on_acquired=acquired.append,
        on_lost=lambda why: (lost.append(why), done.set()),
        poll_s=0.1,
    )
    other = Lease(location, "other", ttl_s=10)
    try:
        assert other.try_acquire() == 1
        keeper.start()
        time.sleep(0.5)
        assert not keeper.active and acquired == []  # other holds it
        assert keeper.holder is not None and keeper.holder.holder == "other"
        other.release(1)
        deadline = time.monotonic() + 30
        while not keeper.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert keeper.active
        deadline = time.monotonic() + 30
        while not acquired and time.monotonic() < deadline:
            time.sleep(0.05)
        assert acquired == [2]
        time.sleep(2.5)  # past a renewal
        assert other.try_acquire() is None and lost == []  # still the keeper's
        # Taken from it behind its back (as a takeover after a stall would):
        conn = Connection(location)
        conn.execute(
            "UPDATE registry_lease SET holder='thief', generation=9 WHERE name=?", (LEASE_NAME,)
        )
        conn.close()
        assert done.wait(30)
        assert "took the registry's lease over" in lost[0]
        assert not keeper.active
    finally:
        keeper.stop(release=True)
        other.close()


def test_keeper_gives_up_before_expiry_when_renewals_hang(postgres: str) -> None:
    """A renewal that hangs (the row locked elsewhere, as a partitioned network would
    leave it) makes the keeper stop acting before its lease could be taken over."""
    location = parse_location(create_database(postgres))
    Registry(location).close()
    lost: list[tuple[str, float]] = []
    done = threading.Event()
    keeper = LeaseKeeper(
        Lease(location, "k", ttl_s=10),
        on_acquired=lambda _g: None,
        on_lost=lambda why: (lost.append((why, time.monotonic())), done.set()),
        poll_s=0.1,
    )
    blocker = Connection(location)
    try:
        keeper.start()
        deadline = time.monotonic() + 30
        while not keeper.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert keeper.active
        with blocker.transaction():
            blocker.execute("SELECT 1 FROM registry_lease WHERE name=? FOR UPDATE", (LEASE_NAME,))
            locked_at = time.monotonic()
            assert done.wait(30)
            expires = blocker.execute(
                f"SELECT expires_at - {blocker.dialect.now} FROM registry_lease"
            ).fetchone()[0]
        why, when = lost[0]
        assert "was not renewed" in why
        # It gave up while its lease was still running (no standby could hold it yet).
        assert expires > 0, (why, when - locked_at, expires)
    finally:
        keeper.stop(release=False)
        blocker.close()


def test_locations_and_redaction(tmp_path: Path) -> None:
    assert parse_location("", tmp_path).target == str(tmp_path / "registry.sqlite3")
    assert parse_location("sqlite:///rel/r.db").target == "rel/r.db"
    assert parse_location("sqlite:////abs/r.db").target == "/abs/r.db"
    assert parse_location("postgresql://u:pw@h:5/db").shared
    with pytest.raises(RegistryConfigError, match="unknown scheme 'mysql'"):
        parse_location("mysql://u@h/db")
    with pytest.raises(RegistryConfigError, match="needs a file path"):
        parse_location("sqlite:///")
    assert redact_url("postgresql://u:s3cret@h:5/db?password=x&sslmode=require") == (
        "postgresql://u:***@h:5/db?password=***&sslmode=require"
    )
    assert parse_location("postgresql://u:s3cret@h/db").redacted() == "postgresql://u:***@h/db"


def test_a_registry_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RegistryConfigError, match=r"cannot open the SQLite registry .*file/r\.db"):
        Registry(blocker / "r.db")
