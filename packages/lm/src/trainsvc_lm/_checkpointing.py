"""Checkpoint files for the language-model trainers (LoRA SFT and GRPO).

Both trainers keep their run directory through one `CheckpointManager` and save
the same way: the state tree with the trainer kind, backend, run id and config
in the header metadata (read before a resume matches the state), periodic
``step_N`` files under keep-last-N retention, and ``emergency_step_N`` files kept
forever.

In a data-parallel run (``_dp`` set) every process calls ``save_checkpoint``:
``state_dict()`` then gives whole host copies, process 0 writes the file, and the
others wait for it at a barrier and return the same path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from trainsvc_lm._train_log import Sinks


class CheckpointFiles(ABC):
    """Mixin: ``checkpoint_manager``, ``save_checkpoint`` and ``close_checkpoints``.

    The trainer provides ``backend``, ``run_id``, ``sinks``, ``_step``, ``state_dict()``
    and ``run_config()`` (with ``log.checkpoint_dir``, ``log.keep_last`` and
    ``to_dict()``), and sets ``_manager = None`` before the first save.
    """

    trainer_kind: ClassVar[str]
    """The ``trainer`` recorded in each file's header metadata."""
    backend: str
    run_id: str
    sinks: Sinks
    _step: int
    _manager: Any
    _dp: Any = None
    """The run's `DataParallel` when it is data-parallel, else None."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The state tree to save (the trainer's)."""

    @abstractmethod
    def run_config(self) -> Any:
        """The run's config (the trainer's)."""

    @property
    def checkpoint_manager(self) -> Any:
        """The ``CheckpointManager`` of ``log.checkpoint_dir`` (created on first use)."""
        if self._manager is None:
            from trainsvc_checkpoint import CheckpointManager

            log = self.run_config().log
            self._manager = CheckpointManager(Path(log.checkpoint_dir), keep_last=log.keep_last)
        return self._manager

    def save_checkpoint(self, *, emergency: bool = False) -> Path:
        """Saves the state and returns the file (``step_N`` or, kept forever, ``emergency_step_N``).

        Data-parallel: every process calls it; process 0 writes, the others wait.
        """
        tree = self.state_dict()
        dp = self._dp
        if dp is None:
            return self._write(tree, emergency)
        barrier = f"checkpoint-{self._step}-{emergency}"
        if not dp.is_writer:
            dp.barrier(barrier)
            return self._checkpoint_path(emergency)
        try:
            return self._write(tree, emergency)
        finally:
            dp.barrier(barrier)

    def _write(self, tree: dict[str, Any], emergency: bool) -> Path:
        manager = self.checkpoint_manager
        metadata = {
            "trainer": self.trainer_kind,
            "backend": self.backend,
            "run_id": self.run_id,
            "config": self.run_config().to_dict(),
        }
        if emergency:
            path = Path(manager.save_emergency(self._step, tree, metadata=metadata))
            self.sinks.message(f"checkpoint step={self._step} emergency=true path={path}")
            return path
        manager.save(self._step, tree, metadata=metadata, blocking=True)
        path = self._checkpoint_path(emergency)
        self.sinks.message(f"checkpoint step={self._step} path={path}")
        return path

    def _checkpoint_path(self, emergency: bool) -> Path:
        from trainsvc_checkpoint import checkpoint_file_name

        return Path(self.run_config().log.checkpoint_dir) / checkpoint_file_name(
            self._step, emergency=emergency
        )

    def close_checkpoints(self) -> None:
        """Waits for pending checkpoint writes and releases the manager."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None
