"""Benchmark trainsvc-trajectories' recorder against a plain ``executemany``.

8 writer threads each record trajectories of 10 steps (every step with one LLM call
and one provider access) through one ``TrajectoryRecorder``; the clock runs from the
first call until ``close()`` returns, so every row is committed (opening the store is
not timed, for either side). The baseline inserts
the very same rows (headers, steps, calls, accesses, end-of-trajectory updates) from
one thread with ``executemany`` per table in a single transaction: the floor of what
the database itself costs, with no validation, no threads and no crash safety.
Both recorder modes are measured: ``commit="trajectory"`` (the default: a trajectory's
rows in one transaction with its end) and ``commit="step"``. Measured on SQLite (WAL, synchronous=NORMAL, the recorder's settings) and on a
throwaway PostgreSQL server started here when its binaries exist (``initdb`` under
``/usr/lib/postgresql/*/bin``; run as ``postgres`` when we are root). Medians of
``TRAJ_BENCH_REPS`` repetitions (default 3); the ratio is recorder / baseline steps/s.

Then GRPO throughput: completion tokens sampled and trained per second on
``increment4``, as FLOP/s over the FLOP/s of ``jnp.dot`` measured in the same run
(bench/grpo.py's measurement, imported).

Run: ``uv run --no-sync python bench/trajectories.py``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trainsvc_trajectories as tt
from trainsvc_trajectories._db import Db
from trainsvc_trajectories._recorder import _SQL

REPS = int(os.environ.get("TRAJ_BENCH_REPS", "3"))
THREADS, TRAJ_PER_THREAD, STEPS = 8, 50, 10


def record(url: str, commit: str = "trajectory") -> float:
    """Seconds for 8 threads to record everything, all committed."""
    rec = tt.TrajectoryRecorder(url, commit=commit)
    start = time.perf_counter()

    def writer(k: int) -> None:
        for i in range(TRAJ_PER_THREAD):
            t = rec.start_trajectory(f"agent-{k}", window_id="bench", scenario_id=f"s{i % 5}")
            for s in range(STEPS):
                rec.start_step(t, {"tick": s, "prices": [1.0, 2.0, 3.0]})
                rec.log_provider_access(t, "prices", {"p": s}, purpose="quote")
                rec.log_llm_call(
                    t,
                    "m",
                    "system prompt",
                    f"user prompt {s}",
                    "response",
                    0.7,
                    64,
                    "decide",
                    "trade",
                    0.01,
                    (40, 8),
                )
                rec.complete_step(t, {"buy": s}, 0.5)
            rec.end_trajectory(t, {"pnl": 1.0})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rec.close()
    return time.perf_counter() - start


def baseline(url: str) -> float:
    """Seconds for one thread to executemany the same rows in one transaction."""
    now = time.time()
    rows: list[list[tuple[Any, ...]]] = [[] for _ in _SQL]
    rid = uuid.uuid4().hex
    for k in range(THREADS):
        for i in range(TRAJ_PER_THREAD):
            tid = uuid.uuid4().hex
            rows[0].append((tid, rid, f"agent-{k}", "bench", f"s{i % 5}", "{}", now))
            for s in range(STEPS):
                rows[1].append(
                    (
                        tid,
                        s,
                        f'{{"tick":{s},"prices":[1.0,2.0,3.0]}}',
                        f'{{"buy":{s}}}',
                        0.5,
                        now,
                        now,
                    )
                )
                rows[2].append(
                    (
                        tid,
                        2 * s,
                        s,
                        "m",
                        "system prompt",
                        f"user prompt {s}",
                        None,
                        "response",
                        0.7,
                        64,
                        "decide",
                        "trade",
                        0.01,
                        40,
                        8,
                        48,
                        now,
                    )
                )
                rows[3].append((tid, 2 * s + 1, s, "prices", f'{{"p":{s}}}', "quote", now))
            rows[4].append(("completed", '{"pnl":1.0}', 5.0, None, now, STEPS, tid))
    db = Db(url)
    start = time.perf_counter()
    with db.transaction():
        for sql, params in zip(_SQL, rows, strict=True):
            db.executemany(sql, params)
    took = time.perf_counter() - start
    db.close()
    return took


@contextmanager
def postgres() -> Iterator[str | None]:
    """A throwaway server (`trainsvc_trajectories.testing`), or None without the binaries."""
    from trainsvc_trajectories.testing import PostgresUnavailableError, postgres_server

    try:
        with postgres_server(durable=True) as url:
            yield url
    except PostgresUnavailableError:
        yield None


def fresh_pg_database(pg: str) -> str:
    from trainsvc_trajectories.testing import create_database

    return create_database(pg)


def fresh(kind: str, tmp: Path, pg: str | None) -> str:
    name = uuid.uuid4().hex[:10]
    if kind == "sqlite":
        url = f"sqlite:///{tmp}/{name}.db"
        tt.Store(url).close()  # the schema is created outside the timed part
        return url
    assert pg is not None
    url = fresh_pg_database(pg)
    tt.Store(url).close()  # the schema is created outside the timed part
    return url


def measure(kind: str, tmp: Path, pg: str | None, fn: Callable[[str], float]) -> float:
    return fn(fresh(kind, tmp, pg))


def main() -> int:
    steps = THREADS * TRAJ_PER_THREAD * STEPS
    tmp = Path(tempfile.mkdtemp(prefix="trajbench-"))
    results: list[tuple[str, float, float]] = []

    def per_step(url: str) -> float:
        return record(url, "step")

    try:
        with postgres() as pg:
            kinds = ["sqlite"] + (["postgresql"] if pg else [])
            for kind in kinds:
                whole, stepwise, base = [], [], []
                for rep in range(REPS):
                    whole.append(measure(kind, tmp, pg, record))
                    stepwise.append(measure(kind, tmp, pg, per_step))
                    base.append(measure(kind, tmp, pg, baseline))
                    print(
                        f"  {kind}: repetition {rep + 1}/{REPS} done", file=sys.stderr, flush=True
                    )
                b = steps / statistics.median(base)
                results.append((f"{kind}, commit=trajectory", steps / statistics.median(whole), b))
                results.append((f"{kind}, commit=step", steps / statistics.median(stepwise), b))
            if not pg:
                print("(PostgreSQL not measured: no initdb under /usr/lib/postgresql/*/bin)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nTrajectory recorder: {THREADS} writer threads, {steps} steps "
        f"({THREADS * TRAJ_PER_THREAD} trajectories; each step = step + LLM call + provider access), "
        f"{REPS} repetitions, medians"
    )
    header = "| store, recorder mode          | recorder steps/s | executemany steps/s | ratio |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for name, ours_rate, base_rate in results:
        print(
            f"| {name:<29} | {ours_rate:16.0f} | {base_rate:19.0f} | {ours_rate / base_rate:5.2f} |"
        )
    print("(ratio: recorder / plain executemany of the same rows in one transaction, same run)")
    grpo_throughput()
    return 0


def grpo_throughput(seconds: float = 15.0) -> None:
    """GRPO tokens/s (sampled and trained) on increment4 against jnp.dot's FLOP/s, same run.

    The measurement is bench/grpo.py's (imported from this directory): a digit policy
    trains for ``seconds``; model FLOPs are 2N per sampled and 6N per trained token.
    """
    from grpo import RUNS, learn, matmul_flops

    flops = matmul_flops()
    r = learn("increment4", RUNS["increment4"], seconds, 0)
    n = r["n_params"]
    print(
        f"\nGRPO on increment4 ({r['steps']} steps, N = {n} matmul params), jnp.dot float32 "
        f"512x512 = {flops / 1e9:.1f} GFLOP/s in this run"
    )
    print(
        "| sampled tok/s | trained tok/s | sampling FLOP/s / jnp.dot | training FLOP/s / jnp.dot |"
    )
    print("| --- | --- | --- | --- |")
    print(
        f"| {r['sampled_tok_s']:.0f} | {r['trained_tok_s']:.0f} | "
        f"{2 * n * r['sampled_tok_s'] / flops:.4f} | {6 * n * r['trained_tok_s'] / flops:.4f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
