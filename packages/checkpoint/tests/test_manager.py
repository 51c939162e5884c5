"""CheckpointManager: async snapshots, retention, the latest pointer, fallback, leftovers."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt


class DeviceArray:
    """A stand-in for a JAX array whose ``__array__`` exposes its own (mutable) memory."""

    def __init__(self, value: np.ndarray[Any, Any]) -> None:
        self.value = value

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        return self.value


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("copy_workers", [1, 3])
def test_async_save_keeps_the_values_at_the_moment_of_save(
    tmp_path: Path, copy_workers: int
) -> None:
    manager = ckpt.CheckpointManager(tmp_path)
    manager._copy_workers = copy_workers  # 3: the parallel copy that machines with 6+ cores use
    big = np.zeros(
        10_000_000, np.float32
    )  # 40 MB: copied in parallel slices; still being written when we mutate
    dev = DeviceArray(np.zeros(1000, np.int64))
    state = {"big": big, "dev": dev, "small": [np.zeros(3)], "step": 1}
    manager.save(1, state)
    big += 1
    dev.value += 7
    state["small"][0][:] = 5
    state["step"] = 99
    manager.save(2, state)
    big[:] = -1
    manager.wait()
    first = manager.restore(1)
    assert np.all(first["big"] == 0) and np.all(first["dev"] == 0)
    assert np.all(first["small"][0] == 0) and first["step"] == 1
    second = manager.restore(2)
    assert np.all(second["big"] == 1) and np.all(second["dev"] == 7) and second["step"] == 99


def test_blocking_save_and_restore_with_target(tmp_path: Path) -> None:
    manager = ckpt.CheckpointManager(tmp_path)
    state = {"w": np.arange(4.0), "opt": (np.int32(2),)}
    manager.save(7, state, metadata={"run": "a"}, blocking=True)
    assert names(tmp_path) == ["latest", "step_7.safetensors"]
    restored = manager.restore_checkpoint(target=state)
    assert restored.step == 7 and restored.metadata == {"run": "a", "step": 7}
    np.testing.assert_array_equal(restored.tree["w"], state["w"])
    with pytest.raises(ckpt.IncompatibleCheckpointError, match="w"):
        manager.restore(target={"w": np.zeros(3), "opt": (np.int32(2),)})


def test_retention_keep_last_and_keep_every(tmp_path: Path) -> None:
    manager = ckpt.CheckpointManager(tmp_path, keep_last=2, keep_every=5)
    for step in range(1, 13):
        manager.save(step, {"x": np.full(3, step)})
    manager.save_emergency(13, {"x": np.full(3, 13)})
    for step in range(14, 17):
        manager.save(step, {"x": np.full(3, step)})
    manager.wait()
    assert manager.steps() == [5, 10, 13, 15, 16]
    assert (tmp_path / "emergency_step_13.safetensors").exists()
    assert (tmp_path / "latest").read_text() == "step_16.safetensors\n"
    assert manager.latest_step() == 16
    assert ckpt.CheckpointManager(tmp_path).restore()["x"][0] == 16


def test_latest_pointer_follows_emergency_saves(tmp_path: Path) -> None:
    manager = ckpt.CheckpointManager(tmp_path, compression="zstd")
    manager.save(1, {"x": np.zeros(2)}, blocking=True)
    manager.save_emergency(3, {"x": np.ones(2)})
    assert (tmp_path / "latest").read_text() == "emergency_step_3.safetensors.zst\n"
    restored = manager.restore_checkpoint()
    assert restored.step == 3 and restored.path.name == "emergency_step_3.safetensors.zst"


def test_fallback_to_previous_when_newest_is_corrupt(tmp_path: Path) -> None:
    manager = ckpt.CheckpointManager(tmp_path)
    for step in (10, 20):
        manager.save(step, {"x": np.full(4, step, np.int64)}, blocking=True)
    newest = tmp_path / "step_20.safetensors"
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0x40
    newest.write_bytes(bytes(data))
    with pytest.warns(
        ckpt.CheckpointFallbackWarning, match=r"step_20\.safetensors.*falling back to step_10"
    ):
        restored = manager.restore_checkpoint()
    assert restored.step == 10 and restored.tree["x"][0] == 10
    with pytest.raises(ckpt.CorruptCheckpointError, match="tensor 'x'"):
        manager.restore(20)


def test_every_checkpoint_corrupt_or_missing(tmp_path: Path) -> None:
    manager = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(ckpt.CheckpointNotFoundError, match="no checkpoint for any step"):
        manager.restore()
    manager.save(1, {"x": np.zeros(2)}, blocking=True)
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"step 5.*steps on disk: \[1\]"):
        manager.restore(5)
    (tmp_path / "step_1.safetensors").write_bytes(b"garbage!")
    with pytest.raises(ckpt.CorruptCheckpointError, match="no valid checkpoint"):
        manager.restore()


def test_retention_never_deletes_the_only_valid_checkpoint(tmp_path: Path) -> None:
    first = ckpt.CheckpointManager(tmp_path, keep_last=1)
    first.save(5, {"x": np.full(2, 5)}, blocking=True)
    # A newer checkpoint that is corrupt (say, damaged on disk), found by a new manager.
    shutil.copy(tmp_path / "step_5.safetensors", tmp_path / "step_9.safetensors")
    with (tmp_path / "step_9.safetensors").open("r+b") as f:
        f.seek(-1, 2)
        f.write(b"\xff")
    manager = ckpt.CheckpointManager(tmp_path, keep_last=1)
    manager.save(3, {"x": np.full(2, 3)}, blocking=True)
    assert (tmp_path / "step_5.safetensors").exists(), "the newest valid checkpoint was deleted"
    assert (tmp_path / "step_9.safetensors").exists()
    with pytest.warns(ckpt.CheckpointFallbackWarning):
        assert manager.restore_checkpoint().step == 5


def test_leftover_temporary_files_are_removed_on_open(tmp_path: Path) -> None:
    (tmp_path / ".tmp-step_4.safetensors-abc").write_bytes(b"half a file")
    (tmp_path / "notes.txt").write_text("kept")
    ckpt.CheckpointManager(tmp_path)
    assert names(tmp_path) == ["notes.txt"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_last"):
        ckpt.CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(ValueError, match="keep_every"):
        ckpt.CheckpointManager(tmp_path, keep_every=0)
    with pytest.raises(ValueError, match="compression"):
        ckpt.CheckpointManager(tmp_path, compression="gzip")  # type: ignore[arg-type]
    manager = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match="step"):
        manager.save(-1, {})
    with pytest.raises(ValueError, match=r"metadata\['step'\]"):
        manager.save(1, {}, metadata={"step": 2})
    with pytest.raises(ckpt.InvalidTreeError, match="x"):
        manager.save(1, {"x": object()})
    manager.wait()
    assert manager.steps() == []


def test_context_manager_waits(tmp_path: Path) -> None:
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"x": np.zeros(100_000)})
    assert ckpt.verify(tmp_path / "step_1.safetensors").metadata == {"step": 1}


def test_background_failure_is_reported_and_nothing_is_lost(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    manager = ckpt.CheckpointManager(tmp_path)
    manager.save(1, {"x": np.ones(3)}, blocking=True)
    (tmp_path / "step_2.safetensors").mkdir()  # the rename onto it will fail
    manager.save(2, {"x": np.full(3, 2.0)})
    with pytest.raises(ckpt.CheckpointError, match="background checkpoint save failed") as info:
        manager.wait()
    assert isinstance(info.value.__cause__, OSError)
    assert "the background save of step 2 failed" in capfd.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert manager.restore_checkpoint().step == 1
    manager.wait()  # the error was reported once


class SignalsDuringConversion:
    """An array leaf that sends this process SIGTERM while the manager converts it."""

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        os.kill(os.getpid(), signal.SIGTERM)
        return np.arange(3)


def test_signal_handlers_defer_during_save_and_chain_to_a_previous_handler(tmp_path: Path) -> None:
    calls: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        manager = ckpt.CheckpointManager(tmp_path)
        manager.install_signal_handlers(lambda: (7, {"x": np.full(2, 7)}))
        # The signal arrives in the middle of save(): it is handled once save() is done.
        manager.save(5, {"x": SignalsDuringConversion()})
        assert calls == [signal.SIGTERM], "the previous Python handler is called after the save"
        assert [c.path.name for c in manager.checkpoints()] == [
            "step_5.safetensors",
            "emergency_step_7.safetensors",
        ]
        assert ckpt.load(tmp_path / "step_5.safetensors")["x"].tolist() == [0, 1, 2]
        assert ckpt.load(tmp_path / "emergency_step_7.safetensors")["x"].tolist() == [7, 7]
        assert (tmp_path / "latest").read_text() == "emergency_step_7.safetensors\n"
        assert signal.getsignal(signal.SIGTERM) is mine, (
            "handled once, then the previous handler is back"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_async_save_does_not_copy_read_only_arrays_but_writes_their_values(
    tmp_path: Path,
) -> None:
    manager = ckpt.CheckpointManager(tmp_path)
    frozen = np.arange(1000, dtype=np.float32)
    frozen.flags.writeable = False
    view_of_writable = np.arange(10, dtype=np.int64)
    ro_view = view_of_writable[:]
    ro_view.flags.writeable = False  # its owner is writable: must still be copied
    manager.save(1, {"frozen": frozen, "view": ro_view})
    view_of_writable[:] = -1
    manager.wait()
    assert all(b.base is not frozen and b is not frozen for b in manager._buffers.values())
    assert "view" in manager._buffers and "frozen" not in manager._buffers
    restored = manager.restore(1)
    np.testing.assert_array_equal(restored["frozen"], np.arange(1000, dtype=np.float32))
    np.testing.assert_array_equal(restored["view"], np.arange(10, dtype=np.int64))
