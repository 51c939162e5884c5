"""Tool calls as each family's chat template writes them, read back by the endpoint's parser."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from trainsvc_lm._openai_protocol import APIError, parse_chat_request, parse_tool_calls
from trainsvc_lm._tokenizer import Tokenizer

TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]
CALLS = [
    ("get_weather", {"city": "Oslo", "unit": "celsius"}),
    ("get_time", {"zone": "Europe/Oslo"}),
]


def model_reply(tokenizer: Tokenizer, calls: list[tuple[str, dict[str, Any]]]) -> str:
    """What a model that learned its template writes for ``calls`` (special tokens kept,
    up to its end-of-turn token, which the engine stops at and leaves out)."""
    question = [{"role": "user", "content": "weather and time in Oslo?"}]
    answer = {
        "role": "assistant",
        "tool_calls": [
            {"type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for n, a in calls
        ],
    }
    prompt = tokenizer.render_chat(question, tools=TOOLS, add_generation_prompt=True)
    full = tokenizer.render_chat([*question, answer], tools=TOOLS)
    assert full.startswith(prompt)
    reply = full[len(prompt) :]
    ends = [tokenizer.decode([t], skip_special_tokens=False) for t in tokenizer.eos_token_ids]
    cut = min(i for i in (reply.find(e) for e in ends) if i >= 0)
    return reply[:cut]


@pytest.mark.parametrize(
    ("family", "count"), [("llama", 1), ("mistral", 2), ("qwen2", 2), ("qwen3", 2)]
)
def test_template_tool_calls_parse_back(
    tiny_tokenizer: Callable[[str], Tokenizer], family: str, count: int
) -> None:
    reply = model_reply(tiny_tokenizer(family), CALLS[:count])
    content, calls = parse_tool_calls(family, reply, ["get_weather", "get_time"])
    assert content is None
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
    assert got == CALLS[:count]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == count
    # A function the request did not offer is not a call: the reply stays text.
    assert parse_tool_calls(family, reply, ["other"]) == (reply, [])


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_text_and_broken_calls_stay_text(family: str) -> None:
    for text in ["It is 3 degrees.", '{"name": "get_weather", "arguments": {', "<tool_call>\n{]"]:
        assert parse_tool_calls(family, text, ["get_weather"]) == (text, [])


def test_chatml_call_after_text_keeps_the_text() -> None:
    reply = 'Let me look.\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    content, calls = parse_tool_calls("qwen2", reply, ["get_time"])
    assert content == "Let me look." and calls[0]["function"]["arguments"] == "{}"


def test_request_fields_are_kept_and_normalized() -> None:
    request = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {
                    "role": "developer",
                    "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
                },
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
            ],
            "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "max_completion_tokens": 7,
            "stop": "END",
            "seed": 3,
            "temperature": 0.5,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "agent-7",
        }
    )
    assert request.messages[0] == {"role": "system", "content": "be brief"}
    assert request.messages[2]["tool_calls"][0]["function"]["arguments"] == {"zone": "UTC"}
    assert request.messages[3]["tool_call_id"] == "c1"
    assert (request.max_tokens, request.max_tokens_param) == (7, "max_completion_tokens")
    assert request.stop == ("END",) and request.user == "agent-7" and request.include_usage
    sampling = request.sampling(7)
    assert (sampling.seed, sampling.temperature, sampling.max_new_tokens) == (3, 0.5, 7)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 3,
                "max_completion_tokens": 4,
            },
            "max_tokens",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {}},
            "stream_options",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
            "logprobs",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice.function.name",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}],
                    }
                ],
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "bad name"}}],
            },
            "tools[0].function.name",
        ),
    ],
)
def test_bad_requests_name_the_param(body: Any, param: str | None) -> None:
    with pytest.raises(APIError) as info:
        parse_chat_request(body)
    assert info.value.status == 400 and info.value.param == param
    assert info.value.body()["error"]["param"] == param
