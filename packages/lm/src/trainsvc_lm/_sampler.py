"""Batched text generation with a KV cache: greedy, temperature and top-p sampling.

`sample` runs a batch of prompts of different lengths: they are left-padded to a
length bucket (so a few compiled shapes serve every prompt), prefilled in one
call, then decoded one token per step in a jitted ``lax.while_loop`` that stops
when every row has emitted a stop token or ``max_new_tokens`` tokens. Each row
keeps its own positions, so a prompt's completion does not depend on the other
prompts in the batch (under greedy decoding, exactly). With ``rows`` a batch is a
slice of a larger one and samples exactly what that slice of the larger batch
would (each process of a data-parallel run samples its share). The same entry point
serves the CLI's ``generate``, sample completions during training, GRPO
rollouts (``Completion.logprobs``) and a serving endpoint (``finish_reason``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainsvc_lm._config import ModelConfig
from trainsvc_lm._errors import ConfigError
from trainsvc_lm._model import LoraParams, Params, decode_step, init_cache, prefill


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens.

    Attributes:
        max_new_tokens: the most tokens generated per prompt.
        temperature: 0 for greedy decoding, else the softmax temperature.
        top_p: nucleus sampling: sample among the most likely tokens whose
            probabilities sum to at least ``top_p`` (1.0: all tokens).
        stop_token_ids: tokens that end a completion (not included in it);
            None: the model's ``eos_token_ids``.
        seed: the PRNG seed; the same seed, prompts and model give the same tokens.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ConfigError(
                "sampling.max_new_tokens", f"must be an integer, got {self.max_new_tokens!r}"
            )
        if self.max_new_tokens < 1:
            raise ConfigError("sampling.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        if not (isinstance(self.temperature, int | float) and 0.0 <= self.temperature <= 100.0):
            raise ConfigError(
                "sampling.temperature", f"must be in [0, 100], got {self.temperature!r}"
            )
        if not (isinstance(self.top_p, int | float) and 0.0 < self.top_p <= 1.0):
            raise ConfigError("sampling.top_p", f"must be in (0, 1], got {self.top_p!r}")
        if self.stop_token_ids is not None:
            if not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0
                for t in self.stop_token_ids
            ):
                raise ConfigError(
                    "sampling.stop_token_ids",
                    f"must be non-negative integers, got {self.stop_token_ids!r}",
                )
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("sampling.seed", f"must be an integer, got {self.seed!r}")


@dataclass(frozen=True)
class Completion:
    """The new tokens of one prompt.

    Attributes:
        tokens: the generated tokens, without the stop token.
        finish_reason: ``"stop"`` (a stop token was generated) or ``"length"``.
        logprobs: the model's log-probability (temperature 1, no top-p) of each
            token of ``tokens``.
        stop_token: the stop token that ended it (``finish_reason == "stop"``), else None.
        stop_logprob: that token's log-probability (what a policy-gradient trainer
            needs to learn when to stop), else None.
    """

    tokens: tuple[int, ...]
    finish_reason: str
    logprobs: tuple[float, ...]
    stop_token: int | None = None
    stop_logprob: float | None = None


def bucket_length(n: int) -> int:
    """The padded prompt length used for ``n`` tokens: a power of two >= 16, then multiples of 256."""
    if n <= 256:
        return max(16, 1 << (n - 1).bit_length())
    return -(-n // 256) * 256


def _pick(
    logits: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    greedy: bool,
    rows: tuple[int, int] | None = None,
) -> jax.Array:
    """One token per row of float32 ``logits [B, V]``.

    ``rows = (offset, total)``: the batch is rows ``offset .. offset + B`` of a batch of
    ``total`` rows; the Gumbel noise is the whole batch's, sliced (``categorical`` is
    ``argmax(logits + gumbel(key, logits.shape))``), so each row draws what it would there.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / temperature
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    kept = jnp.where(scaled >= cutoff, scaled, -jnp.inf)
    if rows is None:
        drawn: jax.Array = jax.random.categorical(key, kept, axis=-1)
        return drawn.astype(jnp.int32)
    offset, total = rows
    noise = jax.random.gumbel(key, (total, kept.shape[1]), kept.dtype)
    noise = jax.lax.slice_in_dim(noise, offset, offset + kept.shape[0])
    return jnp.argmax(noise + kept, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("config", "max_new", "greedy", "compute_dtype", "rows"))
def _generate(
    params: Params,
    lora: LoraParams | None,
    tokens: jax.Array,
    valid: jax.Array,
    lengths: jax.Array,
    stop_ids: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    lora_scale: jax.Array,
    *,
    config: ModelConfig,
    max_new: int,
    greedy: bool,
    compute_dtype: Any,
    rows: tuple[int, int] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Prefill left-padded ``tokens [B, T]`` and decode up to ``max_new`` tokens per row.

    Returns:
        ``(tokens [B, max_new], logprobs [B, max_new], stopped [B], steps)``: a
        row's tokens after its stop token are meaningless; ``steps`` is how many
        columns were filled.
    """
    b, t = tokens.shape
    dtype = jnp.dtype(compute_dtype) if compute_dtype is not None else params["embed"].dtype
    cache = init_cache(config, b, t + max_new, dtype)
    positions = jnp.maximum(jnp.arange(t, dtype=jnp.int32)[None, :] - (t - lengths)[:, None], 0)
    kw = {"lora": lora, "lora_scale": lora_scale, "compute_dtype": compute_dtype}
    logits, cache = prefill(params, config, tokens, cache, positions=positions, valid=valid, **kw)

    def cond(state: tuple[Any, ...]) -> jax.Array:
        step, _, _, _, _, done = state
        going: jax.Array = (step < max_new) & ~jnp.all(done)
        return going

    def body(state: tuple[Any, ...]) -> tuple[Any, ...]:
        step, cache, logits, out, logps, done = state
        tok = _pick(logits, jax.random.fold_in(key, step), temperature, top_p, greedy, rows)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=-1)[:, 0]
        out = out.at[:, step].set(jnp.where(done, 0, tok))
        logps = logps.at[:, step].set(jnp.where(done, 0.0, logp))
        done = done | jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
        logits, cache = decode_step(params, config, tok, lengths + step, cache, **kw)
        return step + 1, cache, logits, out, logps, done

    state = (
        jnp.zeros((), jnp.int32),
        cache,
        logits,
        jnp.zeros((b, max_new), jnp.int32),
        jnp.zeros((b, max_new), jnp.float32),
        jnp.zeros((b,), bool),
    )
    steps, _, _, out, logps, done = jax.lax.while_loop(cond, body, state)
    return out, logps, done, steps


def sample(
    params: Params,
    config: ModelConfig,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    *,
    lora: LoraParams | None = None,
    lora_scale: float = 1.0,
    compute_dtype: Any = None,
    rows: tuple[int, int] | None = None,
) -> list[Completion]:
    """Generate a completion for each prompt (one batch).

    Args:
        params: the model's params pytree.
        config: its architecture.
        prompts: token ids, one non-empty list per prompt (lengths may differ).
        sampling: how to pick tokens.
        lora: optional LoRA adapters; lora_scale their multiplier.
        compute_dtype: as in `trainsvc_lm.forward` (default: the params' dtype).
        rows: ``(offset, total)``: these prompts are rows ``offset`` to
            ``offset + len(prompts)`` of a batch of ``total`` rows sampled with the same
            seed, and each gets the tokens it would get there (the random draws are the
            whole batch's; the model's outputs per row do not depend on the batch, up to
            the compiled shapes' rounding). Each process of a data-parallel run samples
            its share of a batch this way. None: the prompts are the whole batch.

    Raises:
        ConfigError: an empty prompt list or prompt, a token outside the vocabulary, or
            ``rows`` that do not hold the prompts (field ``rows``).
    """
    if not prompts:
        raise ConfigError("prompts", "at least one prompt is needed")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ConfigError(f"prompts[{i}]", "is empty")
        bad = [tok for tok in prompt if not 0 <= tok < config.vocab_size]
        if bad:
            raise ConfigError(
                f"prompts[{i}]",
                f"token {bad[0]} is outside the vocabulary [0, {config.vocab_size})",
            )
    if rows is not None:
        offset, total = (int(r) for r in rows)
        if not 0 <= offset <= total - len(prompts):
            raise ConfigError(
                "rows",
                f"(offset, total) = {tuple(rows)!r} does not hold {len(prompts)} prompts: "
                "need 0 <= offset <= total - len(prompts)",
            )
        rows = (offset, total)
    stop = sampling.stop_token_ids if sampling.stop_token_ids is not None else config.eos_token_ids
    t = bucket_length(max(len(p) for p in prompts))
    tokens = np.zeros((len(prompts), t), np.int32)
    valid = np.zeros((len(prompts), t), bool)
    for i, prompt in enumerate(prompts):
        tokens[i, t - len(prompt) :] = prompt
        valid[i, t - len(prompt) :] = True
    out, logps, done, steps = _generate(
        params,
        lora,
        jnp.asarray(tokens),
        jnp.asarray(valid),
        jnp.asarray([len(p) for p in prompts], jnp.int32),
        jnp.asarray(stop, jnp.int32).reshape(-1),
        jax.random.PRNGKey(sampling.seed),
        jnp.float32(max(sampling.temperature, 1e-6)),
        jnp.float32(sampling.top_p),
        jnp.float32(lora_scale),
        config=config,
        max_new=sampling.max_new_tokens,
        greedy=sampling.temperature == 0.0,
        compute_dtype=None if compute_dtype is None else jnp.dtype(compute_dtype).name,
        rows=rows,
    )
    out_np, logps_np, done_np = np.asarray(out), np.asarray(logps), np.asarray(done)
    n = int(steps)
    stop_set = set(stop)
    results = []
    for row in range(len(prompts)):
        toks = out_np[row, :n].tolist()
        end = next((j for j, tok in enumerate(toks) if tok in stop_set), None)
        if done_np[row] and end is not None:
            results.append(
                Completion(
                    tuple(toks[:end]),
                    "stop",
                    tuple(logps_np[row, :end].tolist()),
                    stop_token=toks[end],
                    stop_logprob=float(logps_np[row, end]),
                )
            )
        else:
            results.append(Completion(tuple(toks), "length", tuple(logps_np[row, :n].tolist())))
    return results


def generate(
    params: Params,
    config: ModelConfig,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    *,
    lora: LoraParams | None = None,
    lora_scale: float = 1.0,
    compute_dtype: Any = None,
) -> list[list[int]]:
    """The new tokens of each prompt, cut before the first stop token (see `sample`)."""
    completions = sample(
        params,
        config,
        prompts,
        sampling,
        lora=lora,
        lora_scale=lora_scale,
        compute_dtype=compute_dtype,
    )
    return [list(c.tokens) for c in completions]
