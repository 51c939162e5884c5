"""The MLX forward pass equals the JAX model's on the same parameters (CPU build of MLX)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainsvc_lm import ModelConfig, RopeScaling
from trainsvc_lm._model import forward, init_params

mx = pytest.importorskip("mlx.core")
mlx_model = pytest.importorskip("trainsvc_lm._mlx_model")


def _config(family: str) -> ModelConfig:
    return ModelConfig(
        family=family,
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        tie_word_embeddings=family == "qwen3",
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16) if family == "llama" else None,
    )


def _noisy(tree: Any, seed: int) -> Any:
    """Random params with norms and biases away from their 1/0 init, so every term counts."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.map(np.asarray, jax.tree.unflatten(treedef, noisy))


def _tokens(shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 97, shape).astype(np.int32)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_mlx_logits_equal_the_jax_model(family: str) -> None:
    config = _config(family)
    params = _noisy(init_params(config, jax.random.key(0)), 1)
    tokens = _tokens((2, 11))
    expected = np.asarray(forward(params, config, jnp.asarray(tokens)))
    got = np.array(mlx_model.forward(mlx_model.to_mlx(params), config, mx.array(tokens)))
    assert np.abs(got - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())


def test_mlx_lora_and_packed_segments_equal_the_jax_model() -> None:
    config = _config("llama")
    params = _noisy(init_params(config, jax.random.key(0)), 1)
    lora = {
        name: {
            "a": np.random.default_rng(i).normal(size=(2, *shape[1:2], 8)).astype(np.float32),
            "b": np.random.default_rng(i + 9).normal(size=(2, 8, shape[2])).astype(np.float32),
        }
        for i, (name, shape) in enumerate(
            (n, params["layers"][n].shape) for n in ("q_proj", "v_proj", "o_proj", "down_proj")
        )
    }
    tokens = _tokens((2, 12))
    segments = np.array([[1] * 5 + [2] * 7, [1] * 12], np.int32)
    positions = np.array([list(range(5)) + list(range(7)), list(range(12))], np.int32)
    expected = np.asarray(
        forward(
            params,
            config,
            jnp.asarray(tokens),
            positions=jnp.asarray(positions),
            segment_ids=jnp.asarray(segments),
            lora=jax.tree.map(jnp.asarray, lora),
            lora_scale=0.5,
        )
    )
    got = np.array(
        mlx_model.forward(
            mlx_model.to_mlx(params),
            config,
            mx.array(tokens),
            positions=mx.array(positions),
            segment_ids=mx.array(segments),
            lora=mlx_model.to_mlx(lora),
            lora_scale=0.5,
        )
    )
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    # The adapters matter: without them the logits differ.
    plain = np.array(mlx_model.forward(mlx_model.to_mlx(params), config, mx.array(tokens)))
    assert np.abs(plain[1] - got[1]).max() > 1e-2


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_mlx_cached_greedy_generation_equals_the_jax_sampler(family: str) -> None:
    from trainsvc_lm._sampler import SamplingConfig, generate

    config = _config(family)
    params = _noisy(init_params(config, jax.random.key(0)), 1)
    prompt = [int(t) for t in _tokens((1, 7))[0]]
    expected = generate(params, config, [prompt], SamplingConfig(max_new_tokens=12))[0]
    got = mlx_model.generate(mlx_model.to_mlx(params), config, prompt, max_new_tokens=12)
    assert got == expected
    # A stop token ends the completion before it.
    stop = expected[5]
    cut = mlx_model.generate(
        mlx_model.to_mlx(params), config, prompt, max_new_tokens=12, stop_token_ids=(stop,)
    )
    assert cut == expected[: expected.index(stop)]
