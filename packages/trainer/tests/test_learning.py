"""Learning is real: the trained policy beats a random one on the same seeds; metrics move."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from trainsvc_trainer import Config, Trainer

SEEDS = list(range(1000, 1016))


def test_trained_policy_beats_random_and_metrics_move(cache_dir: Path) -> None:
    config = Config.from_dict(
        {"train": {"compile_cache_dir": str(cache_dir / "jax")}, "log": {"frame_interval": 0}}
    )
    trainer = Trainer(config)
    random_reward = trainer.evaluate(SEEDS, random_policy=True)
    initial_reward = trainer.evaluate(SEEDS)
    trainer.run(200)
    trained_reward = trainer.evaluate(SEEDS)
    assert trained_reward > 1.5 * random_reward
    assert trained_reward > 1.5 * initial_reward
    assert trainer.evaluate(SEEDS, random_policy=True) == random_reward  # same seeds, same episodes
    emergence = list(trainer.emergence.histories["emergence_index"].recent)
    assert np.mean(emergence[-30:]) > np.mean(emergence[:30])
    nn = list(trainer.emergence.histories["nn_ratio"].recent)
    assert np.mean(nn[-30:]) < np.mean(nn[:30])  # agents gather
    spec = list(trainer.specialization.histories["specialization_index"].recent)
    assert np.std(spec) > 0.0 and spec[-1] != spec[0]
