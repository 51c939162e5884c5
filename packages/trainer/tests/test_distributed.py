"""Data-parallel training: 2 real ``trainsvc-train`` processes on localhost (gloo on CPU).

- 2 processes with ``env.n_envs = 4`` (2 each) train like 1 process with 4
  environments: parameters and optimizer state allclose (tolerance below), the
  environments identical;
- a single process restores the data-parallel checkpoint;
- kill -9 one process mid-run: the other fails fast with a clear error (no hang);
  relaunching both resumes from the newest checkpoint, steps continuous; SIGTERM to
  one process stops both after the same step, with one emergency checkpoint.
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

import numpy as np
import pytest
from trainsvc_checkpoint import CheckpointManager, load
from trainsvc_trainer import Config, ConfigError, Trainer
from trainsvc_trainer._cli import build_parser, main, resolve_distributed
from trainsvc_trainer._distributed import DistributedConfig

pytestmark = pytest.mark.slow(35)

RTOL, ATOL = 1e-5, 1e-7
"""Distributed vs single process, parameters and optimizer state: XLA sums the global batch
in another order (within each process, then across), so float32 values differ in the last
bits (measured: at most 4e-7 relative, 2e-8 absolute after 6 steps). The environments, the
key and the step count are bitwise equal."""

TIMEOUT = 120  # seconds any process may take; a hang fails the test instead of the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(command: list[str], log: Path) -> subprocess.Popen[str]:
    """Starts ``command`` with its stdout and stderr going to ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)


def _spawn(
    toml: Path, port: int, extra: Sequence[str], logs: Path, tag: str
) -> list[subprocess.Popen[str]]:
    """Starts the 2 processes of a data-parallel run; logs in ``<logs>/<tag>-<i>.log``."""
    procs = []
    for i in range(2):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        flags += ["--process-id", str(i), "--distributed-timeout", "20", *extra]
        command = [sys.executable, "-m", "trainsvc_trainer._cli", "--config", str(toml)]
        procs.append(_start([*command, *flags], logs / f"{tag}-{i}.log"))
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
        time.sleep(0.05)


def _tree(path: Path) -> dict[str, np.ndarray]:
    tree = load(path)
    flat: dict[str, np.ndarray] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(node, list | tuple):
            for k, v in enumerate(node):
                walk(f"{prefix}/{k}", v)
        elif isinstance(node, np.ndarray):
            flat[prefix] = node

    walk("", {k: v for k, v in tree.items() if k != "meta"})
    return flat


def test_two_processes_train_like_one_with_the_same_global_batch(
    make_toml: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path
) -> None:
    steps = 6
    sections = {"env": {"n_envs": 4}, "train": {"total_steps": steps}}
    toml = tmp_path / "dp.toml"
    toml.write_text(make_toml(**sections, log={"checkpoint_dir": str(tmp_path / "dp")}))
    procs = _spawn(toml, _free_port(), [], tmp_path, "dp")
    # meanwhile, the single-process run of the same global batch, in this process
    one = Trainer(make_config(**sections, log={"checkpoint_dir": str(tmp_path / "single")}))
    assert one.data_parallel is None
    one.run()
    one.close()
    codes = _wait(procs)
    assert codes == [0, 0], [(tmp_path / f"dp-{i}.log").read_text() for i in range(2)]

    single = _tree(tmp_path / "single" / f"step_{steps}.safetensors")
    path = tmp_path / "dp" / f"step_{steps}.safetensors"
    dp = _tree(path)
    assert single.keys() == dp.keys()
    for name, value in single.items():
        if name.startswith(("/env", "/prng_key", "/opt_state/1/0/count")):
            np.testing.assert_array_equal(dp[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(dp[name], value, rtol=RTOL, atol=ATOL, err_msg=name)
    # the per-agent biases start at 0: training moved them far beyond the tolerance
    assert np.abs(single["/agent_params/action_bias"]).max() > 1000 * ATOL
    lines = (tmp_path / "dp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, steps + 1))

    # one process restores the data-parallel checkpoint and trains on
    config = Config.from_dict(json.loads(load(path)["meta"])["config"])
    trainer = Trainer(config.replace({"log.checkpoint_dir": str(tmp_path / "one")}))
    assert trainer.restore(path) == path
    assert trainer.step_count == steps
    np.testing.assert_array_equal(trainer.state_dict()["env"]["field"], dp["/env/field"])
    trainer.run(2)
    assert trainer.step_count == steps + 2
    trainer.close()


def test_kill_one_process_then_relaunch_resumes_from_the_newest_checkpoint(
    make_toml: Callable[..., str], tmp_path: Path
) -> None:
    ck = tmp_path / "ck"
    toml = tmp_path / "run.toml"
    toml.write_text(
        make_toml(
            env={"n_envs": 4},
            train={"total_steps": 1_000_000},
            log={"checkpoint_dir": str(ck), "save_interval": 5, "keep_last": 100},
        )
    )
    resume = ["--train.resume-from", "latest", "--json"]
    started = time.monotonic()
    procs = _spawn(toml, _free_port(), resume, tmp_path, "first")
    _wait_for(ck / "step_10.safetensors", procs)
    print(f"step 10 saved {time.monotonic() - started:.1f} s after the start")
    os.kill(procs[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code = _wait(procs[:1], timeout=40)[0]
    failed_after = time.monotonic() - killed_at
    _wait(procs[1:])
    survivor = (tmp_path / "first-0.log").read_text()
    assert code != 0, survivor
    assert failed_after < 40
    print(f"the survivor failed {failed_after:.1f} s after the kill")
    assert "another process probably died" in survivor or "another task died" in survivor, survivor

    # relaunch both: they resume from the newest checkpoint; then SIGTERM to one of them
    # stops both after the same step, with one emergency checkpoint
    newest = max(CheckpointManager(ck).steps())
    assert newest >= 10
    procs = _spawn(toml, _free_port(), resume, tmp_path, "again")
    _wait_for(ck / f"step_{newest + 5}.safetensors", procs)
    procs[1].send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert _wait(procs, timeout=40) == [1, 1]
    print(f"both stopped {time.monotonic() - signalled:.1f} s after SIGTERM")
    logs = [(tmp_path / f"again-{i}.log").read_text() for i in range(2)]
    for log in logs:
        assert f"at step {newest}" in log, log
    summaries = [
        json.loads(next(line for line in log.splitlines() if line.startswith("{"))) for log in logs
    ]
    assert [s["status"] for s in summaries] == ["interrupted", "interrupted"]
    stopped = summaries[0]["step"]
    assert summaries[1]["step"] == stopped > newest + 5 - 1
    emergency = ck / f"emergency_step_{stopped}.safetensors"
    assert summaries[0]["emergency_checkpoint"] == str(emergency)
    assert json.loads(load(emergency)["meta"])["step"] == stopped
    steps = [json.loads(line)["step"] for line in (ck / "metrics.jsonl").read_text().splitlines()]
    assert steps[-(stopped - newest) :] == list(range(newest + 1, stopped + 1))


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (
            ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
            "coordinator",
        ),
        (["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "0"], "coordinator"),
        (["--coordinator", "h:1234", "--num-processes", "0", "--process-id", "0"], "num_processes"),
        (["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "2"], "process_id"),
        (
            ["--coordinator", "h:1234", "--num-processes", "two", "--process-id", "0"],
            "num_processes",
        ),
        (["--coordinator", "h:1234", "--num-processes", "2"], "process_id"),
        (["--num-processes", "2", "--process-id", "1"], "coordinator"),
    ],
)
def test_bad_distributed_flags_name_the_field(flags: list[str], field: str) -> None:
    args = build_parser().parse_args(flags)
    with pytest.raises(ConfigError) as info:
        resolve_distributed(args)
    assert info.value.field == f"distributed.{field}"


def test_envs_must_split_evenly(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"]
    with pytest.raises(SystemExit) as info:
        main([*flags, "--env.n-envs", "3", "--json"])
    assert info.value.code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["field"] == "env.n_envs"
    assert "divisible by distributed.num_processes (2)" in out["error"]
    assert DistributedConfig("[::1]:80", 3, 2).port == 80
