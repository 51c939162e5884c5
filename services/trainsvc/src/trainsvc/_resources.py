"""What a run's worker needs of the machine it runs on (``run.resources``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainsvc._domain import InvalidArgumentError

RESOURCE_FIELDS = ("cpus", "gpus", "memory_bytes")
"""The ``run.resources`` fields a run's spec keeps (beside ``custom``)."""
_RAY_BUILTIN = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


@dataclass(frozen=True)
class ResourceRequest:
    """What a run's worker needs of the machine it runs on (``run.resources``).

    Zero means "not requested". The local backend runs every worker on this
    machine and ignores the request; the Ray backend places the worker on a node
    that has it.
    """

    cpus: float = 0.0
    gpus: float = 0.0
    memory_bytes: int = 0
    custom: Mapping[str, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing requested."""
        return not (self.cpus or self.gpus or self.memory_bytes or self.custom)

    def describe(self) -> str:
        """``cpus=1, gpus=0.5, memory_bytes=..., node_a=1`` (what was requested)."""
        parts = [
            f"{name}={getattr(self, name):g}" for name in ("cpus", "gpus") if getattr(self, name)
        ]
        if self.memory_bytes:
            parts.append(f"memory_bytes={self.memory_bytes}")
        parts += [f"{k}={v:g}" for k, v in sorted(self.custom.items())]
        return ", ".join(parts) or "nothing"

    def to_spec(self) -> dict[str, Any]:
        """The JSON-able form a `RunSpec` keeps (empty when nothing is requested)."""
        if self.empty:
            return {}
        out: dict[str, Any] = {name: getattr(self, name) for name in RESOURCE_FIELDS}
        out["custom"] = dict(self.custom)
        return out

    @classmethod
    def from_spec(cls, data: Mapping[str, Any]) -> ResourceRequest:
        """The request a `RunSpec` keeps (see `to_spec`); ``{}``: nothing requested."""
        if not data:
            return cls()
        return cls(
            cpus=float(data.get("cpus", 0.0)),
            gpus=float(data.get("gpus", 0.0)),
            memory_bytes=int(data.get("memory_bytes", 0)),
            custom={str(k): float(v) for k, v in dict(data.get("custom", {})).items()},
        )

    @classmethod
    def validated(
        cls, cpus: float, gpus: float, memory_bytes: int, custom: Mapping[str, float]
    ) -> ResourceRequest:
        """Check a request's values.

        Raises:
            InvalidArgumentError: naming the bad field (``run.resources.cpus`` ...).
        """
        for name, value in (("cpus", cpus), ("gpus", gpus)):
            if not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(
                    f"run.resources.{name}", f"must be a finite number >= 0, got {value}"
                )
            if value > 1 and value != int(value):
                raise InvalidArgumentError(
                    f"run.resources.{name}", f"must be a whole number when above 1, got {value}"
                )
        if memory_bytes < 0:
            raise InvalidArgumentError(
                "run.resources.memory_bytes", f"must be >= 0, got {memory_bytes}"
            )
        for key, value in custom.items():
            where = f"run.resources.custom[{key!r}]"
            if not key or not key.replace("_", "").replace("-", "").replace(".", "").isalnum():
                raise InvalidArgumentError(
                    where, "a resource name is letters, digits, '_', '-' and '.'"
                )
            if key in _RAY_BUILTIN:
                raise InvalidArgumentError(
                    where, "use run.resources.cpus, gpus or memory_bytes for built-in resources"
                )
            if not math.isfinite(value) or value <= 0:
                raise InvalidArgumentError(where, f"must be a finite number > 0, got {value}")
        return cls(float(cpus), float(gpus), int(memory_bytes), dict(custom))
