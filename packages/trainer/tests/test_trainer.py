"""The Trainer API: steps, frames, state round trips, learning."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest
from trainsvc_checkpoint import load, save
from trainsvc_trainer import Config, ConfigError, Frame, Trainer, downsample_field


def leaves(trainer: Trainer) -> list[np.ndarray]:  # type: ignore[type-arg]
    tree = trainer.state_dict()
    tree.pop("meta")
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(log={"frame_interval": 3, "frame_max_cells": 16})


def test_step_returns_metrics_and_advances(config: Config) -> None:
    trainer = Trainer(config)
    metrics = trainer.step()
    assert trainer.step_count == 1
    for key in ("reward", "entropy", "emergence/emergence_index", "specialization/n_roles"):
        assert np.isfinite(metrics[key])
    trainer.run(2)
    assert trainer.step_count == 3


def test_same_seed_same_trajectory_and_stop_point(config: Config) -> None:
    a, b = Trainer(config), Trainer(config)
    a.run(6)
    calls = iter([False, False, False, True])
    done = b.run(10, should_stop=lambda: next(calls))
    assert done == 3 and b.step_count == 3
    b.run(3)
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert np.array_equal(x, y)


def test_frames_arrive_at_the_interval(config: Config) -> None:
    frames: list[Frame] = []
    trainer = Trainer(config, frame_callback=frames.append)
    for _ in range(9):
        trainer.step()
        trainer.flush_frames()
    trainer.close()
    assert [f.step for f in frames] == [3, 6, 9]
    frame = frames[-1]
    assert frame.positions.shape == (4, 2) and frame.positions.dtype == np.int16
    assert frame.field.shape == (4, 4) and frame.downsample == 2  # 8x8 > 16 cells
    assert frame.field.dtype == np.float32 and frame.grid_shape == (8, 8)
    assert frame.metrics["reward"] == pytest.approx(trainer.last_metrics["reward"])


def test_slow_callback_does_not_block_training(config: Config) -> None:
    release = threading.Event()
    seen: list[int] = []

    def slow(frame: Frame) -> None:
        seen.append(frame.step)
        release.wait()

    trainer = Trainer(config.replace({"log.frame_interval": 1}), frame_callback=slow)
    trainer.run(12)  # would deadlock if publishing waited for the callback
    assert trainer.step_count == 12
    release.set()
    trainer.flush_frames()
    trainer.close()
    assert trainer.frames_dropped > 0
    assert seen[-1] == 12  # the newest frame wins
    assert len(seen) < 12


def test_downsample_and_uint8_frames() -> None:
    field = np.arange(36, dtype=np.float32).reshape(6, 6)
    small, factor = downsample_field(field, 9)
    assert factor == 2 and small.shape == (3, 3)
    assert small[0, 0] == pytest.approx(np.mean([0, 1, 6, 7]))
    same, one = downsample_field(field, 36)
    assert one == 1 and np.array_equal(same, field)
    _, factor = downsample_field(np.zeros((7, 7)), 9)  # 7 -> 3 blocks of 3 (wrapped)
    assert factor == 3


def test_uint8_frame_field(make_config: Callable[..., Config]) -> None:
    frames: list[Frame] = []
    cfg = make_config(log={"frame_interval": 1, "frame_dtype": "uint8"})
    trainer = Trainer(cfg, frame_callback=frames.append)
    trainer.step()
    trainer.close()
    assert frames[0].field.dtype == np.uint8 and frames[0].field.max() == 255
    assert frames[0].field_scale > 0


def test_state_round_trip_through_a_checkpoint_file(config: Config, tmp_path: Path) -> None:
    a = Trainer(config)
    a.run(4)
    path = save(tmp_path / "s.safetensors", a.state_dict())
    b = Trainer(config)
    b.load_state_dict(load(path, target=b.state_dict()))
    assert b.step_count == 4 and b.run_id == a.run_id
    assert b.emergence.to_dict() == a.emergence.to_dict()
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert a.step() == b.step()


def test_load_rejects_a_different_trajectory_config(config: Config) -> None:
    a = Trainer(config)
    other = Trainer(config.replace({"train.gamma": 0.5, "train.total_steps": 7}))
    with pytest.raises(ConfigError) as info:
        other.load_state_dict(a.state_dict())
    assert info.value.field == "train.gamma"
    longer = Trainer(config.replace({"train.total_steps": 99}))
    longer.load_state_dict(a.state_dict())  # total_steps may change on resume


def test_frames_show_the_episode_not_the_empty_field_after_a_reset(
    make_config: Callable[..., Config],
) -> None:
    """Each policy update ends an episode (rollout = episode length): every frame is
    still the episode as its last step left it, never the fresh empty field."""
    frames: list[Frame] = []
    config = make_config(
        env={"episode_length": 4}, train={"rollout_length": 4}, log={"frame_interval": 1}
    )
    trainer = Trainer(config, frame_callback=frames.append)
    trainer.run(3)
    trainer.flush_frames(30)
    trainer.close()
    assert frames and frames[-1].step == 3
    # the trainer's own state is the new episode's empty field ...
    assert not np.asarray(trainer.state_dict()["env"]["field"])[0].any()
    # ... but the frames show the last state of the one that ended
    for f in frames:
        assert np.count_nonzero(f.field) >= config.env.n_agents // 2, f.step
