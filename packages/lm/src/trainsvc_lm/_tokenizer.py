"""A model directory's tokenizer: ``tokenizer.json`` plus what ``transformers`` adds.

`Tokenizer.from_dir` reads the files Hugging Face writes beside a model:
``tokenizer.json`` (the ``tokenizers`` pipeline), ``tokenizer_config.json`` (chat
template, special tokens, ``add_bos_token``), a separate ``chat_template.jinja`` or
``chat_template.json`` where newer versions put the template, and the end-of-sequence
ids of ``generation_config.json`` and ``config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from trainsvc_lm._chat import ChatTemplate
from trainsvc_lm._errors import ModelLoadError, TemplateError

SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(path), f"not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(str(path), "must hold a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


@dataclass
class Tokenizer:
    """A ``tokenizers.Tokenizer`` with the model's special tokens and chat template(s).

    Attributes:
        backend: the wrapped ``tokenizers.Tokenizer``.
        special_tokens: ``bos_token``/``eos_token``/... -> token text, as configured.
        chat_templates: template name -> template (``"default"`` for a single one).
        add_bos_token: prepend the BOS token in `encode` with ``add_special_tokens``.
        extra_eos_ids: end-of-sequence ids from generation_config.json / config.json.
        source: the directory it came from (for messages).
    """

    backend: tokenizers.Tokenizer
    special_tokens: dict[str, str] = field(default_factory=dict)
    chat_templates: dict[str, ChatTemplate] = field(default_factory=dict)
    add_bos_token: bool = False
    extra_eos_ids: tuple[int, ...] = ()
    source: str = ""
    pad_id: int | None = None

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        """Load the tokenizer of a Hugging Face model directory.

        Raises:
            ModelLoadError: ``tokenizer.json`` is missing or unreadable, or a JSON
                file beside it is malformed.
            TemplateError: the chat template does not compile.
        """
        root = Path(model_dir)
        path = root / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(str(path), "missing: a model directory needs tokenizer.json")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelLoadError(str(path), f"not a valid tokenizers file: {exc}") from None
        config_path = root / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        special = {
            key: text
            for key in SPECIAL_TOKEN_KEYS
            if (text := _token_text(config.get(key))) is not None
        }
        extra: list[int] = []
        pad_id: int | None = None
        for name in ("generation_config.json", "config.json"):
            if (root / name).is_file():
                data = _read_json(root / name)
                extra += _ids(data.get("eos_token_id"))
                if pad_id is None and _ids(data.get("pad_token_id")):
                    pad_id = _ids(data.get("pad_token_id"))[0]
        templates = _templates(root, config, special)
        return cls(
            backend=backend,
            special_tokens=special,
            chat_templates=templates,
            add_bos_token=bool(config.get("add_bos_token", False)),
            extra_eos_ids=tuple(extra),
            source=str(root),
            pad_id=pad_id,
        )

    # -- vocabulary ---------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        """The id of a token's text (e.g. ``"<|im_end|>"``), or None."""
        found = self.backend.token_to_id(token)
        return None if found is None else int(found)

    def _special_id(self, key: str) -> int | None:
        text = self.special_tokens.get(key)
        return None if text is None else self.token_to_id(text)

    @property
    def bos_token_id(self) -> int | None:
        """The BOS token's id, or None."""
        return self._special_id("bos_token")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids that end a generation: the tokenizer's EOS, then the config files' ids."""
        ids: list[int] = []
        eos = self._special_id("eos_token")
        for i in ([eos] if eos is not None else []) + list(self.extra_eos_ids):
            if i not in ids:
                ids.append(i)
        return tuple(ids)

    @property
    def pad_token_id(self) -> int:
        """The padding id: the pad token's, else the configured one, else the first EOS.

        Raises:
            ModelLoadError: the tokenizer defines none of them.
        """
        pad = self._special_id("pad_token")
        if pad is None:
            pad = self.pad_id
        if pad is None and self.eos_token_ids:
            pad = self.eos_token_ids[0]
        if pad is None:
            raise ModelLoadError(self.source, "the tokenizer has no pad or eos token")
        return pad

    # -- text ---------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` (with the post-processor's/BOS tokens if asked)."""
        ids = [int(i) for i in self.backend.encode(text, add_special_tokens=add_special_tokens).ids]
        bos = self.bos_token_id
        if add_special_tokens and self.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``."""
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    # -- chat ---------------------------------------------------------------------

    def chat_template(self, tools: Sequence[Mapping[str, Any]] | None = None) -> ChatTemplate:
        """The template to use: ``tool_use`` when there are tools and it exists, else ``default``.

        Raises:
            TemplateError: the tokenizer has no chat template.
        """
        if tools and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        if "default" in self.chat_templates:
            return self.chat_templates["default"]
        if self.chat_templates:
            return next(iter(self.chat_templates.values()))
        raise TemplateError(f"{self.source}: the tokenizer has no chat template")

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        **extra: Any,
    ) -> str:
        """Render a conversation with the model's chat template (see `ChatTemplate.render`)."""
        return self.chat_template(tools).render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **extra
        )

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> tuple[list[int], list[bool]]:
        """Token ids of a rendered conversation and, per token, whether an assistant wrote it.

        A token counts as the assistant's when it starts inside an assistant span
        (content, tool calls and end-of-turn token; see `ChatTemplate.assistant_spans`).
        The template writes any BOS token itself, so none is added here.

        Raises:
            TemplateError: the template raised or is not prefix-stable.
        """
        text, spans = self.chat_template(tools).assistant_spans(messages, tools=tools, **extra)
        encoding = self.backend.encode(text, add_special_tokens=False)
        ids = [int(i) for i in encoding.ids]
        if not ids or not spans:
            return ids, [False] * len(ids)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        starts, ends = offsets[:, 0], offsets[:, 1]
        span_starts = np.asarray([a for a, _ in spans], dtype=np.int64)
        span_ends = np.asarray([b for _, b in spans], dtype=np.int64)
        # The first span ending after each token's start; the token is in it if it
        # also starts at or after the span's start (and is not zero-width).
        k = np.searchsorted(span_ends, starts, side="right")
        inside = k < len(spans)
        k = np.minimum(k, len(spans) - 1)
        mask = inside & (span_starts[k] <= starts) & (ends > starts)
        return ids, [bool(m) for m in mask]


def _templates(
    root: Path, config: Mapping[str, Any], special: Mapping[str, str]
) -> dict[str, ChatTemplate]:
    raw: Any = config.get("chat_template")
    where = str(root / "tokenizer_config.json")
    if raw is None and (root / "chat_template.jinja").is_file():
        raw = (root / "chat_template.jinja").read_text(encoding="utf-8")
        where = str(root / "chat_template.jinja")
    if raw is None and (root / "chat_template.json").is_file():
        raw = _read_json(root / "chat_template.json").get("chat_template")
        where = str(root / "chat_template.json")
    if raw is None:
        return {}
    if isinstance(raw, str):
        return {"default": ChatTemplate(raw, special, name=f"{where}: chat_template")}
    if isinstance(raw, list):
        out: dict[str, ChatTemplate] = {}
        for i, item in enumerate(raw):
            if not (
                isinstance(item, dict)
                and isinstance(item.get("name"), str)
                and isinstance(item.get("template"), str)
            ):
                raise ModelLoadError(
                    where, f"chat_template[{i}] must be an object with 'name' and 'template'"
                )
            name = item["name"]
            out[name] = ChatTemplate(
                item["template"], special, name=f"{where}: chat_template {name}"
            )
        return out
    raise ModelLoadError(where, "chat_template must be a string or a list of named templates")
