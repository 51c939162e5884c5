"""The KV-cache sampler against repeated full forward passes."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainsvc_lm import ConfigError, ModelConfig
from trainsvc_lm._model import forward
from trainsvc_lm._sampler import SamplingConfig, bucket_length, generate, sample

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import hf_config, random_lora, random_params

CONFIG = ModelConfig.from_dict(hf_config("qwen2", eos_token_id=96))


@functools.cache
def model_params() -> Any:
    """The test model's parameters, made on first use (not at collection: no JAX work then)."""
    return random_params(CONFIG, seed=21)


RNG = np.random.default_rng(0)
PROMPTS = [RNG.integers(0, 90, n).tolist() for n in (3, 9, 18)]


def greedy_by_full_forward(prompt: list[int], n: int, **kw: object) -> list[int]:
    """Greedy decoding without a cache: a full forward pass per new token.

    The sequence is right-padded to 32 tokens (one compiled shape); causal
    attention keeps the padding from affecting the logits read at ``len - 1``.
    """
    run = jax.jit(lambda toks: forward(model_params(), CONFIG, toks, **kw))  # type: ignore[arg-type]
    seq = list(prompt)
    for _ in range(n):
        padded = jnp.asarray([seq + [0] * (32 - len(seq))], jnp.int32)
        seq.append(int(jnp.argmax(run(padded)[0, len(seq) - 1])))
    return seq[len(prompt) :]


def test_greedy_equals_argmax_of_full_forwards() -> None:
    out = generate(
        model_params(), CONFIG, [PROMPTS[1]], SamplingConfig(max_new_tokens=6, stop_token_ids=())
    )
    assert out == [greedy_by_full_forward(PROMPTS[1], 6)]


def test_a_batch_of_different_lengths_equals_each_prompt_alone() -> None:
    sampling = SamplingConfig(max_new_tokens=5, stop_token_ids=())
    batch = generate(model_params(), CONFIG, PROMPTS, sampling)
    alone = [generate(model_params(), CONFIG, [p], sampling)[0] for p in PROMPTS]
    assert batch == alone
    assert bucket_length(18) == 32 and bucket_length(3) == 16  # the batch ran in another shape


def test_tiny_top_p_is_greedy() -> None:
    greedy = generate(
        model_params(), CONFIG, PROMPTS, SamplingConfig(max_new_tokens=5, stop_token_ids=())
    )
    nucleus = SamplingConfig(
        max_new_tokens=5, temperature=1.0, top_p=1e-6, stop_token_ids=(), seed=3
    )
    assert generate(model_params(), CONFIG, PROMPTS, nucleus) == greedy


def test_stop_tokens_cut_each_row() -> None:
    free = generate(
        model_params(), CONFIG, PROMPTS, SamplingConfig(max_new_tokens=8, stop_token_ids=())
    )
    stop = free[1][3]
    out = sample(
        model_params(), CONFIG, PROMPTS, SamplingConfig(max_new_tokens=8, stop_token_ids=(stop,))
    )
    free_logps = sample(
        model_params(), CONFIG, PROMPTS, SamplingConfig(max_new_tokens=8, stop_token_ids=())
    )
    for row, completion, full in zip(free, out, free_logps, strict=True):
        if stop in row:
            end = row.index(stop)
            assert completion.tokens == tuple(row[:end])
            assert completion.finish_reason == "stop" and completion.stop_token == stop
            assert completion.stop_logprob == pytest.approx(full.logprobs[end], abs=1e-5)
        else:
            assert completion.tokens == tuple(row) and completion.finish_reason == "length"
            assert completion.stop_token is None and completion.stop_logprob is None
    assert out[1].finish_reason == "stop" and len(out[1].tokens) <= 3


def test_stop_tokens_default_to_the_models_eos() -> None:
    params = {
        **model_params(),
        "lm_head": model_params()["lm_head"].at[:, 96].add(50.0),
    }  # eos (96) always wins
    out = sample(params, CONFIG, PROMPTS[:2], SamplingConfig(max_new_tokens=4))
    assert [(c.tokens, c.finish_reason) for c in out] == [((), "stop"), ((), "stop")]


def test_sampling_is_deterministic_for_a_seed_and_stays_in_the_nucleus() -> None:
    prompts = [PROMPTS[0]] * 32
    hot = SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=0.6, stop_token_ids=(), seed=5)
    first = generate(model_params(), CONFIG, prompts, hot)
    assert generate(model_params(), CONFIG, prompts, hot) == first
    other = generate(model_params(), CONFIG, prompts, SamplingConfig(**{**hot.__dict__, "seed": 6}))
    assert other != first
    probs = np.asarray(
        jax.nn.softmax(forward(model_params(), CONFIG, jnp.asarray([PROMPTS[0]]))[0, -1])
    )
    order = np.argsort(-probs)
    mass_before = np.cumsum(probs[order]) - probs[order]
    nucleus = set(order[mass_before < 0.6].tolist())
    drawn = {row[0] for row in first + other}
    assert drawn <= nucleus and len(drawn) > 1


def test_logprobs_are_the_models() -> None:
    (completion,) = sample(
        model_params(), CONFIG, [PROMPTS[0]], SamplingConfig(max_new_tokens=3, stop_token_ids=())
    )
    seq = jnp.asarray([PROMPTS[0] + list(completion.tokens)], jnp.int32)
    logp = jax.nn.log_softmax(forward(model_params(), CONFIG, seq)[0], axis=-1)
    n = len(PROMPTS[0])
    expected = [float(logp[n - 1 + i, tok]) for i, tok in enumerate(completion.tokens)]
    np.testing.assert_allclose(completion.logprobs, expected, atol=1e-4)


def test_lora_generation_uses_the_adapter() -> None:
    lora = random_lora(CONFIG, seed=4)
    sampling = SamplingConfig(max_new_tokens=4, stop_token_ids=())
    out = generate(model_params(), CONFIG, [PROMPTS[2]], sampling, lora=lora, lora_scale=0.5)
    expected = greedy_by_full_forward(PROMPTS[2], 4, lora=lora, lora_scale=0.5)
    assert out == [expected]
    assert expected != greedy_by_full_forward(PROMPTS[2], 4)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": 0}, "sampling.max_new_tokens"),
        ({"temperature": -0.5}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"top_p": 1.5}, "sampling.top_p"),
        ({"stop_token_ids": (1, -2)}, "sampling.stop_token_ids"),
        ({"seed": "x"}, "sampling.seed"),
    ],
)
def test_sampling_config_names_the_bad_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        SamplingConfig(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_bad_prompts_are_named() -> None:
    sampling = SamplingConfig(max_new_tokens=1)
    with pytest.raises(ConfigError, match=r"prompts\[1\]"):
        generate(model_params(), CONFIG, [[1], []], sampling)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        generate(model_params(), CONFIG, [[1, 97]], sampling)


def test_a_slice_of_a_batch_samples_what_the_whole_batch_does() -> None:
    """``rows=(offset, total)``: each process of a data-parallel run samples its share."""
    config, params = CONFIG, model_params()
    prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12], [13, 14, 15, 16], [2, 3]]
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.5, stop_token_ids=(), seed=3)
    whole = sample(params, config, prompts, sampling)
    halves = [sample(params, config, prompts[i : i + 3], sampling, rows=(i, 6)) for i in (0, 3)]
    assert [c.tokens for c in halves[0] + halves[1]] == [c.tokens for c in whole]
    # without rows, a half is a batch of its own: other draws
    alone = sample(params, config, prompts[3:], sampling)
    assert [c.tokens for c in alone] != [c.tokens for c in whole[3:]]
    with pytest.raises(ConfigError, match="rows"):
        sample(params, config, prompts[:3], sampling, rows=(4, 6))
