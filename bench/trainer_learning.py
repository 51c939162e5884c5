"""Learning check of the emergence trainer: trained vs random policy on the same seeds.

Trains the default config for 1,000 steps and prints, against the baselines of
a uniform random policy and the untrained policy on the same evaluation seeds,
the mean per-agent episode reward, and how the emergence and specialization
metrics moved (means over the first and last 50 updates). It exits with status 1
unless the trained reward is at least 1.5x the random policy's, the
specialization index ends at least 3x above where it started and the agents
end split into at least 2 roles.

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
        (trainer.specialization, "n_roles"),
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
    late = {}
    for tracker, name in tracked:
        late[name] = float(np.mean(list(tracker.histories[name].recent)[-50:]))
        rows.append(
            (f"{name} (last 50 vs first 50 updates)", late[name], early[name], "first 50 updates")
        )
    print(f"{args.steps} steps in {seconds:.1f} s, including the first compile")
    print(f"| {'measurement':<52} | {'trained':>9} | {'baseline':>9} | {'ratio':>7} | baseline is")
    print(f"| {'-' * 52} | {'-' * 9} | {'-' * 9} | {'-' * 7} | {'-' * 16}")
    for label, value, base, what in rows:
        ratio = value / base if base else float("nan")
        print(f"| {label:<52} | {value:9.4f} | {base:9.4f} | {ratio:6.2f}x | {what}")
    roles = trainer.specialization.summary()["n_roles"]
    checks = {
        "trained reward >= 1.5x random": trained >= 1.5 * random_reward,
        "specialization index >= 3x its start": late["specialization_index"]
        >= 3 * early["specialization_index"],
        f"roles at the end >= 2 (got {roles:.0f})": roles >= 2,
    }
    for what, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {what}")
    if not all(checks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
