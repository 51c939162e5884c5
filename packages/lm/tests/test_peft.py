"""PEFT export: the layout PEFT, llama.cpp and Ollama read, and numerics against the JAX forward."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from trainsvc_lm import ModelConfig, ModelLoadError
from trainsvc_lm._lora import TARGETS, LoraConfig, init_lora
from trainsvc_lm._model import forward, init_params
from trainsvc_lm._peft import base_tensor_name, export_merged, export_peft, load_peft
from trainsvc_lm._weights import load_model, params_to_hf

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import hf_config, random_params
from _reference import reference_logits


def tiny(family: str) -> ModelConfig:
    """hidden 48, q 64, kv 32, mlp 80, vocab 97, 2 layers; qwen2 with tied embeddings."""
    return ModelConfig.from_dict(hf_config(family, tied=family == "qwen2"))


def trained_lora(
    config: LoraConfig, model: ModelConfig, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Adapters as after training: ``b`` non-zero, so the delta is visible."""
    lora = init_lora(config, model, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    return {
        t: {"a": np.asarray(ab["a"]), "b": rng.normal(0, 0.05, ab["b"].shape).astype(np.float32)}
        for t, ab in lora.items()
    }


# llama.cpp's convert_lora_to_gguf.py: it strips "base_model.model." and ".lora_A/B.weight"
# to find the base tensor, needs A [r, in] and B [out, r] (A.shape[-2] == B.shape[-1]),
# reads lora_alpha as a number (Ollama: uint32) and the base from base_model_name_or_path.
CONVERTER_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    r"\.lora_[AB]\.weight$"
)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_adapter_layout_is_what_peft_and_the_converters_read(
    tmp_path: Path, use_rslora: bool
) -> None:
    model = tiny("llama")
    config = LoraConfig(rank=8, alpha=16, dropout=0.05, use_rslora=use_rslora)
    lora = trained_lora(config, model, 0)
    out = export_peft(tmp_path / "adapter", lora, config, base_model_name_or_path="/models/base")
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert len(tensors) == 2 * len(TARGETS) * model.num_hidden_layers
    hf_shapes = {
        k: v.shape
        for k, v in params_to_hf(model, init_params(model, jax.random.PRNGKey(0))).items()
    }
    for key, value in tensors.items():
        assert CONVERTER_KEY.match(key), key
        base = base_tensor_name(key)
        assert base == key.removeprefix("base_model.model.").replace(".lora_A", "").replace(
            ".lora_B", ""
        )
        out_dim, in_dim = hf_shapes[base]
        assert value.dtype == np.float32
        if ".lora_A." in key:
            assert value.shape == (8, in_dim)
        else:
            assert value.shape == (out_dim, 8)
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (8, 80)
    assert tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (
        32,
        8,
    )
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and type(cfg["lora_alpha"]) is int
    assert cfg["use_rslora"] is use_rslora and cfg["lora_dropout"] == 0.05
    assert sorted(cfg["target_modules"]) == sorted(TARGETS)
    assert cfg["base_model_name_or_path"] == "/models/base"
    assert (
        cfg["bias"] == "none" and cfg["fan_in_fan_out"] is False and cfg["inference_mode"] is True
    )


def test_gguf_maps_every_adapter_base_name() -> None:
    """The `gguf` package (llama.cpp's own name map) knows every base tensor we adapt."""
    gguf = pytest.importorskip("gguf")
    model = tiny("llama")
    config = LoraConfig(rank=8, alpha=16)
    from trainsvc_lm._peft import peft_tensors

    for arch in (gguf.MODEL_ARCH.LLAMA, gguf.MODEL_ARCH.QWEN2, gguf.MODEL_ARCH.QWEN3):
        names = gguf.get_tensor_name_map(arch, model.num_hidden_layers)
        for key in peft_tensors(trained_lora(config, model, 1)):
            mapped = names.get_name(base_tensor_name(key), try_suffixes=(".weight",))
            assert mapped is not None and mapped.startswith("blk."), key


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_exported_adapter_merged_in_numpy_reproduces_the_jax_lora_forward(
    tmp_path: Path, family: str
) -> None:
    model = tiny(family)
    params = random_params(model, seed=3)
    config = LoraConfig(rank=8, alpha=16, use_rslora=family == "qwen3")
    lora = trained_lora(config, model, 4)
    tokens = np.random.default_rng(5).integers(0, model.vocab_size, size=(2, 7)).astype(np.int32)
    jax_logits = np.asarray(forward(params, model, tokens, lora=lora, lora_scale=config.scale))

    adapter = export_peft(tmp_path / "adapter", lora, config, base_model_name_or_path="base")
    # Independently of the exporter: PEFT's rule W' = W + B @ A * scale on HF tensors.
    peft_cfg = json.loads((adapter / "adapter_config.json").read_text())
    r, alpha = peft_cfg["r"], peft_cfg["lora_alpha"]
    scale = alpha / np.sqrt(r) if peft_cfg["use_rslora"] else alpha / r
    hf = {k: np.asarray(v, dtype=np.float64) for k, v in params_to_hf(model, params).items()}
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        base = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        hf[base] = hf[base] + (b.astype(np.float64) @ a.astype(np.float64)) * scale
    ref = reference_logits(model.to_hf_dict(), hf, tokens)
    np.testing.assert_allclose(jax_logits, ref, atol=2e-4, rtol=1e-4)
    base_only = np.asarray(forward(params, model, tokens))
    assert (
        np.abs(base_only - ref).max() > 100 * np.abs(jax_logits - ref).max()
    )  # the adapter matters


def test_load_peft_round_trips_and_checks_the_model(tmp_path: Path) -> None:
    model = tiny("llama")
    config = LoraConfig(rank=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    lora = trained_lora(config, model, 2)
    out = export_peft(tmp_path / "a", lora, config, base_model_name_or_path="base")
    loaded_config, loaded = load_peft(out, model)
    assert loaded_config == config
    for t in config.target_modules:
        np.testing.assert_array_equal(loaded[t]["a"], lora[t]["a"])
        np.testing.assert_array_equal(loaded[t]["b"], lora[t]["b"])
    deeper = tiny("llama").__class__(**{**model.__dict__, "num_hidden_layers": 3})
    with pytest.raises(ModelLoadError, match=r"missing base_model\.model\.model\.layers\.2"):
        load_peft(out, deeper)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    tensors["base_model.model.lm_head.lora_A.weight"] = np.zeros((8, 48), np.float32)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    with pytest.raises(ModelLoadError, match="lm_head"):
        load_peft(out, model)
    (out / "adapter_config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"adapter_config\.json"):
        load_peft(out)


def test_merged_export_is_a_loadable_model_equal_to_the_lora_forward(tmp_path: Path) -> None:
    model = tiny("llama")
    params = init_params(model, jax.random.PRNGKey(6))
    config = LoraConfig(rank=8, alpha=16)
    lora = trained_lora(config, model, 7)
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / "tokenizer.json").write_text("{}")
    out = export_merged(tmp_path / "merged", model, params, lora, config, base_model_dir=base_dir)
    assert (out / "tokenizer.json").read_text() == "{}"
    loaded_config, merged = load_model(out)
    tokens = np.arange(10, dtype=np.int32).reshape(2, 5)
    np.testing.assert_allclose(
        np.asarray(forward(merged, loaded_config, tokens)),
        np.asarray(forward(params, model, tokens, lora=lora, lora_scale=config.scale)),
        atol=1e-4,
    )
