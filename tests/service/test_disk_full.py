"""A full disk under the data directory (issue 24, item 2): no zombie RUNNING run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from trainsvc_client import pb

SERVING = health_pb2.HealthCheckResponse.SERVING


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        request = health_pb2.HealthCheckRequest()
        return int(health_pb2_grpc.HealthStub(ch).Check(request, timeout=10).status)


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system is full."""
    chunk = b"\0" * (256 * 1024)
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


@pytest.fixture
def small_fs(tmp_path: Path) -> Any:
    """A 24 MB tmpfs (needs root and mount; skipped elsewhere)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_pauses_the_run_and_the_service_recovers(
    start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path, small_fs: Path
) -> None:
    (small_fs / "data").mkdir()
    data = tmp_path / "data"
    data.symlink_to(small_fs / "data")  # the service's log stays beside it, off the tmpfs
    svc = start_service(data)
    policy = pb.CheckpointPolicy(interval_steps=10, keep_last=2)
    with svc.client() as c:
        run = c.create_run("emergence", step_budget=10**6, config=tiny, checkpoint_policy=policy)
        wait_for(c, run.name, lambda r: r.step >= 20 and r.latest_checkpoint, what="training")
        filler = small_fs / "filler"
        _fill(filler)
        saw_not_serving = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the run leaves RUNNING, or health drops
            saw_not_serving |= _health(svc.address) != SERVING
            if saw_not_serving or c.get_run(run.name).state != pb.Run.RUNNING:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"a full disk went unnoticed: {c.get_run(run.name)}")
        # Control calls answer (no FAILED_PRECONDITION from a zombie); then space returns.
        filler.unlink()
        paused = wait_for(
            c,
            run.name,
            lambda r: r.state not in {pb.Run.RUNNING, pb.Run.PENDING},
            timeout=120,
            what="the run to pause",
        )
        assert paused.state == pb.Run.PAUSED, paused
        assert "disk is full" in paused.state_message
        assert paused.restarts == 0  # not a crash
        wait_for(c, run.name, lambda r: _health(svc.address) == SERVING, what="health back")
        c.resume_run(run.name)
        wait_for(
            c,
            run.name,
            lambda r: r.state == pb.Run.RUNNING and r.step > paused.step,
            what="training again",
        )
        c.stop_run(run.name)
    assert "Traceback" not in svc.log() or "OperationalError" not in svc.log()
