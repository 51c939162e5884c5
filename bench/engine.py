"""Benchmark the trainsvc Othello engine against baselines measured in the same run.

Rows (median of ``--reps`` runs, default 3, unless noted):

- the CPU variant the installed module runs (``cpu_variant()``: x86-64-v4,
  x86-64-v3, aarch64-neon or baseline) and the ones this CPU supports;
- perft leaves/s, single thread, depths 11 and 12 (bitboard, Kogge-Stone
  flips, bulk counting at the last ply) against the straightforward reference
  generator (array board, ray walking, same bulk counting) at depth 9, where
  it finishes in seconds: leaves/s is comparable across depths;
- perft(11) of every supported variant, the runs interleaved, against the baseline variant;
- with ``--egaroucid PATH`` (a build of Egaroucid's console from a fetched copy
  of its public repository: ``g++ -O2 -include algorithm
  src/Egaroucid_for_Console.cpp -march=native -pthread -std=c++20``): its
  ``-perft D 1`` at depths 11 and 12, runs interleaved with ours, and the ratio
  (its own timer, which covers the perft alone);
- games/s of the evolving learners (``learner="es"`` and ``"ctdl"``), of TD
  against the heuristic (``td_heuristic_games=1``) and of the ``league`` preset
  (``es`` over every 2x2 square) on 1 and 2 threads;
- self-play training games/s at 1-ply, default configuration (moves played
  greedily, each position learning towards its own 2-ply value), on 1 and 2
  threads, runs of 10,000 games interleaved 1, 2, 1, 2, ... and the median of
  each taken, with the load average printed (baseline: the 1-thread rate, and
  the 5,000 games/s target); interleaved with them, 2 threads with
  ``target_depth=1`` (TD(lambda) along the game played, no 2-ply search), the
  cost of the 2-ply targets;
- evaluation calls/s from Python: one ``Evaluator.evaluate`` call per board and
  ``evaluate_batch`` on a 10,000-board NumPy array, against a pure-Python
  weighted-piece-counter evaluation of the same boards;
- memory of a default engine by component (from ``memory_report``).

Run: ``uv run --no-sync python bench/engine.py`` (``--quick`` skips perft 12).
The machine is shared: numbers move with its load; ratios within a run hold better.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trainsvc_engine as te

WPC = [
    1.00, -0.25, 0.10, 0.05, 0.05, 0.10, -0.25, 1.00,
    -0.25, -0.25, 0.01, 0.01, 0.01, 0.01, -0.25, -0.25,
    0.10, 0.01, 0.05, 0.02, 0.02, 0.05, 0.01, 0.10,
    0.05, 0.01, 0.02, 0.01, 0.01, 0.02, 0.01, 0.05,
    0.05, 0.01, 0.02, 0.01, 0.01, 0.02, 0.01, 0.05,
    0.10, 0.01, 0.05, 0.02, 0.02, 0.05, 0.01, 0.10,
    -0.25, -0.25, 0.01, 0.01, 0.01, 0.01, -0.25, -0.25,
    1.00, -0.25, 0.10, 0.05, 0.05, 0.10, -0.25, 1.00,
]  # fmt: skip


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median wall seconds of ``fn`` over ``reps`` runs."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def positions(n: int, seed: int = 1) -> list[te.Board]:
    """``n`` positions from random games."""
    rng = np.random.default_rng(seed)
    out: list[te.Board] = []
    b = te.Board()
    while len(out) < n:
        if b.is_game_over():
            b = te.Board()
        out.append(b)
        moves = b.legal_moves()
        b = b.play(int(rng.choice(moves))) if moves else b.pass_turn()
    return out


def wpc_eval(cells: list[int]) -> float:
    """The pure-Python baseline: weighted piece counter, black positive."""
    s = 0.0
    for w, c in zip(WPC, cells, strict=True):
        if c == 1:
            s += w
        elif c == 2:
            s -= w
    return s


def egaroucid_rate(path: Path, depth: int) -> float:
    """Leaves/s of Egaroucid's ``-perft depth 1`` (pass counted as a move, like ours), by its own timer."""
    out = subprocess.run(
        [str(path), "-perft", str(depth), "1"],
        input="",
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    m = re.search(r"depth \d+ (\d+) leaves found in (\d+) ms", out)
    if m is None:
        raise RuntimeError(f"unexpected Egaroucid output: {out[-500:]!r}")
    leaves, ms = int(m.group(1)), int(m.group(2))
    if leaves != te.perft(depth):
        raise RuntimeError(f"Egaroucid counts {leaves:,} leaves at depth {depth}")
    return leaves / (max(ms, 1) / 1000)


def train_rate(threads: int, games: int, **config: Any) -> tuple[float, float]:
    """Training games/s at 1-ply (moves played greedily) with the default pattern set,
    and games per CPU second of this process (what a free core would give one thread;
    unlike the wall-clock rate it does not fall when the machine's other jobs take the core)."""
    with tempfile.TemporaryDirectory() as d:
        m = te.TrainingManager(Path(d), threads=threads, **config)
        cpu = time.process_time()
        m.start(games, checkpoint_interval=0, callback_interval=games)
        result = m.wait()
        cpu = time.process_time() - cpu
        assert result is not None
        return result.games_per_second, games / max(cpu, 1e-9)


def main() -> int:
    """Run every benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip perft depth 12")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--egaroucid", type=Path, default=None, help="an Egaroucid console build to compare perft"
    )
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    variant = te.cpu_variant()
    rows.append(("CPU variant in use", variant, "supported: " + ", ".join(te.cpu_variants())))

    ref_depth = 9
    ref_leaves = te.reference_perft(ref_depth)
    ref_rate = ref_leaves / timed(lambda: te.reference_perft(ref_depth), args.reps)
    rows.append(
        (
            f"perft reference (array, ray walking) depth {ref_depth}",
            f"{ref_rate / 1e6:,.1f} M leaves/s",
            "1.0x",
        )
    )
    for depth in (11,) if args.quick else (11, 12):
        leaves = te.perft(depth)
        reps = args.reps if depth == 11 else max(1, args.reps - 1)
        # Ours and Egaroucid's interleaved, so that both see the same load.
        ours, theirs = [], []
        for _ in range(reps):
            ours.append(leaves / timed(lambda d=depth: te.perft(d), 1))  # type: ignore[misc]
            if args.egaroucid is not None:
                theirs.append(egaroucid_rate(args.egaroucid, depth))
        rate = statistics.median(ours)
        rows.append(
            (
                f"perft bitboard depth {depth} ({leaves:,} leaves), {variant}",
                f"{rate / 1e6:,.1f} M leaves/s",
                f"{rate / ref_rate:,.1f}x reference",
            )
        )
        if theirs:
            ega = statistics.median(theirs)
            rows.append(
                (
                    f"perft depth {depth}: Egaroucid -perft (its timer), same run",
                    f"{ega / 1e6:,.1f} M leaves/s",
                    f"ours {rate / ega:.2f}x Egaroucid (pairs: "
                    + ", ".join(f"{o / t:.2f}" for o, t in zip(ours, theirs, strict=True))
                    + ")",
                )
            )
    per_variant: dict[str, list[float]] = {v: [] for v in te.cpu_variants()}
    leaves11 = te.perft(11)
    for _ in range(args.reps):
        for v in per_variant:
            te.set_cpu_variant(v)
            per_variant[v].append(leaves11 / timed(lambda: te.perft(11), 1))
    te.set_cpu_variant(variant)
    base_rate = statistics.median(per_variant["baseline"])
    for v, rates in per_variant.items():
        r = statistics.median(rates)
        rows.append(
            (
                f"perft depth 11, variant {v} (interleaved)",
                f"{r / 1e6:,.1f} M leaves/s",
                f"{r / base_rate:.2f}x baseline",
            )
        )

    # Interleaved 1- and 2-thread runs, median of each: the machine is shared,
    # so its load drifts; interleaving gives both the same conditions.
    games = 10_000
    runs: dict[str, list[tuple[float, float]]] = {"one": [], "two": [], "along": [], "along1": []}
    for _ in range(max(args.reps, 3)):
        runs["one"].append(train_rate(1, games))
        runs["two"].append(train_rate(2, games))
        runs["along"].append(train_rate(2, games, target_depth=1))
        runs["along1"].append(train_rate(1, games, target_depth=1))
    wall = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    per_cpu = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    one, two, td1 = wall["one"], wall["two"], wall["along"]
    rows.append(
        (
            "load average during training runs (os.getloadavg, 1 min)",
            f"{os.getloadavg()[0]:.1f}",
            f"{os.cpu_count()} CPUs",
        )
    )
    rows.append(
        ("training 1-ply, 1 thread", f"{one:,.0f} games/s", f"{one / 5000:.2f}x target 5,000")
    )
    rows.append(
        (
            "training 1-ply, 2 threads",
            f"{two:,.0f} games/s",
            f"{two / one:.2f}x 1 thread, {two / 5000:.2f}x target",
        )
    )
    rows.append(
        (
            "training 1-ply, 2 threads, target_depth=1 (TD along the game)",
            f"{td1:,.0f} games/s",
            f"{td1 / two:.2f}x default, {td1 / 12000:.2f}x target 12,000",
        )
    )
    rows.append(
        (
            "training 1-ply, 1 thread, target_depth=1",
            f"{wall['along1']:,.0f} games/s",
            f"{wall['along1'] / one:.2f}x default",
        )
    )
    for key, label in (
        ("one", "1 thread"),
        ("two", "2 threads"),
        ("along1", "1 thread, target_depth=1"),
        ("along", "2 threads, target_depth=1"),
    ):
        rows.append(
            (
                f"training {label}: games per CPU second",
                f"{per_cpu[key]:,.0f} games/cpu-s",
                f"{variant}, all threads' CPU time",
            )
        )

    # The evolving learners (docs/othello-engine.md, "Evolving learners"), in the
    # settings measured there: one generation per run, interleaved.
    learners: dict[str, tuple[int, dict[str, Any]]] = {
        "es": (
            20 * 2 * 250,
            {"learner": "es", "pattern_set": "straight2", "n_phases": 1, "es_parents": 4,
             "es_offspring": 16, "es_recombine": True, "es_fitness_pairs": 250},
        ),
        "ctdl": (
            4 * 4096 + 12 * 25,
            {"learner": "ctdl", "ctdl_population": 4, "ctdl_td_games": 4096,
             "ctdl_match_pairs": 25},
        ),
        # TD with every game against the WPC heuristic (bench/engine_learners.py's td-heur).
        "td-heur": (20_000, {"learner": "td", "td_heuristic_games": 1.0}),
        # The `league` preset (es over every 2x2 square): four generations of 40 x 62 pairs.
        "league": (4 * 40 * 2 * 62, dict(te.PRESETS["league"])),
    }  # fmt: skip
    lruns: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(max(args.reps, 3)):
        for name, (gen, config) in learners.items():
            for threads in (1, 2):
                lruns.setdefault((name, threads), []).append(train_rate(threads, gen, **config))
    for (name, threads), v in lruns.items():
        rate = statistics.median(r[0] for r in v)
        cpu_rate = statistics.median(r[1] for r in v)
        rows.append(
            (
                f"training learner={name}, {threads} thread{'s' if threads > 1 else ''}",
                f"{rate:,.0f} games/s",
                f"{cpu_rate:,.0f} games/cpu-s",
            )
        )

    boards = positions(10_000)
    cells = [b.cells() for b in boards]
    players = [b.player for b in boards]
    arr = np.array(cells, dtype=np.int8)
    ev = te.Evaluator()
    n_single = 20_000
    base = n_single / timed(
        lambda: [wpc_eval(cells[i % 10_000]) for i in range(n_single)], args.reps
    )
    single = n_single / timed(
        lambda: [ev.evaluate(cells[i % 10_000], players[i % 10_000]) for i in range(n_single)],
        args.reps,
    )
    batch = len(boards) / timed(lambda: ev.evaluate_batch(arr, players), args.reps)
    rows.append(("eval: pure-Python WPC, per call", f"{base:,.0f} boards/s", "1.0x"))
    rows.append(
        (
            "eval: Evaluator.evaluate, per call",
            f"{single:,.0f} boards/s",
            f"{single / base:.1f}x Python WPC",
        )
    )
    rows.append(
        (
            "eval: Evaluator.evaluate_batch (10k array)",
            f"{batch:,.0f} boards/s",
            f"{batch / base:.1f}x Python WPC",
        )
    )

    with tempfile.TemporaryDirectory() as d:
        mem = dict(te.TrainingManager(Path(d)).memory_report())
        mem3 = dict(te.TrainingManager(Path(d), search_depth=3).memory_report())
    for key in ("pattern_tables", "adam_state", "other", "total"):
        rows.append(
            (
                f"memory, default engine: {key}",
                f"{mem[key] / 2**20:,.1f} MiB",
                f"{mem[key] / mem['budget']:.1%} of budget",
            )
        )
    rows.append(
        (
            "memory, depth-3 training: TT (shrunk to the budget)",
            f"{mem3['transposition_table'] / 2**20:,.1f} MiB",
            f"total {mem3['total'] / 2**20:,.0f} of {mem3['budget'] / 2**20:,.0f} MiB",
        )
    )

    w = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"{'benchmark':<{w[0]}} | {'result':>{w[1]}} | ratio")
    print("-" * (w[0] + w[1] + w[2] + 6))
    for name, value, ratio in rows:
        print(f"{name:<{w[0]}} | {value:>{w[1]}} | {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
