"""Model configuration parsed from a Hugging Face ``config.json``.

One frozen dataclass covers the Llama family this library implements: Llama 2/3
(with Llama 3.1 RoPE scaling), Mistral, Qwen2/2.5 (bias on q/k/v) and Qwen3
(RMSNorm on q and k per head). The family decides the two switches that differ
between them (``qkv_bias``, ``qk_norm``); everything else is read from the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainsvc_lm._errors import ConfigError, ModelLoadError, UnsupportedArchitectureError

# architectures[0] in config.json -> family name.
ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1-style RoPE frequency scaling (``rope_type: "llama3"``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of one decoder-only model (field names follow Hugging Face)."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    torch_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def architecture(self) -> str:
        """The ``architectures[0]`` value Hugging Face writes for this family."""
        return next(a for a, f in ARCHITECTURES.items() if f == self.family)

    @property
    def q_size(self) -> int:
        """Width of the query projection's output."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of each of the key and value projections' outputs."""
        return self.num_key_value_heads * self.head_dim

    def num_parameters(self) -> int:
        """Parameters of the full model (embeddings and head included)."""
        d, f, layers = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        attn = d * self.q_size + 2 * d * self.kv_size + self.q_size * d
        if self.qkv_bias:
            attn += self.q_size + 2 * self.kv_size
        if self.qk_norm:
            attn += 2 * self.head_dim
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + layers * per_layer + d + head

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Parse a Hugging Face config dict.

        Raises:
            UnsupportedArchitectureError: an architecture outside `ARCHITECTURES`.
            ConfigError: a missing or invalid field (named).
        """
        archs = data.get("architectures") or []
        family = ARCHITECTURES.get(archs[0]) if archs else None
        if family is None:
            family = data.get("model_type") if data.get("model_type") in FAMILIES else None
        if family is None:
            raise UnsupportedArchitectureError(
                source,
                f"architecture {archs[0] if archs else data.get('model_type')!r} is not supported; "
                f"supported: {', '.join(ARCHITECTURES)}",
            )

        def need_int(name: str, low: int = 1) -> int:
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(name, f"must be an integer >= {low}, got {value!r} in {source}")
            return value

        heads = need_int("num_attention_heads")
        hidden = need_int("hidden_size")
        kv_heads = data.get("num_key_value_heads") or heads
        if not isinstance(kv_heads, int) or heads % kv_heads:
            raise ConfigError(
                "num_key_value_heads",
                f"must divide num_attention_heads ({heads}), got {kv_heads!r} in {source}",
            )
        head_dim = data.get("head_dim") or hidden // heads
        if family in ("llama", "mistral") and data.get("attention_bias"):
            raise ConfigError("attention_bias", f"true is not supported for {family} ({source})")
        if data.get("hidden_act", "silu") != "silu":
            raise ConfigError("hidden_act", f"only 'silu' is supported, got {data['hidden_act']!r}")
        eos = data.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        dtype = data.get("torch_dtype") or data.get("dtype") or "float32"
        if dtype not in DTYPES:
            raise ConfigError("torch_dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return cls(
            family=family,
            vocab_size=need_int("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need_int("intermediate_size"),
            num_hidden_layers=need_int("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=int(kv_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            rope_theta=float(data.get("rope_theta", 10_000.0)),
            rope_scaling=_rope_scaling(data.get("rope_scaling"), source),
            max_position_embeddings=int(data.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2",
            qk_norm=family == "qwen3",
            torch_dtype=dtype,
            bos_token_id=data.get("bos_token_id"),
            eos_token_ids=tuple(int(e) for e in eos_ids),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read ``config.json`` (or a model directory containing it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ModelLoadError(str(path), "missing: a model directory needs config.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(str(path), f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelLoadError(str(path), "must hold a JSON object")
        return cls.from_dict(data, str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents Hugging Face transformers would write."""
        out: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.torch_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids)
            if len(self.eos_token_ids) != 1
            else self.eos_token_ids[0],
        }
        if self.rope_scaling is not None:
            out["rope_scaling"] = {"rope_type": "llama3", **asdict(self.rope_scaling)}
        if self.family in ("llama", "mistral"):
            out["attention_bias"] = False
            out["mlp_bias"] = False
        return out


def _rope_scaling(value: Any, source: str) -> RopeScaling | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError("rope_scaling", f"must be an object or null in {source}")
    kind = value.get("rope_type", value.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ConfigError(
            "rope_scaling.rope_type", f"only 'llama3' (or none) is supported, got {kind!r}"
        )
    try:
        return RopeScaling(
            factor=float(value["factor"]),
            low_freq_factor=float(value["low_freq_factor"]),
            high_freq_factor=float(value["high_freq_factor"]),
            original_max_position_embeddings=int(value["original_max_position_embeddings"]),
        )
    except KeyError as exc:
        raise ConfigError(f"rope_scaling.{exc.args[0]}", f"missing in {source}") from None
