"""SpecializationTracker: how different the agents' behaviours become."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from trainsvc_trackers._history import JsonValue, RecordedMetrics

SPECIALIZATION_METRICS = ("specialization_index", "n_roles", "policy_entropy")


def js_divergence_matrix(dists: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Pairwise Jensen-Shannon divergences (base 2, in ``[0, 1]``) between rows of ``dists``.

    ``JSD(P, Q) = (KL(P || M) + KL(Q || M)) / 2`` with ``M = (P + Q) / 2``.
    """
    p = dists[:, None, :]
    q = dists[None, :, :]
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=-1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=-1)
    out: npt.NDArray[np.float64] = np.clip(0.5 * (kl_p + kl_q), 0.0, 1.0)
    return out


def count_roles(jsd: npt.NDArray[np.float64], threshold: float) -> int:
    """Number of behavioural roles by leader clustering in agent order.

    Agent 0 founds role 0; each next agent joins the first role whose founder is
    within ``threshold`` JSD of it, or founds a new role.
    """
    leaders: list[int] = []
    for i in range(jsd.shape[0]):
        if not any(jsd[i, j] <= threshold for j in leaders):
            leaders.append(i)
    return len(leaders)


class SpecializationTracker(RecordedMetrics):
    """Tracks per-agent action distributions and how far apart they drift.

    Each :meth:`update` adds a matrix of action counts ``(n_agents, n_actions)``
    to exponentially decayed running counts ``C <- decay * C + counts``. Each
    agent's action distribution is ``P_i = (C_i + smoothing) / sum(C_i + smoothing)``.
    Metrics (defined in the README): ``specialization_index`` (mean pairwise
    JSD), ``n_roles`` (leader clustering at ``role_threshold``) and
    ``policy_entropy`` (mean normalised entropy of the ``P_i``).

    Args:
        n_agents: number of agents (rows of the counts).
        n_actions: number of actions (columns).
        decay: weight of past counts per update, in ``[0, 1)``.
        role_threshold: JSD below which two agents share a role, in ``(0, 1)``.
        smoothing: pseudo-count added to each action.
    """

    METRICS = SPECIALIZATION_METRICS

    def __init__(
        self,
        n_agents: int,
        n_actions: int,
        *,
        decay: float = 0.9,
        role_threshold: float = 0.05,
        smoothing: float = 1e-3,
        recent_size: int = 256,
        longterm_size: int = 512,
    ) -> None:
        if n_agents < 1 or n_actions < 2:
            raise ValueError(
                f"need n_agents >= 1 and n_actions >= 2, got {n_agents} and {n_actions}"
            )
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if not 0.0 < role_threshold < 1.0:
            raise ValueError(f"role_threshold must be in (0, 1), got {role_threshold}")
        if not smoothing > 0.0:
            raise ValueError(f"smoothing must be > 0, got {smoothing}")
        self.n_agents = int(n_agents)
        self.n_actions = int(n_actions)
        self.decay = float(decay)
        self.role_threshold = float(role_threshold)
        self.smoothing = float(smoothing)
        self.counts = np.zeros((self.n_agents, self.n_actions), dtype=np.float64)
        self._init_metrics(recent_size, longterm_size)

    def distributions(self) -> npt.NDArray[np.float64]:
        """Each agent's smoothed action distribution, shape ``(n_agents, n_actions)``."""
        c = self.counts + self.smoothing
        out: npt.NDArray[np.float64] = c / c.sum(axis=1, keepdims=True)
        return out

    def update(self, action_counts: npt.ArrayLike) -> dict[str, float]:
        """Adds one batch of per-agent action counts and returns the metrics."""
        counts = np.asarray(action_counts, dtype=np.float64)
        if counts.shape != self.counts.shape:
            raise ValueError(
                f"action_counts must have shape {self.counts.shape}, got {counts.shape}"
            )
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError("action_counts must be finite and non-negative")
        self.counts = self.decay * self.counts + counts
        dists = self.distributions()
        jsd = js_divergence_matrix(dists)
        n = self.n_agents
        index = float(jsd.sum() / (n * (n - 1))) if n > 1 else 0.0
        entropy = float(-(dists * np.log(dists)).sum(axis=1).mean() / math.log(self.n_actions))
        values = {
            "specialization_index": index,
            "n_roles": float(count_roles(jsd, self.role_threshold)),
            "policy_entropy": entropy,
        }
        return self._record(values)

    def to_dict(self) -> dict[str, JsonValue]:
        """JSON-safe state; :meth:`from_dict` restores it exactly."""
        return {
            "n_agents": self.n_agents,
            "n_actions": self.n_actions,
            "decay": self.decay,
            "role_threshold": self.role_threshold,
            "smoothing": self.smoothing,
            "counts": [[float(v) for v in row] for row in self.counts],
            **self._metrics_to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, JsonValue]) -> SpecializationTracker:
        """Rebuilds a tracker saved by :meth:`to_dict`."""
        tracker = cls(
            int(data["n_agents"]),
            int(data["n_actions"]),
            decay=float(data["decay"]),
            role_threshold=float(data["role_threshold"]),
            smoothing=float(data["smoothing"]),
        )
        tracker.counts = np.asarray(data["counts"], dtype=np.float64).reshape(
            tracker.n_agents, tracker.n_actions
        )
        tracker._restore_metrics(data)
        return tracker
