"""Tiny configs and random weights shared by the model and sampler tests."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from trainsvc_lm import ModelConfig
from trainsvc_lm._model import PROJECTIONS, param_shapes

ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
ARCH["qwen3"] = "Qwen3ForCausalLM"
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def hf_config(
    family: str, *, heads: int = 4, kv_heads: int = 2, tied: bool = False, **extra: Any
) -> dict[str, Any]:
    """A tiny config.json dict (head_dim 16, 2 layers)."""
    return {
        "architectures": [ARCH[family]],
        "model_type": family,
        "vocab_size": 97,
        "hidden_size": 48,
        "intermediate_size": 80,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        **extra,
    }


def random_params(config: ModelConfig, seed: int = 0) -> dict[str, Any]:
    """Weights with O(1) logits and non-trivial norms and biases (NumPy, not init_params)."""
    rng = np.random.default_rng(seed)

    def make(name: str, shape: tuple[int, ...]) -> jax.Array:
        if name.endswith("norm"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            value = 0.2 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(shape[-2] if len(shape) > 1 else 1)
        return jnp.asarray(value, jnp.float32)

    shapes = param_shapes(config)
    out: dict[str, Any] = {k: make(k, s) for k, s in shapes.items() if k != "layers"}
    out["embed"] = jnp.asarray(rng.standard_normal(shapes["embed"]), jnp.float32)
    out["layers"] = {k: make(k, s) for k, s in shapes["layers"].items()}
    return out


def rel_err(ours: Any, ref: Any) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def random_lora(
    config: ModelConfig, rank: int = 4, seed: int = 7
) -> dict[str, dict[str, jax.Array]]:
    rng = np.random.default_rng(seed)
    shapes = param_shapes(config)["layers"]
    out = {}
    for name in PROJECTIONS:
        n, d_in, d_out = shapes[name]
        out[name] = {
            "a": jnp.asarray(rng.standard_normal((n, d_in, rank)) / np.sqrt(d_in), jnp.float32),
            "b": jnp.asarray(rng.standard_normal((n, rank, d_out)) * 0.3, jnp.float32),
        }
    return out
