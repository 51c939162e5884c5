"""reconcile: a checkpoint index against its directory, which is the truth (issue 24, item 6)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
from trainsvc_checkpoint import _manager


def state(step: int) -> dict[str, Any]:
    return {"w": np.full(16, step, np.float32), "step": step}


def flip_middle_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) - 8] ^= 0x01  # in the tensor data
    path.write_bytes(bytes(raw))


def test_a_stale_index_is_reconciled_with_the_directory(tmp_path: Path) -> None:
    # The index a service kept before it was SIGKILLed: steps 1, 2 and 3.
    with ckpt.CheckpointManager(tmp_path, keep_last=10) as manager:
        for step in (1, 2, 3):
            manager.save(step, state(step), blocking=True)
    indexed = ["step_1", "step_2", str(tmp_path / "step_3.safetensors")]
    # Meanwhile retention deleted step_1, a newer step_4 was written but never
    # indexed, and step_3 was damaged.
    (tmp_path / "step_1.safetensors").unlink()
    with ckpt.CheckpointManager(tmp_path, keep_last=10) as other:
        other.save(4, state(4), blocking=True)
    flip_middle_byte(tmp_path / "step_3.safetensors")
    (tmp_path / ".tmp-step_5.safetensors-abc").write_bytes(b"a save in progress")

    result = ckpt.reconcile(tmp_path, indexed)

    assert [v.file.step for v in result.valid] == [2, 4]
    assert [(u.file.step, "CRC32C" in u.reason) for u in result.unusable] == [(3, True)]
    assert [v.file.checkpoint_id for v in result.added] == ["step_4"]
    assert result.removed == ("step_1", "step_3")
    newest = result.newest
    assert newest is not None and newest.file.step == 4 and newest.metadata["step"] == 4
    assert newest.size_bytes == (tmp_path / "step_4.safetensors").stat().st_size
    # Read-only: a save in progress is left alone.
    assert (tmp_path / ".tmp-step_5.safetensors-abc").exists()
    # And restoring agrees with it.
    restored = ckpt.CheckpointManager(tmp_path).restore_checkpoint()
    assert restored.step == 4 and restored.skipped == ()


def test_a_file_under_another_steps_name_or_a_foreign_file_is_unusable(tmp_path: Path) -> None:
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(2, state(2), blocking=True)
    shutil.copy(tmp_path / "step_2.safetensors", tmp_path / "step_9.safetensors")
    ckpt.save(tmp_path / "step_7.safetensors", {"w": np.zeros(2)})  # no step metadata: fine
    foreign = tmp_path / "emergency_step_8.safetensors"
    foreign.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")  # a plain safetensors file
    result = ckpt.reconcile(tmp_path)
    assert [v.file.step for v in result.valid] == [2, 7]
    reasons = {u.file.path.name: u.reason for u in result.unusable}
    assert "expected 9 (the file name's step), found 2" in reasons["step_9.safetensors"]
    assert "not a trainsvc checkpoint" in reasons["emergency_step_8.safetensors"]
    assert [v.file.checkpoint_id for v in result.added] == ["step_2", "step_7"]


def test_trust_indexed_reads_only_the_files_the_index_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ckpt.CheckpointManager(tmp_path, keep_last=10) as manager:
        for step in (1, 2, 3):
            manager.save(step, state(step), blocking=True)
    flip_middle_byte(tmp_path / "step_2.safetensors")  # indexed: trusted, not read
    flip_middle_byte(tmp_path / "step_3.safetensors")  # not indexed: verified
    calls: list[str] = []
    real_verify = _manager.verify

    def counting_verify(path: Any, **kwargs: Any) -> Any:
        calls.append(Path(path).name)
        return real_verify(path, **kwargs)

    monkeypatch.setattr(_manager, "verify", counting_verify)
    result = ckpt.reconcile(tmp_path, ["step_1", "step_2", "step_9"], trust_indexed=True)
    assert calls == ["step_3.safetensors"]
    assert [v.file.step for v in result.valid] == [1, 2]
    assert [u.file.step for u in result.unusable] == [3]
    assert result.added == () and result.removed == ("step_9",)


def test_a_missing_directory_has_no_checkpoints(tmp_path: Path) -> None:
    result = ckpt.reconcile(tmp_path / "gone", ["step_5"])
    assert result.valid == () and result.newest is None and result.removed == ("step_5",)


def test_the_manager_reverifies_only_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = ckpt.CheckpointManager(tmp_path, compression="zstd")
    manager.save(1, state(1))
    manager.save(2, state(2))
    first = manager.reconcile(["step_1"])
    assert [v.file.step for v in first.valid] == [1, 2] and first.removed == ()
    calls: list[Path] = []
    real_verify = _manager.verify

    def counting_verify(path: Any, **kwargs: Any) -> Any:
        calls.append(Path(path))
        return real_verify(path, **kwargs)

    monkeypatch.setattr(_manager, "verify", counting_verify)
    assert [v.file.step for v in manager.reconcile().valid] == [1, 2]
    assert calls == []  # written (and so checked) by this manager, unchanged since
    damaged = tmp_path / "step_2.safetensors.zst"
    flip_middle_byte(damaged)
    os.utime(damaged, ns=(1, 1))  # a different mtime, as any later write gives
    result = manager.reconcile()
    assert calls == [damaged]
    assert [v.file.step for v in result.valid] == [1]
    assert [u.file.path for u in result.unusable] == [damaged]
    manager.close()
