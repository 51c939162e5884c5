"""Learning is real: the Othello League score of the engine as self-play training goes.

Trains the default engine from zero weights by self-play TD(lambda) (plain TD,
1-ply, epsilon 0.1) and, at each milestone, plays the Othello League
protocol (both sides play a random move 10% of the time, colours swapped in
each pair) against the standard weighted-piece-counter heuristic player and a
random player, printing the score with its 95% confidence interval (plus,
for context, the engine searching 4 plies against the same heuristic). The
baselines are those two players, measured in the same run.

Run: ``uv run --no-sync python bench/engine_league.py [--milestones 10000,50000,200000]``.
Training continues from the previous milestone's checkpoint (``start(resume=True)``),
which gives exactly the weights of one straight run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trainsvc_engine as te


def main() -> int:
    """Train to each milestone and print the League table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--milestones", default="10000,50000,200000")
    parser.add_argument("--pairs", type=int, default=1000, help="pairs of games per opponent")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    milestones = [int(x) for x in args.milestones.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d)
        elapsed = 0.0
        for target in milestones:
            m = te.TrainingManager(run_dir, threads=args.threads, seed=args.seed, keep_last=1)
            t0 = time.perf_counter()
            m.start(
                target, checkpoint_interval=0, callback_interval=max(target // 10, 1), resume=True
            )
            result = m.wait()
            assert result is not None and result.games == target, m.last_error
            elapsed += time.perf_counter() - t0
            ev = m.evaluator()
            h = ev.league("heuristic", pairs=args.pairs, seed=args.seed)
            r = ev.league("random", pairs=args.pairs, seed=args.seed)
            h4 = ev.league("heuristic", pairs=args.pairs // 5, depth=4, seed=args.seed)
            rows.append((target, h, r, h4, elapsed))
            print(
                f"{target:>8,} games  vs heuristic {h['score']:.3f} ± {h['ci95']:.3f}  "
                f"vs random {r['score']:.3f} ± {r['ci95']:.3f}  "
                f"depth-4 vs heuristic {h4['score']:.3f} ± {h4['ci95']:.3f}  ({elapsed:,.0f} s training)",
                flush=True,
            )
    print()
    print(
        "| games | 1-ply vs heuristic (WPC) | 1-ply vs random | depth 4 vs heuristic | training s |"
    )
    print("|---:|---:|---:|---:|---:|")
    for target, h, r, h4, el in rows:
        print(
            f"| {target:,} | {h['score']:.3f} ± {h['ci95']:.3f} | {r['score']:.3f} ± {r['ci95']:.3f} "
            f"| {h4['score']:.3f} ± {h4['ci95']:.3f} | {el:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
