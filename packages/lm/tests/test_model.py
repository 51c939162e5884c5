"""The JAX model against an independent NumPy implementation of Hugging Face's semantics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainsvc_lm import ModelConfig
from trainsvc_lm._model import (
    decode_step,
    forward,
    hidden_states,
    init_cache,
    init_params,
    logits_from_hidden,
    prefill,
)
from trainsvc_lm._weights import params_to_hf

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import LLAMA3, hf_config, random_lora, random_params, rel_err
from _reference import reference_logits

pytestmark = pytest.mark.slow(40)

CASES = {
    "llama-gqa-untied": hf_config("llama"),
    "llama-mha-tied": hf_config("llama", kv_heads=4, tied=True),
    "llama3-rope-scaling": hf_config("llama", rope_scaling=LLAMA3, rope_theta=500000.0),
    "mistral-gqa": hf_config("mistral", heads=4, kv_heads=1),
    "qwen2-bias-tied": hf_config("qwen2", tied=True, rope_theta=1000000.0),
    "qwen2-mha-untied": hf_config("qwen2", kv_heads=4),
    "qwen3-qk-norm": hf_config("qwen3", heads=6, kv_heads=2),
    "qwen3-mha-tied": hf_config("qwen3", kv_heads=4, tied=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_the_hf_reference(name: str) -> None:
    cfg = CASES[name]
    config = ModelConfig.from_dict(cfg)
    params = random_params(config, seed=len(name))
    tokens = np.random.default_rng(1).integers(0, cfg["vocab_size"], (2, 11))
    # Offset positions reach the long wavelengths that llama3 scaling changes.
    positions = np.stack([np.arange(11), np.arange(11) + 300])
    ours = forward(params, config, jnp.asarray(tokens, jnp.int32), positions=jnp.asarray(positions))
    assert ours.dtype == jnp.float32
    ref = reference_logits(cfg, params_to_hf(config, params), tokens, positions)
    assert rel_err(ours, ref) < 1e-5


def test_llama3_scaling_changes_the_logits() -> None:
    plain = ModelConfig.from_dict(hf_config("llama"))
    scaled = ModelConfig.from_dict(hf_config("llama", rope_scaling=LLAMA3))
    params = random_params(plain)
    tokens = jnp.asarray(np.arange(40)[None] % 97, jnp.int32)
    positions = jnp.arange(1000, 1040)[None]
    a = forward(params, plain, tokens, positions=positions)
    b = forward(params, scaled, tokens, positions=positions)
    assert rel_err(a, b) > 1e-3


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_kv_cache_decoding_equals_the_full_forward(family: str) -> None:
    config = ModelConfig.from_dict(hf_config(family))
    params = random_params(config, seed=3)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 97, (2, 9)), jnp.int32)
    full = forward(params, config, tokens)
    cache = init_cache(config, 2, 12)
    logits, cache = prefill(params, config, tokens[:, :4], cache, all_logits=True)
    steps = [logits]
    for t in range(4, 9):
        step, cache = decode_step(params, config, tokens[:, t], jnp.full((2,), t), cache)
        steps.append(step[:, None])
    assert int(cache.length) == 9
    assert rel_err(jnp.concatenate(steps, axis=1), full) < 1e-5


def test_left_padded_cache_rows_equal_each_row_alone() -> None:
    config = ModelConfig.from_dict(hf_config("qwen2"))
    params = random_params(config, seed=4)
    rng = np.random.default_rng(5)
    short, long = rng.integers(0, 97, 3), rng.integers(0, 97, 6)
    tokens = jnp.asarray(np.stack([np.r_[np.zeros(3, int), short], long]), jnp.int32)
    valid = jnp.asarray([[False] * 3 + [True] * 3, [True] * 6])
    positions = jnp.asarray([[0, 0, 0, 0, 1, 2], list(range(6))])
    cache = init_cache(config, 2, 8)
    last, cache = prefill(params, config, tokens, cache, positions=positions, valid=valid)
    nxt = jnp.asarray([7, 8], jnp.int32)
    step, _ = decode_step(params, config, nxt, jnp.asarray([3, 6]), cache)
    for row, seq in enumerate([short, long]):
        alone = forward(params, config, jnp.asarray(np.r_[seq, nxt[row]][None], jnp.int32))
        assert rel_err(last[row], alone[0, -2]) < 1e-5
        assert rel_err(step[row], alone[0, -1]) < 1e-5


def test_lora_equals_the_merged_weights() -> None:
    config = ModelConfig.from_dict(hf_config("qwen3"))
    params = random_params(config, seed=8)
    lora = random_lora(config)
    scale = 1.7
    merged = {**params, "layers": dict(params["layers"])}
    for name, ab in lora.items():
        merged["layers"][name] = (
            params["layers"][name] + jnp.einsum("lir,lro->lio", ab["a"], ab["b"]) * scale
        )
    tokens = jnp.asarray(np.random.default_rng(9).integers(0, 97, (2, 7)), jnp.int32)
    with_lora = forward(params, config, tokens, lora=lora, lora_scale=scale)
    assert rel_err(with_lora, forward(merged, config, tokens)) < 1e-5
    assert rel_err(with_lora, forward(params, config, tokens)) > 1e-2


def test_lora_dropout_needs_a_key_and_is_deterministic_for_it() -> None:
    config = ModelConfig.from_dict(hf_config("llama"))
    params, lora = random_params(config), random_lora(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, (1, 6)), jnp.int32)
    plain = forward(params, config, tokens, lora=lora)
    no_key = forward(params, config, tokens, lora=lora, lora_dropout=0.5)
    key = jax.random.PRNGKey(0)
    a = forward(params, config, tokens, lora=lora, lora_dropout=0.5, dropout_key=key)
    b = forward(params, config, tokens, lora=lora, lora_dropout=0.5, dropout_key=key)
    c = forward(
        params, config, tokens, lora=lora, lora_dropout=0.5, dropout_key=jax.random.PRNGKey(1)
    )
    np.testing.assert_array_equal(no_key, plain)
    np.testing.assert_array_equal(a, b)
    assert rel_err(a, plain) > 1e-3 and rel_err(a, c) > 1e-3


def test_packed_segments_equal_separate_sequences() -> None:
    config = ModelConfig.from_dict(hf_config("mistral"))
    params = random_params(config, seed=10)
    rng = np.random.default_rng(11)
    first, second = rng.integers(0, 97, 5), rng.integers(0, 97, 4)
    tokens = jnp.asarray(np.r_[first, second][None], jnp.int32)
    segments = jnp.asarray([[1] * 5 + [2] * 4])
    positions = jnp.asarray([list(range(5)) + list(range(4))])
    packed = forward(params, config, tokens, positions=positions, segment_ids=segments)
    alone_1 = forward(params, config, jnp.asarray(first[None], jnp.int32))
    alone_2 = forward(params, config, jnp.asarray(second[None], jnp.int32))
    assert rel_err(packed[:, :5], alone_1) < 1e-5
    assert rel_err(packed[:, 5:], alone_2) < 1e-5


def test_remat_gives_the_same_loss_and_gradients() -> None:
    config = ModelConfig.from_dict(hf_config("qwen2"))
    params, lora = random_params(config), random_lora(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 6)), jnp.int32)

    def loss(lora: Any, remat: bool) -> jax.Array:
        logits = forward(params, config, tokens, lora=lora, remat=remat)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    l1, g1 = jax.value_and_grad(loss)(lora, False)
    l2, g2 = jax.value_and_grad(loss)(lora, True)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g1)) > 0


def test_bf16_compute_is_close_and_logits_are_float32() -> None:
    config = ModelConfig.from_dict(hf_config("llama"))
    params = random_params(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 6)), jnp.int32)
    fp32 = forward(params, config, tokens)
    bf16 = forward(params, config, tokens, compute_dtype=jnp.bfloat16)
    stored = forward(jax.tree.map(lambda a: a.astype(jnp.bfloat16), params), config, tokens)
    assert bf16.dtype == jnp.float32 and stored.dtype == jnp.float32
    assert 1e-6 < rel_err(bf16, fp32) < 5e-2
    assert rel_err(stored, fp32) < 5e-2


def test_hidden_states_then_logits_equal_forward() -> None:
    config = ModelConfig.from_dict(hf_config("qwen3", tied=True))
    params = random_params(config)
    tokens = jnp.asarray([[1, 2, 3, 4]], jnp.int32)
    h = hidden_states(params, config, tokens)
    assert h.shape == (1, 4, 48)
    np.testing.assert_allclose(
        logits_from_hidden(params, config, h), forward(params, config, tokens), rtol=1e-6
    )


@pytest.mark.parametrize("name", ["llama-gqa-untied", "qwen2-bias-tied", "qwen3-qk-norm"])
def test_init_params_has_the_configs_parameter_count(name: str) -> None:
    config = ModelConfig.from_dict(CASES[name])
    params = init_params(config, jax.random.PRNGKey(0), jnp.bfloat16)
    leaves = jax.tree.leaves(params)
    assert sum(a.size for a in leaves) == config.num_parameters()
    assert all(a.dtype == jnp.bfloat16 for a in leaves)
    assert ("lm_head" in params) != config.tie_word_embeddings
