"""A tiny model that has learned a few replies, tool calls among them (for the serving tests).

A random tiny model only repeats a token; `teach_replies` trains every weight of a
copy of one (full-parameter Adam on the assistant tokens of a few conversations)
until greedy decoding reproduces them, so the tests see real tool calls and real
text come out of the endpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOL_QUESTION = "What is the weather in Oslo?"
TOOL_ARGUMENTS = {"city": "Oslo", "unit": "celsius"}
GREETING = "Say hello."
GREETING_REPLY = "Hello there, friend."

CONVERSATIONS: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
    (
        [
            {"role": "user", "content": TOOL_QUESTION},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS},
                    }
                ],
            },
        ],
        [WEATHER_TOOL],
    ),
    (
        [{"role": "user", "content": GREETING}, {"role": "assistant", "content": GREETING_REPLY}],
        None,
    ),
]


def teach_replies(src: Path, dst: Path, steps: int = 150, lr: float = 1e-2) -> Path:
    """Copy model directory ``src`` to ``dst`` with weights trained on `CONVERSATIONS`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax  # type: ignore[import-untyped]
    from trainsvc_lm._model import forward
    from trainsvc_lm._tokenizer import Tokenizer
    from trainsvc_lm._weights import load_model, save_model

    shutil.copytree(src, dst)
    tokenizer = Tokenizer.from_dir(src)
    config, params = load_model(src)
    rows = [tokenizer.encode_chat(messages, tools) for messages, tools in CONVERSATIONS]
    t = max(len(ids) for ids, _ in rows)
    ids = np.zeros((len(rows), t), np.int32)
    mask = np.zeros((len(rows), t), np.float32)
    for i, (row, assistant) in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = assistant
    tokens, weights = jnp.asarray(ids), jnp.asarray(mask[:, 1:])

    def loss(p: Any) -> jax.Array:
        logp = jax.nn.log_softmax(forward(p, config, tokens)[:, :-1], axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * weights) / jnp.sum(weights)

    optimizer = optax.adam(lr)

    @jax.jit
    def step(p: Any, state: Any) -> tuple[Any, Any, jax.Array]:
        value, grads = jax.value_and_grad(loss)(p)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    state = optimizer.init(params)
    for _ in range(steps):
        params, state, _value = step(params, state)
    save_model(dst, config, params)
    return dst


def chat_prompt(tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Any = None) -> list[int]:
    """The prompt tokens the endpoint builds for ``messages``."""
    return list(
        tokenizer.encode(tokenizer.render_chat(messages, tools=tools, add_generation_prompt=True))
    )
