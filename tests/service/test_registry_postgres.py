"""A shared PostgreSQL registry: real `trainsvc serve` processes, one control plane.

A real PostgreSQL server (Debian's binaries, which `.ci/run` installs; skipped where
they are missing), three services on one registry database and one shared data
directory (on one machine; across hosts the data directory must be shared storage):
the first holds the lease and trains, the others stand by (health NOT_SERVING,
calls UNAVAILABLE naming the holder); SIGKILL of the first's whole process group,
and one standby takes over once the lease expires, marks the run INTERRUPTED and
auto-resumes it from its newest checkpoint; SIGTERM of that one releases the lease
and the last takes over; the run completes with the same final tensors as an
uninterrupted run. Also: an active instance whose lease is taken from it, or whose
renewals hang, kills its workers and exits 1; a wrong password is a clear start-up error naming --registry,
without the password.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from safetensors.numpy import load_file
from trainsvc_client import UnavailableError, pb
from trainsvc_trajectories.testing import create_database, postgres_server_or_skip

from .conftest import Service, worker_pids

pytestmark = pytest.mark.slow(45)

BUDGET = 3000
LEASE_TTL = "4"
SECRET = "Pw-right-7f3a"


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server; the role ``svc`` logs in with a password only."""
    with postgres_server_or_skip() as url:
        with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE ROLE svc LOGIN SUPERUSER PASSWORD '{SECRET}'")
            hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
            hba.write_text(
                "local all all trust\n"
                "host all postgres 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
            conn.execute("SELECT pg_reload_conf()")
        yield url


def _registry_url(server: str, password: str) -> str:
    database = create_database(server).rsplit("/", 1)[1]
    host = server.split("@", 1)[1]
    return f"postgresql://svc:{password}@{host}/{database}"


def _health(address: str) -> int:
    """The service's overall health status (`HealthCheckResponse.ServingStatus`)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(reply.status)


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _serving(svc: Service) -> bool:
    try:
        return _health(svc.address) == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _final_tensors(client: Any, name: str) -> dict[str, np.ndarray]:
    final = [c for c in client.list_checkpoints(name) if c.step == BUDGET]
    assert final, f"no final checkpoint for {name}"
    return load_file(final[-1].path)


def test_standby_takes_over_after_sigkill_and_the_run_continues(
    postgres: str, start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path
) -> None:
    """Three instances, one registry and data directory: SIGKILL of the active one, a
    standby takes over and resumes the run; SIGTERM of that one hands over to the last
    (lease released); the run completes with an uninterrupted run's final tensors."""
    url = _registry_url(postgres, SECRET)
    data = tmp_path / "data"  # shared by the instances (one machine here)
    flags = ["--registry", url, "--registry-lease-ttl", LEASE_TTL, "--auto-resume"]
    active = start_service(data, extra=flags)
    _wait(lambda: _serving(active), 30, "health SERVING (checked once a second)")
    standbys = [start_service(data, extra=flags, ready=False) for _ in range(2)]
    for standby in standbys:
        _wait(lambda s=standby: _health_or_none(s) is not None, 60, "a standby to listen")
        assert _health(standby.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        with standby.client() as c, pytest.raises(UnavailableError) as refused:
            c.list_runs_page(page_size=1, timeout=5)
        assert "is a standby" in str(refused.value)
        assert f"{active.address}@" in str(refused.value)  # names the holder
        assert SECRET not in standby.log()
    assert SECRET not in active.log()

    policy = pb.CheckpointPolicy(interval_steps=50)
    with active.client() as c:
        run = c.create_run(
            "emergence", step_budget=BUDGET, seed=7, config=tiny, checkpoint_policy=policy
        )
        wait_for(c, run.name, lambda r: r.step >= 100 and r.latest_checkpoint, what="step 100")
        newest_before = max(ck.step for ck in c.list_checkpoints(run.name))
    assert worker_pids(active.proc.pid)
    active.kill_all()  # SIGKILL: the service and its worker, nothing saved, lease not released
    killed_at = time.monotonic()
    _wait(lambda: any(_serving(s) for s in standbys), 120, "a standby to take over")
    took_over_s = time.monotonic() - killed_at
    print(f"takeover: SERVING {took_over_s:.2f} s after SIGKILL (lease ttl {LEASE_TTL} s)")
    first = next(s for s in standbys if _serving(s))
    last = next(s for s in standbys if s is not first)
    assert _health(last.address) == health_pb2.HealthCheckResponse.NOT_SERVING  # one winner
    with first.client() as c:
        wait_for(
            c,
            run.name,
            lambda r: r.state == pb.Run.RUNNING and r.step > newest_before,
            what="the run to train again on the new control plane",
        )
    assert first.terminate() == 0  # checkpoints the run, releases the lease
    _wait(lambda: _serving(last), 120, "the last standby to take over")

    with last.client() as c:
        done = wait_for(
            c,
            run.name,
            lambda r: r.state in {pb.Run.COMPLETED, pb.Run.FAILED},
            what="the run to finish on the last control plane",
        )
        assert done.state == pb.Run.COMPLETED, done.state_message
        assert done.restarts == 0
        events = list(c.stream_events(run.name))
        interrupted = [e.message for e in events if e.state == pb.Run.INTERRUPTED]
        assert len(interrupted) == 2, interrupted
        assert "restarted" in interrupted[0] and "shut down" in interrupted[1]
        resumed = [e for e in events if e.state == pb.Run.PENDING and "resuming" in e.message]
        assert len(resumed) == 2
        # First resumed from the newest checkpoint the killed instance had indexed (or one
        # it saved just before the kill, indexed by the takeover's reconciliation).
        resumed_from = re.search(r"step_(\d+)", resumed[0].message)
        assert resumed_from is not None, resumed[0].message
        assert int(resumed_from.group(1)) >= newest_before
        steps = [ck.step for ck in c.list_checkpoints(run.name)]
        assert steps == sorted(steps) and steps[-1] == BUDGET
        baseline = c.create_run(
            "emergence", step_budget=BUDGET, seed=7, config=tiny, checkpoint_policy=policy
        )
        wait_for(c, baseline.name, lambda r: r.state == pb.Run.COMPLETED, what="baseline")
        resumed_t, uninterrupted = _final_tensors(c, run.name), _final_tensors(c, baseline.name)
    assert resumed_t.keys() == uninterrupted.keys()
    for key in uninterrupted:  # continuous: the same trajectory as never stopping
        np.testing.assert_array_equal(resumed_t[key], uninterrupted[key], err_msg=key)


def _health_or_none(svc: Service) -> int | None:
    if svc.proc.poll() is not None:
        raise AssertionError(f"the service exited {svc.proc.returncode}: {svc.log()}")
    try:
        return _health(svc.address)
    except grpc.RpcError:
        return None


def test_an_instance_that_loses_its_lease_kills_its_workers_and_exits(
    postgres: str, start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path
) -> None:
    url = _registry_url(postgres, SECRET)
    svc = start_service(tmp_path / "data", extra=["--registry", url, "--registry-lease-ttl", "4"])
    with svc.client() as c:
        run = c.create_run("emergence", step_budget=1_000_000, seed=1, config=tiny)
        wait_for(c, run.name, lambda r: r.step >= 5, what="training")
    workers = worker_pids(svc.proc.pid)
    assert workers
    # Another instance takes the lease (as after a partition longer than its lifetime).
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE registry_lease SET holder='elsewhere', generation=generation+1"
            " WHERE name='control'"
        )
    assert svc.proc.wait(60) == 1
    assert "lost the registry's lease" in svc.log()
    for pid in workers:  # killed (a zombie until reaped by init at most)
        _wait(lambda pid=pid: not _alive(pid), 30, f"worker {pid} to end")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM runs WHERE id=%s", (run.name[5:],)).fetchone()
    assert row is not None and row[0] == "RUNNING"  # the old holder wrote nothing more


def test_an_instance_cut_off_from_the_registry_stops_acting(
    postgres: str, start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path
) -> None:
    """Its renewals and registry writes hang (the lease row locked elsewhere, as a
    partition leaves them): it kills its workers and exits 1 by itself, before its
    lease runs out, with no lock it holds in the way."""
    url = _registry_url(postgres, SECRET)
    svc = start_service(tmp_path / "data", extra=["--registry", url, "--registry-lease-ttl", "4"])
    with svc.client() as c:
        run = c.create_run("emergence", step_budget=1_000_000, seed=1, config=tiny)
        wait_for(c, run.name, lambda r: r.step >= 5, what="training")
    workers = worker_pids(svc.proc.pid)
    assert workers
    with psycopg.connect(url) as conn:  # a transaction, open until the block ends
        conn.execute("SELECT 1 FROM registry_lease WHERE name='control' FOR UPDATE")
        assert svc.proc.wait(60) == 1
        conn.rollback()
    assert "lost the registry's lease" in svc.log() and "was not renewed" in svc.log()
    for pid in workers:
        _wait(lambda pid=pid: not _alive(pid), 30, f"worker {pid} to end")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_wrong_registry_password_is_a_clear_startup_error(postgres: str, tmp_path: Path) -> None:
    url = _registry_url(postgres, SECRET)
    wrong = url.replace(SECRET, "Not-The-Pw-91c2")
    from trainsvc._registry import Registry

    Registry(url).close()  # the right password works: the failure below is the password's
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from trainsvc import main; main()",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--data-dir",
            str(tmp_path / "data"),
            "--registry",
            wrong,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert proc.returncode == 1, proc.stderr
    assert "trainsvc: error: --registry: cannot connect to the PostgreSQL registry" in proc.stderr
    assert "password authentication failed" in proc.stderr
    assert "svc:***@" in proc.stderr
    assert "Not-The-Pw-91c2" not in proc.stderr + proc.stdout
