"""Fixtures for the service's end-to-end tests: real `trainsvc serve` processes on loopback.

The services run their workers on the backend ``TRAINSVC_TEST_BACKEND`` names:
``local`` (the default: processes of the service) or ``ray``, the Ray cluster at
``TRAINSVC_TEST_RAY_ADDRESS`` (``HOST:PORT`` of its head; default ``$RAY_ADDRESS``).
`test_ray_backend.py` runs the lifecycle tests that way on a real cluster; tests that
cannot apply to Ray workers (those looking at the workers' local processes) skip there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from trainsvc_client import Client, connect, pb

# A tiny emergence config: compiles fast and trains hundreds of steps per second.
TINY: dict[str, Any] = {
    "num_agents": 4,
    "field_height": 8,
    "field_width": 8,
    "num_envs": 2,
    "rollout_length": 4,
    "frame_interval": 1,
    "policy.hidden": 8,
}
TERMINAL = {pb.Run.COMPLETED, pb.Run.STOPPED, pb.Run.FAILED}
BACKEND_ENV = "TRAINSVC_TEST_BACKEND"
RAY_ADDRESS_ENV = "TRAINSVC_TEST_RAY_ADDRESS"
ON_RAY = os.environ.get(BACKEND_ENV, "local") == "ray"
"""The tests' services start their workers as Ray actors (``TRAINSVC_TEST_BACKEND=ray``)."""


def backend_args() -> list[str]:
    """The `serve` flags of the backend the tests run on (``TRAINSVC_TEST_BACKEND``)."""
    backend = os.environ.get(BACKEND_ENV, "local")
    if backend == "local":
        return []
    if backend != "ray":
        raise pytest.UsageError(f"{BACKEND_ENV}={backend!r}: expected local or ray")
    address = os.environ.get(RAY_ADDRESS_ENV) or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise pytest.UsageError(f"{BACKEND_ENV}=ray needs {RAY_ADDRESS_ENV}=HOST:PORT")
    return ["--backend", "ray", "--ray-address", address]


def pytest_report_header() -> str:
    return f"trainsvc workers: {' '.join(backend_args()) or '--backend local'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_pids(service_pid: int) -> list[int]:
    """The service's run worker processes (multiprocessing spawn children; Linux /proc)."""
    pids = []
    for task in Path(f"/proc/{service_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                pids.append(int(child))
    return pids


class Service:
    """A `trainsvc serve` process in its own process group (so SIGKILL can take it all)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-{self.port}.log"
        cmd = [
            sys.executable,
            "-c",
            "from trainsvc import main; main()",
            "serve",
            "--listen",
            self.address,
            "--data-dir",
            str(data_dir),
            "--metrics-listen",
            "",
            "--log-format",
            "json",
            *backend_args(),  # before `extra`: a test's own --backend wins
            *(extra or []),
        ]
        full_env = {**os.environ, **(env or {})}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )

    def client(self, token: str | None = None, **kw: Any) -> Client:
        return connect(self.address, token, **kw)

    def wait_ready(self, token: str | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client(token) as c:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited {self.proc.returncode}: {self.log()}")
                try:
                    c.list_runs_page(page_size=1, timeout=2)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def metrics_port(self) -> int:
        """The port the metrics endpoint bound (start it with ``--metrics-listen 127.0.0.1:0``).

        Read from the service's "trainsvc listening" log record: a port picked by the
        test and bound later can meanwhile be taken by another server (gRPC binds with
        SO_REUSEPORT and would share it).
        """
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("message") == "trainsvc listening":
                    return int(record["metrics_port"])
        raise AssertionError(f"no 'trainsvc listening' record in the log: {self.log()}")

    def kill_all(self) -> None:
        """SIGKILL the service and its workers (the whole process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM the service only (it checkpoints its runs, then exits)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill_all()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(
        data_dir: Path | None = None, *, ready: bool = True, token: str | None = None, **kw: Any
    ) -> Service:
        svc = Service(data_dir or tmp_path / "data", **kw)
        started.append(svc)
        if ready:
            svc.wait_ready(token)
        return svc

    yield start
    for svc in started:
        svc.kill_all()


def wait_for(
    client: Client,
    name: str,
    pred: Callable[[pb.Run], bool],
    timeout: float = 180.0,
    what: str = "",
) -> pb.Run:
    """Poll a run until `pred` holds (fails with the last state otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get_run(name)
        if pred(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'a condition'}: {run}")
        time.sleep(0.1)


@pytest.fixture(name="worker_pids")
def worker_pids_fixture() -> Callable[[int], list[int]]:
    """`worker_pids(service_pid)`: the service's run worker processes."""
    if ON_RAY:
        pytest.skip(
            "on the Ray backend, workers are actors on the cluster's nodes, not processes of the service"
        )
    return worker_pids


@pytest.fixture
def tiny() -> dict[str, Any]:
    """The tiny emergence config (a fresh copy)."""
    return dict(TINY)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., pb.Run]:
    """`wait_for(client, name, pred, timeout=..., what=...)`."""
    return wait_for


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for a whole module (tests there use their own runs)."""
    svc = Service(tmp_path_factory.mktemp("shared") / "data")
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.kill_all()
