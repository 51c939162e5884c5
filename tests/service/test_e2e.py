"""End to end through the typed client: create, frames, pause, resume, checkpoint, stop, list."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from trainsvc._server import DEFAULT_WORKER_NICE
from trainsvc_client import (
    FailedPreconditionError,
    decode_field,
    decode_positions,
    pb,
)

RUNNING_LONG = 1_000_000  # a budget the tests never reach


def test_lifecycle(shared_service: Any, tiny: dict[str, Any], wait_for: Any) -> None:
    with shared_service.client() as c:
        run = c.create_run(
            "emergence",
            step_budget=RUNNING_LONG,
            seed=1,
            config=tiny,
            checkpoint_policy=pb.CheckpointPolicy(interval_steps=50),
        )
        assert run.state == pb.Run.PENDING and run.name.startswith("runs/")

        # Frames: real trainer state, packed.
        frames = []
        stream = c.stream_frames(run.name, max_rate_hz=50)
        for frame in stream:
            frames.append(frame)
            if len(frames) == 5:
                stream.cancel()
        steps = [f.step for f in frames]
        assert steps == sorted(steps) and steps[-1] > steps[0]
        payload = frames[-1].emergence
        assert payload.num_agents == 4 and len(decode_positions(payload)) == 4
        assert all(0 <= r < 8 and 0 <= col < 8 for r, col in decode_positions(payload))
        assert list(payload.field_shape) == [8, 8] and len(decode_field(payload)) == 64
        assert "reward" in frames[-1].metrics

        # Pause: finishes the step, checkpoints there, holds.
        paused = c.pause_run(run.name)
        assert paused.state == pb.Run.PAUSED
        assert paused.latest_checkpoint.endswith(f"step_{paused.step}")
        time.sleep(0.5)
        assert c.get_run(run.name).step == paused.step
        with pytest.raises(FailedPreconditionError):
            c.pause_run(run.name)

        # Resume continues from there.
        resumed = c.resume_run(run.name)
        assert resumed.state == pb.Run.RUNNING
        wait_for(c, run.name, lambda r: r.step > paused.step + 5, what="progress after resume")

        # An explicit checkpoint is indexed before the call returns.
        ckpt = c.save_checkpoint(run.name)
        assert ckpt.step > paused.step and ckpt.name.startswith(f"{run.name}/checkpoints/")
        assert ckpt.name in [x.name for x in c.list_checkpoints(run.name)]

        stopped = c.stop_run(run.name)
        assert stopped.state == pb.Run.STOPPED
        assert stopped.latest_checkpoint.endswith(f"step_{stopped.step}")
        with pytest.raises(FailedPreconditionError, match="STOPPED"):
            c.pause_run(run.name)
        with pytest.raises(FailedPreconditionError):
            c.resume_run(run.name)

        names = [r.name for r in c.list_runs()]
        assert run.name in names
        assert run.name in [r.name for r in c.list_runs(state=pb.Run.STOPPED)]
        assert run.name not in [r.name for r in c.list_runs(state=pb.Run.RUNNING)]

        # Events tell the story, and a reconnecting client catches up from a sequence.
        events = list(c.stream_events(run.name))
        states = [pb.Run.State.Name(e.state) for e in events if e.type == pb.Event.STATE_CHANGED]
        assert states[:2] == ["PENDING", "RUNNING"] and states[-1] == "STOPPED"
        assert "PAUSED" in states
        assert any(e.type == pb.Event.CHECKPOINT_SAVED for e in events)
        middle = events[len(events) // 2].sequence
        tail = list(c.stream_events(run.name, from_sequence=middle))
        assert [e.sequence for e in tail] == [e.sequence for e in events if e.sequence >= middle]


def test_run_completes_with_a_final_checkpoint(
    shared_service: Any, tiny: dict[str, Any], wait_for: Any
) -> None:
    with shared_service.client() as c:
        run = c.create_run("emergence", step_budget=30, seed=2, config=tiny)
        done = wait_for(
            c, run.name, lambda r: r.state in {pb.Run.COMPLETED, pb.Run.FAILED}, what="completion"
        )
        assert done.state == pb.Run.COMPLETED, done.state_message
        assert done.step == 30
        assert [x.step for x in c.list_checkpoints(run.name)][-1] == 30
        # The frame stream of a finished run ends by itself.
        assert len(list(c.stream_frames(run.name))) <= 1
        with pytest.raises(FailedPreconditionError):
            c.stop_run(run.name)


def test_list_pages(shared_service: Any, tiny: dict[str, Any]) -> None:
    with shared_service.client() as c:
        created = [
            c.create_run("emergence", step_budget=RUNNING_LONG, config=tiny).name for _ in range(3)
        ]
        try:
            page = c.list_runs_page(page_size=2)
            assert len(page.runs) == 2 and page.next_page_token
            names = [r.name for r in c.list_runs(page_size=2)]
            assert len(names) == len(set(names))
            assert set(created) <= set(names)
            assert names[:3] == created[::-1]  # newest first
        finally:
            for name in created:
                c.stop_run(name)


def _niceness(pid: int) -> int:
    """A process's nice value (Linux /proc)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_workers_run_nicer_than_the_service(
    shared_service: Any, tiny: dict[str, Any], wait_for: Any, worker_pids: Any
) -> None:
    """The default --worker-nice: training yields the CPU to the service's RPCs and streams."""
    with shared_service.client() as c:
        run = c.create_run("emergence", step_budget=RUNNING_LONG, config=tiny)
        wait_for(c, run.name, lambda r: r.step > 0, what="training")
        workers = worker_pids(shared_service.proc.pid)
        c.stop_run(run.name)
    assert workers, "no worker process found"
    service_nice = _niceness(shared_service.proc.pid)
    assert {_niceness(pid) for pid in workers} == {min(19, service_nice + DEFAULT_WORKER_NICE)}
