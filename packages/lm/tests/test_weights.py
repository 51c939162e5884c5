"""Saving and loading models in Hugging Face layout, and the errors for broken directories."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file
from trainsvc_lm import ModelConfig, ModelLoadError, UnsupportedArchitectureError
from trainsvc_lm._model import init_params
from trainsvc_lm._weights import (
    check_model_dir,
    hf_to_params,
    load_model,
    params_to_hf,
    save_model,
)

HF = {
    "architectures": ["Qwen2ForCausalLM"],
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "torch_dtype": "float32",
}


def make(dtype: str = "float32", **extra: Any) -> tuple[ModelConfig, dict[str, Any]]:
    config = ModelConfig.from_dict({**HF, "torch_dtype": dtype, **extra})
    params = init_params(config, jax.random.PRNGKey(0))
    # Non-trivial norms and biases, so a mix-up between tensors shows.
    params = jax.tree.map(
        lambda a: a + 0.01 * jnp.arange(a.size, dtype=a.dtype).reshape(a.shape) / a.size, params
    )
    return config, params


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_multi_shard_round_trip(tmp_path: Path) -> None:
    config, params = make()
    files = save_model(tmp_path, config, params, max_shard_bytes=20_000)
    assert len(files) > 2 and all(f.exists() for f in files)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    total = sum(np.asarray(a).nbytes for a in jax.tree.leaves(params))
    assert index["metadata"]["total_size"] == total
    assert set(index["weight_map"].values()) == {f.name for f in files}
    loaded_config, loaded = load_model(tmp_path)
    assert loaded_config == config
    assert_same(loaded, params)


def test_files_use_hf_names_and_orientation(tmp_path: Path) -> None:
    config, params = make()
    save_model(tmp_path, config, params)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        names = set(f.keys())
        q = f.get_tensor("model.layers.1.self_attn.q_proj.weight")
        bias = f.get_tensor("model.layers.0.self_attn.k_proj.bias")
    assert q.shape == (32, 32 // 4 * 4) and q.dtype == np.float32
    np.testing.assert_array_equal(q, np.asarray(params["layers"]["q_proj"][1]).T)
    np.testing.assert_array_equal(bias, np.asarray(params["layers"]["k_bias"][0]))
    assert "lm_head.weight" in names and "model.norm.weight" in names
    assert len(names) == 3 + 2 * 12
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["Qwen2ForCausalLM"]


def test_bfloat16_files_and_dtype_override(tmp_path: Path) -> None:
    config, params = make("bfloat16", tie_word_embeddings=True)
    save_model(tmp_path, config, params, max_shard_bytes=8_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    raw = shard.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert {e["dtype"] for k, e in header.items() if k != "__metadata__"} == {"BF16"}
    _, loaded = load_model(tmp_path)
    assert_same(loaded, jax.tree.map(lambda a: a.astype(jnp.bfloat16), params))
    _, as_f32 = load_model(tmp_path, dtype=jnp.float32)
    assert as_f32["embed"].dtype == jnp.float32
    np.testing.assert_array_equal(as_f32["embed"], loaded["embed"].astype(jnp.float32))


def test_mixed_dtypes_in_one_file_written_by_safetensors(tmp_path: Path) -> None:
    config, params = make()
    tensors = params_to_hf(config, params)
    # float16 matrices, float32 norms and biases, one bfloat16-valued tensor stored as float32.
    mixed = {k: (v.astype(np.float16) if v.ndim == 2 else v) for k, v in tensors.items()}
    save_file(mixed, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
    _, loaded = load_model(tmp_path)
    assert loaded["layers"]["q_proj"].dtype == jnp.float32
    expected = hf_to_params(config, {k: v.astype(np.float32) for k, v in mixed.items()})
    assert_same(loaded, jax.tree.map(jnp.asarray, expected))
    assert not np.array_equal(
        np.asarray(loaded["embed"]), np.asarray(params["embed"])
    )  # float16 rounding


def test_params_to_hf_and_back_is_the_identity() -> None:
    config, params = make(tie_word_embeddings=True)
    tensors = params_to_hf(config, params)
    assert "lm_head.weight" not in tensors
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (32, 48)
    assert_same(jax.tree.map(jnp.asarray, hf_to_params(config, tensors)), params)


def test_resaving_as_one_file_removes_old_shards(tmp_path: Path) -> None:
    config, params = make()
    save_model(tmp_path, config, params, max_shard_bytes=20_000)
    save_model(tmp_path, config, params)
    assert [p.name for p in tmp_path.glob("*.safetensors")] == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert_same(load_model(tmp_path)[1], params)


# ------------------------------------------------------------------ errors


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    config, params = make()
    save_model(tmp_path, config, params, max_shard_bytes=20_000)
    return tmp_path


def _index(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / "model.safetensors.index.json").read_text()))


def test_missing_shard_is_named(sharded: Path) -> None:
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    assert check_model_dir(sharded).num_hidden_layers > 0
    victim.unlink()
    # check_model_dir reads only headers: the same error as a full load.
    for reader in (check_model_dir, load_model):
        with pytest.raises(ModelLoadError, match="missing shard") as err:
            reader(sharded)
        assert err.value.path == str(victim)


def test_tensor_listed_in_index_but_absent_is_named(sharded: Path) -> None:
    index = _index(sharded)
    first = sorted(sharded.glob("model-*.safetensors"))[0].name
    index["weight_map"]["model.norm.weight"] = first
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"'model\.norm\.weight' is listed") as err:
        load_model(sharded)
    assert err.value.path.endswith(first)


def _rewrite(path: Path, edit: Any) -> None:
    config = ModelConfig.from_file(path)
    _, params = load_model(path)
    tensors = params_to_hf(config, params)
    edit(tensors)
    for f in path.glob("model*"):
        f.unlink()
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_tensor_is_named(sharded: Path) -> None:
    _rewrite(sharded, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ModelLoadError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_model(sharded)


def test_extra_tensor_is_named(sharded: Path) -> None:
    _rewrite(
        sharded,
        lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros((48, 32), np.float32)}),
    )
    with pytest.raises(
        ModelLoadError, match=r"unexpected tensor 'model.layers.2.mlp.up_proj.weight'"
    ):
        load_model(sharded)


def test_wrong_shape_is_named(sharded: Path) -> None:
    _rewrite(
        sharded,
        lambda t: t.update(
            {"model.layers.0.self_attn.k_proj.weight": np.zeros((16, 33), np.float32)}
        ),
    )
    with pytest.raises(
        ModelLoadError, match=r"k_proj.weight' has shape \[16, 33\], config.json implies \[16, 32\]"
    ):
        load_model(sharded)


def test_missing_weights_and_config_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(HF))
    with pytest.raises(ModelLoadError, match=r"neither model\.safetensors nor"):
        load_model(tmp_path)


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    config, params = make()
    save_model(tmp_path, config, params)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="do not match its shape or the file") as err:
        load_model(tmp_path)
    assert err.value.path == str(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**HF, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel"):
        load_model(tmp_path)


def test_bfloat16_reads_match_ml_dtypes(tmp_path: Path) -> None:
    # A bf16 tensor written by hand (raw bytes) reads back bit for bit.
    values = (
        np.linspace(-3, 3, 64 * 32, dtype=np.float32).reshape(64, 32).astype(ml_dtypes.bfloat16)
    )
    from trainsvc_lm._weights import _read_tensor, read_safetensors_header, write_safetensors

    write_safetensors(tmp_path / "x.safetensors", [("w", values)])
    info = read_safetensors_header(tmp_path / "x.safetensors")["w"]
    np.testing.assert_array_equal(_read_tensor(info).view(np.uint16), values.view(np.uint16))


_TWO_DEVICES = """
import sys, jax, jax.numpy as jnp, numpy as np
from trainsvc_lm._weights import load_model
from trainsvc_lm._model import forward
config, params = load_model(sys.argv[1])
assert len(jax.devices()) == 2
q = params["layers"]["q_proj"]
assert len(q.sharding.device_set) == 2 and q.sharding.spec[0] is None, q.sharding
one = jax.device_put(params, jax.devices()[0])
tokens = jnp.asarray([[1, 2, 3, 4, 5]], jnp.int32)
np.testing.assert_allclose(forward(params, config, tokens), forward(one, config, tokens), rtol=1e-5, atol=1e-6)
print("ok")
"""


def test_loading_onto_two_devices_shards_and_computes_the_same(tmp_path: Path) -> None:
    import os
    import subprocess

    config, params = make()
    save_model(tmp_path, config, params)
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICES, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_hf_to_params_names_a_missing_or_misshapen_tensor() -> None:
    config, params = make()
    tensors = params_to_hf(config, params)
    del tensors["model.norm.weight"]
    with pytest.raises(ModelLoadError, match=r"missing tensor 'model\.norm\.weight'"):
        hf_to_params(config, tensors)
    tensors = params_to_hf(config, params)
    tensors["model.layers.0.self_attn.v_proj.bias"] = np.zeros(15, np.float32)
    with pytest.raises(
        ModelLoadError, match=r"v_proj\.bias' has shape \[15\], config implies \[16\]"
    ):
        hf_to_params(config, tensors)
