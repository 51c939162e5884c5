"""The Llama-family forward pass in MLX, for Apple Silicon GPUs.

It runs on the same parameter pytree as the JAX model (``params["layers"]``
stacked on axis 0, weights stored ``[in, out]``) and the same LoRA layout
(``lora[target] = {"a": [L, in, r], "b": [L, r, out]}``), which is also MLX's
own adapter orientation (``lora_a [in, r]``, ``lora_b [r, out]``), so
checkpoints and PEFT export are shared with the JAX backend.

Import this module only where ``mlx`` is installed (``trainsvc-lm[mlx]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from trainsvc_lm._config import ModelConfig
from trainsvc_lm._rope import inverse_frequencies

Tree = Any  # nested dicts of mx.array

_MLX_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def mlx_dtype(name: str) -> mx.Dtype:
    """The MLX dtype named ``float32``, ``bfloat16`` or ``float16``."""
    return _MLX_DTYPES[name]


def to_mlx(tree: Any, dtype: mx.Dtype | None = None) -> Tree:
    """Copy a nest of dicts of NumPy (or JAX) arrays into MLX arrays."""
    if isinstance(tree, Mapping):
        return {k: to_mlx(v, dtype) for k, v in tree.items()}
    array = np.asarray(tree)
    if array.dtype.name == "bfloat16":  # ml_dtypes: MLX reads it through float32
        array = array.astype(np.float32)
    out = mx.array(array)
    return out.astype(dtype) if dtype is not None and mx.issubdtype(out.dtype, mx.floating) else out


def to_numpy(tree: Tree) -> Any:
    """Copy a nest of dicts of MLX arrays into NumPy arrays (bfloat16 as float32)."""
    if isinstance(tree, Mapping):
        return {k: to_numpy(v) for k, v in tree.items()}
    if tree.dtype == mx.bfloat16:
        tree = tree.astype(mx.float32)
    return np.array(tree)


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    """RMSNorm as Hugging Face computes it: in float32, scaled in the input dtype."""
    x32 = x.astype(mx.float32)
    normed = x32 * mx.rsqrt(mx.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def _rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Apply RoPE (the ``rotate_half`` convention) to ``x [B, T, H, hd]``."""
    half = x.shape[-1] // 2
    rotated = mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


def _project(
    x: mx.array,
    layer: Mapping[str, mx.array],
    lora_layer: Mapping[str, Mapping[str, mx.array]],
    name: str,
    lora_scale: float,
    dropout: tuple[float, mx.array] | None,
) -> mx.array:
    y = x @ layer[name]
    if name in lora_layer:
        inner = x
        if dropout is not None:
            rate, key = dropout
            keep = mx.random.bernoulli(1.0 - rate, x.shape, key=key)
            inner = mx.where(keep, x / (1.0 - rate), mx.zeros_like(x))
        adapter = lora_layer[name]
        y = y + ((inner @ adapter["a"]) @ adapter["b"]) * lora_scale
    return y


def attention_mask(positions: mx.array, segment_ids: mx.array | None) -> mx.array:
    """Boolean ``[B, 1, T, T]``: causal within each packed segment."""
    t = positions.shape[1]
    index = mx.arange(t)
    mask = (index[:, None] >= index[None, :])[None, None]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask = mask & same[:, None]
    return mask


@dataclass
class LayerCache:
    """One layer's cached keys and values ``[B, S, Hkv, hd]`` (empty until the first call)."""

    keys: mx.array | None = None
    values: mx.array | None = None

    @property
    def length(self) -> int:
        """Positions cached."""
        return 0 if self.keys is None else int(self.keys.shape[1])


def _decoder_layer(
    h: mx.array,
    config: ModelConfig,
    layer: Mapping[str, mx.array],
    lora_layer: Mapping[str, Mapping[str, mx.array]],
    rope_and_mask: tuple[mx.array, mx.array, mx.array],
    lora_scale: float,
    dropout: tuple[float, mx.array | None],
    cache: LayerCache | None = None,
) -> mx.array:
    """One pre-norm decoder layer: attention then SwiGLU MLP, each with a residual.

    With ``cache``, the layer's keys and values are appended to it and the queries
    attend to everything cached before them too.
    """
    cos, sin, mask = rope_and_mask
    rate, keys = dropout
    batch, length, _ = h.shape
    hq, hkv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim

    def proj(x: mx.array, name: str, slot: int) -> mx.array:
        drop = None if keys is None else (rate, keys[slot])
        return _project(x, layer, lora_layer, name, lora_scale, drop)

    x = rms_norm(h, layer["input_norm"], config.rms_norm_eps)
    q, k, v = proj(x, "q_proj", 0), proj(x, "k_proj", 1), proj(x, "v_proj", 2)
    if config.qkv_bias:
        q, k, v = q + layer["q_bias"], k + layer["k_bias"], v + layer["v_bias"]
    q = q.reshape(batch, length, hq, hd)
    k = k.reshape(batch, length, hkv, hd)
    v = v.reshape(batch, length, hkv, hd)
    if config.qk_norm:
        q = rms_norm(q, layer["q_norm"], config.rms_norm_eps)
        k = rms_norm(k, layer["k_norm"], config.rms_norm_eps)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    if cache is not None:
        if cache.keys is not None and cache.values is not None:
            k = mx.concatenate([cache.keys, k], axis=1)
            v = mx.concatenate([cache.values, v], axis=1)
        cache.keys, cache.values = k, v
    attended = mx.fast.scaled_dot_product_attention(
        q.transpose(0, 2, 1, 3),
        k.transpose(0, 2, 1, 3),
        v.transpose(0, 2, 1, 3),
        scale=hd**-0.5,
        mask=mask,
    )
    attended = attended.transpose(0, 2, 1, 3).reshape(batch, length, hq * hd)
    h = h + proj(attended, "o_proj", 3)
    x = rms_norm(h, layer["post_attn_norm"], config.rms_norm_eps)
    gate, up = proj(x, "gate_proj", 4), proj(x, "up_proj", 5)
    return h + proj(gate * mx.sigmoid(gate) * up, "down_proj", 6)


def hidden_states(
    params: Tree,
    config: ModelConfig,
    tokens: mx.array,
    *,
    positions: mx.array | None = None,
    segment_ids: mx.array | None = None,
    lora: Tree | None = None,
    lora_scale: float = 1.0,
    lora_dropout: float = 0.0,
    dropout_key: mx.array | None = None,
    cache: list[LayerCache] | None = None,
) -> mx.array:
    """The final-norm hidden states ``[B, T, D]`` for ``tokens [B, T]``, optionally with LoRA.

    Args:
        params: the model's parameters as MLX arrays (see `to_mlx`).
        config: the model's architecture.
        tokens: int32 token ids.
        positions: RoPE positions ``[B, T]`` (default ``0 .. T-1``; packed rows restart per segment).
        segment_ids: packed-row segment ids; attention stays inside a segment.
        lora: LoRA adapters per target (``{"a": [L, in, r], "b": [L, r, out]}``).
        lora_scale: alpha / r (or alpha / sqrt(r) with rsLoRA).
        lora_dropout: dropout on the adapters' input while training (needs ``dropout_key``).
        dropout_key: PRNG key for the dropout masks.
        cache: one `LayerCache` per layer for incremental decoding: the tokens continue
            the cached ones (give their ``positions``); the caches are extended in place.
    """
    batch, length = tokens.shape
    if positions is None:
        positions = mx.broadcast_to(mx.arange(length)[None], (batch, length))
    inv_freq = mx.array(inverse_frequencies(config))
    angles = positions.astype(mx.float32)[..., None] * inv_freq
    angles = mx.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = mx.cos(angles), mx.sin(angles)
    mask = attention_mask(positions, segment_ids)
    cached = cache[0].length if cache else 0
    if cached:  # the new tokens see every cached one, and each other causally
        mask = mx.concatenate([mx.ones((1, 1, length, cached), mx.bool_), mask], axis=-1)
    lora = lora or {}
    keys = (
        mx.random.split(dropout_key, config.num_hidden_layers * 7)
        if dropout_key is not None and lora_dropout > 0
        else None
    )

    h = params["embed"][tokens]
    for i in range(config.num_hidden_layers):
        layer = {name: value[i] for name, value in params["layers"].items()}
        lora_layer = {t: {"a": ab["a"][i], "b": ab["b"][i]} for t, ab in lora.items()}
        layer_keys = None if keys is None else keys[i * 7 : (i + 1) * 7]
        h = _decoder_layer(
            h,
            config,
            layer,
            lora_layer,
            (cos, sin, mask),
            lora_scale,
            (lora_dropout, layer_keys),
            None if cache is None else cache[i],
        )

    return rms_norm(h, params["final_norm"], config.rms_norm_eps)


def logits_from_hidden(params: Tree, config: ModelConfig, h: mx.array) -> mx.array:
    """Float32 logits from final hidden states (the tied or untied head)."""
    head: mx.array = params["embed"].T if config.tie_word_embeddings else params["lm_head"]
    logits: mx.array = (h @ head).astype(mx.float32)
    return logits


def forward(params: Tree, config: ModelConfig, tokens: mx.array, **kwargs: Any) -> mx.array:
    """Logits (float32, ``[B, T, V]``); arguments as for `hidden_states`."""
    return logits_from_hidden(params, config, hidden_states(params, config, tokens, **kwargs))


def generate(
    params: Tree,
    config: ModelConfig,
    prompt: list[int],
    *,
    max_new_tokens: int,
    stop_token_ids: tuple[int, ...] = (),
    temperature: float = 0.0,
    key: mx.array | None = None,
    lora: Tree | None = None,
    lora_scale: float = 1.0,
) -> list[int]:
    """New tokens after ``prompt`` (greedy at temperature 0), cut at the first stop token.

    One prefill of the prompt, then one cached step per token.
    """
    cache = [LayerCache() for _ in range(config.num_hidden_layers)]
    tokens = mx.array([prompt], mx.int32)
    positions = mx.arange(len(prompt))[None]
    out: list[int] = []
    for _ in range(max_new_tokens):
        h = hidden_states(
            params,
            config,
            tokens,
            positions=positions,
            lora=lora,
            lora_scale=lora_scale,
            cache=cache,
        )
        logits = logits_from_hidden(params, config, h[:, -1])
        if temperature > 0:
            assert key is not None, "sampling at temperature > 0 needs a key"
            key, sub = mx.random.split(key)
            choice = mx.random.categorical(logits / temperature, key=sub)
        else:
            choice = mx.argmax(logits, axis=-1)
        token = int(np.array(choice).reshape(-1)[0])
        if token in stop_token_ids:
            break
        out.append(token)
        tokens = mx.array([[token]], mx.int32)
        positions = mx.array([[len(prompt) + len(out) - 1]])
    return out
