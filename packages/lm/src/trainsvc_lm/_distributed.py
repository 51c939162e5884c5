"""Data-parallel training of the language-model trainers across processes.

A data-parallel run is N processes of the same trainer command (one per host, or
several on one host), joined by :func:`initialize` (``jax.distributed.initialize``;
on CPU the cross-process collectives are gloo's, over TCP). :class:`DataParallel`
lays the training state on a one-axis mesh of every process's devices: the batch
rows (the LoRA trainer's packed or bucketed rows, GRPO's groups of completions) are
split evenly along it; everything else (base weights, adapters or parameters,
optimizer state, PRNG key) is replicated. The trainers' unchanged jitted updates then
run as one SPMD program, so XLA sums the losses and gradients over the global batch:
N processes with a global batch of B rows train like one process with B rows, up to
the order of floating-point sums.

Process 0 writes the checkpoints (the others wait at a barrier); they are ordinary
single-file checkpoints that a single process restores.

The emergence trainer (``trainsvc-trainer``) has the same design in its own module;
the packages are siblings and do not import each other.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainsvc_lm._errors import ConfigError, LMError

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")
MAX_PROCESSES = 4096

RELAUNCH_HINT = (
    "another process probably died. Relaunch every process with --resume "
    "(--train.resume-from latest) to continue from the newest checkpoint"
)


class DistributedError(LMError, RuntimeError):
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
            process that stopped answering counts as dead.
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
        top = self.num_processes - 1 if _is_int(self.num_processes) else 0
        for name, low, high in (
            ("num_processes", 1, MAX_PROCESSES),
            ("process_id", 0, top),
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
    def is_writer(self) -> bool:
        """Whether this process writes checkpoints, metrics and the adapter (process 0)."""
        return self.process_id == 0

    def check_divides(self, dotted: str, value: int, what: str) -> None:
        """Raises ConfigError naming ``dotted`` unless ``value`` splits evenly across processes."""
        if value % self.num_processes:
            raise ConfigError(
                dotted,
                f"must be divisible by distributed.num_processes ({self.num_processes}): "
                f"each process takes {dotted} / num_processes {what}, got {value}",
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``--coordinator --num-processes --process-id --distributed-timeout``."""
    group = parser.add_argument_group("data-parallel (every process runs the same command)")
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="process 0's coordination address (process 0 listens on PORT)",
    )
    group.add_argument("--num-processes", metavar="N", help="processes in the run")
    group.add_argument("--process-id", metavar="I", help="this process's index, 0 to N-1")
    group.add_argument(
        "--distributed-timeout",
        metavar="SECONDS",
        default="60",
        help="wait this long for every process to join; a process silent this long is dead "
        "(default 60)",
    )


def from_arguments(args: argparse.Namespace) -> DistributedConfig | None:
    """The data-parallel settings of the flags of :func:`add_arguments`, or None (one process).

    Raises:
        ConfigError: a missing or bad flag, named ``distributed.<field>``.
    """
    given = {
        "coordinator": args.coordinator,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    if all(v is None for v in given.values()):
        return None
    for name, value in given.items():
        if value is None:
            others = ", ".join(f"--{n.replace('_', '-')}" for n in given if n != name)
            raise ConfigError(
                f"distributed.{name}",
                f"missing: --{name.replace('_', '-')} is required with {others}",
            )
    numbers: dict[str, int] = {}
    for name, text in (
        ("num_processes", args.num_processes),
        ("process_id", args.process_id),
        ("timeout_s", args.distributed_timeout),
    ):
        try:
            numbers[name] = int(text)
        except ValueError:
            raise ConfigError(f"distributed.{name}", f"must be an integer, got {text!r}") from None
    return DistributedConfig(args.coordinator, **numbers)


def initialize(config: DistributedConfig) -> None:
    """Joins the run: ``jax.distributed.initialize`` with gloo collectives on CPU.

    Call it once per process, before anything uses JAX's devices. Blocks until all
    ``num_processes`` processes joined (``timeout_s`` at most). ``jax.distributed``
    installs its own SIGTERM handler: install the caller's again afterwards.
    """
    import jax

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
    """The global mesh of a data-parallel run and the collectives the trainers need.

    Every method that moves data between processes is a collective: every process
    calls it, in the same order.

    Args:
        rows: the global batch rows per step; must split evenly across the mesh's
            devices (ConfigError naming ``field`` otherwise).
        field: the config field that sets ``rows``.
    """

    AXIS = "rows"

    def __init__(self, rows: int, field: str) -> None:
        import jax
        import numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        devices = jax.devices()
        if rows % len(devices):
            raise ConfigError(
                field,
                f"must be divisible by the run's {len(devices)} devices "
                f"({jax.process_count()} processes), got {rows}",
            )
        self.mesh = Mesh(np.array(devices), (self.AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())  # type: ignore[no-untyped-call]
        self.process_index: int = jax.process_index()
        self.process_count: int = jax.process_count()
        self.rows = rows

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the checkpoints, metrics and frames (process 0)."""
        return self.process_index == 0

    def local_rows(self, n: int) -> slice:
        """This process's share of ``n`` global rows (or groups): a contiguous slice."""
        share = n // self.process_count
        return slice(self.process_index * share, (self.process_index + 1) * share)

    def sharded(self, axis: int, ndim: int) -> Any:
        """The sharding of an ``ndim``-dimensional array split along ``axis``."""
        from jax.sharding import NamedSharding, PartitionSpec

        spec = [None] * ndim
        spec[axis] = self.AXIS  # type: ignore[call-overload]
        return NamedSharding(self.mesh, PartitionSpec(*spec))  # type: ignore[no-untyped-call]

    def replicate(self, tree: Any) -> Any:
        """Global replicated arrays of a tree of host arrays (every process gives the same)."""
        import jax
        import numpy as np

        def put(x: Any) -> Any:
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda i: host[i])

        return jax.tree.map(put, tree)

    def shard_global(self, tree: Any, axis: int) -> Any:
        """Global arrays split along ``axis`` from whole host arrays (every process gives the
        same; each puts only its own rows on its devices)."""
        import jax
        import numpy as np

        def put(x: Any) -> Any:
            host = np.asarray(x)
            sharding = self.sharded(axis, host.ndim)
            return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

        return jax.tree.map(put, tree)

    def shard_local(self, tree: Any, axis: int = 0) -> Any:
        """Global arrays split along ``axis`` from this process's rows only (its
        :meth:`local_rows`); every process gives the same shape."""
        import jax
        import numpy as np

        def put(x: Any) -> Any:
            local = np.asarray(x)
            shape = list(local.shape)
            shape[axis] *= self.process_count
            sharding = self.sharded(axis, local.ndim)
            return jax.make_array_from_process_local_data(  # type: ignore[no-untyped-call]
                sharding, local, tuple(shape)
            )

        return jax.tree.map(put, tree)

    @staticmethod
    def local(tree: Any) -> Any:
        """This process's copy of a tree of replicated global arrays (on its first device).

        What a process computes alone with (sampling, evaluation) must not be a
        cross-process program: it takes these copies.
        """
        import jax

        return jax.tree.map(lambda x: x.addressable_data(0), tree)

    def to_host(self, tree: Any) -> Any:
        """Whole NumPy copies of a tree of global (or per-process) arrays, tiled along axis 0
        in process order, on every process (a collective)."""
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)

    def barrier(self, name: str) -> None:
        """Waits until every process reached the barrier ``name``."""
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)

    def gather_rows(self, array: Any) -> Any:
        """Every process's ``array`` (same shape and dtype on each), concatenated along axis 0
        in process order, bit for bit (float64 and bool included; a collective)."""
        import numpy as np

        local = np.ascontiguousarray(array)
        raw = local.reshape(local.shape[0], -1).view(np.uint8)
        gathered = np.asarray(self.to_host(raw))
        return gathered.view(local.dtype).reshape(-1, *local.shape[1:])

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (a collective)."""
        import numpy as np

        return bool(np.asarray(self.to_host(np.asarray([flag], dtype=np.int32))).any())

    def gather_ints(self, values: Sequence[int]) -> Any:
        """Every process's ``values``: an int64 array ``[process_count, len(values)]``."""
        import numpy as np

        local = np.asarray([list(values)], dtype=np.int64)
        return np.asarray(self.to_host(local)).reshape(self.process_count, len(values))

    def check_same(self, value: int, what: str) -> None:
        """Raises DistributedError unless every process passes the same ``value``."""
        values = self.gather_ints([value])[:, 0]
        if (values != values[0]).any():
            per_process = ", ".join(f"process {i}: {int(v)}" for i, v in enumerate(values))
            raise DistributedError(f"the processes disagree on {what} ({per_process})")

    def failed(self, step: int, exc: BaseException) -> DistributedError:
        """The error of a step whose collectives failed (another process died, probably)."""
        return DistributedError(
            f"process {self.process_index} of {self.process_count}: step {step} failed across "
            f"processes ({type(exc).__name__}: {exc}); {RELAUNCH_HINT}"
        )
