"""Rotary position embedding frequencies, as Hugging Face computes them (NumPy).

One definition serves the JAX model, the MLX model and the tests: the inverse
frequencies of the default RoPE (``rope_theta``) and of Llama 3.1's
``rope_type: "llama3"`` scaling, which divides the low frequencies by
``factor``, keeps the high ones and blends smoothly in between.
"""

from __future__ import annotations

import math

import numpy as np

from trainsvc_lm._config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """The ``head_dim // 2`` inverse frequencies (float32) of the model's RoPE."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq.astype(np.float32)
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
