"""Durability and fault handling with real processes and signals."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file
from trainsvc_client import pb

pytestmark = pytest.mark.slow(35)

BUDGET = 600


def _final_tensors(client: Any, name: str) -> dict[str, np.ndarray]:
    final = [c for c in client.list_checkpoints(name) if c.step == BUDGET]
    assert final, f"no final checkpoint for {name}"
    return load_file(final[-1].path)


def test_sigkill_of_the_whole_service_then_resume_matches_uninterrupted(
    start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    policy = pb.CheckpointPolicy(interval_steps=50)
    svc = start_service(data)
    with svc.client() as c:
        run = c.create_run(
            "emergence", step_budget=BUDGET, seed=7, config=tiny, checkpoint_policy=policy
        )
        wait_for(c, run.name, lambda r: r.step >= 100 and r.latest_checkpoint, what="step 100")
    svc.kill_all()  # SIGKILL: service and worker, no chance to save anything

    svc2 = start_service(data)
    with svc2.client() as c:
        got = c.get_run(run.name)  # the acknowledged run survived, marked INTERRUPTED
        assert got.state == pb.Run.INTERRUPTED, got
        assert c.list_checkpoints(run.name), "the acknowledged checkpoints survived"
        c.resume_run(run.name)
        done = wait_for(
            c,
            run.name,
            lambda r: r.state in {pb.Run.COMPLETED, pb.Run.FAILED},
            what="resumed run to finish",
        )
        assert done.state == pb.Run.COMPLETED, done.state_message

        baseline = c.create_run(
            "emergence", step_budget=BUDGET, seed=7, config=tiny, checkpoint_policy=policy
        )
        wait_for(c, baseline.name, lambda r: r.state == pb.Run.COMPLETED, what="baseline")
        resumed, uninterrupted = _final_tensors(c, run.name), _final_tensors(c, baseline.name)
    assert resumed.keys() == uninterrupted.keys()
    for key in uninterrupted:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)


def test_sigterm_checkpoints_and_auto_resume_continues(
    start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    svc = start_service(data)
    with svc.client() as c:
        run = c.create_run("emergence", step_budget=1_000_000, seed=1, config=tiny)
        held = c.create_run("emergence", step_budget=1_000_000, seed=2, config=tiny)
        wait_for(c, run.name, lambda r: r.step >= 5, what="training")
        held_at = c.pause_run(held.name).step
        # A run stopped just before the SIGTERM is left alone by the shutdown.
        ended = c.create_run("emergence", step_budget=1_000_000, seed=3, config=tiny)
        wait_for(c, ended.name, lambda r: r.step >= 1, what="training")
        ended_at = c.stop_run(ended.name).step
        # A client following every run's events: the shutdown ends its stream normally,
        # after the runs' final events, instead of cancelling it mid-wait.
        followed: list[pb.Event] = []
        failures: list[BaseException] = []

        def follow() -> None:
            try:
                followed.extend(c.stream_events("runs/-", follow=True))
            except BaseException as exc:  # reported by the assert below
                failures.append(exc)

        follower = threading.Thread(target=follow)
        follower.start()
        wait_for(c, run.name, lambda r: len(followed) > 0, what="the follower to read")
        assert svc.terminate() == 0
        follower.join(timeout=30)
    assert not follower.is_alive() and not failures, failures
    assert any(e.run == run.name and e.state == pb.Run.INTERRUPTED for e in followed)
    assert "shutdown checkpoint failed" not in svc.log()
    assert "Exception not handled" not in svc.log()

    svc2 = start_service(data, extra=["--auto-resume"])
    with svc2.client() as c:
        events = list(c.stream_events(run.name))
        saved = [e for e in events if e.type == pb.Event.CHECKPOINT_SAVED]
        interrupted = [e for e in events if e.state == pb.Run.INTERRUPTED]
        assert saved and interrupted
        assert saved[-1].step >= 5  # the shutdown checkpoint
        resumed = wait_for(
            c,
            run.name,
            lambda r: r.state == pb.Run.RUNNING and r.step > saved[-1].step,
            what="auto-resumed progress",
        )
        assert resumed.restarts == 0
        # A paused run stays paused across the restart, at its pause step.
        still = c.get_run(held.name)
        assert still.state == pb.Run.PAUSED and still.step == held_at
        stopped = c.get_run(ended.name)
        assert stopped.state == pb.Run.STOPPED and stopped.step == ended_at
        c.stop_run(run.name)


def test_crash_loop_ends_failed(
    start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path
) -> None:
    # Test hook: the worker really exits (os._exit) when the run reaches step 3.
    svc = start_service(env={"TRAINSVC_FAULT_CRASH_AT_STEP": "3"})
    with svc.client() as c:
        run = c.create_run("emergence", step_budget=100, config=tiny, max_restarts=10)
        failed = wait_for(
            c,
            run.name,
            lambda r: r.state in {pb.Run.FAILED, pb.Run.COMPLETED},
            timeout=300,
            what="crash loop",
        )
        assert failed.state == pb.Run.FAILED
        assert "crash loop" in failed.state_message and failed.restarts == 3
        errors = [e.message for e in c.stream_events(run.name) if e.type == pb.Event.ERROR]
        assert any("crash loop" in m for m in errors)
        # The service itself is fine.
        assert c.get_run(run.name).state == pb.Run.FAILED
    import subprocess

    watch = subprocess.run(
        [
            sys.executable,
            "-c",
            "from trainsvc_client._cli import main; main()",
            "runs",
            "watch",
            run.name,
            "--server",
            svc.address,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watch.returncode == 2, watch.stderr
