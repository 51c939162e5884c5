"""Benchmark of the JAX emergence trainer (trainsvc_trainer), ratios against baselines.

1. Agent-steps per second of the jitted trainer (rollout + policy update) vs the
   vectorized NumPy reference of the same environment and policy forward pass
   (bench/reference/emergence_numpy.py, acting only), at several batch sizes.
   Target: >= 8x.
2. Training throughput with a checkpoint every 1,000 steps and a frame every 10
   steps vs both off. Target: overhead <= 2%.

Ratios are paired: the contenders run in alternating chunks, each round's ratio
is taken between chunks seconds apart, and the table gives the median over rounds
with its range (absolute rates drift by up to 1.5x between minutes here).
3. Compile time of a fresh process: cold (empty persistent cache) vs warm (the
   cache filled by the cold run).

Run: ``uv run --no-sync python bench/trainer.py [--quick] [--no-pin]``. By default
both contenders run on one CPU (the NumPy reference is single-threaded);
``--no-pin`` lets XLA spread over every CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CACHE = tempfile.mkdtemp(prefix="bench-trainer-cache-")
os.environ.setdefault("TRAINSVC_CACHE_DIR", CACHE)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from reference.emergence_numpy import EnvParams, NumpyEmergence  # noqa: E402
from trainsvc_trainer import Config, Trainer, _learner  # noqa: E402


def config(**sections: dict[str, Any]) -> Config:
    """The default config with overrides, and console progress off."""
    data: dict[str, dict[str, Any]] = {
        "log": {"progress": False, "frame_interval": 0, "save_interval": 0}
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return Config.from_dict(data)


Rates = dict[str, list[float]]
"""Units per second of each contender, one entry per round (``"<name>/cpu"``: per CPU-second)."""


def alternate(runs: dict[str, Any], rounds: int) -> Rates:
    """Calls each ``runs[name]()`` (returning units of work done) in turn, ``rounds`` times.

    The order alternates between rounds (A B C, C B A, ...) so that no contender
    always follows another; each round's rates are kept, so that ratios can be
    paired within a round (the contenders ran seconds apart, under the same load):
    on this virtual machine a rate drifts by up to 1.5x between minutes.
    """
    rates: Rates = {}
    names = list(runs)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            work = runs[name]()
            rates.setdefault(name, []).append(work / (time.perf_counter() - start))
            cpu = max(time.process_time() - cpu_start, 1e-9)
            rates.setdefault(f"{name}/cpu", []).append(work / cpu)
    return rates


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return float(np.median(values))


def paired(rates: Rates, name: str, base: str) -> tuple[float, float, float]:
    """Median, lowest and highest over rounds of ``name``'s rate over ``base``'s in the same round."""
    ratios = [a / b for a, b in zip(rates[name], rates[base], strict=True)]
    return median(ratios), min(ratios), max(ratios)


def throughput(n_envs: int, chunk: float, rounds: int) -> Rates:
    """Agent-steps/s at ``n_envs``: jitted acting, jitted training step, NumPy acting."""
    cfg = config(env={"n_envs": n_envs}, train={"total_steps": 10**9})
    trainer = Trainer(cfg)
    trainer.step()  # compile
    state, spec = trainer._state, trainer._spec  # the bench reads the trainer's internals
    act = _learner.compiled_rollout(spec)
    env, _ = act(state.params, state.agent_params, state.env, state.key)
    keys = iter(np.asarray(jax.random.split(state.key, 100_000)))
    per_call = cfg.env.n_envs * cfg.env.n_agents * cfg.train.rollout_length
    ref = NumpyEmergence(
        EnvParams.of(cfg.env),
        n_envs,
        jax.tree.map(np.asarray, state.params),
        jax.tree.map(np.asarray, state.agent_params),
        role_scale=cfg.policy.role_scale,
    )
    ref.rollout(2)

    def until(fn: Any) -> float:
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < chunk:
            fn()
            calls += 1
        return float(calls * per_call)

    def jax_act() -> Any:
        nonlocal env
        env, reward = act(state.params, state.agent_params, env, next(keys))
        reward.block_until_ready()

    return alternate(
        {
            "jax_act": lambda: until(jax_act),
            "jax_train": lambda: until(trainer.step),
            "numpy_act": lambda: until(lambda: ref.rollout(cfg.train.rollout_length)),
        },
        rounds,
    )


def median_rates(runs: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median units/s (wall clock and ``/cpu``: per CPU second) of each ``runs[name]()`` chunk.

    The contenders run in turn, ``rounds`` times, in alternating order (A B, B A, ...)
    so that neither always follows the other; medians of the per-chunk rates shrug
    off the chunks a shared machine's load spikes hit.
    """
    rates: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            work = runs[name]()
            rates[name].append(work / (time.perf_counter() - start))
            cpus[name].append(work / max(time.process_time() - cpu_start, 1e-9))
    out = {name: float(np.median(rates[name])) for name in runs}
    out.update({f"{name}/cpu": float(np.median(cpus[name])) for name in runs})
    return out


def overhead(block: int, rounds: int) -> Rates:
    """Steps/s with checkpoints every 1,000 + frames every 10 (``on``), and with both off (``off``).

    ``rounds`` alternating blocks of ``block`` steps each; an 'on' block that crosses
    a multiple of 1,000 steps includes its checkpoint save.
    """
    frames: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        on = config(
            train={"total_steps": 10**9},
            log={"save_interval": 1000, "frame_interval": 10, "checkpoint_dir": tmp},
        )
        off = config(train={"total_steps": 10**9})
        t_on = Trainer(on, frame_callback=lambda f: frames.append(f.step))
        t_off = Trainer(off)
        t_on.step()
        t_off.step()
        rates = alternate(
            {"on": lambda: float(t_on.run(block)), "off": lambda: float(t_off.run(block))},
            rounds,
        )
        t_on.close()
        saved = len(t_on.checkpoint_manager.steps())
        assert saved >= 1 and frames, "the 'on' run must really checkpoint and publish frames"
    return rates


CHILD = """
import time, sys
t0 = time.perf_counter()
from trainsvc_trainer import Config, Trainer
t1 = time.perf_counter()
trainer = Trainer(Config.from_dict({"train": {"compile_cache_dir": sys.argv[1]}}))
trainer.step()
print(time.perf_counter() - t1)
"""


def compile_time(cache_dir: str) -> float:
    """Seconds from constructing a Trainer to its first finished step, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, cache_dir], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter timings (smoke test)")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=hasattr(os, "sched_setaffinity"),
        help="run everything on CPU 0, so that both contenders have one CPU (the NumPy "
        "reference is single-threaded); the default where the OS allows it. --no-pin lets "
        "XLA use every CPU",
    )
    args = parser.parse_args()
    if args.pin:  # before JAX starts its backend, which sizes its thread pool by the CPUs allowed
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    chunk, rounds = (0.2, 2) if args.quick else (0.5, 6)
    rows: list[tuple[str, str, str, str, str]] = []
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores"
        + (f", pinned to CPU {min(os.sched_getaffinity(0))}" if args.pin else ", unpinned"),
        flush=True,
    )
    for n_envs in (8, 64, 256):
        r = throughput(n_envs, chunk, rounds)
        print(
            f"  {n_envs} envs, medians: "
            + ", ".join(f"{k} {median(v):,.0f}" for k, v in r.items()),
            flush=True,
        )
        base = f"numpy reference {median(r['numpy_act']):,.0f}"
        for key, label, target in (
            ("jax_act", f"agent-steps/s acting, {n_envs} envs x 8 agents", ">= 8x"),
            ("jax_train", f"agent-steps/s training (act+update), {n_envs} envs", "-"),
        ):
            mid, low, high = paired(r, key, "numpy_act")
            cpu = paired(r, f"{key}/cpu", "numpy_act/cpu")[0]
            ratio = f"{mid:.1f}x ({low:.1f}-{high:.1f}; CPU-s {cpu:.1f}x)"
            rows.append((label, f"{median(r[key]):,.0f}", base, ratio, target))
    # blocks of 1,000 steps, so that every 'on' block includes exactly one checkpoint save
    r = overhead(1000 if not args.quick else 200, 9 if not args.quick else 6)
    mid, low, high = paired(r, "on", "off")
    cpu = paired(r, "on/cpu", "off/cpu")[0]
    print(
        f"  overhead rounds (on/off): {', '.join(f'{a / b:.3f}' for a, b in zip(r['on'], r['off'], strict=True))}"
    )
    rows.append(
        (
            "steps/s, ckpt every 1000 + frame every 10",
            f"{median(r['on']):,.0f}",
            f"both off {median(r['off']):,.0f}",
            f"{(1 - mid) * 100:+.1f}% overhead ({(1 - high) * 100:+.1f} to {(1 - low) * 100:+.1f}; "
            f"CPU-s {(1 - cpu) * 100:+.1f}%)",
            "<= 2%",
        )
    )
    with tempfile.TemporaryDirectory() as cache:
        cold = compile_time(cache)
        warm = compile_time(cache)
    rows.append(
        (
            "compile + first step (s), warm cache",
            f"{warm:.2f}",
            f"cold cache {cold:.2f}",
            f"{cold / warm:.1f}x faster",
            "-",
        )
    )
    print()
    header = ("measurement", "trainer", "baseline", "ratio", "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
