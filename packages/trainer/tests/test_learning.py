"""Learning is real: the trained policy beats a random one on the same seeds; metrics move.

The environment rewards a division of labour (each tool's product pays in full
only for a quota of the agents, practice with one tool pays), and the agents'
tools are per-agent parameters: training must split them into roles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from trainsvc_trainer import Config, Trainer

SEEDS = list(range(1000, 1016))


def test_trained_policy_beats_random_and_agents_specialize(cache_dir: Path) -> None:
    config = Config.from_dict(
        {
            "train": {"compile_cache_dir": str(cache_dir / "jax")},
            "log": {"frame_interval": 0, "progress": False, "save_interval": 0},
        }
    )
    trainer = Trainer(config)
    random_reward = trainer.evaluate(SEEDS, random_policy=True)
    initial_reward = trainer.evaluate(SEEDS)
    trainer.run(200)
    trained_reward = trainer.evaluate(SEEDS)
    assert trained_reward > 1.5 * random_reward
    assert trained_reward > 1.5 * initial_reward
    assert trainer.evaluate(SEEDS, random_policy=True) == random_reward  # same seeds, same episodes

    def series(tracker: object, name: str) -> list[float]:
        return list(tracker.histories[name].recent)  # type: ignore[attr-defined]

    emergence = series(trainer.emergence, "emergence_index")
    assert np.mean(emergence[-30:]) > np.mean(emergence[:30])
    nn = series(trainer.emergence, "nn_ratio")
    assert np.mean(nn[-30:]) < np.mean(nn[:30])  # agents gather
    spec = series(trainer.specialization, "specialization_index")
    assert np.mean(spec[-30:]) > 3 * np.mean(spec[:30])  # behaviours drift apart
    assert np.mean(spec[-30:]) > 0.03
    roles = series(trainer.specialization, "n_roles")
    assert roles[-1] >= 2  # the agents end split into roles
