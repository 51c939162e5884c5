"""The hand-written stubs match the module (mypy.stubtest); the CLI's front doors work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trainsvc_checkpoint as ckpt
import trainsvc_engine as te


def test_stubs_match_the_compiled_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "trainsvc_engine", "--ignore-missing-stub"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainsvc_engine._cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_of_every_command() -> None:
    for cmd in ([], ["train"], ["evaluate"], ["monitor"]):
        proc = _cli(*cmd, "--help")
        assert proc.returncode == 0 and "usage: trainsvc-othello" in proc.stdout


def test_train_evaluate_and_monitor_as_json(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _cli(
        "train",
        "--dir",
        str(run_dir),
        "--games",
        "512",
        "--callback-interval",
        "128",
        "--checkpoint-interval",
        "256",
        "--threads",
        "2",
        "--target-depth",
        "1",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["games"] == 512 and summary["reason"] == "target"
    latest = max(te.CheckpointManager(run_dir).list(), key=lambda info: info.step)
    assert ckpt.load_with_info(latest.path)[1].metadata["config"]["target_depth"] == 1
    proc = _cli("evaluate", str(run_dir), "--pairs", "20", "--exact-empties", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["depth"], report["exact_empties"]) == (1, 8)
    results = {r["opponent"]: r for r in report["results"]}
    assert results["random"]["games"] == 40 and 0 <= results["heuristic"]["score"] <= 1
    points = json.loads(_cli("monitor", "--dir", str(run_dir), "--json").stdout)
    assert [p["games"] for p in points] == [128, 256, 384, 512]
    view = _cli("monitor", "--dir", str(run_dir), "--once")
    assert view.returncode == 0 and "stone diff" in view.stdout


def test_cli_errors_exit_1_with_a_message(tmp_path: Path) -> None:
    proc = _cli("evaluate", str(tmp_path / "nothing.safetensors"), "--json")
    assert proc.returncode == 1
    assert "CheckpointNotFoundError" in json.loads(proc.stdout)["error"]
    proc = _cli("train", "--dir", str(tmp_path), "--games", "10", "--lambda", "3", "--json")
    assert proc.returncode == 1 and "lambda" in proc.stdout
    assert te.perft(1) == 4


def test_train_preset_sets_its_fields_and_flags_override_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "league"
    proc = _cli(
        "train",
        "--dir",
        str(run_dir),
        "--preset",
        "league",
        "--es-offspring",
        "8",
        "--es-parents",
        "4",
        "--games",
        "4000",
        "--threads",
        "2",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    latest = max(te.CheckpointManager(run_dir).list(), key=lambda info: info.step)
    config = ckpt.load_with_info(latest.path)[1].metadata["config"]
    preset = te.PRESETS["league"]
    overridden = {"es_offspring": 8, "es_parents": 4}
    expected = {**preset, **overridden}
    # es_sigma is an f32 in the engine: 0.1 comes back as 0.10000000149...
    assert config.pop("es_sigma") == pytest.approx(expected.pop("es_sigma"))
    assert {k: config[k] for k in expected} == expected
    assert config["pattern_set"] == "rect2x2" and config["learner"] == "es"
    unknown = _cli("train", "--dir", str(tmp_path / "x"), "--preset", "fastest")
    assert unknown.returncode == 2 and "--preset: invalid choice: 'fastest'" in unknown.stderr
    with pytest.raises(TypeError):
        te.PRESETS["league"]["es_sigma"] = 1.0  # type: ignore[index]
