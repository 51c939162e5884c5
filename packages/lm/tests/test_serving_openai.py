"""The OpenAI-compatible endpoint, driven by the official ``openai`` client over real HTTP."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from trainsvc_lm._openai_app import ServerThread, openai_app
from trainsvc_lm._sampler import SamplingConfig, generate
from trainsvc_lm._serving import Engine

sys.path.insert(0, str(Path(__file__).parent))
from _serving_helpers import (
    GREETING,
    GREETING_REPLY,
    TOOL_ARGUMENTS,
    TOOL_QUESTION,
    WEATHER_TOOL,
    chat_prompt,
)

MODEL = "tiny-tools"
QUESTIONS = [GREETING, "Tell me about cats.", "hi", "What is two plus two?", "Say hello", "ok"]


class Served:
    """The running server, its engine, its client and what on_completion saw."""

    def __init__(self, engine: Engine, server: ServerThread) -> None:
        self.engine, self.server = engine, server
        self.client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        self.completions: list[tuple[dict[str, Any], dict[str, Any], float, dict[str, str]]] = []

    def post(self, body: Any) -> httpx.Response:
        return httpx.post(f"{self.server.url}/v1/chat/completions", json=body, timeout=60)


@pytest.fixture(scope="module")
def served(taught_model: Path) -> Iterator[Served]:
    engine = Engine.from_dir(taught_model, slots=4, max_context=640, name=MODEL)
    hooks: list[Any] = []
    app = openai_app({MODEL: engine}, on_completion=lambda *args: hooks.append(args))
    server = ServerThread(app)
    s = Served(engine, server)
    s.completions = hooks
    yield s
    s.client.close()
    server.close()
    engine.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def expected_text(served: Served, question: str, max_tokens: int) -> tuple[str, int, int]:
    """(text, prompt tokens, completion tokens) of greedy `generate` on the chat prompt."""
    tok = served.engine.tokenizer
    prompt = chat_prompt(tok, user(question))
    sampling = SamplingConfig(max_new_tokens=max_tokens, stop_token_ids=tuple(tok.eos_token_ids))
    ids = generate(served.engine.params, served.engine.config, [prompt], sampling)[0]
    return tok.decode(ids), len(prompt), len(ids)


def ask(served: Served, question: str, **kw: Any) -> Any:
    return served.client.chat.completions.create(
        model=MODEL, messages=user(question), temperature=0, **kw
    )


def test_completion_is_generate_with_usage(served: Served) -> None:
    reply = ask(served, GREETING, max_tokens=32, extra_headers={"X-Trajectory-Id": "t-1"})
    text, prompt_tokens, completion_tokens = expected_text(served, GREETING, 32)
    assert text == GREETING_REPLY
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == text
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert reply.model == MODEL and reply.object == "chat.completion"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        prompt_tokens,
        completion_tokens,
    )
    assert reply.usage.total_tokens == prompt_tokens + completion_tokens
    body, response, latency, headers = served.completions[-1]
    assert body["messages"] == user(GREETING) and response["id"] == reply.id
    assert headers["x-trajectory-id"] == "t-1" and latency > 0


def test_stream_chunks_add_up_to_the_completion(served: Served) -> None:
    whole = ask(served, QUESTIONS[1], max_tokens=12)
    chunks = list(
        ask(
            served, QUESTIONS[1], max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert served.completions[-1][1]["choices"][0]["message"]["content"] == text


def test_sse_wire_format(served: Served) -> None:
    body = {"model": MODEL, "messages": user("hi"), "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{served.server.url}/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in lines[:-1])


def test_client_disconnect_cancels_the_request(served: Served) -> None:
    cancelled = served.engine.finished["cancelled"]
    body = {"model": MODEL, "messages": user("ok"), "max_tokens": 560, "stream": True}
    body |= {"temperature": 1.0, "seed": 1}
    with httpx.stream("POST", f"{served.server.url}/v1/chat/completions", json=body) as r:
        first = next(line for line in r.iter_lines() if line)
        assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    deadline = time.monotonic() + 120
    while served.engine.finished["cancelled"] == cancelled:  # wait for the engine to notice
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert served.engine.active == 0


def test_concurrent_clients_get_what_they_get_alone(served: Served) -> None:
    alone = {q: ask(served, q, max_tokens=10).choices[0].message.content for q in QUESTIONS}
    assert len(set(alone.values())) > 3
    got: dict[int, str | None] = {}
    barrier = threading.Barrier(8)

    def client(i: int) -> None:
        barrier.wait()
        q = QUESTIONS[i % len(QUESTIONS)]
        got[i] = ask(served, q, max_tokens=10).choices[0].message.content

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {i: alone[QUESTIONS[i % len(QUESTIONS)]] for i in range(8)}
    assert served.engine.max_active > 1


def test_seeded_sampling_repeats(served: Served) -> None:
    def once(seed: int) -> str | None:
        reply = served.client.chat.completions.create(
            model=MODEL, messages=user("ok"), temperature=1.5, seed=seed, max_tokens=12
        )
        return reply.choices[0].message.content

    assert once(4) == once(4)
    assert len({once(s) for s in (1, 2, 3)}) > 1


def test_tool_call(served: Served) -> None:
    reply = served.client.chat.completions.create(
        model=MODEL, messages=user(TOOL_QUESTION), tools=[WEATHER_TOOL], temperature=0
    )  # type: ignore[list-item]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS  # type: ignore[union-attr]

    chunks = list(
        served.client.chat.completions.create(
            model=MODEL,
            messages=user(TOOL_QUESTION),
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            temperature=0,
            stream=True,
        )
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather")]  # type: ignore[union-attr]
    assert json.loads(deltas[0].function.arguments) == TOOL_ARGUMENTS  # type: ignore[union-attr, arg-type]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # The result goes back as a tool message; the conversation renders and completes.
    follow = served.client.chat.completions.create(
        model=MODEL,
        messages=[
            *user(TOOL_QUESTION),
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'},
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        max_tokens=4,
    )
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # tool_choice "none": the same reply stays text.
    plain = served.client.chat.completions.create(
        model=MODEL,
        messages=user(TOOL_QUESTION),
        tools=[WEATHER_TOOL],
        tool_choice="none",
        temperature=0,
    )  # type: ignore[list-item]
    assert plain.choices[0].finish_reason == "stop"
    assert "get_weather" in (plain.choices[0].message.content or "")
    assert not plain.choices[0].message.tool_calls


def test_max_tokens_and_stop(served: Served) -> None:
    reply = ask(served, GREETING, max_completion_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 2
    cut = ask(served, GREETING, stop=[" friend"])
    assert cut.choices[0].message.content == GREETING_REPLY[: GREETING_REPLY.index(" friend")]
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        (
            {"model": MODEL, "messages": [{"role": "tool", "content": "3"}]},
            "messages[0].tool_call_id",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "temperature",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
            "max_tokens",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": ["a", 1]},
            "stop",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "seed": -1}, "seed"),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "x"}],
            },
            "tools[0].type",
        ),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": "required",
            },
            "tool_choice",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            "stream",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x" * 3000}]},
            "messages",
        ),
        (
            # The tiny chat template refuses a system message after the first.
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
            },
            "messages",
        ),
    ],
)
def test_malformed_requests_name_the_param(
    served: Served, body: dict[str, Any], param: str
) -> None:
    response = served.post(body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]


def test_errors_through_the_client(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        served.client.chat.completions.create(model="no-such-model", messages=user("x"))
    assert missing.value.body == {
        "message": missing.value.body["message"],  # type: ignore[index]
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert "no-such-model" in missing.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        served.client.chat.completions.create(model=MODEL, messages=user("x"), n=3)
    assert bad.value.param == "n"  # type: ignore[attr-defined]
    not_json = httpx.post(f"{served.server.url}/v1/chat/completions", content=b"{nope", timeout=10)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]["message"]


def test_models(served: Served) -> None:
    models = served.client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert served.client.models.retrieve(MODEL).owned_by == "trainsvc"
    with pytest.raises(openai.NotFoundError):
        served.client.models.retrieve("other")


def test_cli_serve(taught_model: Path) -> None:
    """``trainsvc-lm serve`` as a process: ready line, a completion, Ctrl-C stops it cleanly."""
    import os
    import signal
    import subprocess

    cli = [sys.executable, "-m", "trainsvc_lm._cli"]
    bad = subprocess.run(
        [*cli, "serve", str(taught_model), "--listen", "localhost", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and json.loads(bad.stdout)["field"] == "listen"
    argv = [*cli, "serve", str(taught_model), "--listen", "127.0.0.1:0", "--name", "cli-model"]
    argv += ["--slots", "2", "--max-context", "128", "--json"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["status"] == "serving" and ready["model"] == "cli-model"
        client = openai.OpenAI(base_url=ready["base_url"], api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="cli-model", messages=user(GREETING), temperature=0
        )
        assert reply.choices[0].message.content == GREETING_REPLY
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
