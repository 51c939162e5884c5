"""The Trainer: the Python API that the CLI and the trainsvc service drive."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from trainsvc_trackers import (
    ConvergenceMonitor,
    DivergenceDetector,
    EmergenceTracker,
    SpecializationTracker,
)

from trainsvc_trainer import _env, _learner
from trainsvc_trainer._cache import enable_compilation_cache
from trainsvc_trainer._config import Config, ConfigError
from trainsvc_trainer._distributed import DataParallel, DistributedError
from trainsvc_trainer._frames import Frame, FramePublisher, make_frame
from trainsvc_trainer._logging import MetricsLogger, NullLogger

STATE_FORMAT = "trainsvc-emergence-trainer/4"
"""The ``format`` in a checkpoint's ``meta``; :meth:`Trainer.load_state_dict` refuses any other."""


class Trainer:
    """Trains the emergence policy; one :meth:`step` is one policy update.

    Args:
        config: a validated :class:`Config`.
        frame_callback: receives a :class:`Frame` every ``log.frame_interval``
            steps, on a background thread; it may be slow (frames it is too slow
            for are skipped, newest wins) and never blocks training.
        logger: where :meth:`run` sends metrics and messages.
        data_parallel: train data-parallel across the processes of a
            ``jax.distributed`` run (see ``_distributed``); None (the default):
            when there is more than one process. Every process then makes the same
            calls in the same order (steps, ``state_dict``, checkpoints, restores);
            process 0 writes the checkpoints.

    The trainer is not thread-safe: call it from one thread. :meth:`run` checks
    ``should_stop`` between steps, which is the cooperative pause/stop point.
    """

    def __init__(
        self,
        config: Config,
        *,
        frame_callback: Callable[[Frame], None] | None = None,
        logger: MetricsLogger | None = None,
        data_parallel: bool | None = None,
    ) -> None:
        self.config = config
        self.cache_dir = enable_compilation_cache(config.train.compile_cache_dir)
        self.logger: MetricsLogger = logger or NullLogger()
        if data_parallel is None:
            data_parallel = jax.process_count() > 1
        self._spec = _learner.LearnerSpec.of(
            config.env, config.policy, config.train, data_parallel=data_parallel
        )
        self.data_parallel = DataParallel(config.env.n_envs) if data_parallel else None
        dp = self.data_parallel
        shardings = dp.state_shardings() if dp else None
        self._train_step = _learner.make_train_step(
            self._spec, shardings, dp.replicated if dp else None
        )
        self._state = _learner.init_state(config.train.seed, self._spec, shardings)
        self._step = 0
        self.run_id = uuid.uuid4().hex[:16]
        env = config.env
        self.emergence = EmergenceTracker((env.height, env.width), env.coop_radius)
        self.specialization = SpecializationTracker(env.n_agents, _env.N_ACTIONS)
        self.convergence = ConvergenceMonitor(window=100, patience=200)
        self.divergence = DivergenceDetector()
        self.last_metrics: dict[str, float] = {}
        self._publisher = FramePublisher(frame_callback) if frame_callback else None
        self._manager: Any = None

    # ------------------------------------------------------------------ training

    @property
    def step_count(self) -> int:
        """Policy updates done so far."""
        return self._step

    @property
    def remaining_steps(self) -> int:
        """Steps left until ``train.total_steps``."""
        return max(0, self.config.train.total_steps - self._step)

    def step(self) -> dict[str, float]:
        """Runs one policy update and returns its metrics (learner + trackers).

        Raises:
            DistributedError: data-parallel, when the update's collectives failed
                (another process died or became unreachable).
        """
        try:
            state, metrics, inputs = self._train_step(self._state)
            host = jax.device_get((metrics, inputs))
        except Exception as exc:
            if self.data_parallel is None:
                raise
            dp = self.data_parallel
            raise DistributedError(
                f"process {dp.process_index} of {dp.process_count}: step {self._step + 1} "
                f"failed across processes ({type(exc).__name__}: {exc}); another process "
                "probably died. Relaunch every process with --train.resume-from latest "
                "to continue from the newest checkpoint"
            ) from exc
        values = {k: float(v) for k, v in host[0].items()}
        tracked = host[1]
        self.divergence.update(self._step + 1, values)
        em = self.emergence.update(tracked["positions"], tracked["field"], tracked["actions"])
        sp = self.specialization.update(tracked["action_counts"])
        conv = self.convergence.update(values["reward"])
        values.update({f"emergence/{k}": v for k, v in em.items()})
        values.update({f"specialization/{k}": v for k, v in sp.items()})
        values["convergence/reward_mean"] = conv["mean"]
        values["convergence/reward_std"] = conv["std"]
        values["convergence/stagnant"] = conv["stagnant"]
        values["divergence/diverged"] = float(self.divergence.diverged)
        self._state = state
        self._step += 1
        self.last_metrics = values
        interval = self.config.log.frame_interval
        if self._publisher is not None and interval and self._step % interval == 0:
            self._publisher.publish(self._frame(tracked, values))
        return values

    def run(self, n: int | None = None, should_stop: Callable[[], bool] | None = None) -> int:
        """Runs up to ``n`` steps (default: until ``train.total_steps``); returns the steps done.

        Between steps it checks ``should_stop()`` and returns early when it is
        true (the state is then exactly that of the last finished step). Metrics
        go to the logger; a checkpoint is saved every ``log.save_interval``
        steps, and a final one when ``train.total_steps`` is reached.
        """
        todo = self.remaining_steps if n is None else n
        log_cfg = self.config.log
        target = self._step + todo
        self.logger.start(
            total_steps=max(target, self.config.train.total_steps), initial_step=self._step
        )
        done = 0
        dp = self.data_parallel
        try:
            while done < todo:
                stop = should_stop is not None and should_stop()
                if dp is not None:  # every process stops after the same step
                    stop = dp.any(stop)
                if stop:
                    break
                metrics = self.step()
                done += 1
                if self._step % log_cfg.metrics_interval == 0:
                    self.logger.log(self._step, metrics)
                final = self._step == self.config.train.total_steps
                periodic = log_cfg.save_interval and self._step % log_cfg.save_interval == 0
                if periodic or final:
                    self.save_checkpoint()
        finally:
            self.logger.close()
        return done

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The full training state as one checkpointable tree.

        Arrays: ``params``, ``agent_params``, ``opt_state`` (optax NamedTuples),
        ``prng_key`` (raw uint32 key data) and ``env`` (the batched environment
        state). ``meta`` is a JSON string: format, step, config, run id and the
        trackers' state.
        In a data-parallel run this is a collective (every process calls it) and
        every process gets the whole state as NumPy arrays.
        """
        st = self._state if self.data_parallel is None else self.data_parallel.to_host(self._state)
        meta = {
            "format": STATE_FORMAT,
            "step": self._step,
            "config": self.config.to_dict(),
            "run_id": self.run_id,
            "trackers": {
                "emergence": self.emergence.to_dict(),
                "specialization": self.specialization.to_dict(),
                "convergence": self.convergence.to_dict(),
                "divergence": self.divergence.to_dict(),
            },
        }
        return {
            "params": st.params,
            "agent_params": st.agent_params,
            "opt_state": st.opt_state,
            "prng_key": st.key,
            "env": _env.env_state_to_tree(st.env, self.config.env),
            "meta": json.dumps(meta, sort_keys=True, allow_nan=False),
        }

    def load_state_dict(self, tree: Mapping[str, Any]) -> None:
        """Restores a tree made by :meth:`state_dict` (possibly after a checkpoint round trip).

        Raises:
            ConfigError: the checkpoint's config differs from this trainer's in a
                field that changes the trajectory (only ``train.total_steps``,
                ``train.resume_from``, ``train.compile_cache_dir`` and ``log.*``
                may differ); the error names the field.
            ValueError: the tree is not a trainer state.
        """
        meta = json.loads(tree["meta"])
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not a trainer state: format {meta.get('format')!r}, expected {STATE_FORMAT!r}"
            )
        saved = Config.from_dict(meta["config"])
        field = self.config.trajectory_mismatch(saved)
        if field is not None:
            section, name = field.split(".")
            raise ConfigError(
                field,
                f"the checkpoint was trained with {getattr(getattr(saved, section), name)!r}, "
                f"this config has {getattr(getattr(self.config, section), name)!r}; "
                "resume with the checkpoint's value",
            )
        template = self.state_dict()
        arrays = {k: tree[k] for k in ("params", "agent_params", "opt_state", "prng_key", "env")}
        expected = {k: template[k] for k in arrays}
        struct = jax.tree.structure(expected)
        leaves, got = jax.tree.flatten(arrays)
        if str(got) != str(struct):
            raise ValueError(
                f"the state tree's structure does not match this trainer: {got} != {struct}"
            )
        dp = self.data_parallel
        to_array = np.asarray if dp is not None else (lambda x: jnp.asarray(np.asarray(x)))
        restored = jax.tree.unflatten(struct, [to_array(x) for x in leaves])
        state = _learner.TrainState(
            restored["params"],
            restored["agent_params"],
            restored["opt_state"],
            restored["prng_key"],
            _env.env_state_from_tree(restored["env"], self.config.env),
        )
        if dp is not None:
            dp.check_same(int(meta["step"]), "the step of the checkpoint restored")
            state = dp.place(state)
        self._state = state
        self._step = int(meta["step"])
        self.run_id = str(meta["run_id"])
        trackers = meta["trackers"]
        self.emergence = EmergenceTracker.from_dict(trackers["emergence"])
        self.specialization = SpecializationTracker.from_dict(trackers["specialization"])
        self.convergence = ConvergenceMonitor.from_dict(trackers["convergence"])
        self.divergence = DivergenceDetector.from_dict(trackers["divergence"])

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_manager(self) -> Any:
        """The ``trainsvc_checkpoint.CheckpointManager`` of ``log.checkpoint_dir`` (created on first use)."""
        if self._manager is None:
            from trainsvc_checkpoint import CheckpointManager

            log = self.config.log
            directory = Path(log.checkpoint_dir)
            directory.mkdir(parents=True, exist_ok=True)
            self._manager = CheckpointManager(
                directory,
                keep_last=log.keep_last,
                keep_every=log.keep_every,
                compression="zstd" if log.compression == "zstd" else None,
            )
        return self._manager

    def _checkpoint_metadata(self) -> dict[str, Any]:
        return {"trainer": "emergence", "run_id": self.run_id, "config": self.config.to_dict()}

    def save_checkpoint(self, *, emergency: bool = False) -> Path:
        """Saves the current state through the checkpoint manager and returns the file's path.

        A periodic checkpoint is ``step_<N>.safetensors`` (``.safetensors.zst`` with
        ``log.compression = "zstd"``; retention keeps the last ``log.keep_last`` and
        every multiple of ``log.keep_every``); an emergency one is
        ``emergency_step_<N>.safetensors`` and is never deleted. Says
        ``Checkpoint saved: step N → path`` through the logger.

        In a data-parallel run every process calls it: the state is gathered,
        process 0 writes the file, and the others wait for it at a barrier (and
        return the same path).
        """
        tree = self.state_dict()
        dp = self.data_parallel
        if dp is not None and not dp.is_writer:
            dp.barrier(f"checkpoint-{self._step}-{emergency}")
            return self._checkpoint_path(emergency)
        manager = self.checkpoint_manager
        metadata = self._checkpoint_metadata()
        try:
            if emergency:
                saved = Path(manager.save_emergency(self._step, tree, metadata=metadata))
                self.logger.message(f"Emergency checkpoint saved: step {self._step} → {saved}")
                return saved
            manager.save(self._step, tree, metadata=metadata, blocking=True)
            path = self._checkpoint_path(emergency)
            self.logger.message(f"Checkpoint saved: step {self._step} → {path}")
            return path
        finally:
            if dp is not None:
                dp.barrier(f"checkpoint-{self._step}-{emergency}")

    def _checkpoint_path(self, emergency: bool) -> Path:
        from trainsvc_checkpoint import checkpoint_file_name

        log = self.config.log
        compression: Literal["zstd"] | None = "zstd" if log.compression == "zstd" else None
        name = checkpoint_file_name(self._step, emergency=emergency, compression=compression)
        return Path(log.checkpoint_dir) / name

    def restore(self, source: str | Path = "latest") -> Path | None:
        """Restores the whole state from a checkpoint; returns the file restored.

        Args:
            source: ``"latest"``: the newest valid checkpoint (periodic or
                emergency) in ``log.checkpoint_dir``, falling back to older ones
                when it is corrupt; returns None (and changes nothing) when the
                directory has none. Otherwise the path of a checkpoint file.

        Data-parallel: every process calls it; they must all find a checkpoint (the
        same step) or all find none, else DistributedError.

        Raises:
            ConfigError: the checkpoint's config differs in a trajectory field.
            trainsvc_checkpoint.CheckpointError: missing, corrupt or incompatible file.
        """
        template = self.state_dict()
        tree: Mapping[str, Any] | None = None
        if str(source) == "latest":
            manager = self.checkpoint_manager
            if manager.checkpoints():
                restored = manager.restore_checkpoint(target=template)
                tree, path = restored.tree, Path(restored.path)
        else:
            from trainsvc_checkpoint import load

            path = Path(source)
            tree = load(path, target=template)
        if self.data_parallel is not None:
            self.data_parallel.check_same(
                int(tree is not None),
                "whether log.checkpoint_dir has a checkpoint (1) or not (0); every process "
                "must read the same directory",
            )
        if tree is None:
            return None
        self.load_state_dict(tree)
        return path

    # ------------------------------------------------------------------ evaluation, frames

    def evaluate(self, seeds: list[int], *, random_policy: bool = False) -> float:
        """Mean per-agent episode reward of the current policy (or a uniform random one) on ``seeds``."""
        st = self._state
        return _learner.evaluate(
            st.params, st.agent_params, self._spec, seeds, random_policy=random_policy
        )

    def _frame(self, tracked: Mapping[str, Any], metrics: Mapping[str, float]) -> Frame:
        log_cfg = self.config.log
        return make_frame(
            self._step,
            time.time(),
            np.asarray(tracked["frame_positions"]),
            np.asarray(tracked["frame_field"]),
            metrics,
            max_cells=log_cfg.frame_max_cells,
            dtype=log_cfg.frame_dtype,
        )

    def flush_frames(self, timeout: float | None = None) -> bool:
        """Waits until the last published frame was delivered (for tests and shutdown)."""
        return True if self._publisher is None else self._publisher.flush(timeout)

    @property
    def frames_dropped(self) -> int:
        """Frames replaced by newer ones before the callback could take them."""
        return 0 if self._publisher is None else self._publisher.dropped

    def close(self) -> None:
        """Stops the frame thread and waits for pending asynchronous checkpoint writes."""
        if self._publisher is not None:
            self._publisher.close()
        if self._manager is not None:
            self._manager.wait()


def find_checkpoint(resume_from: str, checkpoint_dir: str | Path) -> tuple[Path, Config] | None:
    """The checkpoint that ``train.resume_from`` names, and the config it was trained with.

    ``"latest"`` picks the newest valid checkpoint in ``checkpoint_dir`` (None when
    there is none); anything else is a file path.

    Raises:
        ConfigError: ``resume_from`` names a file that does not exist.
    """
    from trainsvc_checkpoint import CheckpointManager, load

    if resume_from == "latest":
        directory = Path(checkpoint_dir)
        if not directory.is_dir():
            return None
        manager = CheckpointManager(directory)
        if not manager.checkpoints():
            return None
        restored = manager.restore_checkpoint()
        path, tree = Path(restored.path), restored.tree
    else:
        path = Path(resume_from)
        if not path.is_file():
            raise ConfigError(
                "train.resume_from", f"no checkpoint file at {path}; give a file path or 'latest'"
            )
        tree = load(path)
    meta = json.loads(tree["meta"])
    return path, Config.from_dict(meta["config"])
