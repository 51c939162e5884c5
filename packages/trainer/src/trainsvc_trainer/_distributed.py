"""Data-parallel training across processes: ``jax.distributed`` and one global mesh.

A data-parallel run is N processes of the same trainer (one per host, or several on
one host), joined by :func:`initialize` (``jax.distributed.initialize``; on CPU the
cross-process collectives are gloo's, over TCP). :class:`DataParallel` lays the
training state on a one-axis mesh of every process's devices: the environments
(``env.n_envs``, the global batch) are split evenly along it, everything else
(parameters, optimizer state, PRNG key) is replicated. The same jitted policy update
then runs as one SPMD program: XLA averages the loss's means, the advantage
normalisation and so the gradients over the whole global batch, and the random
numbers are those of the single-process run (``jax_threefry_partitionable``), so N
processes with ``n_envs`` environments in all train like one process with
``n_envs`` environments, up to the order of floating-point sums.

Process 0 writes the checkpoints (the others wait at a barrier); they are ordinary
single-file checkpoints that a single process restores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trainsvc_trainer._config import ConfigError

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")
MAX_PROCESSES = 4096


class DistributedError(RuntimeError):
    """A data-parallel run lost a process (or its processes disagree); relaunch them all."""


@dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a data-parallel run.

    Attributes:
        coordinator: ``HOST:PORT`` of process 0's coordination service (every process
            gives the same address; process 0 listens on its port).
        num_processes: processes in the run (1 to 4096).
        process_id: this process's index, 0 to ``num_processes - 1``.
        timeout_s: seconds to wait for every process to join, and after which a
            process that stopped answering counts as dead (the others then fail).
    """

    coordinator: str
    num_processes: int
    process_id: int
    timeout_s: int = 60

    def __post_init__(self) -> None:
        match = _HOST_PORT.match(str(self.coordinator))
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ConfigError(
                "distributed.coordinator",
                f"must be HOST:PORT with a port in [1, 65535], got {self.coordinator!r}",
            )
        for name, low, high in (
            ("num_processes", 1, MAX_PROCESSES),
            ("process_id", 0, self.num_processes - 1 if _is_int(self.num_processes) else 0),
            ("timeout_s", 1, 86_400),
        ):
            value = getattr(self, name)
            if not _is_int(value):
                raise ConfigError(f"distributed.{name}", f"must be an integer, got {value!r}")
            if not low <= value <= high:
                bound = " (num_processes - 1)" if name == "process_id" else ""
                raise ConfigError(
                    f"distributed.{name}", f"must be in [{low}, {high}]{bound}, got {value}"
                )

    @property
    def port(self) -> int:
        """The coordinator's port."""
        return int(self.coordinator.rsplit(":", 1)[1])

    def check_envs(self, n_envs: int) -> None:
        """Raises ConfigError naming ``env.n_envs`` unless it splits evenly across the processes."""
        if n_envs % self.num_processes:
            raise ConfigError(
                "env.n_envs",
                f"must be divisible by distributed.num_processes ({self.num_processes}): "
                f"each process runs n_envs / num_processes environments, got {n_envs}",
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def initialize(config: DistributedConfig) -> None:
    """Joins the run: ``jax.distributed.initialize`` with gloo collectives on CPU.

    Call it once per process, before anything else uses JAX's devices. Blocks until
    all ``num_processes`` processes joined (``timeout_s`` at most).
    """
    import jax

    # gloo is JAX's default CPU collectives since 0.4.3x; set it so an older default
    # ("none": a cross-process program fails to run) cannot apply
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # type: ignore[no-untyped-call]
    jax.distributed.initialize(
        config.coordinator,
        config.num_processes,
        config.process_id,
        initialization_timeout=config.timeout_s,
        heartbeat_timeout_seconds=config.timeout_s,
        shutdown_timeout_seconds=config.timeout_s,
    )


class DataParallel:
    """The global mesh of a data-parallel run and the collectives the trainer needs.

    Every method that moves data between processes is a collective: every process
    calls it, in the same order.

    Args:
        n_envs: the global number of environments; must split evenly across the
            mesh's devices (ConfigError naming ``env.n_envs`` otherwise).
    """

    AXIS = "envs"

    def __init__(self, n_envs: int) -> None:
        import jax
        import numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        devices = jax.devices()
        if n_envs % len(devices):
            raise ConfigError(
                "env.n_envs",
                f"must be divisible by the run's {len(devices)} devices "
                f"({jax.process_count()} processes), got {n_envs}",
            )
        self.mesh = Mesh(np.array(devices), (self.AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())  # type: ignore[no-untyped-call]
        self.sharded = NamedSharding(self.mesh, PartitionSpec(self.AXIS))  # type: ignore[no-untyped-call]
        self.process_index: int = jax.process_index()
        self.process_count: int = jax.process_count()

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the checkpoints, metrics and frames (process 0)."""
        return self.process_index == 0

    def state_shardings(self) -> Any:
        """The sharding of each part of a ``TrainState`` (a pytree prefix of it)."""
        from trainsvc_trainer._learner import TrainState

        rep = self.replicated
        return TrainState._make([rep, rep, rep, rep, self.sharded])

    def place(self, state: Any) -> Any:
        """The global arrays of a ``TrainState`` of whole host arrays (each process gives the same)."""
        import jax
        import numpy as np

        from trainsvc_trainer._learner import TrainState

        def put(x: Any, sharding: Any) -> Any:
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

        rep = self.replicated
        placed = [jax.tree.map(lambda x: put(x, rep), part) for part in state[:4]]
        env = jax.tree.map(lambda x: put(x, self.sharded), state.env)
        return TrainState._make([*placed, env])

    def to_host(self, tree: Any) -> Any:
        """Whole NumPy copies of a tree of global arrays, on every process (a collective)."""
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)

    def barrier(self, name: str) -> None:
        """Waits until every process reached the barrier ``name``."""
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (a collective)."""
        import numpy as np

        flags = self.to_host(np.asarray([flag], dtype=np.int32))
        return bool(np.asarray(flags).any())

    def check_same(self, value: int, what: str) -> None:
        """Raises DistributedError unless every process passes the same ``value``."""
        import numpy as np

        values = np.asarray(self.to_host(np.asarray([value], dtype=np.int64))).reshape(-1)
        if (values != values[0]).any():
            per_process = ", ".join(f"process {i}: {int(v)}" for i, v in enumerate(values))
            raise DistributedError(f"the processes disagree on {what} ({per_process})")
