"""Benchmark: offline GRPO on recorded agent groups raises the reward of new samples.

The loop the trajectory library exists for, end to end on 2 CPU cores, no downloaded
weights:

1. **A deployed policy.** A tiny digit transformer is trained online on ``increment4``
   for a few GRPO steps (so it is right on some digits, not all) and saved as an
   ordinary Hugging Face model directory (`GRPOTrainer.save_pretrained`).
2. **Recorded decisions.** That model answers 100 training-split scenarios 8 times
   each (sampled at temperature 1, as a deployed agent would); every answer is one
   trajectory in a `TrajectoryRecorder` store (SQLite), with its LLM call and the
   environment's reward (the task's rule: positions right).
3. **Export and judge.** The window is exported as ART groups (one group per
   scenario, `window_groups`), written as ART JSONL, read back, judged by the
   `RuleJudge` (relative scores in [0, 1] per group) and turned into offline samples.
4. **Offline GRPO.** A run with ``model.dir`` = the deployed model and
   ``data.offline_file`` = the export trains on the judged groups (behaviour
   log-probs recomputed under the deployed model, which generated them).
5. **Judged on held-out scenarios.** Before and after, the policy samples 8 new
   answers to each of 256 held-out scenarios (temperature 1) and its greedy answer;
   each is scored by the judge's rule (the raw score the RuleJudge ranks by, before
   its per-group scaling, which would make every group's mean 0.5).

Rounds repeat steps 2-5 with the improved policy as the new deployment.

Run: ``uv run --no-sync python bench/grpo_offline.py [--seeds 0 1 2] [--rounds 3]
[--plot docs/grpo-offline.png]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trainsvc_trajectories as tt
from trainsvc_lm import (
    TASKS,
    GRPOConfig,
    GRPOTrainer,
    SamplingConfig,
    Tokenizer,
    groups_from_art,
    load_model,
    sample,
)

TASK = TASKS["increment4"]
LOG = {"save_interval": 0, "eval_interval": 0, "sample_interval": 0, "frame_interval": 0}
SCENARIOS, GROUP, HELD_OUT, EVAL_SAMPLES = 100, 8, 256, 8


def deploy_behaviour(seed: int, steps: int, out: Path, work: Path) -> None:
    """Train the first deployment online for ``steps`` and save it as a model directory."""
    config = GRPOConfig.from_dict(
        {
            "data": {"task": TASK.name},
            "train": {"steps": steps, "seed": seed},
            "log": {"checkpoint_dir": str(work / "online"), **LOG},
        }
    )
    trainer = GRPOTrainer(config)
    trainer.run()
    trainer.save_pretrained(out)
    trainer.close()


def answers(model_dir: Path, prompts: list[str], n: int, seed: int, greedy: bool) -> list[str]:
    """``n`` answers per prompt from the model directory (greedy: one each, at temperature 0)."""
    config, params = load_model(model_dir)
    tokenizer = Tokenizer.from_dir(model_dir)
    rows = [tokenizer.encode(p, add_special_tokens=True) for p in prompts for _ in range(n)]
    sampling = SamplingConfig(
        max_new_tokens=TASK.max_new_tokens,
        temperature=0.0 if greedy else 1.0,
        stop_token_ids=(),
        seed=seed,
    )
    return [tokenizer.decode(list(r.tokens)) for r in sample(params, config, rows, sampling)]


def judged(model_dir: Path, seed: int) -> tuple[float, float]:
    """Mean rule score of new sampled answers and of greedy answers on held-out scenarios."""
    prompts = TASK.eval_prompts(HELD_OUT)
    sampled = answers(model_dir, prompts, EVAL_SAMPLES, seed, greedy=False)
    greedy = answers(model_dir, prompts, 1, seed, greedy=True)
    repeated = [p for p in prompts for _ in range(EVAL_SAMPLES)]
    score = [TASK.reward(p, a) for p, a in zip(repeated, sampled, strict=True)]
    best = [TASK.reward(p, a) for p, a in zip(prompts, greedy, strict=True)]
    return float(np.mean(score)), float(np.mean(best))


def record(model_dir: Path, db_url: str, window: str, seed: int) -> float:
    """The deployment answers the window's scenarios; every answer is recorded. Returns
    the mean recorded reward."""
    prompts = TASK.train_prompts(np.random.default_rng([seed, 99]), SCENARIOS)
    t = time.perf_counter()
    said = answers(model_dir, prompts, GROUP, seed + 1, greedy=False)
    latency = (time.perf_counter() - t) / len(said)
    rewards = []
    with tt.TrajectoryRecorder(db_url) as rec:
        for i, prompt in enumerate(prompts):
            for j in range(GROUP):
                answer = said[i * GROUP + j]
                reward = TASK.reward(prompt, answer)
                rewards.append(reward)
                with rec.trajectory(f"agent-{j}", window_id=window, scenario_id=f"s{i}") as traj:
                    rec.start_step(traj, {"scenario": prompt})
                    rec.log_llm_call(
                        traj,
                        model=model_dir.name,
                        system_prompt=None,
                        user_prompt=prompt,
                        response=answer,
                        temperature=1.0,
                        max_tokens=TASK.max_new_tokens,
                        purpose="answer",
                        action_type="answer",
                        latency=latency,
                        tokens=(len(prompt) + 1, len(answer)),
                    )
                    rec.complete_step(traj, {"answer": answer}, reward)
    return float(np.mean(rewards))


def export_and_judge(db_url: str, window: str, path: Path) -> list[Any]:
    """Export the window as ART JSONL, read it back, judge it; the offline samples."""
    with tt.Store(db_url) as store:
        report = tt.quality_report(store, window)
        if not report.passed:
            raise SystemExit(f"window {window} failed its quality report: {report.failures}")
        tt.write_jsonl(tt.window_groups(store, window), path)
    result = tt.judge_groups(tt.RuleJudge(), tt.read_jsonl(path))
    return groups_from_art([g.model_dump() for g in result.groups], source=str(path))


def train_offline(
    deployed: Path, export: Path, groups: list[Any], out: Path, spec: dict[str, Any], seed: int
) -> dict[str, float]:
    """One offline GRPO run from the deployment on its judged groups; saves the new policy."""
    config = GRPOConfig.from_dict(
        {
            "model": {"dir": str(deployed), "dtype": "float32"},
            "data": {"task": None, "offline_file": str(export)},
            "grpo": {**spec["grpo"], "max_new_tokens": TASK.max_new_tokens},
            "optim": spec["optim"],
            "train": {"steps": spec["steps"], "seed": seed},
            "log": {"checkpoint_dir": str(out.parent / f"{out.name}-ck"), **LOG},
        }
    )
    trainer = GRPOTrainer(config, offline_groups=groups)
    t = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t
    metrics = dict(trainer.last_metrics)
    trainer.save_pretrained(out)
    trainer.close()
    return {"seconds": seconds, **metrics}


OFFLINE = {
    "steps": 100,
    "grpo": {"prompts_per_step": 25, "updates_per_batch": 2, "epsilon_high": 0.28},
    "optim": {"lr": 1e-3},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plot", type=Path, help="write the curves here (docs/grpo-offline.png)")
    parser.add_argument("--online-steps", type=int, default=25, help="the first deployment's")
    parser.add_argument("--offline-steps", type=int, default=OFFLINE["steps"])
    args = parser.parse_args()
    spec = {**OFFLINE, "steps": args.offline_steps}
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            deployed = work / "round-0"
            deploy_behaviour(seed, args.online_steps, deployed, work)
            db_url = f"sqlite:///{work}/traj.db"
            before = judged(deployed, seed)
            for round_ in range(1, args.rounds + 1):
                window = f"w{round_}"
                recorded = record(deployed, db_url, window, seed * 100 + round_)
                export = work / f"{window}.jsonl"
                groups = export_and_judge(db_url, window, export)
                trained = work / f"round-{round_}"
                m = train_offline(deployed, export, groups, trained, spec, seed)
                after = judged(trained, seed)
                rows.append((seed, round_, recorded, before, after, m))
                print(
                    f"seed {seed} round {round_}: recorded reward {recorded:.3f}, held-out "
                    f"sampled {before[0]:.3f} -> {after[0]:.3f}, greedy {before[1]:.3f} -> "
                    f"{after[1]:.3f} ({m['seconds']:.1f} s, clip {m['clip_fraction']:.2f})",
                    flush=True,
                )
                deployed, before = trained, after
    print()
    print(
        "| seed | round | groups (x8) | recorded reward | held-out sampled: before -> after "
        "| held-out greedy: before -> after | offline steps | seconds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for seed, round_, recorded, before, after, m in rows:
        print(
            f"| {seed} | {round_} | {SCENARIOS} | {recorded:.3f} | {before[0]:.3f} -> {after[0]:.3f} "
            f"| {before[1]:.3f} -> {after[1]:.3f} | {spec['steps']} | {m['seconds']:.1f} |"
        )
    gains = [after[0] - before[0] for _, r, _, before, after, _ in rows if r == 1]
    print(f"\nround-1 sampled gain: mean {statistics.mean(gains):+.3f}, min {min(gains):+.3f}")
    if args.plot is not None:
        from grpo import plot  # bench/grpo.py's PNG writer (this directory is on sys.path)

        curves = []
        for seed in args.seeds:
            mine = [r for r in rows if r[0] == seed]
            curve = [(0.0, 0, mine[0][3][0])]
            curve += [(10.0 * r[1], r[1], r[4][0]) for r in mine]
            curves.append(curve)
        start = statistics.mean(c[0][2] for c in curves)
        plot(args.plot, curves, 10.0 * args.rounds, start)
        print(f"curves: {args.plot} (x: rounds, gridlines every round; red dashes: the start)")


if __name__ == "__main__":
    main()
