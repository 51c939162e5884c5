"""EmergenceTracker: collective structure of agents on a torus field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from trainsvc_trackers._history import JsonValue, RecordedMetrics

EMERGENCE_METRICS = ("nn_ratio", "field_entropy", "action_coordination", "emergence_index")


def torus_deltas(positions: npt.NDArray[Any], shape: tuple[int, int]) -> npt.NDArray[np.float64]:
    """Pairwise per-axis distances on an ``H x W`` torus, shape ``(N, N, 2)``."""
    pos = np.asarray(positions, dtype=np.float64)
    size = np.asarray(shape, dtype=np.float64)
    delta = np.abs(pos[:, None, :] - pos[None, :, :]) % size
    return np.minimum(delta, size - delta)


def nn_ratio(positions: npt.NDArray[Any], shape: tuple[int, int]) -> float:
    """Clark-Evans ratio: mean nearest-neighbour distance over its value for random positions.

    ``R = mean_i min_{j != i} d(i, j) / (0.5 / sqrt(N / (H * W)))`` with ``d`` the
    Euclidean distance on the torus. ``R ~ 1`` for uniformly random agents,
    ``R -> 0`` when agents gather, ``R > 1`` for regular spacing.
    """
    n = len(positions)
    if n < 2:
        raise ValueError(f"nn_ratio needs at least 2 agents, got {n}")
    deltas = torus_deltas(positions, shape)
    dist = np.sqrt((deltas**2).sum(axis=-1))
    np.fill_diagonal(dist, np.inf)
    expected = 0.5 / math.sqrt(n / (shape[0] * shape[1]))
    return float(dist.min(axis=1).mean() / expected)


def field_entropy(field: npt.NDArray[Any]) -> float:
    """Normalised Shannon entropy of a non-negative field, in ``[0, 1]``.

    ``p = f / sum(f)`` (negative cells count as 0), ``H = -sum p log p / log(cells)``.
    1 is a uniform field (no structure); an all-zero field counts as uniform.
    """
    f = np.clip(np.asarray(field, dtype=np.float64), 0.0, None).ravel()
    total = f.sum()
    if f.size < 2 or total <= 0.0 or not np.isfinite(total):
        return 1.0
    p = f[f > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(f.size))


def action_coordination(
    positions: npt.NDArray[Any], actions: npt.NDArray[Any], shape: tuple[int, int], radius: int
) -> float:
    """Chance-corrected agreement of neighbours' actions (Cohen's-kappa style), in ``[-1, 1]``.

    Over the pairs ``i < j`` whose torus Chebyshev distance is at most ``radius``:
    ``kappa = (P_same - P_chance) / (1 - P_chance)`` with ``P_same`` the fraction of
    pairs taking the same action and ``P_chance = sum_a p_a^2`` from all agents'
    action frequencies ``p_a``. 0 when there are no neighbour pairs or
    ``P_chance == 1``.
    """
    acts = np.asarray(actions).ravel()
    deltas = torus_deltas(positions, shape)
    near = deltas.max(axis=-1) <= radius
    iu = np.triu_indices(len(acts), k=1)
    pair_near = near[iu]
    if not pair_near.any():
        return 0.0
    same = (acts[iu[0]] == acts[iu[1]])[pair_near]
    p_same = float(same.mean())
    _, counts = np.unique(acts, return_counts=True)
    freq = counts / counts.sum()
    p_chance = float((freq**2).sum())
    if p_chance >= 1.0:
        return 0.0
    return (p_same - p_chance) / (1.0 - p_chance)


def _batch_metrics(
    positions: npt.NDArray[Any],
    field: npt.NDArray[Any],
    actions: npt.NDArray[Any],
    shape: tuple[int, int],
    radius: int,
) -> tuple[float, float, float]:
    """Means over the batch of :func:`nn_ratio`, :func:`field_entropy` and
    :func:`action_coordination`, computed for all environments at once (the same
    formulas, vectorized: a trainer calls this every step)."""
    b, n = positions.shape[:2]
    pos = positions.astype(np.float64)
    size = np.asarray(shape, dtype=np.float64)
    deltas = np.abs(pos[:, :, None, :] - pos[:, None, :, :]) % size
    deltas = np.minimum(deltas, size - deltas)  # (B, N, N, 2)
    dist = np.sqrt((deltas**2).sum(axis=-1))
    eye = np.eye(n, dtype=bool)
    dist[:, eye] = np.inf
    expected = 0.5 / math.sqrt(n / (shape[0] * shape[1]))
    r = dist.min(axis=2).mean(axis=1) / expected

    f = np.clip(field.astype(np.float64), 0.0, None).reshape(b, -1)
    total = f.sum(axis=1)
    valid = (f.shape[1] >= 2) & (total > 0.0) & np.isfinite(total)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = f / np.where(valid, total, 1.0)[:, None]
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = np.where(valid, -plogp.sum(axis=1) / math.log(max(f.shape[1], 2)), 1.0)

    acts = actions.reshape(b, n)
    iu = np.triu_indices(n, k=1)
    pair_near = (deltas.max(axis=-1) <= radius)[:, iu[0], iu[1]]  # (B, pairs)
    n_near = pair_near.sum(axis=1)
    same = (acts[:, iu[0]] == acts[:, iu[1]]) & pair_near
    p_same = same.sum(axis=1) / np.maximum(n_near, 1)
    p_chance = (acts[:, :, None] == acts[:, None, :]).sum(axis=(1, 2)) / float(n * n)
    ok = (n_near > 0) & (p_chance < 1.0)
    k = np.where(ok, (p_same - p_chance) / np.where(ok, 1.0 - p_chance, 1.0), 0.0)
    return float(r.mean()), float(h.mean()), float(k.mean())


class EmergenceTracker(RecordedMetrics):
    """Tracks how much collective structure appears over training.

    Each :meth:`update` takes one snapshot (or a batch of snapshots, averaged) of
    agent positions, the shared field and the agents' last actions, and records
    the metrics defined in the package README: ``nn_ratio``, ``field_entropy``,
    ``action_coordination`` and their summary ``emergence_index``.

    Args:
        shape: the torus size ``(H, W)``.
        neighbour_radius: Chebyshev radius within which two agents are neighbours.
        recent_size: exact recent values kept per metric.
        longterm_size: points of the decimated whole-run record per metric.
    """

    METRICS = EMERGENCE_METRICS

    def __init__(
        self,
        shape: tuple[int, int],
        neighbour_radius: int = 1,
        *,
        recent_size: int = 256,
        longterm_size: int = 512,
    ) -> None:
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be two positive integers (H, W), got {shape!r}")
        if neighbour_radius < 0:
            raise ValueError(f"neighbour_radius must be >= 0, got {neighbour_radius}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.neighbour_radius = int(neighbour_radius)
        self._init_metrics(recent_size, longterm_size)

    def update(
        self,
        positions: npt.ArrayLike,
        field: npt.ArrayLike,
        actions: npt.ArrayLike,
    ) -> dict[str, float]:
        """Records one snapshot and returns its metrics.

        Args:
            positions: integer cells ``(N, 2)``, or ``(B, N, 2)`` for ``B`` environments.
            field: the shared field ``(H, W)`` or ``(B, H, W)``.
            actions: each agent's last action ``(N,)`` or ``(B, N)``.
        """
        pos = np.asarray(positions)
        fld = np.asarray(field)
        act = np.asarray(actions)
        if pos.ndim == 2:
            pos, fld, act = pos[None], fld[None], act[None]
        if pos.ndim != 3 or pos.shape[-1] != 2:
            raise ValueError(f"positions must have shape (N, 2) or (B, N, 2), got {pos.shape}")
        if fld.shape[-2:] != self.shape or fld.shape[0] != pos.shape[0]:
            raise ValueError(f"field must have shape {self.shape} per env, got {fld.shape}")
        if act.shape != pos.shape[:2]:
            raise ValueError(f"actions must have shape {pos.shape[:2]}, got {act.shape}")
        if pos.shape[1] < 2:
            raise ValueError(f"nn_ratio needs at least 2 agents, got {pos.shape[1]}")
        r, h, k = _batch_metrics(pos, fld, act, self.shape, self.neighbour_radius)
        index = (max(0.0, 1.0 - r) + (1.0 - h) + max(0.0, k)) / 3.0
        values = {
            "nn_ratio": r,
            "field_entropy": h,
            "action_coordination": k,
            "emergence_index": index,
        }
        return self._record(values)

    def to_dict(self) -> dict[str, JsonValue]:
        """JSON-safe state; :meth:`from_dict` restores it exactly."""
        return {
            "shape": list(self.shape),
            "neighbour_radius": self.neighbour_radius,
            **self._metrics_to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, JsonValue]) -> EmergenceTracker:
        """Rebuilds a tracker saved by :meth:`to_dict`."""
        shape = data["shape"]
        tracker = cls((int(shape[0]), int(shape[1])), int(data["neighbour_radius"]))
        tracker._restore_metrics(data)
        return tracker
