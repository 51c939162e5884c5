"""League learning curves of the engine's learners (`td`, `ctdl`, `es`) over seeds.

Trains each learner from zero through the installed `trainsvc_engine`
(`TrainingManager`, 2 threads) to a budget of games, and `--points` times
along the way plays the League protocol against the WPC heuristic
(1-ply, both sides 10% random moves, colours swapped, `--pairs` pairs; the
evaluation's own time is not counted). Prints a table and the load average,
writes the points as JSON and the curves as a PNG (score against training
CPU seconds: grey grid every 0.1 from 0.3 (`--y-low`; every 0.01 from 0.8 up) and every 10 CPU
seconds (300 past 600), red dashes at 0.90 and 0.96 (those above `--y-low`), one
line per seed: blue `es` (separable CMA-ES), purple `es-mix` (the same with a
slower mean and fitness games against the random player), magenta `es-pop` (es-mix
with twice the candidates on half the games each), red `es-step` (es-pop with the
fitness sample growing as the step relative to the weights shrinks), dark red `es-split` (es-step
over two phases that share their tables for the first half), black `es-rect` (es-step over
every 2x2 square instead of the straight 2-tuples), light blue `es-plus` (the isotropic
(mu/mu + lambda) strategy), green `ctdl`, orange `td`,
brown `td-heur` (TD with its games against the heuristic), dark green
`ctdl-heur` (ctdl so)). Each run's final
network also plays the random player (the table's last column).

    uv run --no-sync python bench/engine_learners.py --learners es,ctdl --seeds 0,1,2,3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trainsvc_engine as te
from pngwriter import write_png  # bench/pngwriter.py (this directory is on sys.path)

ROOT = Path(__file__).resolve().parent.parent

# The separable CMA-ES of the bench's "es" row.
_SEP_CMA: dict[str, Any] = {
    "learner": "es",
    "es_strategy": "sep-cma",
    "pattern_set": "straight2",
    "n_phases": 1,
    "es_parents": 10,
    "es_offspring": 20,
    "es_sigma": 0.1,
    "es_fitness_pairs": 100,
    "es_fitness_pairs_max": 1000,
    "es_fitness_margin": 1.0,
}
# es-mix (below) with twice the candidates on half the games each.
_ES_POP: dict[str, Any] = {
    **_SEP_CMA,
    "es_mean_rate": 0.3,
    "es_parents": 20,
    "es_offspring": 40,
    "es_fitness_pairs": 50,
    "es_random_pairs": 12,
}
# The settings measured (docs/othello-engine.md, "Evolving learners").
CONFIGS: dict[str, dict[str, Any]] = {
    "es": _SEP_CMA,
    # The same with a slower mean and fitness games against the random player as well
    # (docs/othello-engine.md: measured with the `evolve` example).
    "es-mix": {**_SEP_CMA, "es_mean_rate": 0.3, "es_random_pairs": 25},
    # es-mix with twice the candidates on half the games each (same games per generation):
    # level with es-mix at 100 CPU s, still climbing at 300 (docs/othello-engine.md).
    "es-pop": _ES_POP,
    # es-pop with the sample keyed on the step relative to the weights: 50 pairs while
    # it is above 0.13, growing as its inverse square below (docs/othello-engine.md).
    "es-step": {**_ES_POP, "es_fitness_step": 0.13},
    # es-step over two phases (up to 34 discs, and after) that share their tables for the
    # first 33 M games, about half the target's budget (docs/othello-engine.md).
    "es-split": {**_ES_POP, "es_fitness_step": 0.13, "n_phases": 2, "es_split_games": 33_000_000},
    # es-step over every 2x2 square of the board (`rect2x2`: 49 placements in 10 classes
    # of 81 entries) instead of the straight 2-tuples; each 2-tuple lies in a 2x2 square,
    # so the network can say everything the 2-tuples can (docs/othello-engine.md).
    # It is the package's `league` preset (`trainsvc-othello train --preset league`).
    "es-rect": dict(te.PRESETS["league"]),
    # es-split with a race of two searches until 34 M games (about 900 CPU seconds each), then
    # the better alone, its phases split there (docs/othello-engine.md).
    "es-race": {
        **_ES_POP,
        "es_fitness_step": 0.13,
        "n_phases": 2,
        "es_split_games": 34_000_000,
        "es_portfolio": 2,
        "es_portfolio_games": 34_000_000,
        "es_portfolio_pairs": 10_000,
    },
    "es-plus": {
        "learner": "es",
        "pattern_set": "straight2",
        "n_phases": 1,
        "es_parents": 4,
        "es_offspring": 16,
        "es_recombine": True,
        "es_sigma": 0.06,
        "es_sigma_decay": 300,
        "es_fitness_pairs": 250,
    },
    "ctdl": {
        "learner": "ctdl",
        "ctdl_population": 4,
        "ctdl_td_games": 4096,
        "ctdl_match_pairs": 25,
    },
    "td": {"learner": "td"},
    # ctdl with its TD games against the heuristic, like td-heur.
    "ctdl-heur": {
        "learner": "ctdl",
        "ctdl_population": 4,
        "ctdl_td_games": 4096,
        "ctdl_match_pairs": 25,
        "td_heuristic_games": 1.0,
    },
    # TD with every training game against the League's WPC heuristic (with its
    # 10% random moves) instead of self-play (docs/othello-engine.md).
    "td-heur": {"learner": "td", "td_heuristic_games": 1.0},
}
COLOURS = {
    "es": (30, 80, 200),
    "es-plus": (140, 170, 230),
    "es-mix": (120, 40, 160),
    "es-pop": (200, 40, 120),
    "es-step": (220, 20, 20),
    "es-split": (120, 0, 0),
    "es-rect": (0, 0, 0),
    "ctdl": (30, 150, 60),
    "td": (230, 130, 20),
    "td-heur": (150, 90, 20),
    "ctdl-heur": (20, 90, 40),
}


def generation_games(cfg: dict[str, Any]) -> int:
    """Games of one generation (one batch for `td`; `sep-cma`: its smallest one)."""
    if cfg.get("es_strategy") == "sep-cma":
        pairs = cfg["es_fitness_pairs"] + cfg.get("es_random_pairs", 0)
        return int(cfg["es_offspring"] * 2 * pairs)
    if cfg["learner"] == "es":
        return int((cfg["es_parents"] + cfg["es_offspring"]) * 2 * cfg["es_fitness_pairs"])
    if cfg["learner"] == "ctdl":
        n = cfg["ctdl_population"]
        return int(n * cfg["ctdl_td_games"] + n * (n - 1) * cfg["ctdl_match_pairs"])
    return 32


def run(learner: str, seed: int, budget: int, points: int, pairs: int):
    """One learner and seed, trained to `budget` games with `points` League evaluations.

    Returns [(cpu_s, wall_s, games, score, ci95)], the final evaluator and its
    League score against the random player (`pairs` pairs, seed 7). `cpu_s`
    is the process's CPU time spent training (all threads; the evaluations
    excluded): on a shared machine wall-clock seconds measure the neighbours,
    CPU seconds much less (30 minutes on 2 cores = 3,600 CPU seconds).
    """
    cfg = {**CONFIGS[learner], "seed": seed, "threads": 2}
    gen = generation_games(cfg)
    curve: list[tuple[float, float, int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        m = te.TrainingManager(tmp, **cfg)
        cpu, wall, games = 0.0, 0.0, 0
        for k in range(1, points + 1):
            target = max(gen, budget * k // points // gen * gen)
            c0, t0 = time.process_time(), time.perf_counter()
            m.start(target, checkpoint_interval=0, callback_interval=gen, resume=bool(games))
            result = m.wait()
            cpu += time.process_time() - c0
            wall += time.perf_counter() - t0
            assert result is not None and result.reason == "target", result
            games = result.games
            r = m.evaluator().league("heuristic", pairs=pairs, seed=7)
            curve.append((cpu, wall, games, r["score"], r["ci95"]))
            print(f"  {learner} seed {seed}: {games:>11,} games {cpu:7.1f} cpu-s {wall:7.1f} s "
                  f"score {r['score']:.3f} ± {r['ci95']:.3f}  ({games / cpu:,.0f} games/cpu-s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
        ev = m.evaluator()
        vs_random = float(ev.league("random", pairs=pairs, seed=7)["score"])
        return curve, ev, vs_random


def plot(
    path: Path,
    curves: list[tuple[str, list[tuple[float, float, int, float, float]]]],
    y_lo: float = 0.3,
) -> None:
    """Score (`y_lo`..1) against training CPU seconds; see the module docstring for the colours.

    The grid: every 0.1 of score (every 0.01 from a `y_lo` of 0.8 up), every 10 CPU
    seconds (every 300 on an axis past 600 s).
    """
    w, h, m = 720, 360, 20
    x_max = max(p[0] for _, c in curves for p in c)
    y_step = 0.1 if y_lo < 0.8 else 0.01
    x_step = 10 if x_max <= 600 else 300
    img = np.full((h, w, 3), 255, np.uint8)

    def xy(x: float, y: float) -> tuple[int, int]:
        fy = (max(y, y_lo) - y_lo) / (1 - y_lo)
        return int(m + (w - 2 * m) * min(x / x_max, 1.0)), int(h - m - (h - 2 * m) * fy)

    for k in range(round((1 - y_lo) / y_step)):
        _, yy = xy(0, y_lo + k * y_step)
        img[yy, m : w - m] = 225 if k else 0
    for s in range(0, int(x_max) + 1, x_step):
        xx, _ = xy(s, y_lo)
        img[m : h - m, xx] = 225 if s else 0
    for target in (t for t in (0.90, 0.96) if t >= y_lo):
        _, ty = xy(0, target)
        for xx in range(m, w - m, 8):
            img[ty - 1 : ty + 1, xx : xx + 4] = (220, 40, 40)
    for learner, curve in curves:
        pts = [xy(t, s) for t, _, _, s, _ in curve]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            n = max(abs(x1 - x0), abs(y1 - y0), 1)
            for i in range(n + 1):
                x = round(x0 + (x1 - x0) * i / n)
                y = round(y0 + (y1 - y0) * i / n)
                img[y - 1 : y + 2, x - 1 : x + 2] = COLOURS[learner]
    write_png(path, img)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--learners", default="es,ctdl")
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument(
        "--games",
        default="es=3000000,ctdl=400000,td=400000",
        help="training games per run, per learner",
    )
    p.add_argument("--points", type=int, default=5, help="League evaluations per run")
    p.add_argument("--pairs", type=int, default=1000, help="League pairs per point")
    p.add_argument("--json", type=Path, default=Path("/tmp/engine_learners.json"))
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "othello-learners.png")
    p.add_argument("--save-best", type=Path, default=None, help="write the best final network")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from --json")
    p.add_argument("--y-low", type=float, default=0.3, help="the score at the PNG's bottom edge")
    args = p.parse_args()
    if args.replot:
        saved = json.loads(args.json.read_text())
        plot(args.png, [(r["learner"], r["curve"]) for r in saved], args.y_low)
        return
    results: list[dict[str, Any]] = []
    best: tuple[float, Any] | None = None
    budget = {k: int(v) for k, v in (kv.split("=") for kv in args.games.split(","))}
    for learner in args.learners.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            load0 = os.getloadavg()[0]
            curve, ev, vs_random = run(learner, seed, budget[learner], args.points, args.pairs)
            results.append({"learner": learner, "seed": seed, "curve": curve, "random": vs_random,
                            "load_start": load0, "load_end": os.getloadavg()[0]})  # fmt: skip
            if best is None or curve[-1][3] > best[0]:
                best = (curve[-1][3], ev)
            args.json.write_text(json.dumps(results))
    if args.save_best is not None and best is not None:
        best[1].save(args.save_best)
    print("\n| learner | seed | games | training CPU s | wall s | score vs heuristic | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for cpu, wall, g, s, ci in r["curve"]:
            print(f"| {r['learner']} | {r['seed']} | {g:,} | {cpu:.0f} | {wall:.0f} "
                  f"| {s:.3f} ± {ci:.3f} | {r['load_start']:.1f}–{r['load_end']:.1f} |")  # fmt: skip
    print(
        "\n| learner | games | training CPU s | mean vs heuristic (min–max) | mean vs random (min–max) |"
    )
    print("|---|---:|---:|---|---|")
    for learner in args.learners.split(","):
        runs = [r for r in results if r["learner"] == learner]
        games = int(np.mean([r["curve"][-1][2] for r in runs]))
        cpu = np.mean([r["curve"][-1][0] for r in runs])
        span = {
            k: f"{np.mean(v):.3f} ({min(v):.3f}–{max(v):.3f})"
            for k, v in (
                ("heuristic", [r["curve"][-1][3] for r in runs]),
                ("random", [r.get("random", float("nan")) for r in runs]),
            )
        }
        print(f"| {learner} | {games:,} | {cpu:.0f} | {span['heuristic']} | {span['random']} |")
    plot(args.png, [(r["learner"], r["curve"]) for r in results], args.y_low)
    print(f"curves: {args.png}")


if __name__ == "__main__":
    main()
