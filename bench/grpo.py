"""Benchmark of GRPO in trainsvc-lm: learning from chance on the shipped tasks, and throughput.

1. Learning curves: a tiny digit transformer (2 layers, hidden 64) initialised at
   random — no supervised warm-up, no downloaded weights — trained with GRPO only:
   ``sort4`` with the task's verifiable reward (target: held-out reward >= 0.9
   within 60 s) and ``increment4`` rewarded by the trajectory library's
   ``RuleJudge`` (target >= 0.99 within 30 s). The clock counts everything the
   trainer does from its first step (XLA compilation included); the held-out
   evaluations (256 greedy completions every 10 steps) are timed apart and not
   counted. Curves go to ``docs/grpo-<task>.png``.
2. Throughput: completion tokens sampled per second and trained per second (each
   update recomputes every completion token), as FLOP/s over the ``jnp.dot``
   FLOP/s of a square float32 matmul measured in the same run (model FLOPs per
   token: ``2 N`` sampled, ``6 N`` trained, N the parameters in matmuls).

Run: ``uv run --no-sync python bench/grpo.py [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from pngwriter import write_png  # bench/pngwriter.py (this directory is on sys.path)
from trainsvc_lm import GRPOConfig, GRPOTrainer

ROOT = Path(__file__).resolve().parent.parent
LOG = {"save_interval": 0, "eval_interval": 0, "sample_interval": 0, "frame_interval": 0}
RUNS: dict[str, dict[str, Any]] = {
    "sort4": {
        "target": 0.9,
        "limit_s": 60.0,
        "judge": False,
        "config": {
            "data": {"task": "sort4"},
            "grpo": {
                "group_size": 8,
                "prompts_per_step": 64,
                "updates_per_batch": 2,
                "epsilon_high": 0.28,
            },
            "optim": {"lr": 1e-3},
        },
    },
    "increment4": {
        "target": 0.99,
        "limit_s": 30.0,
        "judge": True,
        "config": {"data": {"task": "increment4", "reward": "judge"}},
    },
}


def matmul_flops(n: int = 512, reps: int = 20) -> float:
    """FLOP/s of a jitted float32 ``jnp.dot`` of two ``n x n`` matrices (median of 5)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, a).block_until_ready()
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            out = f(a, a)
        out.block_until_ready()
        rates.append(2 * n**3 * reps / (time.perf_counter() - t))
    return statistics.median(rates)


def matmul_params(trainer: GRPOTrainer) -> int:
    """Parameters that take part in a matmul (all but the input embedding; the head counted)."""
    params = trainer.trainable if trainer.full else trainer.frozen
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["layers"]))
    head = params.get("lm_head", params["embed"])
    return n + int(np.prod(head.shape))


def learn(task: str, spec: dict[str, Any], limit_s: float, seed: int) -> dict[str, Any]:
    """Train until the target or the time limit; the curve is (seconds, step, eval reward)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = {k: dict(v) for k, v in spec["config"].items()}
        data["train"] = {"steps": 100_000, "seed": seed}
        data["log"] = {"checkpoint_dir": tmp, **LOG}
        reward_fn = None
        if spec["judge"]:
            from trainsvc.kinds.grpo import rule_judge_reward

            reward_fn = rule_judge_reward(task)
        trainer = GRPOTrainer(GRPOConfig.from_dict(data), reward_fn=reward_fn)
        curve = [(0.0, 0, float(trainer.evaluate() or 0.0))]
        clock = 0.0
        first_step_s = 0.0
        sample_s = train_s = 0.0
        tokens = 0
        reached: float | None = None
        while clock < limit_s:
            t = time.perf_counter()
            m = trainer.step()
            dt = time.perf_counter() - t
            clock += dt
            if trainer.step_count == 1:
                first_step_s = dt
            else:
                sample_s += m["sample_s"]
                train_s += m["train_s"]
                tokens += int(m["tok_s"] * dt / 2)
            if trainer.step_count % 10 == 0:
                value = float(trainer.evaluate() or 0.0)
                curve.append((clock, trainer.step_count, value))
                if reached is None and value >= spec["target"]:
                    reached = clock
                    break
        updates = trainer.config.grpo.updates_per_batch
        return {
            "curve": curve,
            "reached_s": reached,
            "first_step_s": first_step_s,
            "sampled_tok_s": tokens / max(sample_s, 1e-9),
            "trained_tok_s": tokens * updates / max(train_s, 1e-9),
            "n_params": matmul_params(trainer),
            "steps": trainer.step_count,
        }


def plot(
    path: Path, curves: list[list[tuple[float, int, float]]], x_max: float, target: float
) -> None:
    """Reward (0..1, gridlines every 0.1) against seconds (gridlines every 10 s), no text.

    Grey: the grid; red dashes: the target; blue (one line per seed): held-out reward.
    """
    w, h, m = 640, 320, 20
    img = np.full((h, w, 3), 255, np.uint8)

    def xy(x: float, y: float) -> tuple[int, int]:
        return int(m + (w - 2 * m) * min(x / x_max, 1.0)), int(h - m - (h - 2 * m) * y)

    for k in range(11):
        _, yy = xy(0, k / 10)
        img[yy, m : w - m] = 225 if k else 0
    for s in range(0, int(x_max) + 1, 10):
        xx, _ = xy(s, 0)
        img[m : h - m, xx] = 225 if s else 0
    _, ty = xy(0, target)
    for xx in range(m, w - m, 8):
        img[ty - 1 : ty + 1, xx : xx + 4] = (220, 40, 40)
    for curve in curves:
        pts = [xy(t, r) for t, _, r in curve]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            n = max(abs(x1 - x0), abs(y1 - y0), 1)
            for i in range(n + 1):
                x = round(x0 + (x1 - x0) * i / n)
                y = round(y0 + (y1 - y0) * i / n)
                img[y - 1 : y + 2, x - 1 : x + 2] = (30, 80, 200)
    write_png(path, img)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, no plots")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    flops = matmul_flops()
    print(f"jnp.dot float32 512x512: {flops / 1e9:.1f} GFLOP/s (this machine, this run)")
    print()
    print(
        "| task | reward | seed | start | reached | seconds to target (limit) | steps | first step s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    results: dict[str, list[dict[str, Any]]] = {}
    for task, spec in RUNS.items():
        for seed in range(seeds):
            r = learn(task, spec, 2 * spec["limit_s"], seed)
            results.setdefault(task, []).append(r)
            reached = "-" if r["reached_s"] is None else f"{r['reached_s']:.1f}"
            print(
                f"| {task} | {'RuleJudge' if spec['judge'] else 'verifiable'} | {seed} | "
                f"{r['curve'][0][2]:.3f} | {r['curve'][-1][2]:.3f} | {reached} "
                f"({spec['limit_s']:.0f}) | {r['steps']} | {r['first_step_s']:.1f} |",
                flush=True,
            )
    print()
    print("| task | eval reward by seconds (seed 0) |")
    print("| --- | --- |")
    for task, rs in results.items():
        cells = ", ".join(f"{t:.0f}s:{v:.2f}" for t, _, v in rs[0]["curve"])
        print(f"| {task} | {cells} |")
    print()
    print(
        "| task | sampled tok/s | trained tok/s | sampling FLOP/s / jnp.dot | training FLOP/s / jnp.dot |"
    )
    print("| --- | --- | --- | --- | --- |")
    for task, rs in results.items():
        r = rs[0]
        n = r["n_params"]
        print(
            f"| {task} | {r['sampled_tok_s']:.0f} | {r['trained_tok_s']:.0f} | "
            f"{2 * n * r['sampled_tok_s'] / flops:.4f} | {6 * n * r['trained_tok_s'] / flops:.4f} |"
        )
    if not args.quick:
        for task, rs in results.items():
            spec = RUNS[task]
            x_max = max(2 * spec["limit_s"], max(c[-1][0] for c in (r["curve"] for r in rs)))
            plot(
                ROOT / "docs" / f"grpo-{task}.png", [r["curve"] for r in rs], x_max, spec["target"]
            )
        print("\ncurves: docs/grpo-sort4.png, docs/grpo-increment4.png")


if __name__ == "__main__":
    main()
