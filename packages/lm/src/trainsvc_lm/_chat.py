"""Hugging Face chat templates, rendered the way ``transformers`` renders them.

A model's ``chat_template`` is a jinja2 program. `ChatTemplate` compiles it in
an immutable sandbox with the settings and helpers ``transformers`` provides
(``trim_blocks``, ``lstrip_blocks``, loop controls, ``raise_exception``,
``strftime_now``, a ``tojson`` filter that keeps non-ASCII text and accepts
``indent``/``sort_keys``), passes the special tokens (``bos_token``, ...) as
variables, and renders conversations in the OpenAI chat format.

`ChatTemplate.assistant_spans` finds, in the rendered text, the characters each
assistant message produced (its content, tool calls and end-of-turn token), so
that training can put the loss on those tokens only. Templates have no marker for
this, so the spans come from rendering prefixes of the conversation: the text of
``messages[:i]`` with the generation prompt is where assistant message ``i``
starts, the text of ``messages[: i + 1]`` is where it ends. That only works for a
template whose rendering of a prefix is a prefix of the whole rendering, which is
checked; a template that rewrites earlier turns gets a `TemplateError` saying so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
from jinja2.parser import Parser

from trainsvc_lm._errors import TemplateError

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")


class _TemplateRaisedError(Exception):
    """What ``raise_exception`` throws inside the template (turned into TemplateError)."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaisedError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter: jinja's own tojson escapes HTML characters and has no
    # ensure_ascii/sort_keys, which changes what the model saw in training.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: accepted and rendered as its body.

    transformers uses the tag to find assistant tokens; here the spans come from
    prefix rendering, but templates that carry the tag must still compile.
    """

    tags = {"generation"}  # noqa: RUF012 - jinja's Extension API

    def parse(self, parser: Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Copies of OpenAI-format messages in the shape chat templates expect.

    Content given as a list of text parts is joined into one string, tool-call
    ``arguments`` given as a JSON string are parsed into an object, as templates
    (Llama 3.1, Qwen2.5, Mistral) write them with ``tojson``, and an empty or null
    ``tool_calls`` is removed. The messages are assumed valid (see
    ``trainsvc_lm._data`` for validation).
    """
    out: list[Message] = []
    for message in messages:
        copy = dict(message)
        content = copy.get("content")
        if isinstance(content, list):
            copy["content"] = "".join(str(part.get("text", "")) for part in content)
        if copy.get("tool_calls"):
            copy["tool_calls"] = [_normalize_call(call) for call in copy["tool_calls"]]
        else:
            # OpenAI exports write "tool_calls": null on plain answers; templates such
            # as Llama 3.x test `'tool_calls' in message` and would take it for a call.
            copy.pop("tool_calls", None)
        out.append(copy)
    return out


def _normalize_call(call: Mapping[str, Any]) -> dict[str, Any]:
    copy = dict(call)
    function = dict(copy.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        function["arguments"] = json.loads(arguments) if arguments.strip() else {}
    copy["function"] = function
    copy.setdefault("type", "function")
    return copy


class ChatTemplate:
    """One compiled chat template and the special tokens it may refer to.

    Args:
        source: the jinja2 template text (``tokenizer_config.json``'s ``chat_template``).
        special_tokens: variables such as ``bos_token``/``eos_token`` -> their text.
        name: how errors name the template (e.g. the file it came from).

    Raises:
        TemplateError: the template does not compile.
    """

    def __init__(
        self,
        source: str,
        special_tokens: Mapping[str, Any] | None = None,
        name: str = "chat_template",
    ) -> None:
        self.source = source
        self.name = name
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{name}: line {exc.lineno}: {exc.message}") from None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        now: datetime | None = None,
        **extra: Any,
    ) -> str:
        """Render a conversation to the text the model reads.

        Args:
            messages: OpenAI-format messages (normalised here).
            tools: JSON-schema tool definitions, passed as ``tools`` (None if absent).
            add_generation_prompt: append the header that starts an assistant turn.
            now: the time ``strftime_now`` reports (default: the current time).
            **extra: further template variables (e.g. ``enable_thinking``).

        Raises:
            TemplateError: the template called ``raise_exception`` (with its message)
                or failed while rendering.
        """
        context: dict[str, Any] = {
            **self.special_tokens,
            **extra,
            "messages": normalize_messages(messages),
            "tools": [dict(t) for t in tools] if tools else None,
            "add_generation_prompt": add_generation_prompt,
        }
        if now is not None:
            context["strftime_now"] = _frozen_strftime(now)
        try:
            return self._template.render(**context)
        except _TemplateRaisedError as exc:
            raise TemplateError(f"{self.name} raised: {exc}") from None
        except Exception as exc:  # whatever a template does wrong is the template's error
            raise TemplateError(f"{self.name} failed: {type(exc).__name__}: {exc}") from None

    def assistant_spans(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and each assistant message's ``[start, end)`` in it.

        A span starts after the assistant header (what ``add_generation_prompt``
        appends) and ends after the turn's end-of-turn token; whitespace the template
        writes after that token is left out.

        Raises:
            TemplateError: the template raised, or rendering a prefix of the
                conversation does not give a prefix of the full rendering.
        """
        now = datetime.now()
        cache: dict[tuple[int, bool], str] = {}

        def render(count: int, gen: bool) -> str:
            # The first `count` messages; consecutive turns share renderings.
            if (count, gen) not in cache:
                try:
                    cache[count, gen] = self.render(
                        messages[:count], tools=tools, add_generation_prompt=gen, now=now, **extra
                    )
                except TemplateError:
                    if count:
                        raise
                    # Most templates read messages[0]; before an opening assistant
                    # message the span then starts at the beginning of the text.
                    cache[count, gen] = ""
            return cache[count, gen]

        full = render(len(messages), False)
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before, prompt, through = render(i, False), render(i, True), render(i + 1, False)
            if not through.startswith(before) or not full.startswith(through):
                raise TemplateError(
                    f"{self.name}: rendering messages[:{i + 1}] is not a prefix of rendering "
                    "the whole conversation (the template changes earlier turns, e.g. drops "
                    "reasoning from past assistant messages), so assistant tokens cannot be "
                    "located; use a template whose turns render independently"
                )
            start = max(len(before), _common_prefix(prompt, through))
            end = len(through.rstrip())
            if end <= start:
                end = len(through)
            spans.append((start, end))
        return full, spans


def _common_prefix(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _frozen_strftime(now: datetime) -> Callable[[str], str]:
    def strftime_now(fmt: str) -> str:
        return now.strftime(fmt)

    return strftime_now
