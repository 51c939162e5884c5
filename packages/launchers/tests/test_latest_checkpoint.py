"""find_latest_checkpoint reads names through trainsvc_checkpoint and skips corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trainsvc_checkpoint as ckpt
from trainsvc_launchers._launch import find_latest_checkpoint


def _save(path: Path, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save(path, {"w": np.full(3, step, np.int64)}, metadata={"step": step})


def test_newest_valid_checkpoint_of_the_run(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "my-run" / "checkpoints"
    _save(run / "step_10.safetensors", 10)
    _save(run / "step_15.safetensors", 15)
    _save(run / "emergency_step_15.safetensors", 15)  # written after step_15: tried first
    (run / "step_20.safetensors").write_bytes(b"\x00" * 64)  # corrupt: skipped
    _save(run / "step_0100.safetensors", 100)  # not a checkpoint name (leading zero)
    _save(run / "step_30.safetensors.tmp", 30)  # not a checkpoint name
    _save(tmp_path / "runs" / "other-run" / "checkpoints" / "step_99.safetensors", 99)
    latest = find_latest_checkpoint(tmp_path, "my-run")
    assert latest is not None
    assert (latest.path.name, latest.step) == ("emergency_step_15.safetensors", 15)
    (run / "emergency_step_15.safetensors").write_bytes(b"garbage")
    latest = find_latest_checkpoint(tmp_path, "my-run")
    assert latest is not None and (latest.path.name, latest.step) == ("step_15.safetensors", 15)


def test_no_checkpoint(tmp_path: Path) -> None:
    assert find_latest_checkpoint(tmp_path / "missing", "my-run") is None
    (tmp_path / "runs" / "my-run").mkdir(parents=True)
    (tmp_path / "runs" / "my-run" / "step_1.safetensors").write_bytes(b"")
    assert find_latest_checkpoint(tmp_path, "my-run") is None
