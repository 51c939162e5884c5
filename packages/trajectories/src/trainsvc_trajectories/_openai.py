"""wrap_openai: an OpenAI(-compatible) client whose chat completions record themselves."""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from typing import Any

from ._errors import InvalidRecordError
from ._recorder import TrajectoryHandle, TrajectoryRecorder, current_trajectory


def _content(message: Any) -> str | None:
    content = message.get("content") if isinstance(message, Mapping) else None
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return str(content)


def _plain(message: Any) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return {k: v for k, v in message.items() if v is not None}
    dump = getattr(message, "model_dump", None)
    if callable(dump):
        data = dump(exclude_none=True)
        assert isinstance(data, dict)
        return data
    raise InvalidRecordError(
        "messages", f"cannot record a message of type {type(message).__name__}"
    )


class _Completions:
    def __init__(self, wrapper: RecordingClient, inner: Any) -> None:
        self._w = wrapper
        self._inner = inner

    def create(self, *args: Any, **kwargs: Any) -> Any:
        trajectory = self._w._trajectory()
        started = time.perf_counter()
        result = self._inner.create(*args, **kwargs)
        if inspect.isawaitable(result):
            return self._w._record_async(trajectory, result, kwargs, started)
        self._w._record(trajectory, result, kwargs, time.perf_counter() - started)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Chat:
    def __init__(self, wrapper: RecordingClient, inner: Any) -> None:
        self.completions = _Completions(wrapper, inner.completions)
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RecordingClient:
    """Proxy of an ``openai.OpenAI`` / ``AsyncOpenAI`` (or compatible) client.

    ``client.chat.completions.create(...)`` calls the real client, then logs the call
    with ``log_llm_call`` into the bound trajectory (or the current one of a
    ``recorder.trajectory(...)`` block): model, system and last user prompt, the full
    messages, response text, temperature, max_tokens, latency and token usage. Streaming
    calls (``stream=True``) are passed through without recording. Everything else is
    the wrapped client's.
    """

    def __init__(
        self,
        client: Any,
        recorder: TrajectoryRecorder,
        trajectory: TrajectoryHandle | str | None = None,
        *,
        purpose: str | None = None,
        action_type: str | None = None,
    ) -> None:
        self._client = client
        self._recorder = recorder
        self._bound = trajectory
        self.purpose = purpose
        self.action_type = action_type
        self.chat = _Chat(self, client.chat)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _trajectory(self) -> TrajectoryHandle | str:
        t = self._bound if self._bound is not None else current_trajectory()
        if t is None:
            raise InvalidRecordError(
                "trajectory",
                "wrap_openai: no trajectory bound and none current; pass trajectory= or call "
                "inside `with recorder.trajectory(...)`",
            )
        return t

    async def _record_async(
        self,
        trajectory: TrajectoryHandle | str,
        pending: Any,
        kwargs: dict[str, Any],
        started: float,
    ) -> Any:
        result = await pending
        self._record(trajectory, result, kwargs, time.perf_counter() - started)
        return result

    def _record(
        self,
        trajectory: TrajectoryHandle | str,
        result: Any,
        kwargs: dict[str, Any],
        latency: float,
    ) -> None:
        if kwargs.get("stream"):
            return
        messages = [_plain(m) for m in kwargs.get("messages", [])]
        system = next(
            (_content(m) for m in messages if m.get("role") in ("system", "developer")), None
        )
        user = next((_content(m) for m in reversed(messages) if m.get("role") == "user"), None)
        choices = getattr(result, "choices", None) or []
        response = choices[0].message.content if choices else None
        usage = getattr(result, "usage", None)
        tokens = (
            {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
            if usage is not None
            else None
        )
        max_tokens = kwargs.get("max_tokens", kwargs.get("max_completion_tokens"))
        self._recorder.log_llm_call(
            trajectory,
            model=str(getattr(result, "model", None) or kwargs.get("model", "")),
            system_prompt=system,
            user_prompt=user,
            response=response,
            temperature=kwargs.get("temperature"),
            max_tokens=max_tokens,
            purpose=self.purpose,
            action_type=self.action_type,
            latency=latency,
            tokens=tokens,
            messages=messages,
        )


def wrap_openai(
    client: Any,
    recorder: TrajectoryRecorder,
    trajectory: TrajectoryHandle | str | None = None,
    *,
    purpose: str | None = None,
    action_type: str | None = None,
) -> RecordingClient:
    """Wrap an OpenAI-compatible client so that every chat completion is recorded.

    Args:
        client: ``openai.OpenAI(base_url=...)``, ``openai.AsyncOpenAI(...)``, or anything
            with ``chat.completions.create`` returning an OpenAI-shaped response.
        recorder: where the calls go.
        trajectory: a fixed trajectory; by default the current ``recorder.trajectory`` block's.
        purpose, action_type: stored with each call.
    """
    return RecordingClient(client, recorder, trajectory, purpose=purpose, action_type=action_type)
