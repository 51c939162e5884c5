"""init_tiny: deterministic HF-layout models that the real loader and tokenizer read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from trainsvc_lm._config import ModelConfig
from trainsvc_lm._errors import ConfigError
from trainsvc_lm._tiny import corpus_text, init_tiny
from trainsvc_lm._tokenizer import Tokenizer

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_corpus_is_small_and_round_trips(tiny_tokenizer: Callable[[str], Tokenizer]) -> None:
    text = corpus_text()
    assert 50_000 < len(text.encode()) < 400_000
    for word in ("weather", "celsius", "fahrenheit", "Paris", '"city"'):
        assert word in text
    tok = tiny_tokenizer("qwen2")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # The BPE learned the corpus: far fewer tokens than bytes.
    assert len(ids) < len(text) / 2


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    # Fresh directories, not the shared fixture (which other tests only read, but still).
    first, again = tmp_path / "first", tmp_path / "again"
    init_tiny(first, "llama", seed=0)
    init_tiny(again, "llama", seed=0)
    assert _digests(again) == _digests(first)
    other = tmp_path / "other"
    init_tiny(other, "llama", seed=1)
    differs = {k for k, v in _digests(other).items() if v != _digests(again)[k]}
    assert differs == {"model.safetensors"}


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_loads_with_the_real_loader(family: str, tiny_model: Callable[[str], Path]) -> None:
    from trainsvc_lm._weights import load_model

    path = tiny_model(family)
    assert {p.name for p in path.iterdir()} == FILES
    config, params = load_model(path)
    assert config == ModelConfig.from_file(path)
    assert config.family == family and config.vocab_size == 512
    assert params["embed"].shape == (512, 64)
    assert ("lm_head" in params) == (family in ("llama", "mistral"))
    assert float(np.std(np.asarray(params["embed"]))) == pytest.approx(0.02, rel=0.1)

    tok = Tokenizer.from_dir(path)
    assert tok.vocab_size == config.vocab_size
    assert set(config.eos_token_ids) <= set(tok.eos_token_ids)
    if config.bos_token_id is not None:
        assert config.bos_token_id == tok.bos_token_id
    hf = json.loads((path / "config.json").read_text())
    assert hf["architectures"] == [config.architecture]
    generation = json.loads((path / "generation_config.json").read_text())
    stop = generation["eos_token_id"]
    assert set(stop if isinstance(stop, list) else [stop]) == set(tok.eos_token_ids)
    special_map = json.loads((path / "special_tokens_map.json").read_text())
    assert special_map["eos_token"]["content"] == tok.special_tokens["eos_token"]
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    for id_text, entry in tok_config["added_tokens_decoder"].items():
        assert tok.token_to_id(entry["content"]) == int(id_text)


def test_family_specific_architecture(tiny_model: Callable[[str], Path]) -> None:
    from trainsvc_lm._weights import load_model

    llama, _ = load_model(tiny_model("llama"))
    assert llama.rope_scaling is not None and llama.rope_theta == 500_000.0
    qwen2, params2 = load_model(tiny_model("qwen2"))
    assert qwen2.qkv_bias and "q_bias" in params2["layers"]
    qwen3, params3 = load_model(tiny_model("qwen3"))
    assert qwen3.qk_norm and qwen3.head_dim * qwen3.num_attention_heads != qwen3.hidden_size
    assert params3["layers"]["q_norm"].shape == (2, qwen3.head_dim)


def test_sizes_dtype_and_shards(tmp_path: Path) -> None:
    from trainsvc_lm._weights import load_model

    config = init_tiny(
        tmp_path,
        "qwen2",
        vocab_size=384,
        hidden_size=32,
        layers=1,
        dtype="bfloat16",
        max_shard_bytes=20_000,
    )
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    loaded, params = load_model(tmp_path)
    assert loaded == config and loaded.torch_dtype == "bfloat16"
    assert str(params["embed"].dtype) == "bfloat16" and params["embed"].shape == (384, 32)
    assert Tokenizer.from_dir(tmp_path).vocab_size == 384


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="family"):
        init_tiny(tmp_path, "gpt2", weights=False)
    with pytest.raises(ConfigError, match="vocab_size"):
        init_tiny(tmp_path, "llama", vocab_size=100, weights=False)
    with pytest.raises(ConfigError, match="kv_heads"):
        init_tiny(tmp_path, "llama", heads=4, kv_heads=3, weights=False)
