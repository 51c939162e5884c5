"""LoRA adapters: the validated configuration, initialisation, merging and a memory estimate.

A LoRA target is one of the seven linear maps of a decoder layer. Its adapter is a
pair ``a`` ``[L, in, r]`` and ``b`` ``[L, r, out]`` (stacked over the ``L`` layers,
like the base weights), and its output is added to the base projection as
``(dropout(x) @ a) @ b * scale`` where ``scale = alpha / r`` (``alpha / sqrt(r)``
with rsLoRA). ``b`` starts at zero, so an untrained adapter leaves the model as it was.

This module imports JAX only inside :func:`init_lora`, so that validating a
configuration (the CLI does it before anything else) stays fast.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainsvc_lm._config import ModelConfig
from trainsvc_lm._errors import ConfigError

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTENTION_TARGETS + MLP_TARGETS
"""Every module a LoRA adapter can target, in the order Hugging Face lists a layer's."""

MIN_TARGETS = 4
RANK_RANGE = (8, 64)
DROPOUT_RANGE = (0.0, 0.2)

Lora = dict[str, dict[str, Any]]
"""LoRA parameters: ``{target: {"a": [L, in, r], "b": [L, r, out]}}``."""


class LoraAlphaWarning(UserWarning):
    """``lora.alpha`` is not the recommended ``2 * lora.rank``."""


@dataclass(frozen=True)
class LoraConfig:
    """A LoRA adapter's hyper-parameters, validated on construction.

    Attributes:
        rank: the adapter's inner dimension ``r``, 8 to 64.
        alpha: the scale numerator, a positive integer (PEFT's ``lora_alpha``, which
            Ollama reads as uint32); ``2 * rank`` is recommended, anything else warns
            with :class:`LoraAlphaWarning`.
        dropout: dropout on the adapter's input during training, 0 to 0.2.
        use_rslora: scale by ``alpha / sqrt(rank)`` instead of ``alpha / rank``.
        target_modules: at least four of :data:`TARGETS`, no repeats.

    Raises:
        ConfigError: a value out of range, named by its field (``lora.rank``, ...).
    """

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    use_rslora: bool = False
    target_modules: tuple[str, ...] = field(default=TARGETS)

    def __post_init__(self) -> None:
        rank, alpha = self.rank, self.alpha
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ConfigError("lora.rank", f"must be an integer in [8, 64], got {rank!r}")
        if not RANK_RANGE[0] <= rank <= RANK_RANGE[1]:
            raise ConfigError("lora.rank", f"must be in [8, 64], got {rank}")
        if isinstance(alpha, float) and float(alpha).is_integer():
            alpha = int(alpha)
            object.__setattr__(self, "alpha", alpha)
        if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 1:
            raise ConfigError(
                "lora.alpha",
                f"must be a positive integer (PEFT's lora_alpha; Ollama reads it as "
                f"uint32), got {alpha!r}",
            )
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, int | float):
            raise ConfigError("lora.dropout", f"must be a number in [0, 0.2], got {dropout!r}")
        if not (DROPOUT_RANGE[0] <= float(dropout) <= DROPOUT_RANGE[1]):
            raise ConfigError("lora.dropout", f"must be in [0, 0.2], got {dropout!r}")
        object.__setattr__(self, "dropout", float(dropout))
        if not isinstance(self.use_rslora, bool):
            raise ConfigError("lora.use_rslora", f"must be true or false, got {self.use_rslora!r}")
        targets: Any = self.target_modules
        if isinstance(targets, str) or not isinstance(targets, tuple | list):
            raise ConfigError("lora.target_modules", f"must be a list of names, got {targets!r}")
        targets = tuple(targets)
        object.__setattr__(self, "target_modules", targets)
        for name in targets:
            if name not in TARGETS:
                raise ConfigError(
                    "lora.target_modules",
                    f"{name!r} is not a module of a Llama-family layer; "
                    f"allowed: {', '.join(TARGETS)}",
                )
        if len(set(targets)) != len(targets):
            raise ConfigError("lora.target_modules", f"lists a module twice: {list(targets)}")
        if len(targets) < MIN_TARGETS:
            raise ConfigError(
                "lora.target_modules",
                f"needs at least {MIN_TARGETS} modules (e.g. q_proj, k_proj, v_proj, o_proj), "
                f"got {len(targets)}: {list(targets)}",
            )
        if alpha != 2 * rank:
            warnings.warn(
                f"lora.alpha is {alpha}; 2 * lora.rank = {2 * rank} is recommended",
                LoraAlphaWarning,
                stacklevel=3,
            )

    @property
    def scale(self) -> float:
        """The factor on the adapter's output: ``alpha / rank``, or ``alpha / sqrt(rank)``."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraConfig:
        """Builds a config from a mapping such as a TOML ``[lora]`` table.

        Raises:
            ConfigError: an unknown key or an invalid value, named.
        """
        allowed = ("rank", "alpha", "dropout", "use_rslora", "target_modules")
        for key in data:
            if key not in allowed:
                raise ConfigError(f"lora.{key}", f"unknown field; allowed: {', '.join(allowed)}")
        values = dict(data)
        if "target_modules" in values and isinstance(values["target_modules"], list):
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that :meth:`from_dict` turns back into an equal config."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "use_rslora": self.use_rslora,
            "target_modules": list(self.target_modules),
        }


def target_shape(model: ModelConfig, target: str) -> tuple[int, int]:
    """The ``(in, out)`` widths of ``target``'s weight in ``model``.

    Raises:
        ConfigError: ``target`` is not a module of this architecture.
    """
    d, f = model.hidden_size, model.intermediate_size
    shapes = {
        "q_proj": (d, model.q_size),
        "k_proj": (d, model.kv_size),
        "v_proj": (d, model.kv_size),
        "o_proj": (model.q_size, d),
        "gate_proj": (d, f),
        "up_proj": (d, f),
        "down_proj": (f, d),
    }
    if target not in shapes:
        raise ConfigError(
            "lora.target_modules",
            f"the {model.family} architecture has no module {target!r}; it has {', '.join(shapes)}",
        )
    return shapes[target]


def check_targets(config: LoraConfig, model: ModelConfig) -> None:
    """Raises :class:`ConfigError` (``lora.target_modules``) for a target ``model`` lacks."""
    for target in config.target_modules:
        target_shape(model, target)


def init_lora(config: LoraConfig, model: ModelConfig, key: Any) -> Lora:
    """Fresh float32 adapters for every target: ``a`` uniform, ``b`` zero.

    ``a`` is drawn from U(-1/sqrt(in), 1/sqrt(in)), the bound PEFT's
    ``kaiming_uniform_(a=sqrt(5))`` gives; ``b = 0`` makes the initial model the base.

    Args:
        config: the adapter configuration.
        model: the base model's architecture.
        key: a ``jax.random`` key.
    """
    import jax
    import jax.numpy as jnp

    check_targets(config, model)
    layers = model.num_hidden_layers
    keys = jax.random.split(key, len(config.target_modules))
    out: Lora = {}
    for sub, target in zip(keys, config.target_modules, strict=True):
        fan_in, fan_out = target_shape(model, target)
        bound = 1.0 / math.sqrt(fan_in)
        out[target] = {
            "a": jax.random.uniform(sub, (layers, fan_in, config.rank), jnp.float32, -bound, bound),
            "b": jnp.zeros((layers, config.rank, fan_out), jnp.float32),
        }
    return out


def merge_lora(params: Mapping[str, Any], lora: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """The base parameters with every adapter folded in: ``W + a @ b * scale`` per target.

    Works on NumPy and JAX arrays alike; the sum is taken in float32 and cast back
    to each weight's dtype. ``params`` is not modified.
    """
    layers = dict(params["layers"])
    for target, ab in lora.items():
        weight = layers[target]
        delta = (ab["a"].astype("float32") @ ab["b"].astype("float32")) * scale
        layers[target] = (weight.astype("float32") + delta).astype(weight.dtype)
    return {**params, "layers": layers}


# ---------------------------------------------------------------------- memory

GB = 10**9
PLATFORM_BUDGETS: dict[str, int] = {"h100": 70 * GB, "m4": 28 * GB}
"""Bytes a run may plan to use: an H100's 80 GB and an M4's 32 GB of unified memory,
less headroom. Other platforms use :func:`host_memory_bytes` (CPU) or the device's own
limit (other GPUs)."""

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def host_memory_bytes() -> int:
    """This machine's physical RAM in bytes (``os.sysconf``)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return 16 * GB


def platform_budget(platform: str) -> int:
    """The memory budget in bytes of ``platform`` (``h100``, ``m4``, ``cpu``)."""
    if platform in PLATFORM_BUDGETS:
        return PLATFORM_BUDGETS[platform]
    if platform == "cpu":
        return host_memory_bytes()
    raise ConfigError(
        "train.platform", f"no memory budget known for {platform!r}; use h100, m4 or cpu"
    )


@dataclass(frozen=True)
class TargetMemory:
    """One target's share of a run's memory, in bytes (all layers).

    Attributes:
        base: the frozen base weight.
        lora: the adapter (float32).
        optimizer: AdamW's two moments and the gradient (float32, 3x ``lora``).
        activations: what the backward pass keeps for this target's adapter.
    """

    base: int
    lora: int
    optimizer: int
    activations: int


@dataclass(frozen=True)
class MemoryEstimate:
    """An upper-end estimate of a LoRA run's peak memory, in bytes.

    Attributes:
        platform: where the budget comes from.
        budget: the bytes allowed.
        base_weights: every base parameter (embeddings and norms included).
        lora_params: every adapter (float32).
        optimizer_state: AdamW moments and gradients of the adapters.
        activations: saved activations at ``batch x seq`` (per layer, or only the
            layer inputs plus one layer's when rematerialising), logits included.
        per_target: each target's share.
    """

    platform: str
    budget: int
    base_weights: int
    lora_params: int
    optimizer_state: int
    activations: int
    per_target: dict[str, TargetMemory]

    @property
    def total(self) -> int:
        """The estimated peak."""
        return self.base_weights + self.lora_params + self.optimizer_state + self.activations

    def fits(self) -> bool:
        """Whether :attr:`total` is within :attr:`budget`."""
        return self.total <= self.budget

    def describe(self) -> str:
        """One line: the parts, the total and the budget in GB."""

        def gb(n: int) -> str:
            return f"{n / GB:.2f} GB"

        return (
            f"memory estimate {gb(self.total)} of the {self.platform} budget {gb(self.budget)} "
            f"(base weights {gb(self.base_weights)}, LoRA {gb(self.lora_params)}, "
            f"optimizer+grads {gb(self.optimizer_state)}, activations {gb(self.activations)})"
        )

    def check(self) -> None:
        """Raises :class:`ConfigError` (field ``data.batch_size``) when the run does not fit."""
        if self.fits():
            return
        raise ConfigError(
            "data.batch_size",
            f"{self.describe()}: does not fit; lower data.batch_size or data.max_seq_len "
            "(raise optim.grad_accum to keep the effective batch), turn on train.remat, "
            "lower lora.rank or target fewer modules",
        )


def estimate_memory(
    config: LoraConfig,
    model: ModelConfig,
    *,
    batch_size: int,
    seq_len: int,
    remat: bool,
    weight_dtype: str,
    compute_dtype: str,
    platform: str,
    budget: int | None = None,
) -> MemoryEstimate:
    """Estimates the peak memory of training ``config`` on ``model``.

    Args:
        config: the adapter.
        model: the base architecture.
        batch_size: sequences per micro-batch.
        seq_len: tokens per sequence.
        remat: whether each layer's activations are recomputed in the backward pass.
        weight_dtype: the base weights' dtype (``float32``, ``bfloat16``, ``float16``).
        compute_dtype: the activations' dtype.
        platform: ``h100``, ``m4`` or ``cpu`` (names the budget).
        budget: bytes allowed; default :func:`platform_budget` of ``platform``.
    """
    check_targets(config, model)
    wbytes = _DTYPE_BYTES.get(weight_dtype, 4)
    abytes = _DTYPE_BYTES.get(compute_dtype, 4)
    tokens = batch_size * seq_len
    layers, r = model.num_hidden_layers, config.rank
    per_target: dict[str, TargetMemory] = {}
    for target in config.target_modules:
        fan_in, fan_out = target_shape(model, target)
        lora_bytes = layers * (fan_in * r + r * fan_out) * 4
        # Kept for the backward pass: the dropped-out input and x @ a, per layer.
        act = tokens * (fan_in + r) * abytes
        per_target[target] = TargetMemory(
            base=layers * fan_in * fan_out * wbytes,
            lora=lora_bytes,
            optimizer=3 * lora_bytes,
            activations=act if not remat else act // layers,
        )
    d, f = model.hidden_size, model.intermediate_size
    # One layer's saved activations: norms' inputs, q/k/v, the attention output,
    # the three MLP intermediates and the attention probabilities.
    layer_act = tokens * (4 * d + model.q_size + 2 * model.kv_size + 3 * f) * abytes
    layer_act += batch_size * model.num_attention_heads * seq_len * seq_len * abytes
    kept_layers = layer_act * layers if not remat else tokens * d * abytes * layers + layer_act
    logits = 2 * tokens * model.vocab_size * 4
    return MemoryEstimate(
        platform=platform,
        budget=platform_budget(platform) if budget is None else budget,
        base_weights=model.num_parameters() * wbytes,
        lora_params=sum(t.lora for t in per_target.values()),
        optimizer_state=sum(t.optimizer for t in per_target.values()),
        activations=kept_layers + logits + sum(t.activations for t in per_target.values()),
        per_target=per_target,
    )
