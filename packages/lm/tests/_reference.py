"""An independent NumPy (float64) implementation of Hugging Face transformers' decoders.

Written from the semantics of ``modeling_llama.py`` / ``modeling_mistral.py`` /
``modeling_qwen2.py`` / ``modeling_qwen3.py`` (eager attention), on purpose
without sharing code with ``trainsvc_lm._model``: it reads the Hugging Face
``config.json`` dict and the HF-named tensors (``nn.Linear`` weights ``[out, in]``)
and mirrors the HF code path: ``LlamaRotaryEmbedding`` (default and ``llama3``
inv_freq), ``rotate_half``, ``repeat_kv``, causal mask, softmax, SwiGLU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Tensors = dict[str, np.ndarray]


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    variance = np.mean(x**2, axis=-1, keepdims=True)
    return weight * (x / np.sqrt(variance + eps))


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    y = x @ weight.T
    return y if bias is None else y + bias


def _default_inv_freq(cfg: dict[str, Any], dim: int) -> np.ndarray:
    base = cfg.get("rope_theta", 10000.0)
    # torch: arange(0, dim, 2, int64).float() / dim, base ** that, in float32.
    exponents = (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)).astype(np.float32)
    return (1.0 / (np.float32(base) ** exponents)).astype(np.float32)


def _llama3_inv_freq(cfg: dict[str, Any], dim: int) -> np.ndarray:
    # transformers.modeling_rope_utils._compute_llama3_parameters
    inv_freq = _default_inv_freq(cfg, dim)
    rs = cfg["rope_scaling"]
    factor = rs["factor"]
    low_freq_factor = rs["low_freq_factor"]
    high_freq_factor = rs["high_freq_factor"]
    old_context_len = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    smoothed_inv_freq = (
        1 - smooth_factor
    ) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = np.logical_not(wavelen < high_freq_wavelen) * np.logical_not(
        wavelen > low_freq_wavelen
    )
    return np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama).astype(np.float32)


def _rotary(cfg: dict[str, Any], head_dim: int, position_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    rs = cfg.get("rope_scaling")
    kind = None if rs is None else rs.get("rope_type", rs.get("type"))
    inv_freq = (
        _llama3_inv_freq(cfg, head_dim) if kind == "llama3" else _default_inv_freq(cfg, head_dim)
    )
    # freqs = inv_freq @ position_ids in float32, emb = cat(freqs, freqs)
    freqs = (position_ids.astype(np.float32)[..., None] * inv_freq[None, None, :]).astype(
        np.float32
    )
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float64), np.sin(emb).astype(np.float64)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _repeat_kv(x: np.ndarray, n_rep: int) -> np.ndarray:
    # [b, kv_heads, s, d] -> [b, kv_heads * n_rep, s, d]; head j*n_rep+r copies kv head j
    b, kvh, s, d = x.shape
    return np.broadcast_to(x[:, :, None], (b, kvh, n_rep, s, d)).reshape(b, kvh * n_rep, s, d)


def reference_logits(
    cfg: dict[str, Any],
    tensors: Tensors,
    input_ids: np.ndarray,
    position_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Logits ``[B, T, V]`` (float64) of a causal LM in Hugging Face layout.

    Args:
        cfg: the ``config.json`` dict.
        tensors: HF tensor names -> arrays (any float dtype; computed in float64).
        input_ids: ``[B, T]`` ints.
        position_ids: ``[B, T]`` (default ``arange(T)``).
    """
    w = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    model_type = cfg["model_type"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    eps = cfg["rms_norm_eps"]
    bsz, q_len = input_ids.shape
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(q_len), (bsz, q_len))
    cos, sin = _rotary(cfg, head_dim, position_ids)
    cos, sin = cos[:, None], sin[:, None]  # unsqueeze_dim=1 -> [b, 1, t, d]
    causal = np.triu(np.full((q_len, q_len), -np.inf), k=1)

    hidden = w["model.embed_tokens.weight"][input_ids]
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        residual = hidden
        x = _rms_norm(hidden, w[pre + "input_layernorm.weight"], eps)
        bias = model_type == "qwen2"
        q = _linear(
            x,
            w[pre + "self_attn.q_proj.weight"],
            w[pre + "self_attn.q_proj.bias"] if bias else None,
        )
        k = _linear(
            x,
            w[pre + "self_attn.k_proj.weight"],
            w[pre + "self_attn.k_proj.bias"] if bias else None,
        )
        v = _linear(
            x,
            w[pre + "self_attn.v_proj.weight"],
            w[pre + "self_attn.v_proj.bias"] if bias else None,
        )
        q = q.reshape(bsz, q_len, -1, head_dim)
        k = k.reshape(bsz, q_len, -1, head_dim)
        v = v.reshape(bsz, q_len, -1, head_dim)
        if model_type == "qwen3":  # Qwen3Attention: q_norm / k_norm on the head dim, then transpose
            q = _rms_norm(q, w[pre + "self_attn.q_norm.weight"], eps)
            k = _rms_norm(k, w[pre + "self_attn.k_norm.weight"], eps)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = _repeat_kv(k, n_heads // n_kv)
        v = _repeat_kv(v, n_heads // n_kv)
        scores = (q @ k.transpose(0, 1, 3, 2)) * head_dim**-0.5 + causal
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(bsz, q_len, -1)
        hidden = residual + _linear(attn, w[pre + "self_attn.o_proj.weight"])
        residual = hidden
        x = _rms_norm(hidden, w[pre + "post_attention_layernorm.weight"], eps)
        gate = _linear(x, w[pre + "mlp.gate_proj.weight"])
        up = _linear(x, w[pre + "mlp.up_proj.weight"])
        silu = gate / (1.0 + np.exp(-gate))
        hidden = residual + _linear(silu * up, w[pre + "mlp.down_proj.weight"])
    hidden = _rms_norm(hidden, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return hidden @ head.T
