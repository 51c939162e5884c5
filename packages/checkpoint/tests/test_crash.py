"""Crash safety with real processes: SIGKILL at random instants, SIGTERM/SIGINT emergencies."""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trainsvc_checkpoint as ckpt

CHILD = Path(__file__).parent / "crash_child.py"
_spec = importlib.util.spec_from_file_location("ckpt_crash_child", CHILD)
assert _spec is not None and _spec.loader is not None
child: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)


@pytest.fixture
def start() -> Iterator[Callable[[str, Path], subprocess.Popen[str]]]:
    """``start(mode, directory)``: a `crash_child.py` that said it is ready. One still
    running at the end of the test (it timed out) is killed, not left training."""
    procs: list[subprocess.Popen[str]] = []

    def start_child(mode: str, directory: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), mode, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")
        return proc

    yield start_child
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def check_directory(directory: Path) -> int:
    """Every file under a final name is a valid checkpoint of its step; return the restored step."""
    manager = ckpt.CheckpointManager(directory, keep_last=2)
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]
    for c in manager.checkpoints():
        tree = ckpt.load(c.path)  # a torn file under a final name would fail here
        child.check_state(tree, c.step)
    latest = directory / "latest"
    if latest.exists():
        assert (directory / latest.read_text().strip()).exists()
    restored = manager.restore_checkpoint()
    child.check_state(restored.tree, restored.step)
    assert restored.step == manager.latest_step()
    return restored.step


def test_sigkill_at_random_instants_never_leaves_a_torn_checkpoint(
    start: Callable[[str, Path], subprocess.Popen[str]], tmp_path: Path
) -> None:
    rng = random.Random(1234)
    steps, torn = [], 0
    server = start("forks", tmp_path)
    assert server.stdin is not None and server.stdout is not None
    for _ in range(30):
        server.stdin.write("fork\n")
        server.stdin.flush()
        pid = int(server.stdout.readline())
        time.sleep(rng.uniform(0.0, 0.12))
        os.kill(pid, signal.SIGKILL)
        status = int(server.stdout.readline())
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        torn += any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
        if ckpt.CheckpointManager(tmp_path).checkpoints():
            steps.append(check_directory(tmp_path))
    assert steps, "the child never got to save"
    assert steps == sorted(steps), "a restart lost progress"
    assert steps[-1] > 10
    assert torn, "no kill landed in the middle of a write: the test did not test anything"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_leaves_an_emergency_checkpoint(
    start: Callable[[str, Path], subprocess.Popen[str]], tmp_path: Path, sig: signal.Signals
) -> None:
    proc = start("train", tmp_path)
    time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -sig, err  # died of the signal, as the default action would
    manager = ckpt.CheckpointManager(tmp_path)
    emergency = [c for c in manager.checkpoints() if c.emergency]
    assert len(emergency) == 1, manager.checkpoints()
    assert f"{sig.name}: saved" in err
    restored = manager.restore_checkpoint()
    assert restored.path == emergency[0].path
    child.check_state(restored.tree, restored.step)
    assert restored.step >= 30
    for c in manager.checkpoints():
        child.check_state(ckpt.load(c.path), c.step)


def test_pending_async_save_finishes_at_exit(
    start: Callable[[str, Path], subprocess.Popen[str]], tmp_path: Path
) -> None:
    proc = start("exit", tmp_path)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert ckpt.verify(tmp_path / "step_1.safetensors").metadata == {"step": 1}
