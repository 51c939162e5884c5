"""Tiny random-weight models in exact Hugging Face layout, for tests and demos.

`init_tiny` writes what a downloaded model directory holds: ``config.json``, the
weights (``model.safetensors``, or shards and an index), ``tokenizer.json``,
``tokenizer_config.json`` with a chat template in the family's style (tools and
tool calls included), ``special_tokens_map.json`` and ``generation_config.json``.
The tokenizer is a byte-level BPE trained on ``data/tiny_corpus.txt``, a bundled
text of simple English about weather, cities and numbers plus JSON records and
function-call-like objects, so that a short pretraining run on the same text gives
a model that knows its vocabulary. Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors, trainers

from trainsvc_lm._config import FAMILIES, ModelConfig, RopeScaling
from trainsvc_lm._errors import ConfigError


@dataclass(frozen=True)
class _Family:
    """What differs between the families' tokenizers and defaults."""

    template: str  # file under data/templates
    special: tuple[str, ...]  # special tokens, in id order
    extra: tuple[str, ...]  # added tokens that are not special (kept by decode)
    bos: str | None
    eos: str  # tokenizer_config's eos_token (end of an assistant turn)
    pad: str | None
    stop: tuple[str, ...]  # generation_config's eos_token_id, as tokens
    config_eos: tuple[str, ...]  # config.json's eos_token_id, as tokens
    add_bos: bool  # the post-processor prepends bos
    nfc: bool
    tie: bool
    rope_theta: float
    rms_norm_eps: float


_LLAMA = _Family(
    template="llama.jinja",
    special=(
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|python_tag|>",
        "<|finetune_right_pad_id|>",
    ),
    extra=(),
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    pad="<|finetune_right_pad_id|>",
    stop=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
    config_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
    add_bos=True,
    nfc=False,
    tie=False,
    rope_theta=500_000.0,
    rms_norm_eps=1e-5,
)
_MISTRAL = _Family(
    template="mistral.jinja",
    special=(
        "<unk>",
        "<s>",
        "</s>",
        "[INST]",
        "[/INST]",
        "[TOOL_CALLS]",
        "[AVAILABLE_TOOLS]",
        "[/AVAILABLE_TOOLS]",
        "[TOOL_RESULTS]",
        "[/TOOL_RESULTS]",
    ),
    extra=(),
    bos="<s>",
    eos="</s>",
    pad=None,
    stop=("</s>",),
    config_eos=("</s>",),
    add_bos=True,
    nfc=False,
    tie=False,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-5,
)
_QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_QWEN_EXTRA = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
_QWEN2 = _Family(
    template="chatml.jinja",
    special=_QWEN_SPECIAL,
    extra=_QWEN_EXTRA,
    bos=None,
    eos="<|im_end|>",
    pad="<|endoftext|>",
    stop=("<|im_end|>", "<|endoftext|>"),
    config_eos=("<|im_end|>",),
    add_bos=False,
    nfc=True,
    tie=True,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
)
_QWEN3 = replace(_QWEN2, extra=(*_QWEN_EXTRA, "<think>", "</think>"))
_FAMILIES: dict[str, _Family] = {
    "llama": _LLAMA,
    "mistral": _MISTRAL,
    "qwen2": _QWEN2,
    "qwen3": _QWEN3,
}


def corpus_text() -> str:
    """The bundled text the tiny tokenizer is trained on (and tiny models can pretrain on)."""
    return resources.files("trainsvc_lm").joinpath("data/tiny_corpus.txt").read_text("utf-8")


def chat_template_source(family: str) -> str:
    """The chat template `init_tiny` writes for ``family``."""
    name = _family(family).template
    return resources.files("trainsvc_lm").joinpath(f"data/templates/{name}").read_text("utf-8")


def _family(family: str) -> _Family:
    if family not in _FAMILIES:
        raise ConfigError("family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    return _FAMILIES[family]


def train_tokenizer(family: str, vocab_size: int = 512) -> tokenizers.Tokenizer:
    """A byte-level BPE with ``vocab_size`` ids (special tokens first) for ``family``.

    Raises:
        ConfigError: an unknown family, or a vocabulary too small for the 256 byte
            tokens and the family's special tokens.
    """
    spec = _family(family)
    added = len(spec.special) + len(spec.extra)
    if vocab_size < 256 + added + 16:
        raise ConfigError("vocab_size", f"must be >= {256 + added + 16} for {family}")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    if spec.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(spec.extra),
        min_frequency=2,
        special_tokens=list(spec.special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.extra])
    if spec.add_bos and spec.bos is not None:
        bos = spec.bos
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _added_token(content: str, special: bool = True) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def _tokenizer_files(
    family: str, tok: tokenizers.Tokenizer, max_len: int
) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json as transformers writes them."""
    spec = _family(family)
    decoder = {
        str(tok.token_to_id(t)): _added_token(t, special=t in spec.special)
        for t in (*spec.special, *spec.extra)
    }
    config: dict[str, Any] = {
        "add_bos_token": spec.add_bos,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [
            t for t in spec.special if t not in (spec.bos, spec.eos, spec.pad)
        ],
        "bos_token": spec.bos,
        "chat_template": chat_template_source(family),
        "clean_up_tokenization_spaces": False,
        "eos_token": spec.eos,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": max_len,
        "pad_token": spec.pad,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if family == "mistral":
        config["unk_token"] = "<unk>"
    if spec.nfc:
        config["errors"] = "replace"
        config["split_special_tokens"] = False
    special_map: dict[str, Any] = {
        key: {k: v for k, v in _added_token(value).items() if k != "special"}
        for key, value in (
            ("bos_token", spec.bos),
            ("eos_token", spec.eos),
            ("pad_token", spec.pad),
            ("unk_token", "<unk>" if family == "mistral" else None),
        )
        if value is not None
    }
    special_map["additional_special_tokens"] = config["additional_special_tokens"]
    return {"tokenizer_config.json": config, "special_tokens_map.json": special_map}


def tiny_config(
    family: str,
    vocab_size: int,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool | None = None,
    rope_scaling: bool | None = None,
    dtype: str = "float32",
    tok: tokenizers.Tokenizer | None = None,
) -> ModelConfig:
    """The `ModelConfig` of a tiny ``family`` model (see `init_tiny` for the arguments)."""
    spec = _family(family)

    def ids(tokens: tuple[str, ...]) -> tuple[int, ...]:
        found = [tok.token_to_id(t) for t in tokens] if tok is not None else []
        return tuple(int(i) for i in found if i is not None)

    if head_dim is None:
        # Qwen3 decouples head_dim from hidden_size / heads; exercise that.
        head_dim = hidden_size // heads * (2 if family == "qwen3" else 1)
    use_scaling = family == "llama" if rope_scaling is None else rope_scaling
    bos = ids((spec.bos,)) if spec.bos else ()
    return ModelConfig(
        family=family,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 3 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=spec.rms_norm_eps,
        rope_theta=spec.rope_theta,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 256) if use_scaling else None,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=spec.tie if tie_word_embeddings is None else tie_word_embeddings,
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        torch_dtype=dtype,
        bos_token_id=bos[0] if bos else None,
        eos_token_ids=ids(spec.config_eos),
    )


def init_tiny(
    model_dir: str | Path,
    family: str = "llama",
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool | None = None,
    rope_scaling: bool | None = None,
    dtype: str = "float32",
    max_shard_bytes: int | None = None,
    weights: bool = True,
) -> ModelConfig:
    """Write a random-weight ``family`` model in Hugging Face layout to ``model_dir``.

    Args:
        model_dir: the directory to write (created; existing model files replaced).
        family: ``"llama"`` (Llama 3 tokens and template), ``"mistral"``,
            ``"qwen2"`` or ``"qwen3"`` (ChatML).
        seed: the weights' PRNG seed (the tokenizer does not depend on it).
        vocab_size: ids in the tokenizer and the embedding.
        hidden_size: model width.
        layers: decoder layers.
        heads: attention heads.
        kv_heads: key/value heads (grouped-query attention when fewer than ``heads``).
        head_dim: per-head width (default ``hidden_size // heads``, doubled for qwen3).
        intermediate_size: MLP width (default ``3 * hidden_size``).
        max_position_embeddings: the context length recorded in the config.
        tie_word_embeddings: default: tied for qwen2/qwen3, untied otherwise.
        rope_scaling: Llama 3.1 RoPE scaling (default: on for llama only).
        dtype: ``torch_dtype`` of the weights (``"float32"`` or ``"bfloat16"``).
        max_shard_bytes: split the weights into shards of at most this size.
        weights: False writes config.json and the tokenizer files only (no JAX
            needed; enough for tokenizer and chat-data tests).

    Returns:
        The model's config (as written to config.json).

    Raises:
        ConfigError: an unknown family or an impossible size.
    """
    spec = _family(family)
    tok = train_tokenizer(family, vocab_size)
    config = tiny_config(
        family,
        vocab_size,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        rope_scaling=rope_scaling,
        dtype=dtype,
        tok=tok,
    )
    if heads % kv_heads:
        raise ConfigError("kv_heads", f"must divide heads ({heads}), got {kv_heads}")
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer.json"))
    files = _tokenizer_files(family, tok, max_position_embeddings)
    stop = [i for t in spec.stop if (i := tok.token_to_id(t)) is not None]
    generation: dict[str, Any] = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": stop[0] if len(stop) == 1 else stop,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    if spec.pad is not None:
        generation["pad_token_id"] = tok.token_to_id(spec.pad)
    files["generation_config.json"] = generation
    for name, content in files.items():
        (root / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", "utf-8")
    if weights:
        _write_weights(root, config, seed, max_shard_bytes)
    else:
        (root / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n", "utf-8")
    return config


def _write_weights(root: Path, config: ModelConfig, seed: int, max_shard_bytes: int | None) -> None:
    import jax

    from trainsvc_lm._model import init_params
    from trainsvc_lm._weights import save_model

    params = init_params(config, jax.random.key(seed))
    if max_shard_bytes is None:
        save_model(root, config, params)
    else:
        save_model(root, config, params, max_shard_bytes=max_shard_bytes)
