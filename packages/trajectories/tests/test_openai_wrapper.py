"""wrap_openai records every chat completion, for the sync and the async client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
import trainsvc_trajectories as tt


def test_sync_client_bound_trajectory(tmp_path: Path, fake_openai: Any) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    answer = ""
    with (
        tt.TrajectoryRecorder(url) as rec,
        openai.OpenAI(base_url=fake_openai.url, api_key="k") as client,
    ):
        t = rec.start_trajectory("a", window_id="w", scenario_id="s")
        llm = tt.wrap_openai(client, rec, t, purpose="p")
        messages = [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "echo: first"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ]
        out = llm.chat.completions.create(model="m", messages=messages, max_completion_tokens=5)
        answer = out.choices[0].message.content
        assert answer.startswith("echo: ")
        assert llm.models is client.models  # everything else is the real client's
        rec.end_trajectory(t, reward=1.0)
        with pytest.raises(tt.InvalidRecordError, match="no trajectory bound"):
            tt.wrap_openai(client, rec).chat.completions.create(model="m", messages=[])
    with tt.Store(url) as store:
        [c] = store.trajectory(t.id).llm_calls
    assert (c.system_prompt, c.user_prompt, c.response, c.max_tokens, c.purpose) == (
        "S",
        "second",
        answer,
        5,
        "p",
    )
    assert c.messages == messages and c.step_index is None


def test_async_client_uses_the_current_trajectory(tmp_path: Path, fake_openai: Any) -> None:
    url = f"sqlite:///{tmp_path}/t.db"

    async def main(rec: tt.TrajectoryRecorder) -> list[str]:
        async with openai.AsyncOpenAI(base_url=fake_openai.url, api_key="k") as client:
            llm = tt.wrap_openai(client, rec)

            async def agent(i: int) -> str:
                async with rec.aio.trajectory("a", window_id="w", scenario_id="s") as t:
                    await rec.aio.start_step(t, {"i": i})
                    r = await llm.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": f"q{i}"}]
                    )
                    await rec.aio.complete_step(t, r.choices[0].message.content, 1.0)
                    return t.id

            return list(await asyncio.gather(*(agent(i) for i in range(5))))

    with tt.TrajectoryRecorder(url) as rec:
        ids = asyncio.run(main(rec))
    with tt.Store(url) as store:
        for i, tid in enumerate(ids):
            [c] = store.trajectory(tid).llm_calls
            assert (c.user_prompt, c.response, c.step_index) == (f"q{i}", f"echo: q{i}", 0)
            assert c.total_tokens == 18
