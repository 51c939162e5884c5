"""Traffic splits of a deployment and sticky routing of requests to model versions.

A split maps version numbers to fractions that sum to 1 (within ``1e-6``). A
request is routed by its routing key (the OpenAI request's ``user``, or an agent
id): the key and the model name hash to a point in [0, 1), and the point falls into
one version's share of the cumulative split, in version order. The same key always
gets the same version while the split is unchanged, so one agent sees one version.
The newest version's share is the top of [0, 1): growing it (a promotion from 20 % to
50 % to 100 %) only moves keys onto it; the agents already on it stay.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from trainsvc._domain import InvalidArgumentError

TOLERANCE = 1e-6


def validate_split(split: Mapping[int, float], field: str = "traffic") -> dict[int, float]:
    """A copy of ``split`` without zero shares, checked.

    Raises:
        InvalidArgumentError: (naming ``field``) an empty split, a version that is not a
            positive integer, a share outside [0, 1] or not finite, or shares that do
            not sum to 1.
    """
    if not split:
        raise InvalidArgumentError(field, "needs at least one version with a share > 0")
    clean: dict[int, float] = {}
    for version, share in split.items():
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidArgumentError(field, f"version {version!r} is not a positive integer")
        if not (isinstance(share, int | float) and math.isfinite(share) and 0.0 <= share <= 1.0):
            raise InvalidArgumentError(
                f"{field}[{version}]", f"share must be in [0, 1], got {share!r}"
            )
        if share > 0:
            clean[version] = float(share)
    total = math.fsum(clean.values())
    if abs(total - 1.0) > TOLERANCE:
        shares = ", ".join(f"v{v}: {s:g}" for v, s in sorted(clean.items()))
        raise InvalidArgumentError(field, f"shares must sum to 1, got {total:g} ({shares})")
    return clean


def routing_point(model: str, key: str) -> float:
    """The key's stable point in [0, 1) for ``model`` (SHA-256, not Python's salted hash)."""
    digest = hashlib.sha256(f"{model}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def route(model: str, split: Mapping[int, float], key: str | None, fallback: float = 0.0) -> int:
    """The version that serves a request with routing ``key``.

    Args:
        model: the deployment's model name (part of the hash, so two models split
            independently).
        split: a validated split (see `validate_split`).
        key: the request's ``user`` or agent id; None routes by ``fallback``, a point
            in [0, 1) the caller draws per request (no stickiness without a key).
    """
    point = routing_point(model, key) if key is not None else fallback
    cumulative = 0.0
    versions = sorted(split)
    for version in versions:
        cumulative += split[version]
        if point < cumulative:
            return version
    return versions[-1]  # rounding: the point is at the very top


__all__ = ["TOLERANCE", "route", "routing_point", "validate_split"]
