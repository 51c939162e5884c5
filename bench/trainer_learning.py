"""Learning check of the emergence trainer: trained vs random policy on the same seeds.

Trains the default config for 1,000 steps and prints, against the baselines of
a uniform random policy and the untrained policy on the same evaluation seeds,
the mean per-agent episode reward, and how the emergence and specialization
metrics moved (means over the first and last 50 updates).

Run: ``uv run --no-sync python bench/trainer_learning.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from trainsvc_trainer import Config, Trainer

SEEDS = list(range(1000, 1032))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    trainer = Trainer(Config.from_dict({"log": {"progress": False, "frame_interval": 0}}))
    random_reward = trainer.evaluate(SEEDS, random_policy=True)
    initial = trainer.evaluate(SEEDS)
    tracked = (
        (trainer.emergence, "emergence_index"),
        (trainer.emergence, "nn_ratio"),
        (trainer.emergence, "action_coordination"),
        (trainer.specialization, "specialization_index"),
        (trainer.specialization, "policy_entropy"),
    )
    start = time.perf_counter()
    trainer.run(50)
    early = {name: float(np.mean(t.histories[name].recent)) for t, name in tracked}
    trainer.run(args.steps - 50)
    seconds = time.perf_counter() - start
    trained = trainer.evaluate(SEEDS)
    rows = [("episode reward (per agent, 32 seeds)", trained, random_reward, "random policy")]
    rows.append(("episode reward vs untrained", trained, initial, "untrained policy"))
    for tracker, name in tracked:
        late = float(np.mean(list(tracker.histories[name].recent)[-50:]))
        rows.append(
            (f"{name} (last 50 vs first 50 updates)", late, early[name], "first 50 updates")
        )
    print(f"{args.steps} steps in {seconds:.1f} s, including the first compile")
    print(f"| {'measurement':<52} | {'trained':>9} | {'baseline':>9} | {'ratio':>7} | baseline is")
    print(f"| {'-' * 52} | {'-' * 9} | {'-' * 9} | {'-' * 7} | {'-' * 16}")
    for label, value, base, what in rows:
        ratio = value / base if base else float("nan")
        print(f"| {label:<52} | {value:9.4f} | {base:9.4f} | {ratio:6.2f}x | {what}")


if __name__ == "__main__":
    main()
