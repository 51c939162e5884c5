"""Chat training data: validated JSONL, assistant-only token masks, fixed-shape batches.

The pipeline is three steps, each usable on its own:

1. `read_chat_jsonl` reads ``{"messages": [...], "tools": [...]}`` lines in the
   OpenAI chat format and validates every one, raising `DataError` with the file,
   the 1-based line and the field (``messages[2].role``). Blank lines are skipped
   (they still count in line numbers).
2. `tokenize_examples` renders each conversation with the model's chat template and
   tokenizes it with a per-token loss mask that is true on assistant tokens only;
   an example longer than ``max_seq_len`` is truncated (and counted) or refused, and
   one whose assistant tokens were all cut off is dropped (and counted).
3. `BatchLoader` packs examples into rows (several per row, each its own segment
   with positions restarting at 0) or buckets them by length (one per row), and
   yields fixed ``[B, T]`` int32 `Batch` arrays in an order fixed by the seed and
   the epoch. Its `DataPosition` (epoch, batch index) is two ints a checkpoint
   stores to resume exactly where training was.

An example of ``n`` tokens fills ``n - 1`` positions of a row: position ``t`` reads
token ``t`` and predicts token ``t + 1``, so the last token is only a target.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainsvc_lm._chat import ROLES
from trainsvc_lm._errors import ConfigError, DataError, TemplateError
from trainsvc_lm._tokenizer import Tokenizer

Truncation = Literal["truncate", "refuse"]
Batching = Literal["pack", "bucket"]
_Fail = Callable[..., DataError]


# -- reading and validation ---------------------------------------------------------


@dataclass(frozen=True)
class ChatExample:
    """One validated conversation and where it came from.

    Attributes:
        messages: the messages as read (tool-call arguments may be JSON strings).
        tools: the example's tool definitions, or None.
        source: the file it was read from.
        line: its 1-based line in that file.
    """

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None = None
    source: str = "<memory>"
    line: int = 0

    @property
    def tool_call_turns(self) -> int:
        """Assistant messages that call at least one tool."""
        return sum(1 for m in self.messages if m["role"] == "assistant" and m.get("tool_calls"))

    @property
    def assistant_turns(self) -> int:
        """Assistant messages."""
        return sum(1 for m in self.messages if m["role"] == "assistant")


def read_chat_jsonl(path: str | Path) -> list[ChatExample]:
    """Read and validate a chat JSONL file (one conversation per non-blank line).

    Raises:
        DataError: the file is missing or empty, or a line is not valid JSON or not
            a valid conversation (the error names the line and field).
    """
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading BOM is not line 1's JSON
    except FileNotFoundError:
        raise DataError(name, None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(name, None, f"not UTF-8 text: {exc}") from None
    examples: list[ChatExample] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                name, number, f"not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        examples.append(validate_example(obj, name, number))
    if not examples:
        raise DataError(name, None, "no examples: the file has no non-blank lines")
    return examples


def validate_example(obj: Any, source: str = "<memory>", line: int = 0) -> ChatExample:
    """Validate one decoded JSONL line and return it as a `ChatExample`.

    Raises:
        DataError: naming ``source``, ``line`` and the field at fault.
    """

    def fail(message: str, where: str | None = None) -> DataError:
        return DataError(source, line, message, field=where)

    if not isinstance(obj, dict):
        raise fail(f"must be a JSON object, got {type(obj).__name__}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("must be a non-empty list of messages", "messages")
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]", fail)
    if not any(m["role"] == "assistant" for m in messages):
        raise fail("needs at least one assistant message to train on", "messages")
    tools = obj.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise fail("must be a list of tool definitions", "tools")
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise fail("must be an object", f"tools[{j}]")
    return ChatExample(
        messages=tuple(dict(m) for m in messages),
        tools=tuple(dict(t) for t in tools) if tools else None,
        source=source,
        line=line,
    )


def _check_message(message: Any, where: str, fail: _Fail) -> None:
    if not isinstance(message, dict):
        raise fail("must be an object with 'role' and 'content'", where)
    role = message.get("role")
    if role not in ROLES:
        raise fail(f"unknown role {role!r}; expected one of {', '.join(ROLES)}", f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):
        for k, part in enumerate(content):
            if not (
                isinstance(part, dict)
                and part.get("type", "text") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise fail(
                    'must be a text part {"type": "text", "text": "..."}',
                    f"{where}.content[{k}]",
                )
    elif content is not None and not isinstance(content, str):
        raise fail(
            f"must be a string, null or a list of text parts, got {type(content).__name__}",
            f"{where}.content",
        )
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise fail("only assistant messages may have tool_calls", f"{where}.tool_calls")
        if not isinstance(calls, list):
            raise fail("must be a list", f"{where}.tool_calls")
        for k, call in enumerate(calls):
            _check_call(call, f"{where}.tool_calls[{k}]", fail)
    if content is None and role != "assistant":
        raise fail(f"a {role} message needs content", f"{where}.content")
    if role == "assistant" and content is None and not calls:
        raise fail("an assistant message needs content or tool_calls", f"{where}.content")
    for key in ("tool_call_id", "name"):
        if key in message and message[key] is not None and not isinstance(message[key], str):
            raise fail("must be a string", f"{where}.{key}")


def _check_call(call: Any, where: str, fail: _Fail) -> None:
    if not isinstance(call, dict):
        raise fail("must be an object with 'function'", where)
    if call.get("type", "function") != "function":
        raise fail(
            f"only 'function' tool calls are supported, got {call['type']!r}", f"{where}.type"
        )
    if "id" in call and not isinstance(call["id"], str):
        raise fail("must be a string", f"{where}.id")
    function = call.get("function")
    if not isinstance(function, dict):
        raise fail("must be an object with 'name' and 'arguments'", f"{where}.function")
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise fail("must be a non-empty string", f"{where}.function.name")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise fail(
                f"not valid JSON: {exc.msg} (column {exc.colno})", f"{where}.function.arguments"
            ) from None
    if not isinstance(arguments, dict):
        raise fail("must be a JSON object (or a string holding one)", f"{where}.function.arguments")


# -- tokenization -------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedExample:
    """A conversation as token ids with its assistant-only loss mask.

    Attributes:
        ids: int32 token ids of the rendered conversation.
        loss_mask: bool, true where the token was written by an assistant message.
        source: the file the example came from.
        line: its 1-based line.
        truncated: whether tokens past ``max_seq_len`` were cut off.
        tool_call_turns: assistant messages with tool calls.
        assistant_turns: assistant messages.
    """

    ids: np.ndarray
    loss_mask: np.ndarray
    source: str = "<memory>"
    line: int = 0
    truncated: bool = False
    tool_call_turns: int = 0
    assistant_turns: int = 0

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class TokenizedData:
    """The result of `tokenize_examples`: the kept examples and what was cut.

    Attributes:
        examples: examples that still have assistant tokens to train on.
        truncated: examples cut to ``max_seq_len`` (kept or dropped).
        dropped: examples removed because truncation left no assistant token.
        max_seq_len: the limit they were tokenized under.
    """

    examples: list[TokenizedExample]
    truncated: int = 0
    dropped: int = 0
    max_seq_len: int = 0


def check_truncation(value: str, field_name: str = "data.truncation") -> Truncation:
    """Validate a truncation mode (``"truncate"`` or ``"refuse"``).

    Raises:
        ConfigError: naming ``field_name``.
    """
    if value == "truncate":
        return "truncate"
    if value == "refuse":
        return "refuse"
    raise ConfigError(field_name, f"must be 'truncate' or 'refuse', got {value!r}")


def tokenize_examples(
    examples: Sequence[ChatExample],
    tokenizer: Tokenizer,
    *,
    max_seq_len: int,
    truncation: str = "truncate",
    **template_vars: Any,
) -> TokenizedData:
    """Render and tokenize conversations with assistant-only loss masks.

    Args:
        examples: validated conversations.
        tokenizer: the model's tokenizer (its chat template renders the text).
        max_seq_len: the most tokens an example may have (the batch row length).
        truncation: ``"truncate"`` keeps the first ``max_seq_len`` tokens;
            ``"refuse"`` raises on the first longer example.
        **template_vars: extra chat-template variables.

    Raises:
        ConfigError: bad ``max_seq_len`` or ``truncation``.
        DataError: the template failed on an example, or (with ``"refuse"``) an
            example is too long; the error names its file and line.
    """
    mode = check_truncation(truncation)
    if max_seq_len < 2:
        raise ConfigError("data.max_seq_len", f"must be >= 2, got {max_seq_len}")
    kept: list[TokenizedExample] = []
    truncated = dropped = 0
    for example in examples:
        try:
            ids, mask = tokenizer.encode_chat(
                example.messages, tools=example.tools, **template_vars
            )
        except TemplateError as exc:
            raise DataError(example.source, example.line, str(exc), field="messages") from exc
        cut = len(ids) > max_seq_len
        if cut:
            if mode == "refuse":
                raise DataError(
                    example.source,
                    example.line,
                    f"{len(ids)} tokens exceed max_seq_len {max_seq_len} "
                    "(set truncation = 'truncate' to cut long examples)",
                    field="messages",
                )
            truncated += 1
            ids, mask = ids[:max_seq_len], mask[:max_seq_len]
        # Only tokens after the first one are predicted, so only they can carry loss.
        if not any(mask[1:]):
            dropped += 1
            continue
        kept.append(
            TokenizedExample(
                ids=np.asarray(ids, dtype=np.int32),
                loss_mask=np.asarray(mask, dtype=bool),
                source=example.source,
                line=example.line,
                truncated=cut,
                tool_call_turns=example.tool_call_turns,
                assistant_turns=example.assistant_turns,
            )
        )
    return TokenizedData(kept, truncated=truncated, dropped=dropped, max_seq_len=max_seq_len)


# -- report -------------------------------------------------------------------------


@dataclass(frozen=True)
class DataReport:
    """What a data set holds once tokenized (``trainsvc-lm data-report`` prints it)."""

    examples: int
    tokens: int
    assistant_tokens: int
    truncated: int
    dropped: int
    assistant_turns: int
    tool_call_turns: int
    max_length: int
    mean_length: float
    max_seq_len: int

    @property
    def tool_call_share(self) -> float:
        """Share of assistant turns that call a tool (0 when there are none)."""
        return self.tool_call_turns / self.assistant_turns if self.assistant_turns else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return {
            "examples": self.examples,
            "tokens": self.tokens,
            "assistant_tokens": self.assistant_tokens,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "assistant_turns": self.assistant_turns,
            "tool_call_turns": self.tool_call_turns,
            "tool_call_share": self.tool_call_share,
            "max_length": self.max_length,
            "mean_length": self.mean_length,
            "max_seq_len": self.max_seq_len,
        }

    def __str__(self) -> str:
        trained = self.assistant_tokens / self.tokens if self.tokens else 0.0
        return "\n".join(
            [
                f"examples          {self.examples}",
                f"tokens            {self.tokens} ({self.assistant_tokens} trained, {trained:.1%})",
                f"length            max {self.max_length}, mean {self.mean_length:.1f}"
                f" (limit {self.max_seq_len})",
                f"truncated         {self.truncated}",
                f"dropped           {self.dropped} (no assistant tokens left after truncation)",
                f"tool-call turns   {self.tool_call_turns} of {self.assistant_turns}"
                f" assistant turns ({self.tool_call_share:.1%})",
            ]
        )


def data_report(data: TokenizedData) -> DataReport:
    """Count examples, tokens, trained tokens, truncation and tool-call turns."""
    lengths = [len(e) for e in data.examples]
    return DataReport(
        examples=len(data.examples),
        tokens=sum(lengths),
        assistant_tokens=int(sum(int(e.loss_mask[1:].sum()) for e in data.examples)),
        truncated=data.truncated,
        dropped=data.dropped,
        assistant_turns=sum(e.assistant_turns for e in data.examples),
        tool_call_turns=sum(e.tool_call_turns for e in data.examples),
        max_length=max(lengths, default=0),
        mean_length=float(np.mean(lengths)) if lengths else 0.0,
        max_seq_len=data.max_seq_len,
    )


def load_chat_data(
    path: str | Path,
    tokenizer: Tokenizer,
    *,
    max_seq_len: int,
    truncation: str = "truncate",
) -> TokenizedData:
    """`read_chat_jsonl` then `tokenize_examples`: a file to trainable examples."""
    return tokenize_examples(
        read_chat_jsonl(path), tokenizer, max_seq_len=max_seq_len, truncation=truncation
    )


# -- batching -----------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Fixed-shape ``[B, T]`` int32 arrays for one training step.

    Attributes:
        tokens: input token ids (the pad id where there is no example).
        targets: the next token of the same example, -1 where there is none (padding).
        loss_mask: 1 where the target is an assistant token (so loss is taken), else 0.
        positions: position within the example, restarting at 0 for each segment.
        segment_ids: 1, 2, ... for the examples packed in a row, 0 for padding; attention
            must stay inside one segment id (and be causal).
    """

    tokens: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays by name."""
        return {
            "tokens": self.tokens,
            "targets": self.targets,
            "loss_mask": self.loss_mask,
            "positions": self.positions,
            "segment_ids": self.segment_ids,
        }


@dataclass(frozen=True, order=True)
class DataPosition:
    """Where a `BatchLoader` is: the epoch and the index of the next batch in it."""

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict[str, int]:
        """Plain ints for a checkpoint."""
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataPosition:
        """Inverse of `to_dict`.

        Raises:
            ConfigError: a missing or negative field.
        """
        values = {}
        for key in ("epoch", "index"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"data_position.{key}", f"must be an integer >= 0, got {value!r}")
            values[key] = value
        return cls(**values)


@dataclass
class BatchLoader:
    """Deterministic, resumable fixed-shape batches over tokenized examples.

    Every epoch shuffles the examples with a generator seeded by ``(seed, epoch)``,
    then either packs them into rows (``"pack"``: first fit into a small window of
    open rows, so a row holds several examples in shuffled order) or buckets them
    (``"bucket"``: one example per row, rows grouped with others of similar length,
    batches in shuffled order). The last batch of an epoch is padded with empty rows.
    The plan depends only on (examples, seed, epoch), so `batch` at a `DataPosition`
    is the same batch on every run and after every restore.

    Args:
        examples: tokenized examples, each at most ``seq_len + 1`` tokens long.
        batch_size: rows per batch (B).
        seq_len: positions per row (T).
        seed: the shuffle seed.
        batching: ``"pack"`` or ``"bucket"``.
        pad_id: the token id of padding positions.

    Raises:
        ConfigError: bad sizes, an unknown batching mode, no examples, or an example
            longer than a row.
    """

    examples: Sequence[TokenizedExample]
    batch_size: int
    seq_len: int
    seed: int = 0
    batching: str = "pack"
    pad_id: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    _plans: dict[int, list[list[list[int]]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("data.batch_size", f"must be >= 1, got {self.batch_size}")
        if self.seq_len < 1:
            raise ConfigError("data.seq_len", f"must be >= 1, got {self.seq_len}")
        if self.batching not in ("pack", "bucket"):
            raise ConfigError("data.batching", f"must be 'pack' or 'bucket', got {self.batching!r}")
        if not self.examples:
            raise ConfigError("data", "no examples to batch")
        for e in self.examples:
            if len(e) - 1 > self.seq_len:
                raise ConfigError(
                    "data.seq_len",
                    f"{e.source}:{e.line} has {len(e)} tokens, more than a row of "
                    f"{self.seq_len} positions holds ({self.seq_len + 1} tokens)",
                )

    # -- the plan of an epoch -------------------------------------------------------

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """The batches of ``epoch``: for each batch, for each row, the example indices."""
        if epoch not in self._plans:
            if len(self._plans) > 2:
                self._plans.clear()
            self._plans[epoch] = self._make_plan(epoch)
        return self._plans[epoch]

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """How many batches ``epoch`` has (packing can vary it slightly between epochs)."""
        return len(self.plan(epoch))

    def _make_plan(self, epoch: int) -> list[list[list[int]]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = [int(i) for i in rng.permutation(len(self.examples))]
        width = [len(self.examples[i]) - 1 for i in order]
        if self.batching == "pack":
            rows = _pack(order, width, self.seq_len)
        else:
            rows = _bucket(order, width, self.batch_size)
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        if self.batching == "bucket":
            batches = [batches[int(i)] for i in rng.permutation(len(batches))]
        return batches

    def fill(self, epoch: int = 0) -> float:
        """Share of the epoch's ``B * T`` positions that hold a token (the rest is padding)."""
        used = sum(
            len(self.examples[i]) - 1 for batch in self.plan(epoch) for row in batch for i in row
        )
        return used / (self.batches_per_epoch(epoch) * self.batch_size * self.seq_len)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the examples and the batching settings.

        A checkpoint stores it beside the `DataPosition`; on resume, a different
        fingerprint means the data or settings changed and the position means
        something else.
        """
        digest = hashlib.sha256(
            f"{self.batching}:{self.batch_size}:{self.seq_len}:{self.seed}".encode()
        )
        for example in self.examples:
            digest.update(np.int64(len(example)).tobytes())
            digest.update(np.ascontiguousarray(example.ids, dtype=np.int32).tobytes())
            digest.update(np.ascontiguousarray(example.loss_mask, dtype=np.bool_).tobytes())
        return digest.hexdigest()[:16]

    # -- batches --------------------------------------------------------------------

    def batch(self, position: DataPosition) -> Batch:
        """The batch at ``position`` (which must be inside its epoch)."""
        rows = self.plan(position.epoch)[position.index]
        return self._assemble(rows)

    def advance(self, position: DataPosition) -> DataPosition:
        """The position after ``position`` (the next epoch's start after the last batch)."""
        if position.index + 1 < self.batches_per_epoch(position.epoch):
            return DataPosition(position.epoch, position.index + 1)
        return DataPosition(position.epoch + 1, 0)

    def seek(self, position: DataPosition) -> None:
        """Continue from ``position`` (e.g. one restored from a checkpoint).

        Raises:
            ConfigError: the index is past the end of its epoch.
        """
        if position.index >= self.batches_per_epoch(position.epoch):
            raise ConfigError(
                "data_position.index",
                f"{position.index} is past the {self.batches_per_epoch(position.epoch)} "
                f"batches of epoch {position.epoch}",
            )
        self.position = position

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        """The batch at `position`, then move `position` on (epochs never end the iteration)."""
        batch = self.batch(self.position)
        self.position = self.advance(self.position)
        return batch

    def _assemble(self, rows: Sequence[Sequence[int]]) -> Batch:
        shape = (self.batch_size, self.seq_len)
        tokens = np.full(shape, self.pad_id, dtype=np.int32)
        targets = np.full(shape, -1, dtype=np.int32)
        loss_mask = np.zeros(shape, dtype=np.int32)
        positions = np.zeros(shape, dtype=np.int32)
        segment_ids = np.zeros(shape, dtype=np.int32)
        for r, row in enumerate(rows):
            at = 0
            for s, index in enumerate(row, start=1):
                example = self.examples[index]
                n = len(example) - 1
                tokens[r, at : at + n] = example.ids[:-1]
                targets[r, at : at + n] = example.ids[1:]
                loss_mask[r, at : at + n] = example.loss_mask[1:]
                positions[r, at : at + n] = np.arange(n, dtype=np.int32)
                segment_ids[r, at : at + n] = s
                at += n
        return Batch(tokens, targets, loss_mask, positions, segment_ids)


_OPEN_ROWS = 8


def _pack(order: Sequence[int], width: Sequence[int], seq_len: int) -> list[list[int]]:
    """First fit into a window of open rows; a full window closes its fullest row."""
    done: list[list[int]] = []
    open_rows: list[list[int]] = []
    free: list[int] = []
    for index, w in zip(order, width, strict=True):
        slot = next((k for k, f in enumerate(free) if f >= w), None)
        if slot is None:
            if len(open_rows) == _OPEN_ROWS:
                k = int(np.argmin(free))
                done.append(open_rows.pop(k))
                free.pop(k)
            open_rows.append([])
            free.append(seq_len)
            slot = len(open_rows) - 1
        open_rows[slot].append(index)
        free[slot] -= w
    return done + open_rows


def _bucket(order: Sequence[int], width: Sequence[int], batch_size: int) -> list[list[int]]:
    """One example per row, sorted by length inside chunks of a few batches."""
    chunk = batch_size * 16
    rows: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(range(start, min(start + chunk, len(order))), key=lambda k: width[k])
        rows.extend([order[k]] for k in part)
    return rows
