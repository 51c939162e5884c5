"""The continuous-batching engine against the sampler: same tokens alone or side by side."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainsvc_lm import ConfigError
from trainsvc_lm._sampler import SamplingConfig, generate, sample
from trainsvc_lm._serving import Delta, Engine, Finished

sys.path.insert(0, str(Path(__file__).parent))
from _serving_helpers import GREETING, GREETING_REPLY, chat_prompt

QUESTIONS = [
    GREETING,
    "Tell me about cats.",
    "hi",
    "What is two plus two?",
    "Say hello",
    "Write a long story about the sea and the wind and the old boat.",
]
MAX_NEW = 16
CONTEXT = 128


@pytest.fixture(scope="module")
def engine(taught_model: Path) -> Iterator[Engine]:
    eng = Engine.from_dir(taught_model, slots=3, max_context=CONTEXT)
    yield eng
    eng.close()


def prompts(eng: Engine) -> list[list[int]]:
    return [chat_prompt(eng.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def alone(eng: Engine, prompt: list[int], sampling: SamplingConfig) -> list[int]:
    """The sampler's tokens for one prompt on its own (a batch of one)."""
    stop = tuple(eng.tokenizer.eos_token_ids)
    return list(
        sample(
            eng.params,
            eng.config,
            [prompt],
            SamplingConfig(**{**vars(sampling), "stop_token_ids": stop}),
        )[0].tokens
    )


def run_concurrently(eng: Engine, jobs: list[tuple[list[int], SamplingConfig]]) -> list[Finished]:
    """Submit every job from its own thread at once; the finished events in job order."""
    results: list[Any] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = eng.submit(*jobs[i]).result()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_greedy_requests_side_by_side_equal_generate_alone(engine: Engine) -> None:
    stop = tuple(engine.tokenizer.eos_token_ids)
    reference = [
        generate(
            engine.params,
            engine.config,
            [p],
            SamplingConfig(max_new_tokens=MAX_NEW, stop_token_ids=stop),
        )[0]
        for p in prompts(engine)
    ]
    assert len({tuple(r) for r in reference}) > 3  # the prompts really differ in output
    # Different budgets: requests leave their slot at different steps, waiting ones join.
    budgets = [MAX_NEW, 5, MAX_NEW, 9, 3, MAX_NEW]
    steps_before = engine.steps_run
    jobs = [
        (p, SamplingConfig(max_new_tokens=m)) for p, m in zip(prompts(engine), budgets, strict=True)
    ]
    finished = run_concurrently(engine, jobs)
    for ref, budget, done in zip(reference, budgets, finished, strict=True):
        assert list(done.tokens) == ref[:budget]
        assert done.finish_reason == ("length" if len(ref) >= budget else "stop")
        assert done.text == engine.tokenizer.decode(ref[:budget])
    assert engine.max_active == engine.slots  # the slots were shared...
    generated = sum(len(done.tokens) for done in finished)
    assert engine.steps_run - steps_before < generated  # ...so steps served several requests


def test_the_cache_ring_wraps_without_corrupting_requests(engine: Engine) -> None:
    """The write pointer goes round the ring several times; requests that join at any
    point of it, with a prompt bucket plus budget filling the whole context, still match."""
    ps = prompts(engine)[1:4]
    budget = engine.room(max(len(p) for p in ps))
    full = SamplingConfig(max_new_tokens=budget, stop_token_ids=())  # no early stop
    reference = [generate(engine.params, engine.config, [p], full)[0] for p in ps]
    start = engine.steps_run
    for shift in range(3):  # each wave starts at another place of the ring
        engine.generate_text(ps[0], SamplingConfig(max_new_tokens=5 + 7 * shift))
        waves = run_concurrently(engine, [(p, full) for p in ps])
        assert [list(f.tokens) for f in waves] == reference
    assert engine.steps_run - start > CONTEXT


def test_seeded_sampling_is_the_samplers_alone_and_beside_others(engine: Engine) -> None:
    ps = prompts(engine)
    settings = [
        SamplingConfig(max_new_tokens=12, temperature=0.9, top_p=0.8, seed=11),
        SamplingConfig(max_new_tokens=12, temperature=1.3, seed=5),
        SamplingConfig(max_new_tokens=12),  # greedy beside sampled rows
        SamplingConfig(max_new_tokens=12, temperature=0.7, top_p=0.95, seed=11),
    ]
    expected = [alone(engine, p, s) for p, s in zip(ps, settings, strict=False)]
    together = run_concurrently(engine, list(zip(ps, settings, strict=False)))
    assert [list(f.tokens) for f in together] == expected
    # The seed decides: another seed gives another sample of the same prompt.
    other = engine.generate_text(ps[1], SamplingConfig(max_new_tokens=12, temperature=1.3, seed=6))
    assert list(other.tokens) != expected[1]


def test_stream_deltas_add_up_and_stop_strings_cut(engine: Engine) -> None:
    prompt = chat_prompt(engine.tokenizer, [{"role": "user", "content": GREETING}])
    full = engine.generate_text(prompt, SamplingConfig(max_new_tokens=MAX_NEW))
    assert full.text == GREETING_REPLY and full.finish_reason == "stop"
    assert full.usage.prompt_tokens == len(prompt)
    assert full.usage.completion_tokens == len(full.tokens)

    stream = engine.submit(prompt, SamplingConfig(max_new_tokens=MAX_NEW), stop=[", fri"])
    deltas = list(stream)
    assert stream.finished is not None
    assert stream.finished.finish_reason == "stop"
    assert stream.finished.text == GREETING_REPLY[: GREETING_REPLY.index(", fri")]
    assert "".join(d.text for d in deltas) == stream.finished.text
    assert all(", " not in d.text for d in deltas)  # a possible stop prefix is held back
    assert [t for d in deltas for t in d.tokens] == list(stream.finished.tokens)


def test_async_stream_and_cancel(engine: Engine) -> None:
    prompt = prompts(engine)[5]

    async def main() -> tuple[list[Any], Finished]:
        events = [e async for e in engine.stream(prompt, SamplingConfig(max_new_tokens=6))]
        stopped = engine.submit(prompt, SamplingConfig(max_new_tokens=MAX_NEW))
        stopped.cancel()
        return events, stopped.result()

    events, cancelled = asyncio.run(main())
    assert isinstance(events[-1], Finished) and all(isinstance(e, Delta) for e in events[:-1])
    assert list(events[-1].tokens) == alone(engine, prompt, SamplingConfig(max_new_tokens=6))
    assert cancelled.finish_reason == "cancelled"
    # The slot is free again: the next request completes.
    assert (
        engine.generate_text(prompt, SamplingConfig(max_new_tokens=2)).usage.completion_tokens == 2
    )


def test_requests_that_cannot_fit_are_refused(engine: Engine) -> None:
    prompt = prompts(engine)[0]
    room = engine.room(len(prompt))
    assert room == CONTEXT - 64  # the prompt's bucket takes the rest
    with pytest.raises(ConfigError, match="at most") as info:
        engine.submit(prompt, SamplingConfig(max_new_tokens=room + 1))
    assert info.value.field == "sampling.max_new_tokens"
    with pytest.raises(ConfigError) as info:
        engine.submit([1] * (CONTEXT + 1), SamplingConfig())
    assert info.value.field == "prompt"
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        engine.submit([engine.config.vocab_size], SamplingConfig())


def test_lora_adapter_applied_or_merged(taught_model: Path, tmp_path: Path) -> None:
    import numpy as np
    from trainsvc_lm import LoraConfig, init_lora
    from trainsvc_lm._peft import export_peft, load_peft

    plain = Engine.from_dir(taught_model, slots=2, max_context=CONTEXT)
    config = plain.config
    lora_config = LoraConfig(
        rank=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")
    )
    import jax

    lora = init_lora(lora_config, config, jax.random.PRNGKey(3))
    rng = np.random.default_rng(0)
    lora = {
        t: {"a": ab["a"], "b": rng.normal(0, 0.3, ab["b"].shape).astype(np.float32)}
        for t, ab in lora.items()
    }
    adapter = export_peft(
        tmp_path / "adapter", lora, lora_config, base_model_name_or_path=str(taught_model)
    )
    _, loaded = load_peft(adapter, config)
    prompt = prompts(plain)[1]
    sampling = SamplingConfig(
        max_new_tokens=10, stop_token_ids=tuple(plain.tokenizer.eos_token_ids)
    )
    base = generate(plain.params, config, [prompt], sampling)[0]
    expected = generate(
        plain.params, config, [prompt], sampling, lora=loaded, lora_scale=lora_config.scale
    )[0]
    assert expected != base  # the adapter changes the output
    plain.close()
    applied = Engine.from_dir(taught_model, adapter=adapter, slots=2, max_context=CONTEXT)
    merged = Engine.from_dir(
        taught_model, adapter=adapter, merge_adapter=True, slots=2, max_context=CONTEXT
    )
    try:
        assert (
            list(applied.generate_text(prompt, SamplingConfig(max_new_tokens=10)).tokens)
            == expected
        )
        assert merged.lora is None
        assert (
            list(merged.generate_text(prompt, SamplingConfig(max_new_tokens=10)).tokens) == expected
        )
    finally:
        applied.close()
        merged.close()
