"""LoRA configuration, initialisation, merging and the memory estimate."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from trainsvc_lm import ConfigError, ModelConfig
from trainsvc_lm._lora import (
    TARGETS,
    LoraAlphaWarning,
    LoraConfig,
    estimate_memory,
    host_memory_bytes,
    init_lora,
    merge_lora,
    platform_budget,
    target_shape,
)

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import hf_config

MODEL = ModelConfig.from_dict(hf_config("llama"))  # hidden 48, q 64, kv 32, mlp 80, 2 layers


def test_defaults_are_valid_and_scale_follows_rslora() -> None:
    config = LoraConfig()
    assert (config.rank, config.alpha, config.target_modules) == (16, 32, TARGETS)
    assert config.scale == 2.0
    rs = LoraConfig(rank=16, alpha=32, use_rslora=True)
    assert rs.scale == pytest.approx(32 / 4)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rank": 7, "alpha": 14}, "lora.rank"),
        ({"rank": 65, "alpha": 130}, "lora.rank"),
        ({"rank": 8.5}, "lora.rank"),
        ({"alpha": 0}, "lora.alpha"),
        ({"alpha": 31.5}, "lora.alpha"),
        ({"dropout": 0.3}, "lora.dropout"),
        ({"dropout": -0.01}, "lora.dropout"),
        ({"use_rslora": "yes"}, "lora.use_rslora"),
        ({"target_modules": ("q_proj", "k_proj", "v_proj")}, "lora.target_modules"),
        ({"target_modules": ("q_proj", "k_proj", "v_proj", "c_attn")}, "lora.target_modules"),
        ({"target_modules": ("q_proj", "q_proj", "v_proj", "o_proj")}, "lora.target_modules"),
        ({"target_modules": "q_proj"}, "lora.target_modules"),
    ],
)
def test_invalid_values_name_their_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        LoraConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_alpha_other_than_twice_rank_warns_but_is_accepted() -> None:
    with pytest.warns(LoraAlphaWarning, match="2 \\* lora.rank = 16"):
        config = LoraConfig(rank=8, alpha=8)
    assert config.scale == 1.0
    assert LoraConfig(rank=8, alpha=16.0).alpha == 16  # an integral float becomes an int


def test_dict_round_trip_and_unknown_key() -> None:
    config = LoraConfig(rank=8, alpha=16, dropout=0.0, target_modules=TARGETS[:4])
    assert LoraConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError) as info:
        LoraConfig.from_dict({"rnk": 8})
    assert info.value.field == "lora.rnk"


def test_init_shapes_zero_b_and_kaiming_bound() -> None:
    config = LoraConfig(rank=8, alpha=16)
    lora = init_lora(config, MODEL, jax.random.PRNGKey(0))
    assert set(lora) == set(TARGETS)
    for target, ab in lora.items():
        fan_in, fan_out = target_shape(MODEL, target)
        assert ab["a"].shape == (2, fan_in, 8)
        assert ab["b"].shape == (2, 8, fan_out)
        assert not np.any(np.asarray(ab["b"]))
        a = np.asarray(ab["a"])
        assert np.abs(a).max() <= 1 / math.sqrt(fan_in)
        assert np.abs(a).max() > 0.5 / math.sqrt(fan_in)  # not a degenerate draw
    assert lora["q_proj"]["a"].shape[1] == 48 and lora["o_proj"]["a"].shape[1] == 64
    assert lora["down_proj"]["a"].shape[1] == 80 and lora["k_proj"]["b"].shape[2] == 32


def test_merge_adds_a_at_b_times_scale_per_layer() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 32, 16)).astype(np.float32)
    a = rng.normal(size=(2, 32, 8)).astype(np.float32)
    b = rng.normal(size=(2, 8, 16)).astype(np.float32)
    params = {"embed": np.zeros((4, 4)), "layers": {"k_proj": w, "q_proj": w.copy()}}
    merged = merge_lora(params, {"k_proj": {"a": a, "b": b}}, 0.5)
    for layer in range(2):
        expected = w[layer] + 0.5 * np.einsum("ir,ro->io", a[layer], b[layer])
        np.testing.assert_allclose(merged["layers"]["k_proj"][layer], expected, atol=1e-5)
    assert merged["layers"]["q_proj"] is params["layers"]["q_proj"]
    assert params["layers"]["k_proj"] is w  # the input is not modified


def test_memory_estimate_counts_parts_and_remat_saves_activations() -> None:
    config = LoraConfig(rank=8, alpha=16, target_modules=TARGETS[:4])
    kwargs = dict(batch_size=2, seq_len=16, weight_dtype="float32", compute_dtype="float32")
    full = estimate_memory(config, MODEL, remat=False, platform="h100", **kwargs)  # type: ignore[arg-type]
    remat = estimate_memory(config, MODEL, remat=True, platform="h100", **kwargs)  # type: ignore[arg-type]
    q = full.per_target["q_proj"]
    assert q.lora == 2 * (48 * 8 + 8 * 64) * 4
    assert q.optimizer == 3 * q.lora
    assert q.base == 2 * 48 * 64 * 4
    assert full.base_weights == MODEL.num_parameters() * 4
    assert full.lora_params == sum(t.lora for t in full.per_target.values())
    assert remat.activations < full.activations
    assert full.budget == 70 * 10**9 and full.fits()
    full.check()


def test_memory_estimate_refuses_a_run_over_budget() -> None:
    config = LoraConfig()
    big = ModelConfig(
        family="llama",
        vocab_size=128_256,
        hidden_size=4096,
        intermediate_size=14_336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        torch_dtype="bfloat16",
    )
    kwargs = dict(seq_len=4096, weight_dtype="bfloat16", compute_dtype="bfloat16")
    ok = estimate_memory(config, big, batch_size=1, remat=True, platform="h100", **kwargs)  # type: ignore[arg-type]
    assert ok.fits(), ok.describe()  # an 8B model with remat at batch 1 fits an H100
    too_big = estimate_memory(config, big, batch_size=16, remat=False, platform="m4", **kwargs)  # type: ignore[arg-type]
    assert too_big.budget == 28 * 10**9
    with pytest.raises(ConfigError, match="does not fit") as info:
        too_big.check()
    assert info.value.field == "data.batch_size"


def test_cpu_budget_is_this_machines_ram() -> None:
    assert platform_budget("cpu") == host_memory_bytes() > 10**8
    with pytest.raises(ConfigError) as info:
        platform_budget("tpu")
    assert info.value.field == "train.platform"
