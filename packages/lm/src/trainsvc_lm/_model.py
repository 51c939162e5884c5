"""The Llama-family decoder in plain JAX: a params pytree and pure functions.

One implementation covers Llama 2/3 (with Llama 3.1 RoPE scaling), Mistral,
Qwen2 (bias on q/k/v) and Qwen3 (RMSNorm on q and k per head, before RoPE),
following Hugging Face transformers' semantics: RMSNorm in float32, RoPE in the
``rotate_half`` layout (the first and second halves of each head are the pair),
grouped-query attention (query head ``h`` reads key/value head ``h // G``),
a SwiGLU MLP and a tied or untied head. The layers' weights are stacked on
axis 0 and run with ``lax.scan`` (optionally under ``jax.checkpoint``).

Weights are stored ``[in, out]`` so a projection is ``x @ W``; see the params
layout in ``init_params``. LoRA adapters (``{"q_proj": {"a": [L, in, r],
"b": [L, r, out]}, ...}``) add ``(dropout(x) @ a) @ b * lora_scale`` to any of
the seven projections. Logits are always float32.

The KV cache (`KVCache`) stores, next to keys and values, the position of every
slot (-1 for an empty or padding slot); a query attends to the filled slots whose
position is at most its own, so prompts of different lengths can share a batch
(left-padded) and `prefill` / `decode_step` reproduce the full forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from trainsvc_lm._config import ModelConfig
from trainsvc_lm._errors import ConfigError
from trainsvc_lm._rope import inverse_frequencies

Params = dict[str, Any]
LoraParams = dict[str, dict[str, jax.Array]]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_MASKED = -1e30  # added to masked attention scores (finite: a fully masked row stays finite)


class KVCache(NamedTuple):
    """Keys and values of every layer for `prefill` / `decode_step`.

    Attributes:
        k: keys ``[L, B, S, Hkv, hd]`` (after RoPE and, for Qwen3, the k norm).
        v: values ``[L, B, S, Hkv, hd]``.
        pos: the position of the token in each slot ``[B, S]`` int32, -1 when empty.
        length: the slots filled so far, i.e. the next slot to write (int32 scalar);
            every row writes the same slots.
    """

    k: jax.Array
    v: jax.Array
    pos: jax.Array
    length: jax.Array


# --------------------------------------------------------------------------- init


def param_shapes(config: ModelConfig) -> dict[str, Any]:
    """The shape of every tensor of the params pytree for ``config``."""
    d, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q, kv, hd = config.q_size, config.kv_size, config.head_dim
    layers: dict[str, tuple[int, ...]] = {
        "input_norm": (n, d),
        "post_attn_norm": (n, d),
        "q_proj": (n, d, q),
        "k_proj": (n, d, kv),
        "v_proj": (n, d, kv),
        "o_proj": (n, q, d),
        "gate_proj": (n, d, f),
        "up_proj": (n, d, f),
        "down_proj": (n, f, d),
    }
    if config.qkv_bias:
        layers |= {"q_bias": (n, q), "k_bias": (n, kv), "v_bias": (n, kv)}
    if config.qk_norm:
        layers |= {"q_norm": (n, hd), "k_norm": (n, hd)}
    shapes: dict[str, Any] = {
        "embed": (config.vocab_size, d),
        "layers": layers,
        "final_norm": (d,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (d, config.vocab_size)
    return shapes


def init_params(config: ModelConfig, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Random weights as Hugging Face initialises them (normal(0, 0.02), norms 1, biases 0).

    Args:
        config: the architecture.
        key: a JAX PRNG key.
        dtype: the dtype of every tensor.

    Returns:
        The params pytree: ``embed [V, D]``, ``layers`` (each tensor stacked on a
        leading ``L`` axis, matrices ``[in, out]``), ``final_norm [D]`` and, unless
        the embeddings are tied, ``lm_head [D, V]``.
    """
    shapes = param_shapes(config)
    flat = [("embed", shapes["embed"]), ("final_norm", shapes["final_norm"])]
    flat += [(f"layers.{k}", s) for k, s in shapes["layers"].items()]
    if "lm_head" in shapes:
        flat.append(("lm_head", shapes["lm_head"]))
    keys = jax.random.split(key, len(flat))
    out: Params = {"layers": {}}
    for (name, shape), k in zip(flat, keys, strict=True):
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("norm"):
            value = jnp.ones(shape, dtype)
        elif leaf.endswith("bias"):
            value = jnp.zeros(shape, dtype)
        else:
            value = (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype)
        if name.startswith("layers."):
            out["layers"][leaf] = value
        else:
            out[name] = value
    return out


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: Any = jnp.float32) -> KVCache:
    """An empty cache for ``batch`` sequences of up to ``max_len`` tokens."""
    shape = (config.num_hidden_layers, batch, max_len, config.num_key_value_heads, config.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        pos=jnp.full((batch, max_len), -1, jnp.int32),
        length=jnp.zeros((), jnp.int32),
    )


# ----------------------------------------------------------------------- pieces


def _rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin ``[B, T, 1, hd / 2]`` (float32) for integer ``positions [B, T]``."""
    inv = jnp.asarray(inverse_frequencies(config))
    angles = positions.astype(jnp.float32)[..., None] * inv
    return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x [B, T, H, hd]``: HF's ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    x1 = x[..., :half].astype(jnp.float32)
    x2 = x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float, dtype: Any) -> jax.Array:
    """HF RMSNorm: normalise in float32, cast back, then scale by ``weight``."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(dtype) * xf.astype(dtype)


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class _Ctx(NamedTuple):
    """What every layer needs besides its own weights (static or shared)."""

    config: ModelConfig
    dtype: Any
    lora_scale: float
    lora_dropout: float


def _proj(
    ctx: _Ctx,
    x: jax.Array,
    p: dict[str, jax.Array],
    lp: dict[str, dict[str, jax.Array]],
    name: str,
    key: jax.Array | None,
) -> jax.Array:
    """``x @ W (+ bias) (+ LoRA)`` for projection ``name`` of one layer."""
    y = jnp.dot(x, p[name].astype(ctx.dtype))
    bias = p.get(name[0] + "_bias") if name in ("q_proj", "k_proj", "v_proj") else None
    if bias is not None:
        y = y + bias.astype(ctx.dtype)
    adapter = lp.get(name)
    if adapter is not None:
        sub = None if key is None else jax.random.fold_in(key, PROJECTIONS.index(name))
        xa = jnp.dot(_dropout(x, ctx.lora_dropout, sub), adapter["a"].astype(ctx.dtype))
        y = y + (jnp.dot(xa, adapter["b"].astype(ctx.dtype)) * ctx.lora_scale).astype(ctx.dtype)
    return y


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention.

    Args:
        q: ``[B, T, Hq, hd]``.
        k: ``[B, S, Hkv, hd]``.
        v: ``[B, S, Hkv, hd]``.
        mask: bool, broadcastable to ``[B, T, S]``; True where a query may attend.

    Returns:
        ``[B, T, Hq * hd]``.
    """
    b, t, hq, hd = q.shape
    hkv = k.shape[2]
    qg = (q * jnp.asarray(hd**-0.5, q.dtype)).reshape(b, t, hkv, hq // hkv, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, hq * hd)


def _layer(
    ctx: _Ctx,
    h: jax.Array,
    p: dict[str, jax.Array],
    lp: dict[str, dict[str, jax.Array]],
    key: jax.Array | None,
    rope: tuple[jax.Array, jax.Array],
    mask: jax.Array,
    cache: tuple[jax.Array, jax.Array, jax.Array] | None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """One decoder layer; with ``cache = (k, v, index)`` it writes and reads the cache.

    The projections run on ``[B * T, D]`` matrices: XLA's CPU backend runs a 2-D
    matmul and its gradient several times faster than the same 3-D ``dot_general``.
    """
    cfg, dt = ctx.config, ctx.dtype
    b, t, d = h.shape
    hd = cfg.head_dim
    h = h.reshape(b * t, d)
    x = _rms_norm(h, p["input_norm"], cfg.rms_norm_eps, dt)
    q = _proj(ctx, x, p, lp, "q_proj", key).reshape(b, t, cfg.num_attention_heads, hd)
    k = _proj(ctx, x, p, lp, "k_proj", key).reshape(b, t, cfg.num_key_value_heads, hd)
    v = _proj(ctx, x, p, lp, "v_proj", key).reshape(b, t, cfg.num_key_value_heads, hd)
    if cfg.qk_norm:
        q = _rms_norm(q, p["q_norm"], cfg.rms_norm_eps, dt)
        k = _rms_norm(k, p["k_norm"], cfg.rms_norm_eps, dt)
    q = _apply_rope(q, *rope)
    k = _apply_rope(k, *rope)
    new_cache = None
    if cache is not None:
        ck, cv, index = cache
        zero = jnp.zeros((), jnp.int32)
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (zero, index, zero, zero))
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (zero, index, zero, zero))
        new_cache = (ck, cv)
        k, v = ck.astype(dt), cv.astype(dt)
    attn = _attention(q, k, v, mask).reshape(b * t, cfg.q_size)
    h = h + _proj(ctx, attn, p, lp, "o_proj", key)
    x = _rms_norm(h, p["post_attn_norm"], cfg.rms_norm_eps, dt)
    gate = _proj(ctx, x, p, lp, "gate_proj", key)
    up = _proj(ctx, x, p, lp, "up_proj", key)
    h = h + _proj(ctx, jax.nn.silu(gate) * up, p, lp, "down_proj", key)
    return h.reshape(b, t, d), new_cache


def _compute_dtype(params: Params, compute_dtype: Any) -> Any:
    return jnp.dtype(compute_dtype) if compute_dtype is not None else params["embed"].dtype


def _check_lora(config: ModelConfig, lora: LoraParams | None) -> LoraParams:
    if not lora:
        return {}
    for name in lora:
        if name not in PROJECTIONS:
            raise ConfigError("lora.target_modules", f"unknown projection {name!r}")
        if lora[name]["a"].shape[0] != config.num_hidden_layers:
            raise ConfigError(
                "lora", f"{name}: adapters must be stacked on {config.num_hidden_layers} layers"
            )
    return lora


def _run_layers(
    params: Params,
    config: ModelConfig,
    h: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    *,
    lora: LoraParams | None,
    lora_scale: float,
    lora_dropout: float,
    dropout_key: jax.Array | None,
    remat: bool,
    dtype: Any,
    cache: KVCache | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    ctx = _Ctx(config, dtype, lora_scale, lora_dropout)
    rope = _rope_tables(config, positions)
    lp = _check_lora(config, lora)
    use_dropout = dropout_key is not None and lora_dropout > 0.0 and bool(lp)
    keys = None
    if use_dropout and dropout_key is not None:
        keys = jax.random.split(dropout_key, config.num_hidden_layers)

    def body(carry: jax.Array, xs: dict[str, Any]) -> tuple[jax.Array, Any]:
        layer_cache = None if cache is None else (xs["ck"], xs["cv"], cache.length)
        out, new_cache = _layer(
            ctx, carry, xs["p"], xs["lp"], xs.get("key"), rope, mask, layer_cache
        )
        return out, new_cache

    step: Callable[[jax.Array, dict[str, Any]], tuple[jax.Array, Any]] = body
    if remat:
        step = jax.checkpoint(body, prevent_cse=False)
    xs: dict[str, Any] = {"p": params["layers"], "lp": lp}
    if keys is not None:
        xs["key"] = keys
    if cache is not None:
        xs["ck"], xs["cv"] = cache.k, cache.v
    h, ys = jax.lax.scan(step, h, xs)
    return h, ys


# -------------------------------------------------------------------- forward


def hidden_states(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    lora: LoraParams | None = None,
    lora_scale: float = 1.0,
    lora_dropout: float = 0.0,
    dropout_key: jax.Array | None = None,
    remat: bool = False,
    compute_dtype: Any = None,
) -> jax.Array:
    """The final-norm hidden states ``[B, T, D]`` (compute dtype) of ``tokens [B, T]``.

    Args:
        params: the params pytree.
        config: the architecture.
        tokens: int32 token ids ``[B, T]``.
        positions: RoPE positions ``[B, T]`` (default ``0..T-1`` in every row).
        segment_ids: ``[B, T]`` ids of packed sequences: a token attends only to
            earlier tokens of the same segment (default: one segment per row).
        lora: optional LoRA adapters per projection.
        lora_scale: the LoRA multiplier (``alpha / r`` or ``alpha / sqrt(r)``).
        lora_dropout: dropout rate on the LoRA input; applied only with ``dropout_key``.
        dropout_key: PRNG key for LoRA dropout (None: no dropout, e.g. evaluation).
        remat: recompute each layer's activations in the backward pass.
        compute_dtype: dtype of the matmuls and activations (default: the params').
    """
    dtype = _compute_dtype(params, compute_dtype)
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))[None]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    h = jnp.take(params["embed"], tokens, axis=0).astype(dtype)
    h, _ = _run_layers(
        params,
        config,
        h,
        positions,
        mask,
        lora=lora,
        lora_scale=lora_scale,
        lora_dropout=lora_dropout,
        dropout_key=dropout_key,
        remat=remat,
        dtype=dtype,
    )
    return _rms_norm(h, params["final_norm"], config.rms_norm_eps, dtype)


def logits_from_hidden(params: Params, config: ModelConfig, h: jax.Array) -> jax.Array:
    """float32 logits ``[..., V]`` of final-norm hidden states ``h [..., D]``."""
    flat = h.reshape(-1, h.shape[-1])  # a 2-D matmul (see `_layer`)
    if config.tie_word_embeddings:
        head = params["embed"].astype(h.dtype)
        logits = jax.lax.dot_general(
            flat, head, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
        )
    else:
        logits = jnp.dot(
            flat, params["lm_head"].astype(h.dtype), preferred_element_type=jnp.float32
        )
    return logits.reshape(*h.shape[:-1], config.vocab_size)


def forward(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    lora: LoraParams | None = None,
    lora_scale: float = 1.0,
    lora_dropout: float = 0.0,
    dropout_key: jax.Array | None = None,
    remat: bool = False,
    compute_dtype: Any = None,
) -> jax.Array:
    """float32 logits ``[B, T, V]`` of ``tokens [B, T]`` (arguments as in `hidden_states`)."""
    h = hidden_states(
        params,
        config,
        tokens,
        positions=positions,
        segment_ids=segment_ids,
        lora=lora,
        lora_scale=lora_scale,
        lora_dropout=lora_dropout,
        dropout_key=dropout_key,
        remat=remat,
        compute_dtype=compute_dtype,
    )
    return logits_from_hidden(params, config, h)


# ------------------------------------------------------------------ KV cache


def prefill(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    cache: KVCache,
    *,
    positions: jax.Array | None = None,
    valid: jax.Array | None = None,
    lora: LoraParams | None = None,
    lora_scale: float = 1.0,
    compute_dtype: Any = None,
    all_logits: bool = False,
) -> tuple[jax.Array, KVCache]:
    """Run ``tokens [B, T]`` through the model, writing slots ``length..length+T`` of ``cache``.

    Args:
        params: the params pytree.
        config: the architecture.
        tokens: int32 ``[B, T]``.
        cache: from `init_cache` (or a previous call).
        positions: ``[B, T]`` positions (default: continuing from ``cache.length``).
        valid: bool ``[B, T]``; False marks padding that nothing attends to.
        lora: optional LoRA adapters; lora_scale their multiplier.
        compute_dtype: as in `forward`.
        all_logits: return logits of every position ``[B, T, V]`` instead of the last ``[B, V]``.

    Returns:
        ``(logits, cache)``: float32 logits and the updated cache.
    """
    dtype = _compute_dtype(params, compute_dtype)
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(cache.length + jnp.arange(t, dtype=jnp.int32), (b, t))
    positions = positions.astype(jnp.int32)
    slot_pos = positions if valid is None else jnp.where(valid, positions, -1)
    pos = jax.lax.dynamic_update_slice(
        cache.pos, slot_pos, (jnp.zeros((), jnp.int32), cache.length)
    )
    mask = (pos[:, None, :] >= 0) & (pos[:, None, :] <= positions[:, :, None])
    h = jnp.take(params["embed"], tokens, axis=0).astype(dtype)
    h, kv = _run_layers(
        params,
        config,
        h,
        positions,
        mask,
        lora=lora,
        lora_scale=lora_scale,
        lora_dropout=0.0,
        dropout_key=None,
        remat=False,
        dtype=dtype,
        cache=cache,
    )
    assert kv is not None
    if not all_logits:
        h = h[:, -1]
    h = _rms_norm(h, params["final_norm"], config.rms_norm_eps, dtype)
    new_cache = KVCache(k=kv[0], v=kv[1], pos=pos, length=cache.length + t)
    return logits_from_hidden(params, config, h), new_cache


def decode_step(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    cache: KVCache,
    *,
    lora: LoraParams | None = None,
    lora_scale: float = 1.0,
    compute_dtype: Any = None,
) -> tuple[jax.Array, KVCache]:
    """One token per row: ``tokens [B]`` at ``positions [B]`` -> (logits ``[B, V]``, cache)."""
    return prefill(
        params,
        config,
        tokens[:, None],
        cache,
        positions=positions[:, None],
        lora=lora,
        lora_scale=lora_scale,
        compute_dtype=compute_dtype,
    )
