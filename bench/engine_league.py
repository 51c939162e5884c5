"""Learning is real: the Othello League score of the engine as self-play training goes.

Trains the default engine from zero weights by self-play (moves played at
1-ply, epsilon 0.1; each position learns towards its own 2-ply value by plain
TD steps, ``target_depth=2``; ``--target-depth 1`` for TD(lambda) along the
game) and, at each milestone, plays the Othello League
protocol (both sides play a random move 10% of the time, colours swapped in
each pair) against the standard weighted-piece-counter heuristic player and a
random player, printing the score with its 95% confidence interval (plus,
for context, the engine searching 4 plies against the same heuristic). The
baselines are those two players, measured in the same run.

Run: ``uv run --no-sync python bench/engine_league.py [--milestones 10000,50000,200000]
[--seeds 0,1,2,3]``.
Training continues from the previous milestone's checkpoint (``start(resume=True)``),
which gives exactly the weights of one straight run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trainsvc_engine as te


def league_curve(
    milestones: list[int], seed: int, pairs: int, threads: int, config: dict[str, Any]
) -> list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any], float]]:
    """Train one run from zero to each milestone; League results at each."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d)
        elapsed = 0.0
        for target in milestones:
            m = te.TrainingManager(run_dir, threads=threads, seed=seed, keep_last=1, **config)
            t0 = time.perf_counter()
            m.start(
                target, checkpoint_interval=0, callback_interval=max(target // 10, 1), resume=True
            )
            result = m.wait()
            assert result is not None and result.games == target, m.last_error
            elapsed += time.perf_counter() - t0
            ev = m.evaluator()
            h = ev.league("heuristic", pairs=pairs, seed=seed)
            r = ev.league("random", pairs=pairs, seed=seed)
            h4 = ev.league("heuristic", pairs=pairs // 5, depth=4, seed=seed)
            rows.append((target, h, r, h4, elapsed))
            print(
                f"seed {seed} {target:>8,} games  vs heuristic {h['score']:.3f} ± {h['ci95']:.3f}  "
                f"vs random {r['score']:.3f} ± {r['ci95']:.3f}  "
                f"depth-4 vs heuristic {h4['score']:.3f} ± {h4['ci95']:.3f}  ({elapsed:,.0f} s training)",
                flush=True,
            )
    return rows


def main() -> int:
    """Train to each milestone and print the League table (one row per seed and milestone)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--milestones", default="10000,50000,200000")
    parser.add_argument("--pairs", type=int, default=1000, help="pairs of games per opponent")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--seeds", default="0", help="comma-separated training seeds (one run each; mean reported)"
    )
    parser.add_argument(
        "--target-depth", type=int, choices=(1, 2), default=None, help="engine target_depth"
    )
    args = parser.parse_args()
    milestones = [int(x) for x in args.milestones.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    config = {} if args.target_depth is None else {"target_depth": args.target_depth}
    curves = {
        seed: league_curve(milestones, seed, args.pairs, args.threads, config) for seed in seeds
    }
    print()
    print(
        "| seed | games | 1-ply vs heuristic (WPC) | 1-ply vs random | depth 4 vs heuristic | training s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for seed, rows in curves.items():
        for target, h, r, h4, el in rows:
            print(
                f"| {seed} | {target:,} | {h['score']:.3f} ± {h['ci95']:.3f} "
                f"| {r['score']:.3f} ± {r['ci95']:.3f} "
                f"| {h4['score']:.3f} ± {h4['ci95']:.3f} | {el:,.0f} |"
            )
    if len(seeds) > 1:
        print()
        for i, target in enumerate(milestones):
            scores = [rows[i][1]["score"] for rows in curves.values()]
            print(
                f"{target:>8,} games: vs heuristic mean {statistics.mean(scores):.3f} "
                f"(min {min(scores):.3f}, max {max(scores):.3f}) over seeds {args.seeds}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
