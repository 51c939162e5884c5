"""The typed worker protocol: messages cross a real pipe, a real worker speaks them, and the
controller's dispatch records each in the registry."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
from trainsvc import _protocol as proto
from trainsvc._controller import RunController, WorkerSettings
from trainsvc._domain import CheckpointRecord, Event, EventType, RunRecord, RunSpec, State
from trainsvc._journal import RunJournal
from trainsvc._metrics import Metrics
from trainsvc._registry import Registry
from trainsvc._worker import WorkerJob, worker_main
from trainsvc.kinds import FrameData, get_kind

MESSAGES: list[Any] = [
    proto.Command("pause", "r1"),
    proto.Ready(3),
    proto.Progress(4, 12.5, {"loss": 0.25}),
    proto.FrameReady(FrameData(step=4, time=1.0, metrics={"loss": 0.25})),
    proto.CheckpointSaved("/d/step_4.safetensors", 4, False),
    proto.CheckpointsDeleted(("/d/step_1.safetensors",)),
    proto.CheckpointSkipped("/d/step_2.safetensors", "CorruptCheckpointError: crc"),
    proto.Reply("r1", True, "/d/step_4.safetensors"),
    proto.Completed(9),
    proto.Log("WARNING", "careful"),
    proto.Fatal("invalid input: x", permanent=True),
]


def test_every_message_crosses_a_pipe_unchanged_and_is_frozen() -> None:
    parent, child = multiprocessing.Pipe()
    for msg in MESSAGES:
        child.send(msg)
        got = parent.recv()
        assert got == msg and type(got) is type(msg)
        field = dataclasses.fields(msg)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(got, field, None)
    assert set(proto.COMMANDS) == {"pause", "resume", "stop", "checkpoint", "shutdown"}


def _recv_until(conn: Any, kind: type, timeout: float = 120.0) -> tuple[Any, list[Any]]:
    """Messages up to and including the first of type ``kind``."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.poll(0.5):
            msg = conn.recv()
            seen.append(msg)
            if isinstance(msg, kind):
                return msg, seen
    raise AssertionError(f"no {kind.__name__} within {timeout} s; got {seen}")


def test_a_worker_speaks_typed_messages(tmp_path: Path) -> None:
    pytest.importorskip("trainsvc_engine")
    spec = RunSpec("othello", step_budget=100_000, config={"search_depth": 1, "threads": 1})
    config = get_kind("othello").resolve_config(spec, None)  # type: ignore[arg-type]
    ckpt_dir = tmp_path / "checkpoints"
    job = WorkerJob("w", "othello", config, str(ckpt_dir), spec.step_budget, None)
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe(duplex=True)
    process = mp.Process(target=worker_main, args=(child, job))
    process.start()
    child.close()
    try:
        ready, _ = _recv_until(parent, proto.Ready)
        assert ready.step == 0
        _recv_until(parent, proto.Progress)
        parent.send(proto.Command("pause", "p1"))
        reply, seen = _recv_until(parent, proto.Reply)
        assert reply.request_id == "p1" and reply.ok
        saved = [m for m in seen if isinstance(m, proto.CheckpointSaved)]
        assert saved and saved[-1].path == reply.detail and Path(reply.detail).exists()
        assert Path(reply.detail).name == f"step_{saved[-1].step}.safetensors"
        parent.send(proto.Command("stop", "s1"))
        reply, _ = _recv_until(parent, proto.Reply)
        assert reply.request_id == "s1" and reply.ok
        process.join(60)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join()


def test_a_worker_that_cannot_build_its_trainer_says_why_and_exits(tmp_path: Path) -> None:
    job = WorkerJob("w", "no-such-kind", {}, str(tmp_path), 10, None)
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe(duplex=True)
    process = mp.Process(target=worker_main, args=(child, job))
    process.start()
    child.close()
    fatal, seen = _recv_until(parent, proto.Fatal)
    assert "no-such-kind" in fatal.message
    assert any(isinstance(m, proto.Log) and m.level == "ERROR" for m in seen)
    process.join(60)
    assert process.exitcode == 1


class _Host:
    """The service side a controller talks to, recording what it is told."""

    shutting_down = False

    def __init__(self) -> None:
        self.frames: list[FrameData] = []
        self.done = False

    def publish_frame(self, run_id: str, frame: FrameData) -> None:
        self.frames.append(frame)

    def resume_from_path(self, name: str) -> str:
        raise AssertionError("not resumed in this test")

    def controller_done(self, run_id: str, ctl: RunController) -> None:
        self.done = True


def test_the_controller_records_each_message(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.sqlite3")
    spec = RunSpec("emergence", step_budget=10)
    record = RunRecord("r", spec, State.PENDING, time.time(), time.time(), resolved_config={})
    events: list[Event] = []
    registry.insert_run(record, "run created")
    journal = RunJournal("r", registry, Metrics(), events.append)
    host = _Host()
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    ctl = RunController(
        record, journal, host, WorkerSettings(multiprocessing.get_context("spawn")), ckpt_dir
    )
    saved = ckpt_dir / "step_4.safetensors"
    saved.write_bytes(b"x" * 10)

    ctl.handle(proto.Ready(3))
    assert registry.get_run("r").state == State.RUNNING and ctl.ready.is_set()
    ctl.handle(proto.Progress(4, 2.0, {"loss": 0.5}))
    assert registry.get_run("r").step == 4  # the first progress is persisted at once
    ctl.handle(proto.FrameReady(FrameData(step=4, time=0.0)))
    assert [f.step for f in host.frames] == [4]
    ctl.handle(proto.CheckpointSaved(str(saved), 4, False))
    (ckpt,) = registry.list_checkpoints("r")
    assert (ckpt.checkpoint_id, ckpt.step, ckpt.size_bytes) == ("step_4", 4, 10)
    ctl.handle(proto.CheckpointsDeleted((str(saved),)))
    assert registry.list_checkpoints("r") == []
    ctl.handle(proto.Log("WARNING", "careful"))
    assert events[-1].type == EventType.WARNING and events[-1].message == "careful"
    registry.add_checkpoint(CheckpointRecord("r", "step_2", 2, str(ckpt_dir / "x"), 1, 0.0))
    ctl.handle(proto.CheckpointSkipped(str(ckpt_dir / "step_2.safetensors"), "corrupt"))
    assert registry.list_checkpoints("r") == []
    assert "skipped checkpoint step_2.safetensors" in events[-1].message
    ctl.handle(proto.Fatal("boom", permanent=True))
    assert (ctl.last_fatal, ctl.fatal_permanent) == ("boom", True)
    ctl.handle(proto.Completed(10))
    assert registry.get_run("r").state == State.COMPLETED and ctl.expect_exit
    with pytest.raises(AssertionError):  # not a message of the protocol
        ctl.handle(("frame", None))  # type: ignore[arg-type]
    registry.close()
