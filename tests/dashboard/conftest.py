"""Real processes for the dashboard tests: a trainsvc service running a short
emergence run, and `trainsvc-dashboard` bridges in front of it (loopback only)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from trainsvc_client import Client, connect, pb

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TRAINSVC_ARTIFACTS", REPO / "artifacts")) / "dashboard"

# A tiny emergence run: fast steps, a frame every step, a budget no test reaches.
TINY_CONFIG = {
    "num_agents": 8,
    "field_height": 16,
    "field_width": 16,
    "num_envs": 2,
    "rollout_length": 8,
    "frame_interval": 1,
}


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 120.0, every: float = 0.2
) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def _stop(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Service:
    """A `trainsvc serve` process."""

    address: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    """More `trainsvc serve` flags (e.g. ``--input-dir`` for a lora run's files)."""

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "trainsvc"),
                    "serve",
                    "--listen",
                    self.address,
                    "--data-dir",
                    str(self.data_dir),
                    "--metrics-listen",
                    "127.0.0.1:0",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with connect(self.address, timeout=2.0) as client:
            wait_for("the service to answer", lambda: client.list_runs_page() is not None, 60)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def client(self) -> Client:
        return connect(self.address, timeout=60.0)


@dataclass
class BridgeProc:
    """A `trainsvc-dashboard` process."""

    url: str
    proc: subprocess.Popen[str]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "ws"

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_bridge(server: str, log: Path, *extra: str) -> BridgeProc:
    """Start a bridge on a free loopback port and return its address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSVC_")}
    with log.open("a") as err:
        proc = subprocess.Popen(
            [
                str(BIN / "trainsvc-dashboard"),
                "--server",
                server,
                "--listen",
                "127.0.0.1:0",
                "--json",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        pytest.fail(f"trainsvc-dashboard exited with {proc.returncode}; see {log}")
    return BridgeProc(url=json.loads(line)["url"], proc=proc)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dashboard-logs")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[Service]:
    svc = Service(
        address=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path_factory.mktemp("trainsvc-data"),
        log=logs_dir / "service.log",
    )
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def live_run(service: Service) -> Iterator[str]:
    """A real emergence run, RUNNING and publishing frames."""
    with service.client() as client:
        run = client.create_run(
            "emergence",
            step_budget=10_000_000,
            seed=1,
            config=TINY_CONFIG,
            display_name="dashboard test run",
            checkpoint_policy=pb.CheckpointPolicy(interval_steps=5000),
        )
        wait_for(
            "the run to train",
            lambda: (r := client.get_run(run.name)).state == pb.Run.RUNNING and r.step > 0,
            timeout=180,
        )
        yield run.name
        if client.get_run(run.name).state in (pb.Run.RUNNING, pb.Run.PAUSED):
            client.stop_run(run.name)


_PAUSED_BETWEEN_MODULES: set[str] = set()
"""Live runs the fixture below paused at the end of a module (and resumes at the next)."""


@pytest.fixture(autouse=True, scope="module")
def _live_run_trains_only_while_watched(request: pytest.FixtureRequest) -> Iterator[None]:
    """The session's live run trains only during the modules that use it: between them
    (and after the last, until the session ends) it is paused, so it does not take a
    CPU from the rest of the suite."""
    items = [i for i in request.session.items if i.module is request.module]
    if not any("live_run" in i.fixturenames for i in items):
        yield
        return
    name: str = request.getfixturevalue("live_run")
    service: Service = request.getfixturevalue("service")
    if name in _PAUSED_BETWEEN_MODULES:
        with service.client() as client:
            step = client.resume_run(name).step
            wait_for(
                "the live run to train again",
                lambda: (r := client.get_run(name)).state == pb.Run.RUNNING and r.step > step,
                timeout=120,
            )
        _PAUSED_BETWEEN_MODULES.discard(name)
    yield
    with service.client() as client:
        if client.get_run(name).state == pb.Run.RUNNING:
            client.pause_run(name)
            _PAUSED_BETWEEN_MODULES.add(name)


@pytest.fixture(scope="session")
def bridge(service: Service, live_run: str, logs_dir: Path) -> Iterator[BridgeProc]:
    b = start_bridge(service.address, logs_dir / "bridge.log")
    yield b
    _stop(b.proc)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def chromium_path() -> str:
    """Debian's Chromium (installed by `make test`); the tests never download a browser."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is not installed: apt-get install -y chromium (make test does this)")
    return path


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
