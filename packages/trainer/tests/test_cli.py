"""The trainsvc-train CLI as a real subprocess: checkpoints, errors, SIGTERM, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from trainsvc_checkpoint import CheckpointManager, read_info

CLI = [sys.executable, "-m", "trainsvc_trainer._cli"]


def run_cli(args: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False, **kw
    )  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def toml(make_toml: Callable[..., str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(make_toml())
    return path


def test_save_interval_leaves_five_checkpoints(toml: Path, tmp_path: Path) -> None:
    # The issue's `--train.total-steps 1000 --log.save-interval 200`, scaled down by 100.
    proc = run_cli(
        ["--config", str(toml), "--train.total-steps", "10", "--log.save-interval", "2"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for step in (2, 4, 6, 8, 10):
        path = Path("checkpoints") / f"step_{step}.safetensors"
        assert f"Checkpoint saved: step {step} → {path}" in out
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.safetensors"))
    assert len(names) == 5
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_10.safetensors\n"
    lines = (tmp_path / "checkpoints" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 11))
    info = read_info(tmp_path / "checkpoints" / "step_10.safetensors")
    assert info.metadata["step"] == 10 and info.metadata["config"]["train"]["total_steps"] == 10


def test_keep_every_and_compression_reach_the_checkpoint_manager(
    toml: Path, tmp_path: Path
) -> None:
    args = ["--train.total-steps", "10", "--log.save-interval", "2", "--log.keep-last", "1"]
    args += ["--log.keep-every", "4", "--log.compression", "zstd"]
    proc = run_cli(["--config", str(toml), *args], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for step in (2, 4, 6, 8, 10):
        path = Path("checkpoints") / f"step_{step}.safetensors.zst"
        assert f"Checkpoint saved: step {step} → {path}" in proc.stdout
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [
        "latest",
        "metrics.jsonl",
        "step_10.safetensors.zst",
        "step_4.safetensors.zst",
        "step_8.safetensors.zst",
    ]
    info = read_info(tmp_path / "checkpoints" / "step_10.safetensors.zst")
    assert info.metadata["config"]["log"]["keep_every"] == 4


@pytest.mark.parametrize(
    ("args", "field", "words"),
    [
        (["--train.total-steps", "0"], "train.total_steps", "in [1, 1000000000]"),
        (["--train.total-steps", "ten"], "train.total_steps", "integer"),
        (["--log.frame-interval", "-3"], "log.frame_interval", "in [0, 1000000000]"),
        (["--env.diffusion", "1.5"], "env.diffusion", "in [0, 1]"),
        (["--log.keep-every", "x"], "log.keep_every", "integer in [1, 1000000000] or null"),
    ],
)
def test_bad_flags_name_the_field(args: list[str], field: str, words: str, tmp_path: Path) -> None:
    proc = run_cli(["--json", *args], tmp_path)
    assert proc.returncode == 1
    assert field in proc.stderr and words in proc.stderr
    assert json.loads(proc.stdout)["field"] == field
    assert not (tmp_path / "checkpoints").exists()


def test_bad_toml_field_and_missing_resume_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 5.0\n")
    proc = run_cli(["--config", str(bad)], tmp_path)
    assert (
        proc.returncode == 1
        and "train.learning_rate" in proc.stderr
        and "[1e-07, 1]" in proc.stderr
    )
    proc = run_cli(["--train.resume-from", "nope.safetensors"], tmp_path)
    assert proc.returncode == 1 and "train.resume_from" in proc.stderr


def test_help_lists_the_flags(tmp_path: Path) -> None:
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0
    for flag in (
        "--train.total-steps",
        "--train.resume-from",
        "--log.save-interval",
        "--log.frame-interval",
        "--log.checkpoint-dir",
        "--wandb",
        "--no-wandb",
        "--json",
    ):
        assert flag in proc.stdout


def test_sigterm_leaves_an_emergency_checkpoint_that_resumes(toml: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    args = ["--config", str(toml), "--log.checkpoint-dir", str(ckpt), "--log.save-interval", "0"]
    proc = subprocess.Popen(
        [*CLI, *args, "--train.total-steps", "1000000000", "--json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = ckpt / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    summary = json.loads(out)
    assert summary["status"] == "interrupted"
    step = summary["step"]
    emergency = ckpt / f"emergency_step_{step}.safetensors"
    assert summary["emergency_checkpoint"] == str(emergency) and emergency.exists()
    assert "Emergency checkpoint saved" in err
    assert CheckpointManager(ckpt).latest_step() == step
    # Resume from it: the run continues from that step, to a new total.
    total = step + 3
    proc2 = run_cli(
        [*args, "--train.resume-from", "latest", "--train.total-steps", str(total), "--json"],
        tmp_path,
    )
    assert proc2.returncode == 0, proc2.stderr
    assert f"Resumed from {emergency} at step {step}" in proc2.stderr
    assert json.loads(proc2.stdout)["step"] == total
    assert (ckpt / f"step_{total}.safetensors").exists()


def test_resume_latest_with_no_checkpoint_starts_fresh(toml: Path, tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = run_cli(
        [
            "--config",
            str(toml),
            "--train.resume-from",
            "latest",
            "--train.total-steps",
            "2",
            "--json",
        ],
        tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "starting from step 0" in proc.stderr and json.loads(proc.stdout)["checkpoints"] == [2]


@pytest.mark.parametrize(
    ("flag", "on"), [("--wandb", True), ("--log.wandb", True), ("--no-wandb", False)]
)
def test_wandb_takes_its_short_flag_and_its_field_flag(flag: str, on: bool) -> None:
    from trainsvc_trainer._cli import build_parser, resolve_config

    config, explicit = resolve_config(build_parser().parse_args([flag]))
    assert config.log.wandb is on and explicit["log.wandb"] is on
