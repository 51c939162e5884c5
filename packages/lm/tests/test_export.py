"""Trainer checkpoints as registry artifacts: a GRPO full run becomes a model directory
whose weights are the trained ones, a LoRA-mode run a PEFT adapter on its base; the
module's command prints the same as JSON; other files are refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from trainsvc_lm import ConfigError, load_model, load_peft
from trainsvc_lm._export import export_artifact
from trainsvc_lm._grpo import GRPOTrainer, groups_from_art
from trainsvc_lm._grpo_config import GRPOConfig

LOG = {"save_interval": 0, "eval_interval": 0, "sample_interval": 0, "frame_interval": 0}


def _leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_full_grpo_run_exports_a_model_directory(tmp_path: Path) -> None:
    config = GRPOConfig.from_dict(
        {
            "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2},
            "data": {"task": "increment4"},
            "grpo": {"group_size": 4, "prompts_per_step": 4},
            "train": {"steps": 2},
            "log": {"checkpoint_dir": str(tmp_path / "run"), **LOG},
        }
    )
    trainer = GRPOTrainer(config)
    trainer.run()
    trainer.save_checkpoint()
    trainer.close()
    art = export_artifact(tmp_path / "run", tmp_path / "artifact")
    assert (art.kind, art.trainer, art.step, art.base_model) == ("full", "grpo", 2, "")
    model_config, params = load_model(tmp_path / "artifact")
    assert model_config == trainer.model_config
    for got, want in zip(_leaves(params), _leaves(trainer.trainable), strict=True):
        np.testing.assert_array_equal(got, want)
    assert (tmp_path / "artifact" / "tokenizer.json").is_file()

    cmd = [sys.executable, "-m", "trainsvc_lm._export", str(tmp_path / "run"), str(tmp_path / "a2")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kind"] == "full"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainsvc_lm._export",
            str(tmp_path / "artifact" / "config.json"),
            str(tmp_path / "a3"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "CorruptCheckpointError" in json.loads(bad.stdout)["error"]


def test_a_lora_mode_grpo_run_exports_an_adapter_on_its_base(
    tmp_path: Path, tiny_model: Any
) -> None:
    base = tiny_model("llama")
    group = {
        "trajectories": [
            {
                "messages_and_choices": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": c},
                ],
                "reward": r,
            }
            for c, r in (("yes", 1.0), ("no", 0.0))
        ]
    }
    config = GRPOConfig.from_dict(
        {
            "model": {"dir": str(base)},
            "data": {"task": None, "offline_file": "w.jsonl"},
            "grpo": {"prompts_per_step": 1, "max_new_tokens": 4},
            "lora": {"rank": 8, "alpha": 16},
            "train": {"mode": "lora", "steps": 2},
            "log": {"checkpoint_dir": str(tmp_path / "run"), **LOG},
        }
    )
    trainer = GRPOTrainer(config, offline_groups=groups_from_art([group]))
    trainer.run()
    trainer.save_checkpoint()
    trainer.close()
    art = export_artifact(tmp_path / "run", tmp_path / "adapter")
    assert (art.kind, art.base_model) == ("adapter", str(base))
    lora_config, lora = load_peft(tmp_path / "adapter")
    assert lora_config.rank == 8
    for target, ab in trainer.trainable.items():
        np.testing.assert_allclose(lora[target]["b"], np.asarray(ab["b"]), rtol=1e-6)
    with pytest.raises(ConfigError, match="checkpoint"):
        export_artifact(tmp_path / "nothing-here", tmp_path / "x")
