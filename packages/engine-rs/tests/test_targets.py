"""Training targets: each position's 2-ply value (the default) or TD(lambda) along the game."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trainsvc_checkpoint as ckpt
import trainsvc_engine as te

SMALL: dict[str, Any] = {"pattern_set": "small", "n_phases": 2, "batch_games": 16, "threads": 2}
# Every move random: no move is the greedy policy's.
EXPLORE_ONLY: dict[str, Any] = {"epsilon_start": 1.0, "epsilon_end": 1.0}


def _moved(ev: te.Evaluator) -> int:
    return sum(
        w != 0.0 for p in ev.pattern_names for ph in range(ev.n_phases) for w in ev.weights(p, ph)
    )


def test_two_ply_targets_are_the_default_and_the_field_is_validated(tmp_path: Path) -> None:
    m = te.TrainingManager(tmp_path, **SMALL)
    assert m.config()["target_depth"] == 2
    m.configure(target_depth=1)
    assert m.config()["target_depth"] == 1
    with pytest.raises(te.ConfigError, match=r"target_depth: got 3; allowed: 1 \(TD"):
        m.configure(target_depth=3)
    with pytest.raises(te.ConfigError, match="target_depth"):
        te.TrainingManager(tmp_path / "other", target_depth=0)


@pytest.mark.parametrize(("target_depth", "learns"), [(1, False), (2, True)])
def test_games_of_exploration_moves_teach_only_two_ply_targets(
    tmp_path: Path, target_depth: int, learns: bool
) -> None:
    # TD(lambda) cuts its trace at every exploration move, so such games
    # teach it nothing; a position's own 2-ply value is a target whatever
    # move followed it.
    m = te.TrainingManager(tmp_path, target_depth=target_depth, **EXPLORE_ONLY, **SMALL)
    m.start(64, checkpoint_interval=64)
    assert m.wait(timeout=120) is not None
    moved = _moved(m.evaluator())
    assert (moved > 100) if learns else (moved == 0), moved
    latest = max(te.CheckpointManager(tmp_path).list(), key=lambda info: info.step)
    _, info = ckpt.load_with_info(latest.path)
    assert info.metadata["config"]["target_depth"] == target_depth
