"""Data-parallel `lora` and `grpo` training: 2 real ``trainsvc-lm`` processes on localhost.

Each test launches 2 processes (gloo collectives over TCP on CPU) and, meanwhile, the
single-process run of the same global batch in this process, then:

- lora: kill -9 of one process after a checkpoint -> the other exits 1 at once naming
  the cause; both relaunched with ``--resume`` continue from the newest checkpoint
  and finish equal to the single-process run; one process restores the result;
- grpo: SIGTERM to one process -> both stop after the same step with one emergency
  checkpoint, equal to the single-process run's at that step (the per-step sampled
  rewards identical); one process resumes it and ends equal to the single run.

Equal: step, data position, PRNG key, optimizer counts and tokens counted exactly,
adapters / parameters and optimizer state within the tolerances below.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainsvc_checkpoint import CheckpointManager, load
from trainsvc_lm._cli import main
from trainsvc_lm._grpo import GRPOTrainer
from trainsvc_lm._grpo_config import GRPOConfig
from trainsvc_lm._train import LoRATrainer
from trainsvc_lm._train_config import LMTrainConfig
from trainsvc_lm._train_log import JsonlMetrics

pytestmark = pytest.mark.slow(45)

LORA_RTOL, LORA_ATOL = 1e-5, 1e-6
"""LoRA, 2 processes vs 1: XLA sums the global batch in another order (within each
process, then across), so float32 values differ in the last bits (measured after 16
steps: at most 6.2e-7 absolute)."""

GRPO_RTOL, GRPO_ATOL = 1e-4, 3e-5
"""GRPO, 2 processes vs 1: the same reordered sums, then amplified by Adam where a
gradient is near 0 (m / sqrt(v) turns a last-bit difference of a tiny gradient into a
visible fraction of one step of lr 2e-3; measured: at most 2.5e-7 absolute after 7
steps here, 6e-6 after 6 steps of sort4). The sampled completions, and so the rewards,
are identical."""

TIMEOUT = 480  # seconds a launch may take (JAX start-up on 2 cores at load 30); a hang fails


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: Sequence[str], logs: Path, tag: str) -> list[subprocess.Popen[str]]:
    """Starts the 2 processes of a data-parallel run; output in ``<logs>/<tag>-<i>.log``."""
    port = _free_port()
    # the relaunch reuses the first launch's compiled programs
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(logs / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    procs = []
    for i in range(2):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        flags += ["--process-id", str(i), "--distributed-timeout", "30"]
        command = [sys.executable, "-m", "trainsvc_lm._cli", *args, *flags]
        with (logs / f"{tag}-{i}.log").open("w") as out:
            procs.append(subprocess.Popen(command, stdout=out, stderr=out, text=True, env=env))
    return procs


def _wait(procs: Sequence[subprocess.Popen[str]], timeout: float = TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"a process hung past {timeout} s") from None
    return codes


def _wait_for(path: Path, procs: Sequence[subprocess.Popen[str]]) -> None:
    """Waits until ``path`` exists while every process runs."""
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert all(p.poll() is None for p in procs), f"a process ended before {path.name}"
        assert time.monotonic() < deadline, f"no {path.name} after {TIMEOUT} s"
        time.sleep(0.02)


def _summary(log: Path) -> dict[str, Any]:
    """The ``--json`` summary line of a process's output."""
    lines = [line for line in log.read_text().splitlines() if line.startswith('{"')]
    assert lines, log.read_text()
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def _flags(settings: dict[str, Any]) -> list[str]:
    return [part for k, v in settings.items() for part in (f"--{k}", str(v))]


def _flat(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A checkpoint's arrays by path (``/lora/...``) and its meta."""
    tree = load(path)
    flat: dict[str, np.ndarray] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(node, list | tuple):
            for k, v in enumerate(node):
                walk(f"{prefix}/{k}", v)
        else:
            flat[prefix] = np.asarray(node)

    walk("", {k: v for k, v in tree.items() if k != "meta"})
    return flat, json.loads(tree["meta"])


def _assert_close(single: Path, dp: Path, rtol: float, atol: float) -> dict[str, Any]:
    """Compares two checkpoints (counts and keys exactly, the rest within rtol/atol);
    returns the data-parallel one's meta."""
    one, one_meta = _flat(single)
    two, two_meta = _flat(dp)
    assert one.keys() == two.keys()
    for name, value in one.items():
        if name.startswith("/prng_key") or name.endswith("/count"):
            np.testing.assert_array_equal(two[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(two[name], value, rtol=rtol, atol=atol, err_msg=name)
    for key in ("step", "data_position", "tokens_seen", "tokens_sampled"):
        assert two_meta.get(key) == one_meta.get(key), key
    for section, table in one_meta["config"].items():
        if section != "log":  # the relaunch added train.resume_from = "latest"
            theirs = dict(two_meta["config"][section])
            theirs.update({k: v for k, v in table.items() if k == "resume_from"})
            assert theirs == table, section
    return two_meta


def _write_chats(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            messages = [
                {"role": "user", "content": f"what is {i} plus one?"},
                {"role": "assistant", "content": f"{i} plus one is {i + 1}."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def test_lora_two_processes_train_like_one_and_resume_after_kill_9(
    tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    steps = 16
    model, chats = tiny_model("llama"), _write_chats(tmp_path / "train.jsonl", 24)
    settings: dict[str, Any] = {
        "data.max_seq_len": 64,
        "data.batch_size": 4,  # the global batch: 2 rows per process
        "lora.dropout": 0.1,  # dropout masks drawn for the global batch
        "optim.lr": 1e-2,
        "optim.warmup_steps": 1,
        "optim.grad_accum": 2,
        "log.save_interval": 2,
        "log.keep_last": 100,
        "log.eval_interval": 0,
        "log.sample_interval": 0,
        "log.frame_interval": 0,
    }
    dp_dir = tmp_path / "dp"
    args = ["train", "--model", str(model), "--train", str(chats), "--steps", str(steps)]
    args += ["--out", str(dp_dir), "--json", *_flags(settings)]
    started = time.monotonic()
    procs = _spawn(args, tmp_path, "first")
    # meanwhile, the single-process run of the same global batch, in this process
    named = {"model.dir": str(model), "data.train": str(chats), "train.steps": steps}
    single = LMTrainConfig().replace(
        {**settings, **named, "log.checkpoint_dir": str(tmp_path / "one")}
    )
    one = LoRATrainer(single)
    assert one._dp is None
    one.run()
    one.close()

    _wait_for(dp_dir / "step_2.safetensors", procs)
    procs[1].kill()
    killed = time.monotonic()
    assert _wait(procs[:1], timeout=60) == [1]
    print(f"the survivor exited {time.monotonic() - killed:.2f} s after the kill")
    _wait(procs[1:])
    survivor = _summary(tmp_path / "first-0.log")
    assert survivor["status"] == "error"
    assert "another process probably died" in survivor["error"], survivor
    assert "--resume" in survivor["error"]
    newest = max(CheckpointManager(dp_dir).steps())
    assert 2 <= newest < steps

    print(f"first 2-process launch: {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    procs = _spawn([*args, "--resume"], tmp_path, "again")
    assert _wait(procs) == [0, 0], [(tmp_path / f"again-{i}.log").read_text() for i in (0, 1)]
    print(f"relaunch: {time.monotonic() - started:.1f} s")
    log = (tmp_path / "again-0.log").read_text()
    assert f"resumed from {dp_dir / f'step_{newest}.safetensors'} at step {newest}" in log
    assert (dp_dir / "adapter" / "adapter_model.safetensors").is_file()  # process 0's
    assert _summary(tmp_path / "again-1.log")["step"] == steps

    path = dp_dir / f"step_{steps}.safetensors"
    meta = _assert_close(tmp_path / "one" / f"step_{steps}.safetensors", path, LORA_RTOL, LORA_ATOL)
    assert meta["data_position"] == one.position.to_dict()
    # training moved the adapters' B matrices (initialised at 0) far beyond the tolerance
    lora, _ = _flat(path)
    assert max(np.abs(v).max() for k, v in lora.items() if k.endswith("/b")) > 1e3 * LORA_ATOL

    # a single process restores the data-parallel checkpoint and trains on
    again = LoRATrainer(single.replace({"train.steps": steps + 1}))
    assert again.restore(path) == path
    assert (again.step_count, again.position) == (steps, one.position)
    again.run()
    assert again.step_count == steps + 1
    again.close()


def test_grpo_two_processes_train_like_one_and_sigterm_stops_both(tmp_path: Path) -> None:
    steps = 12
    settings: dict[str, Any] = {
        "data.task": "increment4",
        "model.hidden_size": 32,
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.intermediate_size": 64,
        "grpo.group_size": 4,
        "grpo.prompts_per_step": 4,  # the global batch: 2 groups sampled by each process
        "log.save_interval": 2,
        "log.keep_last": 100,
        "log.log_interval": 1,
        "log.eval_interval": 0,
        "log.sample_interval": 0,
        "log.frame_interval": 0,
    }
    dp_dir = tmp_path / "dp"
    args = ["grpo", "--out", str(dp_dir), "--steps", str(steps), "--json", *_flags(settings)]
    started = time.monotonic()
    procs = _spawn(args, tmp_path, "dp")
    # meanwhile, the single-process run (a checkpoint at every step), in this process
    single = GRPOConfig().replace(
        {
            **settings,
            "train.steps": steps,
            "log.checkpoint_dir": str(tmp_path / "one"),
            "log.save_interval": 1,
        }
    )
    one = GRPOTrainer(single, sinks=[JsonlMetrics(tmp_path / "one.jsonl")])
    one.run()
    one.close()

    _wait_for(dp_dir / "step_6.safetensors", procs)
    procs[1].send_signal(signal.SIGTERM)
    assert _wait(procs, timeout=60) == [1, 1]
    print(f"2-process launch: {time.monotonic() - started:.1f} s")
    summaries = [_summary(tmp_path / f"dp-{i}.log") for i in (0, 1)]
    assert [s["status"] for s in summaries] == ["interrupted", "interrupted"]
    stopped = summaries[0]["step"]
    assert summaries[1]["step"] == stopped
    assert 6 <= stopped < steps
    emergency = dp_dir / f"emergency_step_{stopped}.safetensors"
    assert summaries[0]["emergency_checkpoint"] == str(emergency)
    assert sorted(p.name for p in dp_dir.glob("emergency_*")) == [emergency.name]
    assert "stopped by another process" in (tmp_path / "dp-0.log").read_text()

    _assert_close(tmp_path / "one" / f"step_{stopped}.safetensors", emergency, GRPO_RTOL, GRPO_ATOL)

    # the same completions were sampled at every step: the rewards are equal
    def rewards(path: Path) -> list[tuple[int, float, float]]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [(r["step"], r["metrics"]["reward_mean"], r["metrics"]["groups_kept"]) for r in rows]

    assert rewards(dp_dir / "metrics.jsonl") == rewards(tmp_path / "one.jsonl")[:stopped]

    # a single process resumes the data-parallel run and ends where the single run did
    again = GRPOTrainer(single.replace({"log.checkpoint_dir": str(tmp_path / "again")}))
    assert again.restore(emergency) == emergency
    assert again.step_count == stopped
    again.run()
    again.close()
    _assert_close(
        tmp_path / "one" / f"step_{steps}.safetensors",
        tmp_path / "again" / f"step_{steps}.safetensors",
        GRPO_RTOL,
        GRPO_ATOL,
    )


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (
            ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
            "coordinator",
        ),
        (["--coordinator", "h:70000", "--num-processes", "2", "--process-id", "0"], "coordinator"),
        (["--coordinator", "h:1234", "--num-processes", "0", "--process-id", "0"], "num_processes"),
        (["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "2"], "process_id"),
        (
            ["--coordinator", "h:1234", "--num-processes", "two", "--process-id", "0"],
            "num_processes",
        ),
        (["--coordinator", "h:1234", "--num-processes", "2"], "process_id"),
        (
            ["--num-processes", "2", "--process-id", "1", "--distributed-timeout", "0"],
            "coordinator",
        ),
        (
            [
                "--coordinator",
                "h:1",
                "--num-processes",
                "2",
                "--process-id",
                "1",
                "--distributed-timeout",
                "0",
            ],
            "timeout_s",
        ),
    ],
)
def test_bad_distributed_flags_name_the_field(
    flags: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["train", "--model", "m", "--train", "t.jsonl"], ["grpo"]):
        assert main([*command, *flags, "--json"]) == 1
        out = json.loads(capsys.readouterr().out)
        assert out["field"] == f"distributed.{field}", out


def test_the_batch_must_split_evenly(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"]
    cases = [
        (
            ["train", "--model", "m", "--train", "t.jsonl", "--data.batch-size", "3"],
            "data.batch_size",
        ),
        (["grpo", "--grpo.prompts-per-step", "5"], "grpo.prompts_per_step"),
    ]
    for command, field in cases:
        assert main([*command, *flags, "--json"]) == 1
        out = json.loads(capsys.readouterr().out)
        assert out["field"] == field
        assert "divisible by distributed.num_processes (2)" in out["error"]
