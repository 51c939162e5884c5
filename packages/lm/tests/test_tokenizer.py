"""Tokenizer.from_dir over the tiny models' files, and the assistant-only token mask."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trainsvc_lm._errors import ModelLoadError, TemplateError
from trainsvc_lm._tokenizer import Tokenizer

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
END = {"llama": "<|eot_id|>", "mistral": "</s>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "find_city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _runs(ids: list[int], mask: list[bool]) -> list[list[int]]:
    """The maximal runs of consecutive masked tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, m in zip(ids, mask, strict=True):
        if m and not previous:
            runs.append([])
        if m:
            runs[-1].append(token)
        previous = m
    return runs


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.update(changes)
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def test_missing_tokenizer_json_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json.*missing") as info:
        Tokenizer.from_dir(tmp_path)
    assert info.value.path == str(tmp_path / "tokenizer.json")


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip(family: str, tiny_tokenizer: Callable[[str], Tokenizer]) -> None:
    tok = tiny_tokenizer(family)
    for text in [
        "The weather in Paris is sunny today, 21 degrees celsius.",
        '{"name": "find_city", "arguments": {"city": "Reykjavík"}}',
        "  spaces,\ttabs\nand 日本語 émoji 🌧 ",
    ]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    assert tok.vocab_size == 512


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_are_single_ids(
    family: str, tiny_tokenizer: Callable[[str], Tokenizer]
) -> None:
    tok = tiny_tokenizer(family)
    end = END[family]
    ids = tok.encode(f"a{end}b")
    assert len(ids) == 3 and ids[1] == tok.token_to_id(end)
    assert tok.eos_token_ids[0] == tok.token_to_id(end)
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, skip_special_tokens=False) == f"a{end}b"


def test_bos_added_once_only_where_the_family_has_one(
    tiny_tokenizer: Callable[[str], Tokenizer],
) -> None:
    llama, qwen = tiny_tokenizer("llama"), tiny_tokenizer("qwen2")
    bos = llama.token_to_id("<|begin_of_text|>")
    assert llama.bos_token_id == bos
    with_special = llama.encode("hello", add_special_tokens=True)
    assert with_special[0] == bos and with_special.count(bos) == 1
    assert with_special[1:] == llama.encode("hello")
    assert qwen.bos_token_id is None
    assert qwen.encode("hello", add_special_tokens=True) == qwen.encode("hello")


def test_eos_ids_join_tokenizer_and_generation_config(
    tiny_tokenizer: Callable[[str], Tokenizer],
) -> None:
    tok = tiny_tokenizer("llama")
    ids = {tok.token_to_id(t) for t in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")}
    assert set(tok.eos_token_ids) == ids
    assert len(tok.eos_token_ids) == 3
    assert tok.pad_token_id == tok.token_to_id("<|finetune_right_pad_id|>")


def test_pad_falls_back_to_eos(tiny_tokenizer: Callable[[str], Tokenizer]) -> None:
    tok = tiny_tokenizer("mistral")  # no pad token, no pad_token_id
    assert "pad_token" not in tok.special_tokens
    assert tok.pad_token_id == tok.token_to_id("</s>")


def test_added_token_dicts_and_named_templates(
    tiny_tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    path = _copy(tiny_tokenizer_dir("qwen2"), tmp_path / "m")
    _edit_config(
        path,
        eos_token={"__type": "AddedToken", "content": "<|im_end|>", "special": True},
        pad_token={"content": "<|endoftext|>"},
        chat_template=[
            {"name": "default", "template": "plain:{{ messages[0].content }}{{ eos_token }}"},
            {"name": "tool_use", "template": "tools:{{ tools[0].function.name }}"},
        ],
    )
    (path / "generation_config.json").unlink()
    tok = Tokenizer.from_dir(path)
    assert tok.eos_token_ids[0] == tok.token_to_id("<|im_end|>")
    assert tok.pad_token_id == tok.token_to_id("<|endoftext|>")
    messages = [{"role": "user", "content": "x"}]
    assert tok.render_chat(messages) == "plain:x<|im_end|>"
    assert tok.render_chat(messages, tools=TOOLS) == "tools:find_city"


def test_template_from_chat_template_jinja_file(
    tiny_tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    path = _copy(tiny_tokenizer_dir("llama"), tmp_path / "m")
    config = json.loads((path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TemplateError, match="no chat template"):
        Tokenizer.from_dir(path).render_chat([{"role": "user", "content": "x"}])
    (path / "chat_template.jinja").write_text("J{{ messages | length }}")
    assert Tokenizer.from_dir(path).render_chat([{"role": "user", "content": "x"}]) == "J1"


def test_bad_template_entry_and_bad_json_are_named(
    tiny_tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    path = _copy(tiny_tokenizer_dir("llama"), tmp_path / "m")
    _edit_config(path, chat_template=[{"template": "x"}])
    with pytest.raises(ModelLoadError, match=r"chat_template\[0\]"):
        Tokenizer.from_dir(path)
    (path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json"):
        Tokenizer.from_dir(path)


CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Is it sunny in Oslo?"},
    {"role": "assistant", "content": "No, it is rainy in Oslo today."},
    {"role": "user", "content": "And in Lima?"},
    {"role": "assistant", "content": "Lima is warm and dry."},
]


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_covers_exactly_the_assistant_texts(
    family: str, tiny_tokenizer: Callable[[str], Tokenizer]
) -> None:
    tok = tiny_tokenizer(family)
    ids, mask = tok.encode_chat(CONVERSATION)
    assert ids == tok.encode(tok.render_chat(CONVERSATION))
    runs = [tok.decode(run, skip_special_tokens=False) for run in _runs(ids, mask)]
    # Mistral writes a space between [/INST] and the answer; it is the answer's.
    assert [r.lstrip() for r in runs] == [
        f"{m['content']}{END[family]}" for m in CONVERSATION if m["role"] == "assistant"
    ]
    # Everything else (system, user, headers) is unmasked.
    unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "Oslo?" in unmasked and "rainy" not in unmasked and "Lima is" not in unmasked


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_covers_tool_calls_but_not_tool_results(
    family: str, tiny_tokenizer: Callable[[str], Tokenizer]
) -> None:
    tok = tiny_tokenizer(family)
    messages = [
        {"role": "user", "content": "Find Quito."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call1",
                    "type": "function",
                    "function": {"name": "find_city", "arguments": '{"city": "Quito"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call1", "content": "RESULT 42"},
        {"role": "assistant", "content": "Found it."},
    ]
    ids, mask = tok.encode_chat(messages, tools=TOOLS)
    runs = [tok.decode(run, skip_special_tokens=False) for run in _runs(ids, mask)]
    assert len(runs) == 2
    assert "find_city" in runs[0] and '{"city": "Quito"}' in runs[0]
    assert runs[0].endswith(END[family])
    assert runs[1].lstrip() == f"Found it.{END[family]}"
    assert "RESULT 42" in tok.decode(ids) and not any("RESULT" in r for r in runs)


def test_qwen3_thinking_prefill_is_not_trained(tiny_tokenizer: Callable[[str], Tokenizer]) -> None:
    tok = tiny_tokenizer("qwen3")
    prompt = tok.render_chat(CONVERSATION[:2], add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<think>\n\n</think>\n\n")
    ids, mask = tok.encode_chat(CONVERSATION, enable_thinking=False)
    runs = [tok.decode(run, skip_special_tokens=False) for run in _runs(ids, mask)]
    assert runs[0] == "No, it is rainy in Oslo today.<|im_end|>"
