"""Debug.replay: the game training plays, with both training targets of every position."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trainsvc_engine as te

SMALL: dict[str, Any] = {"pattern_set": "small", "n_phases": 2, "batch_games": 32, "threads": 2}
NO_SOLVER = 0  # exact_empties: score every position by the patterns, as training does


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> te.Evaluator:
    m = te.TrainingManager(tmp_path_factory.mktemp("run"), **SMALL)
    m.start(512, checkpoint_interval=0)
    assert m.wait(timeout=120) is not None
    return m.evaluator()


def _positions(rows: list[dict[str, Any]]) -> Iterator[tuple[te.Board, dict[str, Any]]]:
    """Each row with the board it was played from (passes replayed where the mover changes)."""
    board = te.Board()
    for row in rows:
        if board.player != row["player"]:
            board = board.pass_turn()
        yield board, row
        board = board.play(row["move"])


def test_replay_logs_the_two_ply_target_of_every_position(trained: te.Evaluator) -> None:
    rows = te.Debug.replay(trained, seed=3, epsilon=0.2)
    assert len(rows) >= 50
    assert {"value", "td_error", "lambda_target", "search_target"} <= set(rows[0])
    differs = 0
    for board, row in _positions(rows):
        depth2 = trained.best_move(board, depth=2, exact_empties=NO_SOLVER).score
        black_view = depth2 if row["player"] == 1 else -depth2
        assert row["search_target"] == pytest.approx(black_view, abs=1e-5), row
        differs += abs(row["search_target"] - row["value"]) > 1e-3
    # A trained evaluation is not its own 2-ply value: the target carries information.
    assert differs > len(rows) // 2


def test_replay_plays_the_greedy_move_like_training(trained: te.Evaluator) -> None:
    rows = te.Debug.replay(trained, seed=5, epsilon=0.0)
    compared = 0
    for board, row in _positions(rows):
        depth1 = trained.best_move(board, depth=1, exact_empties=NO_SOLVER)
        # The search compares values, which saturate at +-1 in f32 (the opening
        # of a young run); training and replay compare the raw sums, which
        # still order such moves. Compare where no value is saturated.
        if abs(depth1.score) < 0.999:
            assert row["move"] == depth1.square, row
            compared += 1
    assert compared >= 20
    final = te.Board()
    for board, row in _positions(rows):
        final = board.play(row["move"])
    assert final.is_game_over()


def test_replay_folds_the_lambda_target_as_training_does(trained: te.Evaluator) -> None:
    rows = te.Debug.replay(trained, seed=3, epsilon=0.3, lambda_=0.5)
    assert any(r["explored"] for r in rows) and not all(r["explored"] for r in rows)
    for row, after in zip(rows, [*rows[1:], None], strict=True):
        if row["explored"]:
            # Training makes no update after an exploration move.
            assert row["lambda_target"] == row["value"], row
        elif after is not None and after["explored"]:
            # The trace is cut there: the target is the next position's value.
            assert row["lambda_target"] == pytest.approx(after["value"], abs=1e-6), row
