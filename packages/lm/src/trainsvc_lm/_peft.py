"""Hugging Face PEFT adapters: export, import, and a merged full model.

The layout is what ``peft.PeftModel.from_pretrained``, llama.cpp's
``convert_lora_to_gguf.py`` and Ollama's adapter converter read: a directory with

- ``adapter_model.safetensors``: for every layer ``i`` and target ``t``,
  ``base_model.model.model.layers.{i}.{self_attn|mlp}.{t}.lora_A.weight`` of shape
  ``[r, in]`` and ``...lora_B.weight`` of shape ``[out, r]`` (PyTorch's ``nn.Linear``
  orientation, the transpose of this library's ``[in, out]`` weights);
- ``adapter_config.json``: ``peft_type`` ``"LORA"``, ``task_type`` ``"CAUSAL_LM"``,
  ``r``, ``lora_alpha`` (an integer: Ollama parses it as uint32), ``target_modules``,
  ``lora_dropout``, ``use_rslora``, ``base_model_name_or_path`` and PEFT's other keys.

Stripping ``base_model.model.`` and ``.lora_A``/``.lora_B`` from a key gives the base
model's own tensor name, which is how the converters find the weight an adapter
belongs to. Everything here is NumPy; no JAX import.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trainsvc_lm._config import ModelConfig
from trainsvc_lm._errors import ModelLoadError
from trainsvc_lm._lora import ATTENTION_TARGETS, TARGETS, Lora, LoraConfig, merge_lora, target_shape

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."
_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight$"
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def module_path(target: str) -> str:
    """The submodule a target lives in: ``self_attn.q_proj`` or ``mlp.gate_proj``."""
    return f"{'self_attn' if target in ATTENTION_TARGETS else 'mlp'}.{target}"


def peft_key(layer: int, target: str, which: str) -> str:
    """The PEFT tensor name of layer ``layer``'s ``target`` adapter, ``which`` ``"A"`` or ``"B"``."""
    return f"{PREFIX}model.layers.{layer}.{module_path(target)}.lora_{which}.weight"


def base_tensor_name(key: str) -> str:
    """The base model tensor a PEFT key adapts (the converters' own rule)."""
    name = key.removeprefix(PREFIX)
    return name.replace(".lora_A.weight", ".weight").replace(".lora_B.weight", ".weight")


def peft_tensors(lora: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The PEFT tensors of stacked adapters: ``a[i].T`` -> lora_A, ``b[i].T`` -> lora_B (float32)."""
    out: dict[str, np.ndarray] = {}
    for target in TARGETS:
        if target not in lora:
            continue
        a = np.asarray(lora[target]["a"], dtype=np.float32)
        b = np.asarray(lora[target]["b"], dtype=np.float32)
        for i in range(a.shape[0]):
            out[peft_key(i, target, "A")] = np.ascontiguousarray(a[i].T)
            out[peft_key(i, target, "B")] = np.ascontiguousarray(b[i].T)
    return out


def adapter_config(config: LoraConfig, base_model_name_or_path: str) -> dict[str, Any]:
    """The ``adapter_config.json`` contents PEFT writes for ``config``."""
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": int(config.alpha),
        "lora_dropout": config.dropout,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": config.rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(config.target_modules),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": config.use_rslora,
    }


def export_peft(
    out_dir: str | Path,
    lora: Mapping[str, Mapping[str, Any]],
    config: LoraConfig,
    *,
    base_model_name_or_path: str,
) -> Path:
    """Writes ``adapter_model.safetensors`` and ``adapter_config.json`` into ``out_dir``.

    Returns:
        The directory written.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(peft_tensors(lora), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    text = json.dumps(adapter_config(config, base_model_name_or_path), indent=2, sort_keys=True)
    (out / ADAPTER_CONFIG).write_text(text + "\n", encoding="utf-8")
    return out


def load_peft(adapter_dir: str | Path, model: ModelConfig | None = None) -> tuple[LoraConfig, Lora]:
    """Reads a PEFT LoRA adapter back into stacked ``{"a": [L, in, r], "b": [L, r, out]}``.

    Args:
        adapter_dir: the directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
        model: the base architecture; when given, every layer and shape is checked against it.

    Raises:
        ModelLoadError: a missing file, a key outside the PEFT LoRA layout, a missing
            layer or a shape that does not fit (the file and tensor named).
    """
    from safetensors.numpy import load_file

    directory = Path(adapter_dir)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelLoadError(str(path), "missing: a PEFT adapter directory needs it")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(config_path), f"not valid JSON: {exc}") from None
    if raw.get("peft_type") != "LORA":
        raise ModelLoadError(str(config_path), f"peft_type {raw.get('peft_type')!r} is not LORA")
    config = LoraConfig(
        rank=raw["r"],
        alpha=raw["lora_alpha"],
        dropout=raw.get("lora_dropout", 0.0),
        use_rslora=bool(raw.get("use_rslora", False)),
        target_modules=tuple(t for t in TARGETS if t in raw["target_modules"]),
    )
    tensors = load_file(str(weights_path))
    found: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None or m.group(3) not in config.target_modules:
            raise ModelLoadError(
                str(weights_path), f"tensor {key!r} is not a LoRA weight of this adapter"
            )
        layer, target, which = int(m.group(1)), m.group(3), m.group(4)
        found.setdefault(target, {"A": {}, "B": {}})[which][layer] = value
    layers = model.num_hidden_layers if model is not None else None
    lora: Lora = {}
    for target in config.target_modules:
        parts = found.get(target)
        if parts is None:
            raise ModelLoadError(str(weights_path), f"no tensors for target {target!r}")
        n = layers if layers is not None else len(parts["A"])
        for which in ("A", "B"):
            missing = sorted(set(range(n)) - set(parts[which]))
            if missing:
                raise ModelLoadError(
                    str(weights_path), f"missing {peft_key(missing[0], target, which)}"
                )
        a = np.stack([parts["A"][i].T for i in range(n)]).astype(np.float32)
        b = np.stack([parts["B"][i].T for i in range(n)]).astype(np.float32)
        expected_in, expected_out = (
            target_shape(model, target) if model is not None else (a.shape[1], b.shape[2])
        )
        if a.shape[1:] != (expected_in, config.rank) or b.shape[1:] != (config.rank, expected_out):
            raise ModelLoadError(
                str(weights_path),
                f"{target}: lora_A {tuple(parts['A'][0].shape)} / lora_B {tuple(parts['B'][0].shape)} "
                f"do not fit r={config.rank}, in={expected_in}, out={expected_out}",
            )
        lora[target] = {"a": a, "b": b}
    return config, lora


def export_merged(
    out_dir: str | Path,
    model: ModelConfig,
    params: Mapping[str, Any],
    lora: Mapping[str, Mapping[str, Any]],
    config: LoraConfig,
    *,
    base_model_dir: str | Path | None = None,
) -> Path:
    """Writes the base model with the adapter merged in, in Hugging Face layout.

    The tokenizer and generation files of ``base_model_dir`` are copied beside the
    weights, so the result is a complete model directory.
    """
    from trainsvc_lm._weights import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model, merge_lora(params, lora, config.scale))
    if base_model_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(base_model_dir) / name
            if src.is_file():
                shutil.copyfile(src, out / name)
    return out
