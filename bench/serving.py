"""Benchmark the OpenAI-compatible endpoint against the sampler called in-process.

A tiny random-weight qwen2 model (``init_tiny``: hidden 64, 2 layers, vocab 512),
greedy, 32 new tokens per request (random weights never stop early, so every
request does the same work), short distinct chat prompts. At 1, 8 and 32
concurrent clients we measure:

- **endpoint**: ``trainsvc_lm.openai_app`` served by uvicorn on 127.0.0.1 (an
  `Engine` with 8 decode slots, the CLI's default), each client a thread with the
  official ``openai`` client sending chat completions one after another;
- **engine**: the same `Engine` called in-process from the same threads (no HTTP,
  no JSON, no chat template): what the endpoint's own layers cost is the gap;
- **sampler** (the baseline): ``trainsvc_lm.sample`` called directly with all the
  clients' prompts as one batch (static batching: every request waits for the
  whole batch, which is the best case for this fixed-length workload).

Throughput is completed requests per second; latency is per request (submit to
last token), p50 and p99 over every request of every round. Each configuration
runs ``SERVING_BENCH_ROUNDS`` rounds (default 3); the table shows the median
round and the spread (min-max) of throughput. The ratio is endpoint / sampler
throughput (below 1: the endpoint's overhead). Compilation is done before timing.

Then the **recording overhead per request** of the trainsvc service's endpoint: its
`CallRecorder.on_completion` (what the service runs after a request that carries
``X-Trajectory-Id``: a step, the LLM call with its messages, into a real SQLite
trajectory store through `TrajectoryRecorder`), timed per call over 2000 calls of
200 trajectories, next to the endpoint's own median request latency above.

The numbers are from whatever machine runs it; on the 2 shared, busy CPU cores
of the development box they are noisy: read the ratios, not the absolute values.

Run: ``uv run --no-sync python bench/serving.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import openai
from trainsvc_lm import SamplingConfig, init_tiny, sample
from trainsvc_lm._openai_app import ServerThread, openai_app
from trainsvc_lm._serving import Engine

CONCURRENCY = (1, 8, 32)
PER_CLIENT = {1: 8, 8: 2, 32: 2}  # requests each client sends per round
QUICK_PER_CLIENT = {1: 4, 8: 1, 32: 1}
NEW_TOKENS = 32
SLOTS = 8
MODEL = "tiny"


def questions(n: int) -> list[str]:
    return [f"Question number {i}: what is {i} plus {i}?" for i in range(n)]


def run_clients(
    clients: int, per_client: int, call: Callable[[str], None]
) -> tuple[float, list[float]]:
    """(wall seconds, per-request latencies) of ``clients`` threads each making ``per_client`` calls."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        barrier.wait()
        for i, q in enumerate(questions(per_client)):
            start = time.perf_counter()
            call(f"client {k}. {q} ({i})")
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one round, fewer requests")
    args = parser.parse_args()
    rounds = 1 if args.quick else int(os.environ.get("SERVING_BENCH_ROUNDS", "3"))

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    init_tiny(tmp / "model", "qwen2", seed=0)
    engine = Engine.from_dir(tmp / "model", slots=SLOTS, max_context=128, name=MODEL)
    tok = engine.tokenizer
    server = ServerThread(openai_app({MODEL: engine}))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    greedy = SamplingConfig(max_new_tokens=NEW_TOKENS, stop_token_ids=())

    def prompt(text: str) -> list[int]:
        messages = [{"role": "user", "content": text}]
        return list(tok.encode(tok.render_chat(messages, add_generation_prompt=True)))

    def via_endpoint(text: str) -> None:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            temperature=0,
            max_tokens=NEW_TOKENS,
            stop=None,
        )
        assert reply.usage is not None

    def via_engine(text: str) -> None:
        engine.generate_text(prompt(text), greedy)

    def sampler_round(clients: int, per_client: int) -> tuple[float, list[float]]:
        """Every client's i-th request in one batched `sample` call, per_client times."""
        latencies: list[float] = []
        start = time.perf_counter()
        for i in range(per_client):
            batch = [
                prompt(f"client {k}. {questions(per_client)[i]} ({i})") for k in range(clients)
            ]
            t0 = time.perf_counter()
            out = sample(engine.params, engine.config, batch, greedy)
            took = time.perf_counter() - t0
            assert all(len(c.tokens) == NEW_TOKENS for c in out)
            latencies += [took] * clients
        return time.perf_counter() - start, latencies

    # Warm-up: compile every shape that the timed runs use.
    engine.warmup((16, 64))
    via_endpoint("warm up")
    for c in CONCURRENCY:
        sampler_round(c, 1)
    run_clients(SLOTS, 1, via_engine)

    results: dict[tuple[str, int], list[tuple[float, list[float]]]] = {}
    for c in CONCURRENCY:
        per_client = (QUICK_PER_CLIENT if args.quick else PER_CLIENT)[c]
        for _ in range(rounds):
            for name in ("endpoint", "engine", "sampler"):
                if name == "sampler":
                    wall, lat = sampler_round(c, per_client)
                else:
                    call = via_endpoint if name == "endpoint" else via_engine
                    wall, lat = run_clients(c, per_client, call)
                results.setdefault((name, c), []).append((c * per_client / wall, lat))
    client.close()
    server.close()
    engine.close()

    rows = [
        [
            "clients",
            "side",
            "req/s (median)",
            "spread",
            "p50 ms",
            "p99 ms",
            "requests",
            "vs sampler",
        ]
    ]
    for c in CONCURRENCY:
        base = statistics.median(r for r, _ in results[("sampler", c)])
        for name in ("endpoint", "engine", "sampler"):
            rates = [r for r, _ in results[(name, c)]]
            lat = [x for _, ls in results[(name, c)] for x in ls]
            median = statistics.median(rates)
            rows.append(
                [
                    str(c),
                    name,
                    f"{median:.2f}",
                    f"{min(rates):.2f}-{max(rates):.2f}",
                    f"{1e3 * percentile(lat, 0.5):.0f}",
                    f"{1e3 * percentile(lat, 0.99):.0f}",
                    str(len(lat)),
                    f"{median / base:.2f}x",
                ]
            )
    print(
        f"serving: tiny qwen2 (random weights), greedy, {NEW_TOKENS} new tokens per request, "
        f"engine slots={SLOTS}, {rounds} round(s); cores visible: {os.cpu_count()}"
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        "vs sampler = throughput / the sampler's (one batched sample() call per wave of "
        "requests, in-process); spread = min-max over rounds."
    )


def recording_overhead(calls: int = 2000, trajectories: int = 200) -> tuple[float, float]:
    """(median, p99) microseconds of the service's `CallRecorder.on_completion` per request."""
    import trainsvc_trajectories as tt
    from trainsvc._openai_serving import VERSION_HEADER, CallRecorder

    tmp = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    recorder = tt.TrajectoryRecorder(f"sqlite:///{tmp}/traj.db")
    calls_recorder = CallRecorder(recorder)
    times: list[float] = []
    for i in range(calls):
        body = {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a trading agent."},
                {"role": "user", "content": f"tick {i}: price {100 + i % 7}, buy or sell?"},
            ],
            "temperature": 0.7,
            "max_tokens": NEW_TOKENS,
        }
        response = {
            "choices": [{"message": {"role": "assistant", "content": "buy 10 at market"}}],
            "usage": {"prompt_tokens": 24, "completion_tokens": 6, "total_tokens": 30},
        }
        headers = {"x-trajectory-id": f"t{i % trajectories}", VERSION_HEADER: "1"}
        start = time.perf_counter()
        calls_recorder.on_completion(body, response, 0.01, headers)
        times.append(time.perf_counter() - start)
    for k in range(trajectories):
        calls_recorder.end(f"t{k}", 1.0, None)
    recorder.close()
    return 1e6 * statistics.median(times), 1e6 * percentile(times, 0.99)


if __name__ == "__main__":
    main()
    median_us, p99_us = recording_overhead()
    print(
        f"recording overhead per request (service CallRecorder -> SQLite TrajectoryRecorder, "
        f"2000 calls): median {median_us:.0f} us, p99 {p99_us:.0f} us"
    )
