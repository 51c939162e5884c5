"""Demo of trainsvc-checkpoint: save a training state, detect corruption, fall back.

1. A toy training loop saves a small state (params, an Adam-like optimizer
   NamedTuple, a bfloat16 array, Python scalars) every step with
   CheckpointManager (asynchronous saves, keep the last 3).
2. A copy of the newest checkpoint gets one byte flipped: loading it raises a
   CorruptCheckpointError that names the damaged tensor.
3. The newest checkpoint in the run directory is damaged the same way:
   ``restore()`` warns and falls back to the previous valid checkpoint.

Run: ``make run`` or ``uv run --no-sync python examples/checkpoint_demo.py [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import trainsvc_checkpoint as ckpt


class AdamState(NamedTuple):
    count: np.ndarray
    mu: dict[str, np.ndarray]
    nu: dict[str, np.ndarray]


def initial_state() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    params = {
        "dense_0": {
            "kernel": rng.standard_normal((4, 8), dtype=np.float32),
            "bias": np.zeros(8, np.float32),
        }
    }
    zeros = {"kernel": np.zeros((4, 8), np.float32)}
    return {
        "params": params,
        "opt_state": AdamState(
            np.array(0, np.int32), dict(zeros), {"kernel": np.zeros((4, 8), np.float32)}
        ),
        "embeddings": np.ones((2, 3), ml_dtypes.bfloat16),
        "lr": 1e-3,
        "step": 0,
    }


def train_step(state: dict[str, Any]) -> None:
    """Pretend to train: change the arrays in place, as a real loop would."""
    state["params"]["dense_0"]["kernel"] *= 0.9
    state["params"]["dense_0"]["bias"] += 0.1
    state["opt_state"].count[...] += 1
    state["step"] += 1


def flip_a_byte(path: Path) -> None:
    """Flip one bit in the last byte of the file (tensor data)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="run directory to use (default: a temporary one)")
    args = parser.parse_args(argv)
    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="trainsvc-ckpt-demo-")
    run_dir = args.dir or Path(tmp.name if tmp else ".")
    if args.dir and run_dir.exists():
        shutil.rmtree(run_dir)
    try:
        print(f"== 1. training 5 steps, saving every step (async) into {run_dir}")
        manager = ckpt.CheckpointManager(run_dir, keep_last=3)
        state = initial_state()
        saved_biases = {}
        for _ in range(5):
            train_step(state)
            manager.save(state["step"], state, metadata={"run": "demo", "lr": state["lr"]})
            saved_biases[state["step"]] = state["params"]["dense_0"]["bias"][0].item()
        manager.wait()
        for c in manager.checkpoints():
            info = ckpt.verify(c.path)
            print(
                f"   {c.path.name:<24} {c.path.stat().st_size:>6} bytes  {len(info.tensors)} tensors  metadata={json.dumps(info.metadata)}"
            )
        print(
            f"   latest -> {(run_dir / 'latest').read_text().strip()}   (keep_last=3 deleted steps 1-2)"
        )

        print("\n== 2. a damaged copy is refused with a clear error")
        copy = run_dir.parent / f"{run_dir.name}-damaged-copy.safetensors"
        shutil.copy(run_dir / "step_5.safetensors", copy)
        flip_a_byte(copy)
        try:
            ckpt.load(copy)
        except ckpt.CorruptCheckpointError as exc:
            print(f"   CorruptCheckpointError: {exc}")
        finally:
            copy.unlink()

        print("\n== 3. the newest checkpoint is damaged: restore() falls back to the previous one")
        flip_a_byte(run_dir / "step_5.safetensors")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored = ckpt.CheckpointManager(run_dir).restore_checkpoint()
        for w in caught:
            print(f"   warning: {w.message}")
        bias = restored.tree["params"]["dense_0"]["bias"][0].item()
        opt = restored.tree["opt_state"]
        print(
            f"   restored step {restored.step} from {restored.path.name}: bias[0]={bias:.1f} "
            f"(saved {saved_biases[restored.step]:.1f}), {type(opt).__name__}(count={int(opt.count)}), "
            f"embeddings dtype {restored.tree['embeddings'].dtype}, metadata {restored.metadata}"
        )
        assert bias == saved_biases[restored.step] and restored.step == 4
        print("\nOK: corruption detected, nothing lost but the damaged file.")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
