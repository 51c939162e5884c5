"""Chat JSONL validation, tokenization limits, the data report and batching."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainsvc_lm._data import (
    BatchLoader,
    DataPosition,
    TokenizedExample,
    data_report,
    load_chat_data,
    read_chat_jsonl,
    tokenize_examples,
    validate_example,
)
from trainsvc_lm._errors import ConfigError, DataError
from trainsvc_lm._tokenizer import Tokenizer

GOOD: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "Is it cold in Oslo?"},
        {"role": "assistant", "content": "Yes, it is cold."},
    ]
}
CALL: dict[str, Any] = {
    "tools": [{"type": "function", "function": {"name": "find_city", "parameters": {}}}],
    "messages": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Find Lima."}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "find_city", "arguments": '{"city": "Lima"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "find_city", "content": "Peru"},
        {"role": "assistant", "content": "Lima is in Peru."},
    ],
}


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return path


def _bad(message: dict[str, Any], index: int = 1) -> dict[str, Any]:
    messages = [dict(m) for m in GOOD["messages"]]
    messages[index] = message
    return {"messages": messages}


# -- validation ----------------------------------------------------------------------


def test_reads_valid_lines_and_skips_blank_ones(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [GOOD, "", "   ", CALL])
    examples = read_chat_jsonl(path)
    assert [e.line for e in examples] == [1, 4]
    assert examples[1].tools is not None and examples[1].tool_call_turns == 1
    assert examples[1].assistant_turns == 2 and examples[1].source == str(path)


def test_a_byte_order_mark_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n")
    assert len(read_chat_jsonl(path)) == 1


def test_malformed_json_line_is_numbered(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [GOOD, "", '{"messages": [', GOOD])
    with pytest.raises(DataError, match=r"d\.jsonl:3: not valid JSON") as info:
        read_chat_jsonl(path)
    assert info.value.line == 3 and info.value.path == str(path)


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ([1, 2], None, "must be a JSON object"),
        ({"messages": "hi"}, "messages", "non-empty list"),
        ({"messages": []}, "messages", "non-empty list"),
        (_bad({"role": "robot", "content": "x"}), "messages[1].role", "unknown role 'robot'"),
        (_bad({"role": "user", "content": 3}), "messages[1].content", "must be a string"),
        (_bad({"role": "user", "content": [{"type": "image"}]}), "messages[1].content[0]", "text"),
        (_bad({"role": "user", "content": None}), "messages[1].content", "needs content"),
        (_bad({"role": "assistant", "content": None}), "messages[1].content", "tool_calls"),
        (_bad("not a message"), "messages[1]", "must be an object"),
        (
            _bad({"role": "user", "content": "x", "tool_calls": []}),
            "messages[1].tool_calls",
            "only assistant",
        ),
        (
            _bad(
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}
            ),
            "messages[1].tool_calls[0].function.arguments",
            "not valid JSON",
        ),
        (
            _bad(
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}],
                }
            ),
            "messages[1].tool_calls[0].function.arguments",
            "JSON object",
        ),
        (
            _bad({"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}),
            "messages[1].tool_calls[0].function.name",
            "non-empty string",
        ),
        (
            _bad(
                {"role": "assistant", "tool_calls": [{"type": "code", "function": {"name": "f"}}]}
            ),
            "messages[1].tool_calls[0].type",
            "only 'function'",
        ),
        (
            _bad({"role": "tool", "content": "x", "tool_call_id": 7}),
            "messages[1].tool_call_id",
            "string",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", "at least one assistant"),
        ({**GOOD, "tools": {"f": 1}}, "tools", "list"),
    ],
)
def test_each_bad_line_names_line_and_field(
    tmp_path: Path, line: Any, field: str | None, message: str
) -> None:
    path = _write(tmp_path / "d.jsonl", [GOOD, GOOD, line])
    with pytest.raises(DataError, match=message) as info:
        read_chat_jsonl(path)
    assert (info.value.line, info.value.field) == (3, field)
    assert str(info.value).startswith(f"{path}:3")


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_chat_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no examples") as info:
        read_chat_jsonl(tmp_path / "empty.jsonl")
    assert info.value.line is None


# -- tokenization ---------------------------------------------------------------------


def test_template_that_raises_is_a_numbered_data_error(
    tmp_path: Path, tiny_tokenizer: Callable[[str], Tokenizer]
) -> None:
    # The llama template calls one tool per assistant message and raises otherwise.
    two_calls = json.loads(json.dumps(CALL))
    calls = two_calls["messages"][2]["tool_calls"]
    calls.append(calls[0])
    path = _write(tmp_path / "d.jsonl", [GOOD, two_calls])
    examples = read_chat_jsonl(path)
    with pytest.raises(DataError, match=r"d\.jsonl:2: messages: .*one tool per assistant") as info:
        tokenize_examples(examples, tiny_tokenizer("llama"), max_seq_len=512)
    assert info.value.line == 2


def test_over_long_examples_truncated_or_refused(
    tmp_path: Path, tiny_tokenizer: Callable[[str], Tokenizer]
) -> None:
    tok = tiny_tokenizer("qwen2")
    long = {
        "messages": [
            {"role": "user", "content": "Tell me."},
            {"role": "assistant", "content": "It is sunny in Rome. " * 20},
        ]
    }
    path = _write(tmp_path / "d.jsonl", [GOOD, long])
    examples = read_chat_jsonl(path)
    full, _ = tok.encode_chat(long["messages"])
    short, _ = tok.encode_chat(GOOD["messages"])
    limit = len(short) + 10
    assert len(full) > limit

    with pytest.raises(DataError, match=rf"d\.jsonl:2: messages: {len(full)} tokens exceed"):
        tokenize_examples(examples, tok, max_seq_len=limit, truncation="refuse")

    data = tokenize_examples(examples, tok, max_seq_len=limit, truncation="truncate")
    assert (data.truncated, data.dropped, len(data.examples)) == (1, 0, 2)
    cut = data.examples[1]
    assert cut.truncated and len(cut) == limit
    assert cut.ids.tolist() == full[:limit]
    assert not data.examples[0].truncated


def test_example_with_all_assistant_tokens_cut_is_dropped(
    tmp_path: Path, tiny_tokenizer: Callable[[str], Tokenizer]
) -> None:
    tok = tiny_tokenizer("llama")
    long_question = {
        "messages": [
            {"role": "user", "content": "Tell me about the weather today. " * 20},
            {"role": "assistant", "content": "Fine."},
        ]
    }
    path = _write(tmp_path / "d.jsonl", [GOOD, long_question])
    data = load_chat_data(path, tok, max_seq_len=40)
    assert (data.truncated, data.dropped) == (1, 1)
    assert [e.line for e in data.examples] == [1]
    report = data_report(data)
    assert (report.examples, report.truncated, report.dropped) == (1, 1, 1)


def test_bad_limits_are_config_errors(tiny_tokenizer: Callable[[str], Tokenizer]) -> None:
    examples = [validate_example(GOOD)]
    with pytest.raises(ConfigError, match=r"data\.truncation"):
        tokenize_examples(examples, tiny_tokenizer("llama"), max_seq_len=64, truncation="cut")
    with pytest.raises(ConfigError, match=r"data\.max_seq_len"):
        tokenize_examples(examples, tiny_tokenizer("llama"), max_seq_len=1)


def test_report_counts(tmp_path: Path, tiny_tokenizer: Callable[[str], Tokenizer]) -> None:
    tok = tiny_tokenizer("qwen3")
    path = _write(tmp_path / "d.jsonl", [GOOD, CALL, GOOD])
    data = load_chat_data(path, tok, max_seq_len=1024)
    report = data_report(data)
    lengths = [
        len(tok.encode_chat(e["messages"], tools=e.get("tools"))[0]) for e in (GOOD, CALL, GOOD)
    ]
    masks = [tok.encode_chat(e["messages"], tools=e.get("tools"))[1] for e in (GOOD, CALL, GOOD)]
    assert report.examples == 3 and report.tokens == sum(lengths)
    assert report.assistant_tokens == sum(sum(m[1:]) for m in masks)
    assert (report.assistant_turns, report.tool_call_turns) == (4, 1)
    assert report.tool_call_share == pytest.approx(0.25)
    assert report.max_length == max(lengths)
    assert report.mean_length == pytest.approx(sum(lengths) / 3)
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["tool_call_share"] == pytest.approx(0.25) and as_dict["truncated"] == 0
    text = str(report)
    assert "tool-call turns   1 of 4" in text and f"tokens            {sum(lengths)}" in text


# -- batching -------------------------------------------------------------------------


def _synthetic(lengths: list[int], seed: int = 0) -> list[TokenizedExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = rng.integers(10, 500, size=n).astype(np.int32)
        mask = rng.random(n) < 0.5
        out.append(TokenizedExample(ids=ids, loss_mask=mask, line=i + 1))
    return out


LENGTHS = [5, 17, 33, 9, 2, 30, 12, 8, 25, 14, 3, 33, 20, 7, 11, 16, 6, 21, 10, 4]


def _segments(batch: Any) -> list[tuple[int, int, int]]:
    """(row, start, stop) of every segment, checking segments are contiguous runs."""
    out = []
    for r in range(batch.segment_ids.shape[0]):
        seg = batch.segment_ids[r]
        ids = [s for s in np.unique(seg) if s != 0]
        assert ids == list(range(1, len(ids) + 1))
        for s in ids:
            where = np.flatnonzero(seg == s)
            assert (np.diff(where) == 1).all()
            out.append((r, int(where[0]), int(where[-1]) + 1))
    return out


@pytest.mark.parametrize("batching", ["pack", "bucket"])
def test_every_example_once_per_epoch_with_exact_segments(batching: str) -> None:
    examples = _synthetic(LENGTHS)
    loader = BatchLoader(examples, batch_size=3, seq_len=32, seed=1, batching=batching, pad_id=0)
    seen: list[tuple[int, ...]] = []
    for index in range(loader.batches_per_epoch(0)):
        batch = loader.batch(DataPosition(0, index))
        for array in batch.as_dict().values():
            assert array.shape == (3, 32) and array.dtype == np.int32
        for r, a, b in _segments(batch):
            assert batch.positions[r, a:b].tolist() == list(range(b - a))
            tokens = batch.tokens[r, a:b].tolist()
            match = [e for e in examples if e.ids[:-1].tolist() == tokens]
            assert match, "a segment is not an example's input tokens"
            example = match[0]
            # Targets are the example's own next tokens: none crosses into the next segment.
            assert batch.targets[r, a:b].tolist() == example.ids[1:].tolist()
            assert batch.loss_mask[r, a:b].tolist() == example.loss_mask[1:].astype(int).tolist()
            seen.append(tuple(example.ids.tolist()))
        pad = batch.segment_ids == 0
        assert (batch.targets[pad] == -1).all() and (batch.loss_mask[pad] == 0).all()
        assert (batch.tokens[pad] == 0).all() and (batch.targets[~pad] >= 0).all()
        if batching == "bucket":
            assert batch.segment_ids.max() <= 1
    assert sorted(seen) == sorted(tuple(e.ids.tolist()) for e in examples)


def test_packing_fills_rows() -> None:
    examples = _synthetic(LENGTHS)
    packed = BatchLoader(examples, batch_size=2, seq_len=64, seed=0)
    bucketed = BatchLoader(examples, batch_size=2, seq_len=64, seed=0, batching="bucket")
    rows = sum(len(b) for b in packed.plan(0))
    assert rows < len(examples) / 2
    assert sum(len(b) for b in bucketed.plan(0)) == len(examples)
    needed = sum(n - 1 for n in LENGTHS)
    assert rows <= needed // 64 + 3


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 25), min_size=1, max_size=40),
    batch_size=st.integers(1, 4),
    seed=st.integers(0, 3),
    batching=st.sampled_from(["pack", "bucket"]),
)
def test_plan_places_every_example_once_within_rows(
    lengths: list[int], batch_size: int, seed: int, batching: str
) -> None:
    loader = BatchLoader(
        _synthetic(lengths), batch_size=batch_size, seq_len=24, seed=seed, batching=batching
    )
    plan = loader.plan(0)
    placed = sorted(i for batch in plan for row in batch for i in row)
    assert placed == list(range(len(lengths)))
    assert all(1 <= len(batch) <= batch_size for batch in plan)
    assert all(sum(lengths[i] - 1 for i in row) <= 24 for batch in plan for row in batch)
    used = sum(n - 1 for n in lengths)
    assert loader.fill(0) == pytest.approx(used / (len(plan) * batch_size * 24))


def test_fingerprint_changes_with_data_or_settings() -> None:
    examples = _synthetic(LENGTHS)
    base = BatchLoader(examples, batch_size=2, seq_len=40, seed=1).fingerprint
    assert base == BatchLoader(_synthetic(LENGTHS), batch_size=2, seq_len=40, seed=1).fingerprint
    assert base != BatchLoader(examples, batch_size=2, seq_len=40, seed=2).fingerprint
    assert base != BatchLoader(examples[:-1], batch_size=2, seq_len=40, seed=1).fingerprint
    assert base != BatchLoader(examples, batch_size=2, seq_len=41, seed=1).fingerprint


def test_order_is_fixed_by_seed_and_epoch() -> None:
    examples = _synthetic(LENGTHS)

    def epoch(seed: int, e: int) -> list[list[list[int]]]:
        return BatchLoader(examples, batch_size=2, seq_len=40, seed=seed).plan(e)

    assert epoch(3, 0) == epoch(3, 0) and epoch(3, 1) == epoch(3, 1)
    assert epoch(3, 0) != epoch(3, 1) and epoch(3, 0) != epoch(4, 0)


def test_resume_from_a_position_gives_the_same_batches() -> None:
    examples = _synthetic(LENGTHS)
    first = BatchLoader(examples, batch_size=2, seq_len=40, seed=7)
    per_epoch = first.batches_per_epoch(0)
    for _ in range(per_epoch - 2):
        next(first)
    saved = DataPosition.from_dict(json.loads(json.dumps(first.position.to_dict())))
    expected = [next(first) for _ in range(per_epoch + 3)]  # crosses into epoch 2
    assert first.position.epoch == 2

    second = BatchLoader(examples, batch_size=2, seq_len=40, seed=7)
    second.seek(saved)
    for want in expected:
        got = next(second)
        for name, array in want.as_dict().items():
            np.testing.assert_array_equal(getattr(got, name), array)
    assert second.position == first.position


def test_position_and_loader_errors() -> None:
    examples = _synthetic(LENGTHS)
    loader = BatchLoader(examples, batch_size=2, seq_len=40)
    with pytest.raises(ConfigError, match=r"data_position\.index"):
        loader.seek(DataPosition(0, loader.batches_per_epoch(0)))
    with pytest.raises(ConfigError, match=r"data_position\.epoch"):
        DataPosition.from_dict({"epoch": -1, "index": 0})
    with pytest.raises(ConfigError, match=r"data\.batching"):
        BatchLoader(examples, batch_size=2, seq_len=40, batching="sorted")
    with pytest.raises(ConfigError, match=r"data.seq_len.*:3 has 33 tokens"):
        BatchLoader(examples, batch_size=2, seq_len=16)


def test_packed_segments_do_not_attend_across(tiny_model: Callable[[str], Path]) -> None:
    """A packed row's logits equal each example's logits computed alone."""
    import jax.numpy as jnp
    from trainsvc_lm._model import forward
    from trainsvc_lm._weights import load_model

    config, params = load_model(tiny_model("llama"))
    examples = _synthetic([9, 14, 6, 11], seed=3)
    loader = BatchLoader(examples, batch_size=1, seq_len=40, seed=0)
    batch = loader.batch(DataPosition(0, 0))
    assert batch.segment_ids.max() >= 2
    logits = forward(
        params,
        config,
        jnp.asarray(batch.tokens),
        positions=jnp.asarray(batch.positions),
        segment_ids=jnp.asarray(batch.segment_ids),
    )
    for _, a, b in _segments(batch):
        alone = forward(params, config, jnp.asarray(batch.tokens[:, a:b]))
        np.testing.assert_allclose(np.asarray(logits[:, a:b]), np.asarray(alone), atol=1e-5)
