"""The trainsvc-lm command line: help, exit codes, early errors, train -> export -> generate, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trainsvc_lm._cli import main


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def write_chats(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            messages = [
                {"role": "user", "content": f"say {i}"},
                {"role": "assistant", "content": f"{i} {i} {i}"},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.mark.parametrize(
    "command", ["train", "export-peft", "generate", "init-tiny", "data-report"]
)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: trainsvc-lm " + command in capsys.readouterr().out


def test_usage_and_config_errors_exit_1_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--no-such-flag", "1"])
    assert info.value.code == 1
    code, out = run_json(capsys, "train", "--model", "m", "--train", "t", "--lora.rank", "4")
    assert code == 1 and out["field"] == "lora.rank"
    code, out = run_json(capsys, "train", "--model", "m", "--train", "t", "--optim.lr", "fast")
    assert code == 1 and out["field"] == "optim.lr"
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = 2.0\n")
    code, out = run_json(capsys, "train", "--config", str(bad), "--model", "m", "--train", "t")
    assert code == 1 and out["field"] == "optim.lr"
    code, out = run_json(capsys, "train", "--model", "m")
    assert code == 1 and out["field"] == "data.train"
    targets = "q_proj,k_proj,v_proj,qkv_proj"
    code, out = run_json(
        capsys, "train", "--model", "m", "--train", "t", "--lora.target-modules", targets
    )
    assert code == 1 and out["field"] == "lora.target_modules" and "qkv_proj" in out["error"]


def test_bad_data_and_missing_model_fail_before_training(
    tiny_model: Callable[[str], Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = write_chats(tmp_path / "train.jsonl", 4)
    with data.open("a") as f:
        f.write("{not json\n")
    code, out = run_json(
        capsys,
        "train",
        "--model",
        str(tiny_model("llama")),
        "--train",
        str(data),
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 1 and f"{data}:5" in out["error"]
    assert not (tmp_path / "run").exists()
    code, out = run_json(capsys, "data-report", str(data), "--model", str(tiny_model("llama")))
    assert code == 1 and ":5" in out["error"]
    code, out = run_json(capsys, "generate", "--model", str(tmp_path / "nowhere"), "--prompt", "hi")
    assert code == 1 and "nowhere" in out["error"]


def test_train_resume_export_and_generate_agree(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    code, out = run_json(
        capsys, "init-tiny", str(model), "--family", "qwen3", "--hidden-size", "32"
    )
    assert code == 0 and out["parameters"] > 0 and (model / "config.json").is_file()
    data = write_chats(tmp_path / "train.jsonl", 12)
    code, report = run_json(capsys, "data-report", str(data), "--model", str(model))
    assert code == 0 and report["examples"] == 12
    run = tmp_path / "run"
    common = ["train", "--model", str(model), "--train", str(data), "--out", str(run)]
    common += [
        "--data.max-seq-len",
        "48",
        "--data.batch-size",
        "2",
        "--lora.rank",
        "8",
        "--lora.alpha",
        "16",
    ]
    common += ["--optim.lr", "0.02", "--optim.warmup-steps", "0", "--log.save-interval", "2"]
    common += ["--log.wandb"]  # offline: W&B's own files under the run directory
    code, first = run_json(capsys, *common, "--steps", "2")
    assert code == 0 and first["status"] == "completed" and first["step"] == 2
    # A resumed run keeps its name, whatever name a new run would get now, and its W&B run.
    resume = ["--steps", "4", "--resume", "--log.name", "renamed"]
    code, second = run_json(capsys, *common, *resume)
    assert code == 0 and second["step"] == 4 and second["run_name"] == first["run_name"]
    wandb_runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2, wandb_runs  # one per process, both logging to one run id
    assert len({d.name.rsplit("-", 1)[1] for d in wandb_runs}) == 1, wandb_runs
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]  # each run's last step, one file
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and adapter_cfg["base_model_name_or_path"] == str(model.resolve())

    code, exported = run_json(capsys, "export-peft", str(run), str(tmp_path / "peft"), "--merged")
    assert code == 0 and exported["step"] == 4
    peft = tmp_path / "peft"
    assert (peft / "adapter_model.safetensors").read_bytes() == (
        run / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    gen = ["generate", "--prompt", "say 3", "--max-new-tokens", "6"]
    code, with_adapter = run_json(capsys, *gen, "--model", str(model), "--adapter", str(peft))
    assert code == 0
    code, merged = run_json(capsys, *gen, "--model", str(peft / "merged"))
    assert code == 0 and merged["completion"] == with_adapter["completion"]
    code, base = run_json(capsys, *gen, "--model", str(model))
    assert code == 0 and base["tokens"] >= 1


def test_sigterm_saves_an_emergency_checkpoint_and_exits_1(
    tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    data = write_chats(tmp_path / "train.jsonl", 8)
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "trainsvc_lm._cli", "train", "--model", str(tiny_model("llama"))]
    argv += [
        "--train",
        str(data),
        "--out",
        str(run),
        "--steps",
        "100000",
        "--data.max-seq-len",
        "32",
    ]
    argv += [
        "--log.log-interval",
        "1",
        "--log.save-interval",
        "0",
        "--lora.rank",
        "8",
        "--lora.alpha",
        "16",
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    deadline = time.monotonic() + 240
    metrics = run / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    emergency = list(run.glob("emergency_step_*.safetensors"))
    assert len(emergency) == 1
    assert "stopped by SIGTERM" in stdout
    step = int(emergency[0].name.removeprefix("emergency_step_").removesuffix(".safetensors"))
    assert step >= 2
