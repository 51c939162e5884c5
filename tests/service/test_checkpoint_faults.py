"""Damaged checkpoints and a stale index: fall back, never crash-loop (issue 24, items 1 and 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trainsvc_checkpoint as ckpt
from trainsvc_client import InvalidArgumentError, pb

POLICY = pb.CheckpointPolicy(interval_steps=20, keep_last=10)


def _flip_middle_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


def _checkpoint_files(data: Path, run_id: str) -> dict[int, Path]:
    return {c.step: c.path for c in ckpt.scan(data / "runs" / run_id / "checkpoints")}


def test_a_corrupt_newest_checkpoint_resumes_from_the_newest_valid_one(
    start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    svc = start_service(data)
    with svc.client() as c:
        run = c.create_run(
            "emergence", step_budget=1_000_000, seed=3, config=tiny, checkpoint_policy=POLICY
        )
        wait_for(c, run.name, lambda r: r.step >= 45, what="two periodic checkpoints")
        paused = c.pause_run(run.name)
    run_id = run.name.split("/")[1]
    assert svc.terminate() == 0
    files = _checkpoint_files(data, run_id)
    newest = files[paused.step]
    older = max(s for s in files if s < paused.step)

    svc2 = start_service(data)  # recovery finds every file valid
    _flip_middle_byte(newest)  # the pause checkpoint goes bad after that
    with svc2.client() as c:
        # Naming the corrupt file explicitly is refused at once, with the reason.
        ckpt_id = newest.name.split(".safetensors")[0]
        try:
            c.resume_run(run.name, checkpoint=ckpt_id)
        except InvalidArgumentError as exc:
            assert exc.field == "checkpoint" and "corrupt" in exc.details
        else:
            raise AssertionError("resuming from a corrupt checkpoint was accepted")
        c.resume_run(run.name)  # the newest: falls back to the newest valid one
        resumed = wait_for(
            c,
            run.name,
            lambda r: r.state in {pb.Run.RUNNING, pb.Run.FAILED} and r.step > older,
            what="resumed training",
        )
        assert resumed.state == pb.Run.RUNNING, resumed.state_message
        assert resumed.restarts == 0  # the corrupt file was not a crash
        events = list(c.stream_events(run.name))
        warnings = [e.message for e in events if e.type == pb.Event.WARNING]
        assert any(newest.name in m and "CorruptCheckpointError" in m for m in warnings), warnings
        logs = [e.message for e in events if e.type == pb.Event.LOG]
        assert any(f"restored step {older} from" in m for m in logs), logs
        c.stop_run(run.name)


def test_a_stale_index_is_reconciled_on_recovery_after_sigkill(
    start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    svc = start_service(data)
    with svc.client() as c:
        run = c.create_run(
            "emergence", step_budget=1_000_000, seed=4, config=tiny, checkpoint_policy=POLICY
        )
        wait_for(c, run.name, lambda r: r.step >= 65, what="three periodic checkpoints")
        indexed = {x.step for x in c.list_checkpoints(run.name)}
    svc.kill_all()
    run_id = run.name.split("/")[1]
    files = _checkpoint_files(data, run_id)
    steps = sorted(set(files) & indexed)
    assert len(steps) >= 3, (files, indexed)
    # While the service was down: retention deleted the oldest, one was damaged, and
    # a newer checkpoint was written that the index never heard of.
    files[steps[0]].unlink()
    _flip_middle_byte(files[steps[1]])
    tree, info = ckpt.load_with_info(files[steps[-1]])
    unindexed = steps[-1] + 1000
    ckpt.save(
        files[steps[-1]].with_name(f"step_{unindexed}.safetensors"),
        tree,
        metadata={**info.metadata, "step": unindexed},
    )

    svc2 = start_service(data)
    with svc2.client() as c:
        listed = {x.step for x in c.list_checkpoints(run.name)}
        assert steps[0] not in listed and steps[1] not in listed
        assert unindexed in listed and steps[-1] in listed
        got = c.get_run(run.name)
        assert got.latest_checkpoint.endswith(f"step_{unindexed}"), got.latest_checkpoint
        events = list(c.stream_events(run.name))
        notes = [e.message for e in events if "checkpoint index reconciled" in e.message]
        assert len(notes) == 1, notes
        indexed_part = notes[0].split(": ", 1)[1].split(";")[0]
        assert indexed_part.startswith("indexed ") and f"step_{unindexed}" in indexed_part
        assert f"dropped step_{steps[0]} (the file is gone)" in notes[0]
        assert f"dropped step_{steps[1]} (unusable" in notes[0]
    svc2.kill_all()  # a second restart finds nothing to change
    svc3 = start_service(data)
    with svc3.client() as c:
        events = list(c.stream_events(run.name))
        assert len([e for e in events if "checkpoint index reconciled" in e.message]) == 1
