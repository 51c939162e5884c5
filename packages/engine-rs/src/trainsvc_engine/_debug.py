"""Debugging helpers: ASCII views, checkpoint diffs, game replay, CSV export, anomalies."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from trainsvc_engine._engine import Board, Evaluator, TrainingManager, weight_diff


class Debug:
    """Static helpers for looking inside boards, weights, checkpoints and training."""

    @staticmethod
    def board_ascii(board: Board | Sequence[int], player: int = 1) -> str:
        """An ASCII picture of a board (X black, O white, * legal move).

        Args:
            board: a ``Board`` or 64 cells (0 empty, 1 black, 2 white).
            player: the side to move when ``board`` is a list (1 black, 2 white).
        """
        b = board if isinstance(board, Board) else Board(board, player)
        return b.ascii()

    @staticmethod
    def pattern_ascii(evaluator: Evaluator, pattern: str) -> str:
        """The squares of one pattern shape; the digit is the square's place in the index."""
        return evaluator.pattern_ascii(pattern)

    @staticmethod
    def checkpoint_diff(
        before: str | PathLike[str] | Evaluator, after: str | PathLike[str] | Evaluator
    ) -> list[dict[str, Any]]:
        """Per pattern and phase, the largest and mean absolute weight change between two checkpoints."""
        summary, _ = weight_diff(_evaluator(before), _evaluator(after), threshold=float("inf"))
        return [
            {"pattern": p, "phase": ph, "max_abs_change": mx, "mean_abs_change": mean}
            for p, ph, mx, mean in summary
        ]

    @staticmethod
    def anomalies(
        before: str | PathLike[str] | Evaluator,
        after: str | PathLike[str] | Evaluator,
        threshold: float = 0.5,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Weights that changed by more than ``threshold`` between two checkpoints (sudden jumps)."""
        _, found = weight_diff(
            _evaluator(before), _evaluator(after), threshold=threshold, limit=limit
        )
        return [
            {"pattern": p, "phase": ph, "index": i, "before": a, "after": b}
            for p, ph, i, a, b in found
        ]

    @staticmethod
    def replay(
        evaluator: Evaluator, seed: int = 0, epsilon: float = 0.0, lambda_: float = 0.5
    ) -> list[dict[str, Any]]:
        """Plays one game as training does and logs both training targets of every position.

        Each row: ``ply``, ``player``, ``move``, ``explored`` (a random move), ``value``
        (black's view), ``td_error``, ``lambda_target`` (TD(lambda)'s target, ``target_depth``
        1, folded as training folds it: the trace is cut at exploration moves, whose
        position keeps its value) and ``search_target`` (the 2-ply value, the default's target).
        """
        rows: list[dict[str, Any]] = evaluator.replay(seed=seed, epsilon=epsilon, lambda_=lambda_)
        return rows

    @staticmethod
    def export_csv(rows: Iterable[Mapping[str, Any]], path: str | PathLike[str]) -> int:
        """Writes rows (replay logs, ``training_rows(...)``) to a CSV file; returns the row count."""
        rows = list(rows)
        target = Path(path)
        with target.open("w", newline="", encoding="utf-8") as f:
            if not rows:
                return 0
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(rows)
        return len(rows)

    @staticmethod
    def training_rows(manager: TrainingManager) -> list[dict[str, Any]]:
        """The progress points of a training run, one dict per callback interval."""
        return [
            {"games": g, "stone_diff": d, "win_rate": w, "elapsed_s": e}
            for g, d, w, e in manager.history()
        ]


def _evaluator(source: str | PathLike[str] | Evaluator) -> Evaluator:
    return source if isinstance(source, Evaluator) else Evaluator(source)
