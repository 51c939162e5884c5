"""The OpenAI chat-completions protocol: request validation, errors, responses and chunks.

Pure data in and out (no web framework, no JAX): `parse_chat_request` turns a
``/v1/chat/completions`` JSON body into a `ChatRequest` or raises `APIError`
naming the offending ``param``; `completion_response`, `chunk` and
`sse` build the exact OpenAI shapes; `parse_tool_calls` reads the tool calls a
model wrote in its family's format (see `trainsvc_lm._tiny`'s templates):

- ChatML (Qwen2/2.5/3): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, repeated;
- Llama 3.x: the whole reply is ``{"name": ..., "parameters": {...}}`` (optionally
  after ``<|python_tag|>``);
- Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainsvc_lm._sampler import SamplingConfig

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_STRINGS = 4
MAX_SEED = 2**32 - 1


class APIError(Exception):
    """An OpenAI-style error: HTTP status and the ``{"error": {...}}`` body.

    Attributes:
        status: the HTTP status (400 bad request, 404 unknown model, ...).
        message: what was wrong and what is allowed.
        param: the request parameter at fault (``messages[2].role``), or None.
        type: OpenAI's error type (``invalid_request_error``, ``server_error``...).
        code: a short machine code (``model_not_found``, ``context_length_exceeded``) or None.
    """

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = (
            status,
            message,
            param,
            type,
            code,
        )

    def body(self) -> dict[str, Any]:
        """The JSON error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def model_not_found(model: str) -> APIError:
    """The 404 error for a model name that is not served."""
    return APIError(
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        status=404,
        code="model_not_found",
    )


# ------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat-completions request.

    ``max_tokens`` is None when the client gave neither ``max_tokens`` nor
    ``max_completion_tokens`` (the server then allows what the context leaves).
    """

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "auto"
    stream: bool = False
    include_usage: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"
    stop: tuple[str, ...] = ()
    seed: int | None = None
    user: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def sampling(self, max_new_tokens: int) -> SamplingConfig:
        """The sampler's settings for ``max_new_tokens`` (stop tokens: the model's)."""
        return SamplingConfig(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop_token_ids=None,
            seed=self.seed if self.seed is not None else secrets.randbelow(MAX_SEED),
        )

    @property
    def tools_enabled(self) -> bool:
        """Whether to look for tool calls in the reply."""
        return bool(self.tools) and self.tool_choice != "none"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(body: Mapping[str, Any], key: str, low: float, high: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not _is_number(value) or not low <= value <= high:
        raise APIError(f"{key} must be a number between {low} and {high}, got {value!r}", param=key)
    return float(value)


def _text_content(content: Any, param: str, *, allow_none: bool) -> str | None:
    if content is None:
        if allow_none:
            return None
        raise APIError("content is required", param=param)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise APIError(
                    "only text content parts ({'type': 'text', 'text': ...}) are supported",
                    param=f"{param}[{i}]",
                )
            if not isinstance(part.get("text"), str):
                raise APIError("text must be a string", param=f"{param}[{i}].text")
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(
        f"content must be a string or a list of text parts, got {type(content).__name__}",
        param=param,
    )


def _tool_call(call: Any, param: str) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise APIError("a tool call must be an object", param=param)
    if call.get("type", "function") != "function":
        raise APIError("only function tool calls are supported", param=f"{param}.type")
    function = call.get("function")
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise APIError("function.name is required", param=f"{param}.function.name")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise APIError(
                f"arguments must be a JSON object string: {exc}",
                param=f"{param}.function.arguments",
            ) from None
    if not isinstance(arguments, Mapping):
        raise APIError("arguments must be a JSON object", param=f"{param}.function.arguments")
    out: dict[str, Any] = {
        "type": "function",
        "function": {"name": function["name"], "arguments": dict(arguments)},
    }
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def _message(message: Any, i: int) -> dict[str, Any]:
    param = f"messages[{i}]"
    if not isinstance(message, Mapping):
        raise APIError("each message must be an object", param=param)
    role = message.get("role")
    if role not in ROLES:
        raise APIError(
            f"role must be one of {', '.join(ROLES)}, got {role!r}", param=f"{param}.role"
        )
    out: dict[str, Any] = {"role": "system" if role == "developer" else role}
    calls = message.get("tool_calls") if role == "assistant" else None
    out["content"] = _text_content(
        message.get("content"), f"{param}.content", allow_none=bool(calls)
    )
    if calls:
        if not isinstance(calls, list):
            raise APIError("tool_calls must be a list", param=f"{param}.tool_calls")
        out["tool_calls"] = [_tool_call(c, f"{param}.tool_calls[{j}]") for j, c in enumerate(calls)]
        if out["content"] is None:
            out["content"] = ""
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise APIError("tool messages need a tool_call_id", param=f"{param}.tool_call_id")
        out["tool_call_id"] = call_id
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    return out


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise APIError("tools must be a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise APIError("each tool must be {'type': 'function', ...}", param=f"tools[{i}].type")
        function = tool.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise APIError("function.name is required", param=f"tools[{i}].function.name")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", function["name"]):
            raise APIError(
                "function names are 1 to 64 of a-z, A-Z, 0-9, _ and -",
                param=f"tools[{i}].function.name",
            )
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, Mapping):
            raise APIError(
                "parameters must be a JSON schema object", param=f"tools[{i}].function.parameters"
            )
        out.append({"type": "function", "function": {**function, "parameters": dict(parameters)}})
    return out or None


def _tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> str | dict[str, Any]:
    if choice is None:
        return "auto"
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise APIError("tool_choice 'required' needs tools", param="tool_choice")
        return str(choice)
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        names = [t["function"]["name"] for t in tools or []]
        if name not in names:
            raise APIError(
                f"tool_choice names function {name!r}, which is not in tools ({names})",
                param="tool_choice.function.name",
            )
        return {"type": "function", "function": {"name": name}}
    raise APIError(
        "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', "
        "'function': {'name': ...}}",
        param="tool_choice",
    )


def _max_tokens(body: Mapping[str, Any]) -> tuple[int | None, str]:
    given = {k: body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None}
    for key, value in given.items():
        if not _is_int(value) or value < 1:
            raise APIError(f"{key} must be an integer >= 1, got {value!r}", param=key)
    if len(given) == 2 and given["max_tokens"] != given["max_completion_tokens"]:
        raise APIError(
            "give max_completion_tokens or max_tokens, not two different values",
            param="max_tokens",
        )
    for key, value in given.items():
        return int(value), key
    return None, "max_tokens"


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise APIError("stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(f"stop takes at most {MAX_STOP_STRINGS} strings", param="stop")
    return tuple(stops)


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` JSON body.

    Raises:
        APIError: 400 naming the parameter that is missing, malformed or unsupported
            (``n`` > 1, ``logprobs``, non-text content parts...).
    """
    if not isinstance(body, Mapping):
        raise APIError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError("model is required (a string)", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list", param="messages")
    parsed = [_message(m, i) for i, m in enumerate(messages)]
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise APIError(f"only n=1 is supported, got {n!r}", param="n")
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise APIError("logprobs are not supported", param="logprobs")
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise APIError("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, Mapping) or not stream):
        raise APIError("stream_options is an object, only with stream=true", param="stream_options")
    include_usage = bool(options and options.get("include_usage"))
    tools = _tools(body.get("tools"))
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise APIError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}", param="seed")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise APIError("user must be a string", param="user")
    top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0.0:
        raise APIError("top_p must be greater than 0", param="top_p")
    max_tokens, max_param = _max_tokens(body)
    return ChatRequest(
        model=model,
        messages=parsed,
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), tools),
        stream=bool(stream),
        include_usage=include_usage,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=top_p,
        max_tokens=max_tokens,
        max_tokens_param=max_param,
        stop=_stop(body.get("stop")),
        seed=seed,
        user=user,
        raw=dict(body),
    )


# ----------------------------------------------------------------- tool calls

_CHATML_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_MISTRAL_MARK = "[TOOL_CALLS]"
_LLAMA_MARK = "<|python_tag|>"


def _call_from(obj: Any, names: Sequence[str]) -> dict[str, Any] | None:
    if not isinstance(obj, Mapping) or obj.get("name") not in names:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, Mapping):
        return None
    return {
        "id": f"call_{secrets.token_hex(12)}",
        "type": "function",
        "function": {"name": obj["name"], "arguments": json.dumps(arguments)},
    }


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse_tool_calls(
    family: str, raw_text: str, tool_names: Sequence[str]
) -> tuple[str | None, list[dict[str, Any]]]:
    """The content and the OpenAI ``tool_calls`` in a model's reply.

    Args:
        family: the model family (``llama``, ``mistral``, ``qwen2``, ``qwen3``).
        raw_text: the reply decoded with special tokens kept.
        tool_names: the functions the request offered; a call to anything else is text.

    Returns:
        ``(content, calls)``: no calls (and the text unchanged) when the reply does
        not hold a well-formed call to an offered function.
    """
    if family in ("qwen2", "qwen3") or "<tool_call>" in raw_text:
        blocks = list(_CHATML_CALL.finditer(raw_text))
        calls = [_call_from(_json(m.group(1)), tool_names) for m in blocks]
        if blocks and all(c is not None for c in calls):
            content = _CHATML_CALL.sub("", raw_text).strip()
            return content or None, [c for c in calls if c is not None]
        return raw_text, []
    if family == "mistral" or _MISTRAL_MARK in raw_text:
        head, mark, tail = raw_text.partition(_MISTRAL_MARK)
        listed = _json(tail.strip()) if mark else None
        if isinstance(listed, Mapping):
            listed = [listed]
        if isinstance(listed, list) and listed:
            calls = [_call_from(item, tool_names) for item in listed]
            if all(c is not None for c in calls):
                return head.strip() or None, [c for c in calls if c is not None]
        return raw_text, []
    body = raw_text.strip()
    body = body.removeprefix(_LLAMA_MARK).strip()
    call = _call_from(_json(body), tool_names)
    return (None, [call]) if call is not None else (raw_text, [])


# ------------------------------------------------------------------ responses


def completion_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return f"chatcmpl-{secrets.token_hex(12)}"


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(
    *,
    id: str,
    model: str,
    created: int,
    content: str | None,
    tool_calls: list[dict[str, Any]],
    finish_reason: str,
    usage: dict[str, int],
    fingerprint: str,
) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage,
    }


def chunk(
    *,
    id: str,
    model: str,
    created: int,
    fingerprint: str,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; ``delta=None`` makes the usage-only last chunk (no choices)."""
    out: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        out["usage"] = usage
    return out


def tool_call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The streamed form of ``tool_calls``: each with its ``index``."""
    return [{"index": i, **call} for i, call in enumerate(calls)]


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


DONE = sse("[DONE]")


def now() -> int:
    """Seconds since the epoch, as OpenAI's ``created``."""
    return int(time.time())


def completion_from_chunks(chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``chat.completion`` object a stream of ``chat.completion.chunk`` objects makes.

    Content deltas are joined, tool-call deltas merged by their ``index`` (the
    ``arguments`` strings joined), the last ``finish_reason`` and ``usage`` kept; for
    recording a streamed reply (e.g. one proxied from another server) as if it had
    been asked for whole.
    """
    first = chunks[0] if chunks else {}
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    reason: str | None = None
    usage: Any = None
    for piece in chunks:
        if piece.get("usage"):
            usage = piece["usage"]
        for choice in piece.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(
                    int(call.get("index", len(calls))),
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            reason = choice.get("finish_reason") or reason
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(content) if content or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": first.get("created", 0),
        "model": first.get("model", ""),
        "system_fingerprint": first.get("system_fingerprint"),
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": reason or "stop"}
        ],
        "usage": usage,
    }
