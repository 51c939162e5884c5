"""The Kaggle bootstrapper, run locally in a directory laid out like Kaggle's (input/, working/).

It needs the real service and trainer (run workers are real processes). The
first session gets a wall-clock budget that ends it early; the second session
takes the first one's output as its input, as Kaggle mounts a previous kernel's
output, and continues from its checkpoint to the step budget. The result must
equal one uninterrupted run, and W&B (offline) must keep one run id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainsvc_launchers._config import load_launch_config
from trainsvc_launchers._kaggle_kernel import BOOTSTRAP_FILE, KaggleSpec, build_kernel_folder

pytestmark = pytest.mark.slow(40)

pytest.importorskip("trainsvc")
pytest.importorskip("trainsvc_trainer")
ckpt = pytest.importorskip("trainsvc_checkpoint")

CONFIG = """
kind = "emergence"
run_id = "boot-run"
seed = 7
step_budget = {budget}

[checkpoint]
interval_steps = 500
keep_last = 2

[emergence.env]
height = 8
width = 8
n_agents = 2
n_envs = 2

[emergence.train]
rollout_length = 4

[kaggle]
owner = "tester"
slug = "boot-demo"
packages = ["trainsvc"]
wandb = {wandb}
"""


def _start(
    tmp: Path, name: str, budget_s: float, inputs: dict[str, Path], steps: int, wandb: bool
) -> tuple[subprocess.Popen[str], Path]:
    cfg_path = tmp / f"{name}.toml"
    cfg_path.write_text(CONFIG.format(budget=steps, wandb=str(wandb).lower()), encoding="utf-8")
    cfg = load_launch_config(cfg_path)
    spec = KaggleSpec.from_dict(cfg.kaggle)
    root = tmp / name
    kernel = build_kernel_folder(cfg, spec, 1, root / "kernel")
    (root / "input").mkdir(parents=True)
    for mount, source in inputs.items():
        shutil.copytree(source, root / "input" / mount)
    env = {
        **os.environ,
        "TRAINSVC_KAGGLE_INPUT": str(root / "input"),
        "TRAINSVC_KAGGLE_WORKING": str(root / "working"),
        "TRAINSVC_SESSION_SECONDS": str(budget_s),
        "TRAINSVC_POLL_SECONDS": "0.5",
        # every session compiles cold, so that start-up is alike across sessions: the
        # reference's sets the first session's budget, and a compile cache it warmed would
        # start the first session seconds sooner
        "TRAINSVC_CACHE_DIR": str(root / "jax-cache"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONUTF8": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, str(kernel / BOOTSTRAP_FILE)],
        env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, root


def _finish(proc: subprocess.Popen[str], root: Path) -> dict[str, Any]:
    try:
        stdout, stderr = proc.communicate(timeout=400)
    finally:  # never leave a bootstrapper (and its trainsvc) behind, even on a failed assert
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    status: dict[str, Any] = json.loads(
        (root / "working" / "status.json").read_text(encoding="utf-8")
    )
    status["log"] = stdout
    status["working"] = root / "working"
    return status


def _final_state(working: Path, step: int) -> Any:
    return ckpt.load(
        working / "trainsvc-data" / "runs" / "boot-run" / "checkpoints" / f"step_{step}.safetensors"
    )


def _arrays(tree: Any, path: str = "") -> dict[str, np.ndarray]:
    """Every array leaf of a restored state by its path (the config's file paths differ per run)."""
    if isinstance(tree, dict):
        return {k: v for key in tree for k, v in _arrays(tree[key], f"{path}/{key}").items()}
    if isinstance(tree, list | tuple):
        return {
            k: v for i, item in enumerate(tree) for k, v in _arrays(item, f"{path}/{i}").items()
        }
    if hasattr(tree, "__array__"):
        return {path: np.asarray(tree)}
    return {}


_LOG_LINE = re.compile(r"\[trainsvc-bootstrap \+\s*([0-9.]+)s\] step (\d+)/\d+ \((\w+)")


def _training_window(log: str) -> tuple[float, float]:
    """Seconds since start at which the reference run was first seen training and first seen done."""
    seen = [(float(t), int(step), state) for t, step, state in _LOG_LINE.findall(log)]
    started = min(t for t, step, _ in seen if step > 0)
    done = min(t for t, _, state in seen if state == "COMPLETED")
    return started, done


def test_two_budgeted_sessions_equal_one_uninterrupted_run(tmp_path: Path) -> None:
    steps = 12000  # long enough that training, not start-up (and its jitter), dominates a session
    # The uninterrupted reference runs first: its log says when training started and ended on
    # this machine, so the first session's wall-clock budget can end it halfway, however fast or
    # loaded the machine is (a fixed budget either ends before training starts or after it ends).
    reference = _finish(*_start(tmp_path, "ref", 3600, inputs={}, steps=steps, wandb=False))
    assert reference["step"] == steps
    started, done = _training_window(reference["log"])
    budget_s = started + (done - started) / 2
    for attempt in range(3):
        first = _finish(
            *_start(tmp_path, f"s1-{attempt}", budget_s, inputs={}, steps=steps, wandb=True)
        )
        # The machine's speed can change between runs (other work on it): a session that
        # finished, or ended before training began, is run again with a re-aimed budget.
        if first["reason"] == "completed":
            budget_s = started + (budget_s - started) / 2
        elif first["reason"] == "session_budget" and first["step"] == 0:
            budget_s += (done - started) / 2
        else:
            break
    assert first["reason"] == "session_budget" and first["run_state"] == "PAUSED"
    assert 0 < first["step"] < steps, first["log"]
    second = _finish(
        *_start(tmp_path, "s2", 3600, {"boot-demo-s1": first["working"]}, steps, wandb=True)
    )
    assert f"restored step {first['step']}" in second["log"]
    assert f"resumed runs/boot-run at step {first['step']}" in second["log"]
    assert (
        second["run_state"] == "COMPLETED"
        and second["step"] == steps
        and second["finished"] is True
    )

    chained = _arrays(_final_state(second["working"], steps))
    uninterrupted = _arrays(_final_state(reference["working"], steps))
    assert chained.keys() == uninterrupted.keys() and len(chained) > 3
    for name, array in chained.items():
        np.testing.assert_array_equal(array, uninterrupted[name], err_msg=name)
