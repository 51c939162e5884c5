"""The lora kind in launch configs: its files checked on disk, its LoRA spec, the backend on a Mac."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from trainsvc_launchers._cli import main
from trainsvc_launchers._config import ConfigError, load_launch_config
from trainsvc_launchers._lm import input_dirs, lm_backend
from trainsvc_launchers._service import serve_command


def _model_dir(root: Path, *, sharded: bool = True) -> Path:
    """A model directory with the files preflight looks for (contents are not read)."""
    model = root / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}", encoding="utf-8")
    (model / "tokenizer.json").write_text("{}", encoding="utf-8")
    if sharded:
        index = {
            "weight_map": {
                "a": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors",
            }
        }
        (model / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
        for name in set(index["weight_map"].values()):
            (model / name).write_bytes(b"")
    else:
        (model / "model.safetensors").write_bytes(b"")
    return model


def _config(root: Path, lora: str, name: str = "run.toml") -> Path:
    path = root / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'kind = "lora"\nrun_id = "lm"\nstep_budget = 20\n[lora]\n{lora}', encoding="utf-8"
    )
    return path


def test_relative_paths_are_read_from_the_config_folder_and_the_service_may_read_them(
    tmp_path: Path,
) -> None:
    model = _model_dir(tmp_path / "configs")
    data = tmp_path / "configs" / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n", encoding="utf-8")
    cfg = load_launch_config(
        _config(
            tmp_path,
            'model = "models/tiny"\ntrain_file = "data/train.jsonl"\nrank = 16\n[lora.optim]\nwarmup_steps = 2\n',
        )
    )
    assert cfg.kind == "lora"
    assert cfg.trainer["model"] == str(model) and cfg.trainer["optim"] == {"warmup_steps": 2}
    assert input_dirs(cfg.trainer) == [model, data]
    argv = serve_command(5000, tmp_path / "d", input_dirs(cfg.trainer))
    assert argv[-4:] == ["--input-dir", str(model), "--input-dir", str(data)]


def test_missing_files_are_named_field_by_field(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "configs")
    (model / "tokenizer.json").unlink()
    (model / "model-00002-of-00002.safetensors").unlink()
    path = _config(tmp_path, 'model = "models/tiny"\nvalidation_file = "nope.jsonl"\n')
    with pytest.raises(ConfigError) as info:
        load_launch_config(path)
    messages = [str(e) for e in info.value.errors]
    assert "lora.train_file: is required" in messages
    assert any(m.startswith("lora.model:") and "no tokenizer.json" in m for m in messages)
    assert any("model-00002-of-00002.safetensors" in m and "missing" in m for m in messages)
    assert any(m.startswith("lora.validation_file:") and "nope.jsonl" in m for m in messages)

    bare = tmp_path / "configs" / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}", encoding="utf-8")
    (bare / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="no weights"):
        load_launch_config(_config(tmp_path, 'model = "bare"\ntrain_file = "run.toml"\n', "b.toml"))


def test_the_lora_spec_is_checked_by_trainsvc_lm(tmp_path: Path) -> None:
    lm = pytest.importorskip("trainsvc_lm")
    if not hasattr(lm, "LoraConfig"):
        pytest.skip("trainsvc_lm does not export LoraConfig yet")
    _model_dir(tmp_path / "configs", sharded=False)
    (tmp_path / "configs" / "t.jsonl").write_text("{}\n", encoding="utf-8")
    base = 'model = "models/tiny"\ntrain_file = "t.jsonl"\n'
    with pytest.raises(ConfigError) as info:
        load_launch_config(_config(tmp_path, base + "rank = 4\n"))
    assert [e.field for e in info.value.errors] == ["lora.rank"]
    assert "[8, 64]" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_launch_config(_config(tmp_path, base + '[lora.lora]\ntarget_modules = ["q_proj"]\n'))
    assert [e.field for e in info.value.errors] == ["lora.lora.target_modules"]
    assert (
        load_launch_config(_config(tmp_path, base + "rank = 8\nalpha = 16\n")).trainer["rank"] == 8
    )


def _fake_python(tmp_path: Path, answer: str) -> str:
    """An executable that answers the backend probe like a Python with (or without) Metal."""
    script = tmp_path / f"python-{answer}"
    script.write_text(f"#!/bin/sh\necho {answer}\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_backend_is_mlx_only_with_a_metal_gpu(tmp_path: Path) -> None:
    assert lm_backend(_fake_python(tmp_path, "True")).name == "mlx"
    assert lm_backend(_fake_python(tmp_path, "False")).name == "jax-cpu"
    assert lm_backend(str(tmp_path / "no-python")).name == "jax-cpu"
    # The run's train.backend wins over the probe.
    assert lm_backend(_fake_python(tmp_path, "True"), setting="jax").name == "jax-cpu"
    assert lm_backend(_fake_python(tmp_path, "False"), setting="mlx").name == "mlx-cpu"
    assert lm_backend(str(tmp_path / "no-python"), setting="mlx").name == "none"


def test_preflight_m4_reports_the_backend_that_will_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _model_dir(tmp_path / "configs", sharded=False)
    (tmp_path / "configs" / "t.jsonl").write_text("{}\n", encoding="utf-8")
    cfg = _config(tmp_path, 'model = "models/tiny"\ntrain_file = "t.jsonl"\n')
    args = [
        "preflight",
        "--target",
        "m4",
        "--config",
        str(cfg),
        "--data-dir",
        str(tmp_path),
        "--json",
    ]
    assert main(args) == 1  # this machine is not a Mac
    checks = {c["check"]: c for c in map(json.loads, capsys.readouterr().out.splitlines())}
    assert checks["config"]["level"] == "success"
    # This machine's mlx is the CPU build (or absent): JAX on the CPU, said as a warning.
    assert checks["backend"]["level"] == "warning"
    assert "JAX on the CPU" in checks["backend"]["message"]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_local_launch_trains_a_lora_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`trainsvc-launch local` with kind lora: the service may read the model and data, the run trains."""
    lm = pytest.importorskip("trainsvc_lm")
    pytest.importorskip("trainsvc")
    folder = tmp_path / "configs"
    lm.init_tiny(folder / "tiny", "llama", seed=0)
    turn = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    (folder / "chat.jsonl").write_text(f"{turn}\n{turn}\n", encoding="utf-8")
    cfg = _config(
        tmp_path,
        'model = "tiny"\ntrain_file = "chat.jsonl"\nrank = 8\nalpha = 16\nmax_seq_len = 32\n'
        "batch_size = 1\n[lora.log]\nsample_max_tokens = 4\n",
    )
    cfg.write_text(
        cfg.read_text(encoding="utf-8").replace("step_budget = 20", "step_budget = 1000000")
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = f"trainsvc-test-{uuid.uuid4().hex[:8]}"
    try:
        code = main(
            [
                *("local", "--config", str(cfg), "--data-dir", str(tmp_path / "data")),
                *("--logs-dir", str(tmp_path / "logs"), "--port", str(port), "--tmux-socket", sock),
                *("--watch-steps", "10", "--watch-timeout", "300"),
            ]
        )
        out = capsys.readouterr().out
        assert code == 0, out
        assert "run lm passed step" in out
        log = next((tmp_path / "logs").iterdir()).read_text(encoding="utf-8")
        assert "created run lm (lora, 1000000 steps)" in log
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, check=False)
