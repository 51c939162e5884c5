"""The MLX LoRA trainer: the same steps as the JAX trainer, bitwise resume, shared checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from trainsvc_lm import ConfigError
from trainsvc_lm._train import LoRATrainer, read_checkpoint

from .test_train import make_config, write_chats

mlx_train = pytest.importorskip("trainsvc_lm._mlx_train")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chats-mlx")
    return write_chats(root / "train.jsonl", 24), write_chats(root / "val.jsonl", 4, 100)


def test_mlx_takes_the_same_steps_as_jax(
    tiny_model: Callable[[str], Path], data: tuple[Path, Path], tmp_path: Path
) -> None:
    # Without dropout both backends see the same batches, adapters and learning rates.
    model = tiny_model("qwen2")
    jax_run = LoRATrainer(make_config(model, data, tmp_path / "jax", **{"lora.dropout": 0.0}))
    mlx_run = mlx_train.MLXLoRATrainer(
        make_config(model, data, tmp_path / "mlx", **{"lora.dropout": 0.0})
    )
    jax_losses = [jax_run.step()["loss"] for _ in range(4)]
    mlx_losses = [mlx_run.step()["loss"] for _ in range(4)]
    assert jax_losses[-1] < jax_losses[0]  # the steps learn something
    np.testing.assert_allclose(mlx_losses, jax_losses, rtol=1e-4)
    jax_lora = jax_run.state_dict()["lora"]
    mlx_lora = mlx_run.state_dict()["lora"]
    for target, ab in jax_lora.items():
        for part, value in ab.items():
            # Adam normalises each step, so rounding differences show at ~1e-3 of a step (lr 1e-2).
            np.testing.assert_allclose(mlx_lora[target][part], np.asarray(value), atol=2e-4)
    assert jax_run.evaluate() == pytest.approx(mlx_run.evaluate(), rel=1e-4)


def test_mlx_resume_is_bitwise_and_checkpoints_are_shared(
    tiny_model: Callable[[str], Path], data: tuple[Path, Path], tmp_path: Path
) -> None:
    model = tiny_model("llama")
    straight = mlx_train.MLXLoRATrainer(make_config(model, data, tmp_path / "a"))
    base_before = {k: np.array(v) for k, v in straight.params["layers"].items()}
    assert straight.run() == 6
    straight.close()
    for name, value in straight.params["layers"].items():
        assert np.array_equal(np.array(value), base_before[name]), name

    first = mlx_train.MLXLoRATrainer(make_config(model, data, tmp_path / "b"))
    first.run(3)
    first.close()
    second = mlx_train.MLXLoRATrainer(make_config(model, data, tmp_path / "b"))
    assert second.restore("latest") is not None
    assert second.step_count == 3
    second.run()
    second.close()
    a, b = straight.state_dict(), second.state_dict()
    for target, ab in a["lora"].items():
        for part, value in ab.items():
            assert np.array_equal(value, b["lora"][target][part]), (target, part)
    assert json.loads(a["meta"])["data_position"] == json.loads(b["meta"])["data_position"]

    # The checkpoint is a LoRA trainer checkpoint that export tools read, and the JAX
    # backend refuses to resume it by name.
    saved = read_checkpoint(tmp_path / "b")
    assert saved.step == 6
    np.testing.assert_array_equal(saved.lora["q_proj"]["a"], b["lora"]["q_proj"]["a"])
    jax_run = LoRATrainer(make_config(model, data, tmp_path / "b"))
    with pytest.raises(ConfigError) as err:
        jax_run.restore("latest")
    assert err.value.field == "train.backend"


def test_backend_setting_picks_the_trainer(
    tiny_model: Callable[[str], Path], data: tuple[Path, Path], tmp_path: Path
) -> None:
    from trainsvc_lm._train import create_trainer, resolve_backend

    assert resolve_backend("jax") == "jax"
    assert resolve_backend("mlx") == "mlx"
    # Linux has MLX's CPU build only: auto keeps JAX there.
    assert resolve_backend("auto") == "jax"
    model = tiny_model("llama")
    chosen = create_trainer(make_config(model, data, tmp_path / "m", **{"train.backend": "mlx"}))
    assert isinstance(chosen, mlx_train.MLXLoRATrainer)
    with pytest.raises(ConfigError) as err:
        make_config(model, data, tmp_path / "x", **{"train.backend": "metal"})
    assert err.value.field == "train.backend"
