"""The `othello` kind: training of the Rust engine (trainsvc_engine).

The engine's `learner` override picks how the weights learn: `td` (self-play
TD, the default), `ctdl` (coevolutionary TD) or `es` (an evolution strategy
against the League heuristic); like every other engine field it passes through
`overrides` and is validated by the engine, whose `ConfigError` names the field.
The override `preset` (a name of `trainsvc_engine.PRESETS`, e.g. `league`)
sets a measured configuration's fields first, and the run's other fields
override them; the run's resolved config holds the fields themselves, so a
resumed run does not depend on the preset staying as it was.

One step is one game the engine plays (self-play, or a ranking game of `ctdl`
and `es`, which learn a generation at a time: a run's budget is best a multiple
of a generation's games). The engine trains on its own threads; this
adapter starts, pauses and resumes its `TrainingManager` at the worker's pause
points. Pausing drops the engine's in-flight batch and checkpoints the games
completed, so pause/resume continues from exactly the checkpointed state.

Frames: the engine's progress callback gives games, stone difference and
black win rate; the frame's board is a real position from a game the weights
of the newest checkpoint play greedily (depth 1) from the start, advanced one
ply per frame (the engine's live weights are not readable while it trains).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainsvc._domain import InvalidArgumentError, RunSpec, echo
from trainsvc.kinds import (
    FrameData,
    FrameSink,
    InputRoots,
    OthelloFrame,
    checkpoint_files_in,
    is_path_key,
)

# Typed fields of the wire API's OthelloConfig -> engine config keys.
TYPED_FIELDS: dict[str, str] = {
    "search_depth": "search_depth",
    "epsilon": "epsilon_start",
    "epsilon_final": "epsilon_end",
    "td_lambda": "lambda",
    "learning_rate": "learning_rate",
    "threads": "threads",
}
_SERVICE_KEYS = {"seed": "run.seed"}
_POLL_S = 0.01


class OthelloKind:
    """Adapter factory for `trainsvc_engine.TrainingManager`."""

    name = "othello"
    default_checkpoint_interval = 10_000
    resumes_newest_only = True
    """`TrainingManager.start(resume=True)` loads the newest checkpoint in its directory."""

    def resolve_config(self, spec: RunSpec, inputs: InputRoots) -> dict[str, Any]:
        """Validate the engine config by building a TrainingManager with it (in a temp dir)."""
        from trainsvc_engine import PRESETS, ConfigError, TrainingManager

        engine: dict[str, Any] = {"seed": spec.seed, "threads": 1}
        field_of: dict[str, str] = {"seed": "run.seed"}
        frame_interval = 64
        if "preset" in spec.config:
            preset = spec.config["preset"]
            if not isinstance(preset, str) or preset not in PRESETS:
                raise InvalidArgumentError(
                    "run.othello.overrides[preset]",
                    f"must be one of {', '.join(sorted(PRESETS))}, got {echo(preset)}",
                )
            engine.update(PRESETS[preset])
            field_of.update(dict.fromkeys(PRESETS[preset], "run.othello.overrides[preset]"))
        for key, value in spec.config.items():
            if key == "preset":
                continue
            if key == "frame_interval":
                if not isinstance(value, int) or value < 1:
                    raise InvalidArgumentError(
                        "run.othello.frame_interval", f"must be >= 1, got {echo(value)}"
                    )
                frame_interval = value
                continue
            if key in TYPED_FIELDS:
                engine[TYPED_FIELDS[key]] = value
                field_of[TYPED_FIELDS[key]] = f"run.othello.{key}"
            else:
                if key in _SERVICE_KEYS:
                    raise InvalidArgumentError(
                        f"run.othello.overrides[{key}]",
                        f"is set by the service from {_SERVICE_KEYS[key]}",
                    )
                if is_path_key(key):
                    raise InvalidArgumentError(
                        f"run.othello.overrides[{key}]",
                        "is a path, which a client cannot set: a run writes only inside "
                        "its own directory",
                    )
                engine[key] = value
                field_of[key] = f"run.othello.overrides[{key}]"
        with tempfile.TemporaryDirectory() as tmp:
            try:
                manager = TrainingManager(tmp, **engine)
                full = manager.config()
            except (ConfigError, TypeError, ValueError) as exc:
                # The engine's ConfigError names the bad field; a TypeError names none.
                bad = exc.field if isinstance(exc, ConfigError) else None
                if bad is None:
                    raise InvalidArgumentError("run.othello", str(exc)) from None
                raise InvalidArgumentError(
                    field_of.get(bad, "run.othello"), f"{exc} (engine field {bad})"
                ) from None
        policy = spec.policy
        return {
            "engine": {k: full[k] for k in engine if k in full},
            "target_games": spec.step_budget,
            "checkpoint_interval": policy.interval_steps or self.default_checkpoint_interval,
            "callback_interval": frame_interval,
            "keep_last": policy.keep_last,
            "keep_every": policy.keep_every,
            "compress": policy.compress,
        }

    def create(
        self, config: dict[str, Any], checkpoint_dir: Path, on_frame: FrameSink
    ) -> OthelloAdapter:
        """Build the engine's training manager over `checkpoint_dir`."""
        return OthelloAdapter(config, checkpoint_dir, on_frame)


class OthelloAdapter:
    """Drives one `trainsvc_engine.TrainingManager` for the worker."""

    def __init__(self, config: dict[str, Any], checkpoint_dir: Path, on_frame: FrameSink) -> None:
        from trainsvc_engine import TrainingManager

        self._config = config
        self._dir = checkpoint_dir
        self._on_frame = on_frame
        self._tm = TrainingManager(
            checkpoint_dir,
            keep_last=config["keep_last"],
            keep_every=config["keep_every"],
            compress=config["compress"],
            **config["engine"],
        )
        self._tm.set_progress_callback(self._progress)
        self._started = False
        self._resume = False
        self._metrics: dict[str, float] = {}
        self._games = 0
        self._restored = 0
        self._ply = 0
        self._frame_lock = threading.Lock()
        self._evaluator: tuple[Path, Any] | None = None

    def _progress(self, games: int, stone_diff: float, win_rate: float, elapsed: float) -> None:
        metrics = {
            "stone_diff": float(stone_diff),
            "black_win_rate": float(win_rate),
            "elapsed_s": float(elapsed),
            "games_per_second": float(games) / elapsed if elapsed > 0 else 0.0,
        }
        self._metrics, self._games = metrics, int(games)
        threading.Thread(target=self._frame, args=(int(games), metrics), daemon=True).start()

    def _frame(self, games: int, metrics: dict[str, float]) -> None:
        # Outside the engine's callback (which must not call back into the manager).
        if not self._frame_lock.acquire(blocking=False):
            return  # the previous frame is still being built: newest wins
        try:
            board, to_move = self._greedy_position()
            self._on_frame(
                FrameData(
                    step=games,
                    time=time.time(),
                    metrics=metrics,
                    othello=OthelloFrame(board=board, to_move=to_move, games=games),
                )
            )
        finally:
            self._frame_lock.release()

    def _greedy_position(self) -> tuple[bytes, int]:
        from trainsvc_engine import Board, Evaluator

        board = Board()
        files = self.checkpoint_files()
        if not files:  # nothing trained yet: the initial position
            return bytes(board.cells()), int(board.player)
        # The engine's live weights are not readable while it trains; use the newest checkpoint's.
        newest = max(files, key=lambda p: p.stat().st_mtime)
        if self._evaluator is None or self._evaluator[0] != newest:
            self._evaluator = (newest, Evaluator(str(newest)))
        evaluator = self._evaluator[1]
        self._ply = (self._ply + 1) % 61
        for _ in range(self._ply):
            if board.is_game_over():
                break
            if not board.legal_moves():
                board = board.pass_turn()
                continue
            move = evaluator.best_move(board, depth=1).move
            board = board.pass_turn() if move is None else board.play(move)
        return bytes(board.cells()), int(board.player)

    @property
    def step(self) -> int:
        """Self-play games completed (before the engine starts: those of the restored checkpoint)."""
        return int(self._tm.games) if self._started else self._restored

    @property
    def metrics(self) -> dict[str, float]:
        """The latest progress metrics."""
        return dict(self._metrics)

    def train(self, n: int, should_stop: Callable[[], bool]) -> int:
        """Let the engine train until `n` more games, the target, or `should_stop()` (then pause)."""
        tm = self._tm
        if not self._started:
            tm.start(
                target_games=self._config["target_games"],
                checkpoint_interval=self._config["checkpoint_interval"],
                callback_interval=self._config["callback_interval"],
                resume=self._resume or bool(self.checkpoint_files()),
            )
            self._started = True
        elif tm.state == "paused":
            tm.resume()
        start = tm.games
        while tm.state == "training" and tm.games < start + n and not should_stop():
            time.sleep(_POLL_S)
        if tm.state == "training" and should_stop():
            tm.pause()  # at rest, checkpointed, for the worker's command
        if tm.state == "idle" and tm.last_error and tm.result is None:
            raise RuntimeError(f"the engine stopped: {tm.last_error}")
        return int(tm.games) - start

    def save_checkpoint(self, *, emergency: bool = False) -> Path:
        """Pause the engine (it saves a checkpoint of the completed games) and return that file."""
        tm = self._tm
        if tm.state == "training":
            tm.pause()
        latest = self._dir / "latest"
        if latest.exists():
            return self._dir / latest.read_text(encoding="utf-8").strip()
        files = self.checkpoint_files()
        if not files:
            raise RuntimeError("no checkpoint yet: the engine has not trained a game")
        return files[-1]

    def restore(self, path: Path) -> int:
        """Continue from `path`: copied into the run's directory when it lives elsewhere."""
        if path.parent.resolve() != self._dir.resolve():
            self._dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, self._dir / path.name)
        self._resume = True
        from trainsvc_checkpoint import parse_checkpoint_file_name

        parsed = parse_checkpoint_file_name(path)
        self._restored = parsed.step if parsed else 0
        return self._restored

    def checkpoint_files(self) -> list[Path]:
        """Checkpoint files in the run's directory."""
        return checkpoint_files_in(self._dir)

    def close(self) -> None:
        """Stop the engine's threads (saving nothing more)."""
        if self._tm.state == "training":
            self._tm.pause()


KIND = OthelloKind()
