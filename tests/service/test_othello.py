"""The `othello` kind end to end: the Rust engine's self-play training driven by the service."""

from __future__ import annotations

from typing import Any

import pytest
from trainsvc_client import InvalidArgumentError, decode_board, pb

CONFIG = {"search_depth": 1, "threads": 1, "frame_interval": 64}


def test_othello_run(shared_service: Any, wait_for: Any) -> None:
    with shared_service.client() as c:
        run = c.create_run(
            "othello",
            step_budget=1_000_000,
            seed=3,
            config=CONFIG,
            checkpoint_policy=pb.CheckpointPolicy(interval_steps=128),
        )
        stream = c.stream_frames(run.name, max_rate_hz=100)
        frame = next(iter(stream))
        stream.cancel()
        board = decode_board(frame.othello)
        assert len(board) == 64 and set(board) <= {0, 1, 2} and board.count(0) <= 60
        assert frame.othello.games == frame.step > 0 and "stone_diff" in frame.metrics

        paused = c.pause_run(run.name)
        assert paused.state == pb.Run.PAUSED
        assert paused.latest_checkpoint.endswith(f"step_{paused.step}")
        assert c.resume_run(run.name).state == pb.Run.RUNNING
        wait_for(c, run.name, lambda r: r.step > paused.step, what="games after resume")
        stopped = c.stop_run(run.name)
        assert stopped.state == pb.Run.STOPPED
        assert stopped.latest_checkpoint.endswith(f"step_{stopped.step}")

        short = c.create_run("othello", step_budget=128, seed=4, config=CONFIG)
        done = wait_for(
            c, short.name, lambda r: r.state in {pb.Run.COMPLETED, pb.Run.FAILED}, what="completion"
        )
        assert done.state == pb.Run.COMPLETED, done.state_message
        assert done.step == 128
        final = c.list_checkpoints(short.name)[-1]
        assert final.step == 128

    # The engine writes the shared checkpoint format.
    import trainsvc_checkpoint

    trainsvc_checkpoint.verify(final.path)


def test_othello_bad_config(shared_service: Any) -> None:
    with shared_service.client() as c, pytest.raises(InvalidArgumentError) as info:
        c.create_run("othello", step_budget=10, config={"learning_rate": -1.0})
    assert info.value.field == "run.othello.learning_rate"


# The evolution strategy on the 288-weight 2-tuple network: a generation is
# (1 + 3) candidates x 16 games against the heuristic = 64 games (steps).
ES_CONFIG = {
    "threads": 1,
    "frame_interval": 64,
    "learner": "es",
    "pattern_set": "straight2",
    "n_phases": 1,
    "es_parents": 1,
    "es_offspring": 3,
    "es_fitness_pairs": 8,
}


def test_othello_learner_is_selectable(shared_service: Any, wait_for: Any) -> None:
    with shared_service.client() as c:
        run = c.create_run("othello", step_budget=256, seed=6, config=ES_CONFIG)
        done = wait_for(
            c, run.name, lambda r: r.state in {pb.Run.COMPLETED, pb.Run.FAILED}, what="completion"
        )
        assert done.state == pb.Run.COMPLETED, done.state_message
        assert done.step == 256
        final = c.list_checkpoints(run.name)[-1]
        assert final.step == 256
    import trainsvc_checkpoint

    tree, info = trainsvc_checkpoint.load_with_info(final.path)
    assert info.metadata["config"]["learner"] == "es"
    assert tree["population"]["generation"] == 4


def test_othello_preset_sets_its_fields_and_overrides_win(
    shared_service: Any, wait_for: Any
) -> None:
    # The `league` preset with a small generation: 4 candidates x (50 + 12) pairs = 496 games.
    small = {"es_offspring": 4, "es_parents": 2, "threads": 1, "frame_interval": 64}
    with shared_service.client() as c:
        run = c.create_run("othello", step_budget=496, seed=2, config={"preset": "league", **small})
        done = wait_for(
            c, run.name, lambda r: r.state in {pb.Run.COMPLETED, pb.Run.FAILED}, what="completion"
        )
        assert done.state == pb.Run.COMPLETED, done.state_message
        final = c.list_checkpoints(run.name)[-1]
        with pytest.raises(InvalidArgumentError) as info:
            c.create_run("othello", step_budget=10, config={"preset": "fastest"})
        assert info.value.field == "run.othello.overrides[preset]"
        assert "league" in str(info.value)
    import trainsvc_checkpoint
    import trainsvc_engine

    tree, info = trainsvc_checkpoint.load_with_info(final.path)
    config = info.metadata["config"]
    preset = trainsvc_engine.PRESETS["league"]
    assert {k: config[k] for k in ("learner", "es_strategy", "pattern_set", "es_fitness_step")} == {
        k: preset[k] for k in ("learner", "es_strategy", "pattern_set", "es_fitness_step")
    }
    assert (config["es_offspring"], config["es_parents"]) == (4, 2)
    assert tree["population"]["generation"] == 1


def test_othello_bad_learner_names_the_field(shared_service: Any) -> None:
    with shared_service.client() as c:
        with pytest.raises(InvalidArgumentError) as info:
            c.create_run("othello", step_budget=10, config={"learner": "ga"})
        assert info.value.field == "run.othello.overrides[learner]"
        assert "'td', 'ctdl' or 'es'" in str(info.value)
        with pytest.raises(InvalidArgumentError) as info:
            c.create_run("othello", step_budget=10, config={"learner": "es", "es_sigma": 0})
        assert info.value.field == "run.othello.overrides[es_sigma]"


def test_othello_resume_from_its_checkpoint_continues_the_game_count(
    shared_service: Any, wait_for: Any
) -> None:
    with shared_service.client() as c:
        run = c.create_run(
            "othello",
            step_budget=1_000_000,
            seed=5,
            config=CONFIG,
            checkpoint_policy=pb.CheckpointPolicy(interval_steps=64, keep_last=10),
        )
        wait_for(c, run.name, lambda r: r.step >= 200, what="games")
        paused = c.pause_run(run.name)
        ckpts = c.list_checkpoints(run.name)
        assert len(ckpts) >= 2 and ckpts[-1].step == paused.step
        older, newest = ckpts[0], ckpts[-1]

        # The engine resumes from the newest file in the run's directory; an older one is refused.
        with pytest.raises(InvalidArgumentError) as info:
            c.resume_run(run.name, checkpoint=older.name.rsplit("/", 1)[1])
        assert info.value.field == "checkpoint" and "newest" in str(info.value)
        assert c.get_run(run.name).state == pb.Run.PAUSED

        # Resuming from the newest checkpoint by name starts a new worker from it.
        resumed = c.resume_run(run.name, checkpoint=newest.name.rsplit("/", 1)[1])
        assert resumed.step >= paused.step
        seen: list[int] = []

        def progressed(r: pb.Run) -> bool:
            seen.append(r.step)
            return r.state == pb.Run.RUNNING and r.step > paused.step

        wait_for(c, run.name, progressed, what="games after resume")
        assert min(seen) >= paused.step, seen  # counted on from the checkpoint, not from 0
        for frame in c.stream_frames(run.name, max_rate_hz=100, timeout=120):
            if frame.othello.games > paused.step:  # the resumed engine's frames go on counting
                assert frame.step == frame.othello.games
                break
        c.stop_run(run.name)
