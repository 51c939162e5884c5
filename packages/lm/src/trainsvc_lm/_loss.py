"""The language-model loss: next-token cross-entropy on chosen positions, in chunks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from trainsvc_lm import _model
from trainsvc_lm._config import ModelConfig

LOSS_CHUNK_BYTES = 1 << 27
"""Logits bytes per loss chunk (positions x vocab x 4); bounds the loss's peak memory."""


def token_nll_sum(
    params: dict[str, Any],
    config: ModelConfig,
    hidden: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
) -> jax.Array:
    """Sum of ``-log p(target)`` over positions where ``loss_mask`` is set (float32).

    The logits are computed a chunk of positions at a time and recomputed in the
    backward pass, so memory holds one chunk's ``[chunk, V]`` logits, not ``[B, T, V]``.
    """
    d = hidden.shape[-1]
    n = hidden.shape[0] * hidden.shape[1]
    chunk = max(1, min(n, LOSS_CHUNK_BYTES // (4 * config.vocab_size)))
    pad = (-n) % chunk
    h = jnp.pad(hidden.reshape(n, d), ((0, pad), (0, 0)))
    t = jnp.pad(jnp.maximum(targets.reshape(n), 0), (0, pad))
    m = jnp.pad(loss_mask.reshape(n).astype(jnp.float32), (0, pad))

    @jax.checkpoint
    def one(xs: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        hc, tc, mc = xs
        logits = _model.logits_from_hidden(params, config, hc)
        picked = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
        return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - picked) * mc)

    sums = jax.lax.map(one, (h.reshape(-1, chunk, d), t.reshape(-1, chunk), m.reshape(-1, chunk)))
    return jnp.sum(sums)
