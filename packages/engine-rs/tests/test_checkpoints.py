"""Engine checkpoints in the shared format: both directions with trainsvc_checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
import trainsvc_engine as te

SMALL = {"pattern_set": "small", "n_phases": 2, "batch_games": 32, "threads": 1}


def _trained(tmp_path: Path) -> tuple[te.TrainingManager, te.Evaluator]:
    m = te.TrainingManager(tmp_path / "run", **SMALL)
    m.start(256, checkpoint_interval=0)
    assert m.wait(timeout=120) is not None
    return m, m.evaluator()


@pytest.mark.parametrize("compress", [False, True])
def test_the_python_library_reads_engine_checkpoints(tmp_path: Path, compress: bool) -> None:
    m, ev = _trained(tmp_path)
    cm = te.CheckpointManager(tmp_path / "ck", compress=compress)
    info = cm.save(m)
    assert info.step == 256 and info.size > 0 and info.seconds >= 0
    assert info.path.endswith(".safetensors.zst" if compress else ".safetensors")
    tree, meta = ckpt.load_with_info(info.path)
    assert meta.metadata["trainer"] == "othello" and meta.metadata["step"] == 256
    weights = tree["weights"]
    assert weights.dtype == np.float32 and weights.shape[0] == 2
    flat = [w for p in ev.pattern_names for ph in range(2) for w in ev.weights(p, ph)]
    # The weights tensor is phase-major: phase 0's tables, bias, then phase 1's.
    expected = np.concatenate(
        [
            np.array(
                [w for p in ev.pattern_names for w in ev.weights(p, ph)] + ev.weights("bias", ph)
            )
            for ph in range(2)
        ]
    )
    assert np.array_equal(weights.reshape(-1), expected.astype(np.float32))
    assert len(flat) == weights.size - 2
    assert tree["stats"]["games"] == 256
    assert tree["opt_state"]["m"].shape == weights.shape
    ckpt.verify(info.path)


def test_the_engine_reads_checkpoints_written_by_the_python_library(tmp_path: Path) -> None:
    m, ev = _trained(tmp_path)
    src = te.CheckpointManager(tmp_path / "ck").save(m).path
    tree, info = ckpt.load_with_info(src)
    # Change one weight in Python and write it back with the Python writer.
    tree["weights"][1, 5] = 0.75
    dst = tmp_path / "py.safetensors"
    ckpt.save(dst, tree, metadata=info.metadata)
    ev2 = te.Evaluator(dst)
    assert ev2.weights("corner3x3", 1)[5] == 0.75
    assert ev2.weights("corner3x3", 0) == ev.weights("corner3x3", 0)
    # Byte-identical: the Python writer reproduces the Rust writer's file from its content.
    resaved = tmp_path / "again.safetensors"
    ckpt.save(resaved, ckpt.load(src), metadata=info.metadata)
    assert resaved.read_bytes() == Path(src).read_bytes()


def test_corruption_is_detected_and_latest_falls_back(tmp_path: Path) -> None:
    m, _ = _trained(tmp_path)
    cm = te.CheckpointManager(tmp_path / "ck", keep_last=3)
    first = cm.save(m, step=1)
    second = cm.save(m, step=2)
    data = bytearray(Path(second.path).read_bytes())
    data[-3] ^= 0xFF
    Path(second.path).write_bytes(bytes(data))
    with pytest.raises(te.CorruptCheckpointError, match="CRC32C"):
        cm.verify(second.path)
    latest = cm.load_latest()
    assert latest.step == first.step
    assert latest.warnings and "corrupt" in latest.warnings[0]
    with pytest.raises(te.CheckpointNotFoundError):
        te.Evaluator(tmp_path / "missing.safetensors")


def test_retention_and_debug_diff(tmp_path: Path) -> None:
    m, ev = _trained(tmp_path)
    cm = te.CheckpointManager(tmp_path / "ck", keep_last=2, keep_every=10)
    for step in (5, 10, 15, 20, 25):
        cm.save(m, step=step)
    assert [c.step for c in cm.list()] == [10, 20, 25]
    a = cm.load(tmp_path / "ck" / "step_10.safetensors").evaluator()
    zero = te.Evaluator(pattern_set="small", n_phases=2)
    rows = te.Debug.checkpoint_diff(zero, a)
    assert {r["pattern"] for r in rows} == {"corner3x3", "edge2x", "diag8"}
    assert max(r["max_abs_change"] for r in rows) > 0
    assert te.Debug.anomalies(a, a) == []
    replay = te.Debug.replay(ev, seed=1)
    assert replay[0]["ply"] == 0 and {"td_error", "lambda_target", "value"} <= set(replay[0])
    n = te.Debug.export_csv(replay, tmp_path / "replay.csv")
    assert n == len(replay) and (tmp_path / "replay.csv").read_text().startswith("ply,")
