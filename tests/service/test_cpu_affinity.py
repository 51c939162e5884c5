"""`trainsvc serve --worker-cpus`: run workers and the service's own threads on separate CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RUNNING_LONG = 10**9
pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or (os.cpu_count() or 1) < 2, reason="pins CPUs, reads /proc"
)


def _thread_cpus(pid: int) -> dict[int, set[int]]:
    """Each thread of a process, with the CPUs it may run on."""
    return {
        int(task.name): os.sched_getaffinity(int(task.name))
        for task in Path(f"/proc/{pid}/task").iterdir()
    }


def test_workers_train_on_their_cpus_and_the_service_keeps_off_them(
    start_service: Any, tiny: dict[str, Any], wait_for: Any, worker_pids: Any
) -> None:
    last = (os.cpu_count() or 2) - 1
    svc = start_service(extra=["--worker-cpus", str(last)])
    with svc.client() as c:
        run = c.create_run("emergence", step_budget=RUNNING_LONG, config=tiny)
        wait_for(c, run.name, lambda r: r.step > 0, what="training")
        workers = worker_pids(svc.proc.pid)
        assert workers, "no worker process found"
        # every thread of the worker (XLA's pool included) and of the service
        worker_threads = {tid: cpus for pid in workers for tid, cpus in _thread_cpus(pid).items()}
        service_threads = _thread_cpus(svc.proc.pid)
        c.stop_run(run.name)
    assert len(worker_threads) > 1
    assert set(map(frozenset, worker_threads.values())) == {frozenset({last})}
    assert len(service_threads) > 1
    for cpus in service_threads.values():
        assert last not in cpus and cpus, "a service thread may run on the workers' CPU"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("4096", "does not exist here"),
        ("1-0", "ends before it starts"),
        ("0,,1", "such as 0-3,6"),
        ("cpu1", "such as 0-3,6"),
    ],
)
def test_serve_refuses_bad_worker_cpus(tmp_path: Path, value: str, says: str) -> None:
    cmd = [sys.executable, "-c", "from trainsvc import main; main()", "serve"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--worker-cpus", value]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "--worker-cpus" in bad.stderr and says in bad.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything
