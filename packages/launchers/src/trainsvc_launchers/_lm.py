"""The ``lora`` kind's section of a launch config: its inputs on disk and its LoRA spec.

The section holds what ``trainsvc-cli runs create --kind lora --config`` takes:
the typed fields of the wire API's ``LoraConfig`` (``model``, ``train_file``,
``validation_file``, ``rank``, ``alpha``, ``dropout``, ``max_seq_len``, ...)
and any other trainer field as a nested table (``[lora.optim] warmup_steps = 10``)::

    kind = "lora"
    step_budget = 2000

    [lora]
    model = "models/Qwen2.5-7B-Instruct"   # relative paths: from the config file's folder
    train_file = "data/train.jsonl"
    validation_file = "data/val.jsonl"
    rank = 16
    alpha = 32

Preflight checks the files before anything starts (the model directory's
``config.json``, ``tokenizer.json`` and every weight shard; the data files) and
the LoRA spec with trainsvc-lm's own validation when it is installed here.
The service checks everything again when the run is created.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainsvc_launchers._platform import _run

__all__ = [
    "PATH_FIELDS",
    "LmBackend",
    "absolute_paths",
    "input_dirs",
    "lm_backend",
    "validate_lora",
]

PATH_FIELDS = {"model": "dir", "train_file": "file", "validation_file": "file"}
"""The section's path fields and what each must be."""
_LORA_SPEC = {"rank": "rank", "alpha": "alpha", "dropout": "dropout"}
"""Typed fields of the LoRA spec -> trainsvc-lm's ``LoraConfig`` fields."""
_REQUIRED = ("model", "train_file")


def absolute_paths(section: dict[str, Any], base: Path) -> dict[str, Any]:
    """The section with relative path fields made absolute against ``base``."""
    out = dict(section)
    for name in PATH_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and value:
            out[name] = str((base / Path(value).expanduser()).absolute())
    return out


def input_dirs(section: dict[str, Any]) -> list[Path]:
    """The directories the service must read from: the model's, and each data file's folder."""
    dirs: list[Path] = []
    for name, what in PATH_FIELDS.items():
        value = section.get(name)
        if isinstance(value, str) and value:
            path = Path(value)
            folder = path if what == "dir" else path.parent
            if folder not in dirs:
                dirs.append(folder)
    return dirs


def _weights_problem(model: Path) -> str | None:
    """What is wrong with a model directory's weights, or None."""
    index = model / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"{index} is not a valid shard index: {exc}"
        missing = [s for s in shards if not (model / s).is_file()]
        if missing:
            return f"shard {missing[0]} listed in {index.name} is missing ({len(missing)} missing)"
        return None
    if (model / "model.safetensors").is_file():
        return None
    return "no weights: needs model.safetensors or model.safetensors.index.json with its shards"


def _path_errors(section: dict[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    for name in _REQUIRED:
        if not section.get(name):
            errors.append((name, "is required"))
    for name, what in PATH_FIELDS.items():
        value = section.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            errors.append((name, f"must be a path, got {value!r}"))
            continue
        path = Path(value)
        if what == "file" and not path.is_file():
            errors.append((name, f"{path} does not exist or is not a file"))
        elif what == "dir" and not path.is_dir():
            errors.append((name, f"{path} does not exist or is not a directory"))
        elif what == "dir":
            for needed in ("config.json", "tokenizer.json"):
                if not (path / needed).is_file():
                    errors.append((name, f"{path} has no {needed}"))
            if (problem := _weights_problem(path)) is not None:
                errors.append((name, f"{path}: {problem}"))
    return errors


def _spec_errors(section: dict[str, Any]) -> list[tuple[str, str]]:
    """The LoRA spec checked by trainsvc-lm's ``LoraConfig`` (nothing when it is absent)."""
    try:
        lm = importlib.import_module("trainsvc_lm")
    except ImportError:
        return []
    spec = {dst: section[src] for src, dst in _LORA_SPEC.items() if src in section}
    nested = section.get("lora")
    if isinstance(nested, dict):
        spec.update(nested)
    config_cls = getattr(lm, "LoraConfig", None)
    if config_cls is None:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # alpha != 2 * rank is advice, not an error
            config_cls.from_dict(spec)
    except lm.ConfigError as exc:
        field = str(exc.field).removeprefix("lora.")
        name = field if field in _LORA_SPEC else f"lora.{field}"
        return [(name, str(exc).removeprefix(f"{exc.field}: "))]
    return []


def validate_lora(section: dict[str, Any]) -> list[tuple[str, str]]:
    """Validate a ``lora`` section: required fields, the files on disk, the LoRA spec.

    Returns:
        ``(field, message)`` pairs, the field relative to the section.
    """
    return _path_errors(section) + _spec_errors(section)


@dataclass(frozen=True)
class LmBackend:
    """Which backend a ``lora`` run will train on, and why."""

    name: str
    """``mlx`` (Apple GPU through Metal), ``mlx-cpu``, ``jax-cpu``, or ``none`` (cannot run)."""
    detail: str


def lm_backend(python: str = sys.executable, setting: str = "auto") -> LmBackend:
    """On a Mac: MLX when ``mlx`` imports and sees a Metal GPU, else JAX on the CPU.

    ``setting`` is the run's ``train.backend``: ``jax`` forces JAX, ``mlx`` MLX
    (on the CPU when there is no Metal GPU). Asked in a child process (like the
    JAX probe), so a broken install cannot crash us.
    """
    if setting == "jax":
        return LmBackend("jax-cpu", "train.backend = jax: lora trains with JAX on the CPU")
    code = "import mlx.core as mx; print(bool(mx.metal.is_available()))"
    out = _run([python, "-c", code], timeout=120)
    if out is None:
        if setting == "mlx":
            return LmBackend("none", "train.backend = mlx, but mlx is not importable here")
        return LmBackend(
            "jax-cpu", "mlx is not importable (pip install mlx): lora trains with JAX on the CPU"
        )
    if out.strip().splitlines()[-1:] == ["True"]:
        return LmBackend("mlx", "MLX on the Apple GPU (Metal)")
    if setting == "mlx":
        return LmBackend(
            "mlx-cpu", "train.backend = mlx, but mlx sees no Metal GPU: MLX on the CPU"
        )
    return LmBackend(
        "jax-cpu", "mlx sees no Metal GPU (a CPU-only build?): lora trains with JAX on the CPU"
    )
