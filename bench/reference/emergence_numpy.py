"""Vectorized NumPy reference of the emergence environment and the policy's forward pass.

The baseline that bench/trainer.py measures the jitted JAX trainer against. It
follows trainsvc_trainer._env and policy_apply step for step (same observation,
moves and tools, harvest, product quota, practice, cooperation bonus, deposit, diffusion, evaporation, regrowth and episode resets), batched over
environments with NumPy arrays (fancy indexing and ``bincount``, NumPy's fast
paths), sampling actions by inverting the CDF with one uniform per agent, as the
trainer does. It does not learn: it is the cost of acting alone.

``NumpyEmergence.step`` given the same state and actions computes what
``trainsvc_trainer._env.step`` computes (the trainer's tests check it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MOVES = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], np.int64)
N_MOVES, N_TOOLS = 5, 2


@dataclass
class EnvParams:
    """The subset of trainsvc_trainer's EnvConfig the dynamics use."""

    height: int
    width: int
    n_agents: int
    patch_radius: int
    episode_length: int
    deposit: float
    diffusion: float
    evaporation: float
    n_patches: int
    patch_size: float
    regrow: float
    harvest: float
    coop_bonus: float
    coop_radius: int
    type_quota: float
    skill_rate: float

    @classmethod
    def of(cls, cfg: Any) -> EnvParams:
        """From a trainsvc_trainer EnvConfig."""
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})


class NumpyEmergence:
    """``B`` environments stepped together, with a policy given as NumPy arrays."""

    def __init__(
        self,
        p: EnvParams,
        batch: int,
        params: dict[str, Any],
        agent_params: dict[str, Any],
        seed: int = 0,
        role_scale: float = 1.0,
    ) -> None:
        self.role_scale = role_scale
        self.p = p
        self.b = batch
        self.rng = np.random.default_rng(seed)
        self.params = {
            k: np.asarray(v)
            if not isinstance(v, dict)
            else {kk: np.asarray(vv) for kk, vv in v.items()}
            for k, v in params.items()
        }
        self.agent = {k: np.asarray(v) for k, v in agent_params.items()}
        r = p.patch_radius
        self.offs = np.arange(-r, r + 1)
        self.pos = np.zeros((batch, p.n_agents, 2), np.int64)
        self.field = np.zeros((batch, p.height, p.width), np.float32)
        self.res = np.zeros_like(self.field)
        self.cap = np.zeros_like(self.res)
        self.skill = np.zeros((batch, p.n_agents), np.float32)
        self.t = np.zeros(batch, np.int64)
        self._reset(np.ones(batch, bool))

    def _capacity(self, n: int) -> np.ndarray:
        p = self.p
        size = np.array([p.height, p.width], np.float32)
        centres = self.rng.random((n, p.n_patches, 2), dtype=np.float32) * size
        rows = np.arange(p.height, dtype=np.float32)[None, :, None, None]
        cols = np.arange(p.width, dtype=np.float32)[None, None, :, None]
        dr = np.abs(rows - centres[:, None, None, :, 0])  # < size: no remainder needed
        dr = np.minimum(dr, size[0] - dr)
        dc = np.abs(cols - centres[:, None, None, :, 1])
        dc = np.minimum(dc, size[1] - dc)
        blobs = np.exp(-(dr**2 + dc**2) / (2.0 * p.patch_size**2))
        return np.minimum(blobs.sum(-1), 1.0).astype(np.float32)

    def _reset(self, mask: np.ndarray) -> None:
        n = int(mask.sum())
        if not n:
            return
        p = self.p
        self.pos[mask] = np.stack(
            [
                self.rng.integers(0, p.height, (n, p.n_agents)),
                self.rng.integers(0, p.width, (n, p.n_agents)),
            ],
            -1,
        )
        cap = self._capacity(n)
        self.cap[mask] = cap
        self.res[mask] = cap
        self.field[mask] = 0.0
        self.skill[mask] = 0.5
        self.t[mask] = 0

    def _occupancy(self, pos: np.ndarray) -> np.ndarray:
        p = self.p
        flat = (np.arange(self.b)[:, None] * p.height + pos[..., 0]) * p.width + pos[..., 1]
        occ = np.bincount(flat.ravel(), minlength=self.b * p.height * p.width)
        return occ.reshape(self.b, p.height, p.width).astype(np.float32)

    def observe(self) -> np.ndarray:
        """Observations ``(B, N, 3 * (2r+1)^2)``: the patches of log-field, resources, others."""
        p, r = self.p, self.p.patch_radius
        rows = (self.pos[..., 0, None, None] + self.offs[None, None, :, None]) % p.height
        cols = (self.pos[..., 1, None, None] + self.offs[None, None, None, :]) % p.width
        bi = np.arange(self.b)[:, None, None, None]
        occ = self._occupancy(self.pos)
        others = occ[bi, rows, cols]
        others[:, :, r, r] -= 1.0
        parts = (np.log1p(self.field[bi, rows, cols]), self.res[bi, rows, cols], others)
        return np.stack(parts, 2).reshape(self.b, p.n_agents, -1)

    def heads(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The policy's move ``(B, N, 5)`` and tool ``(B, N, 2)`` logits."""
        w = self.params
        pre = obs @ w["hidden"]["kernel"] + w["hidden"]["bias"]
        if self.agent:
            pre = pre + self.agent["embed"]
        h = np.tanh(pre)
        moves = h @ w["logits"]["kernel"] + w["logits"]["bias"]
        if self.agent:
            moves = moves + self.agent["action_bias"]
            tools = self.role_scale * self.agent["tool_logits"]
        else:
            tools = w["tool_logits"]
        return moves, np.broadcast_to(tools, (*moves.shape[:-1], N_TOOLS))

    def logits(self, obs: np.ndarray) -> np.ndarray:
        """The policy's joint action logits ``(B, N, 10)``: action a = move a % 5 with tool a // 5."""
        moves, tools = self.heads(obs)
        return (tools[..., :, None] + moves[..., None, :]).reshape(
            *moves.shape[:-1], N_MOVES * N_TOOLS
        )

    def act(self, obs: np.ndarray, uniforms: np.ndarray | None = None) -> np.ndarray:
        """Samples actions ``(B, N)`` from the policy's logits (with ``uniforms`` ``(B, N)`` if given).

        A joint logit is a sum, so its exponential is the product of the move's and
        the tool's (seven exponentials instead of ten), as the trainer computes it.
        """
        moves, tools = self.heads(obs)
        e_moves = np.exp(moves - moves.max(-1, keepdims=True))
        e_tools = np.exp(tools - tools.max(-1, keepdims=True))
        e = (e_tools[..., :, None] * e_moves[..., None, :]).reshape(*moves.shape[:-1], -1)
        cdf = np.cumsum(e, -1)
        if uniforms is None:
            uniforms = self.rng.random(moves.shape[:-1], dtype=np.float32)
        u = uniforms[..., None] * cdf[..., -1:]
        return np.minimum((cdf < u).sum(-1), N_MOVES * N_TOOLS - 1)

    def step(self, actions: np.ndarray) -> np.ndarray:
        """One step of every environment; returns rewards ``(B, N)``."""
        p = self.p
        size = np.array([p.height, p.width])
        move, tool = actions % N_MOVES, actions // N_MOVES
        pos = (self.pos + MOVES[move]) % size
        occ = self._occupancy(pos)
        bi = np.arange(self.b)[:, None]
        cell_res = self.res[bi, pos[..., 0], pos[..., 1]]
        take = cell_res * p.harvest / occ[bi, pos[..., 0], pos[..., 1]]
        self.res = self.res * (1.0 - p.harvest * (occ > 0))
        d = np.abs(pos[:, :, None, :] - pos[:, None, :, :])  # < size: no remainder needed
        delta = np.minimum(d, size - d).max(-1)
        near = (delta <= p.coop_radius) & ~np.eye(p.n_agents, dtype=bool)
        users = np.stack([(tool == k).sum(-1) for k in range(N_TOOLS)], -1).astype(np.float32)
        price = np.minimum(1.0, p.type_quota * p.n_agents / np.maximum(users, 1.0))
        practice = np.where(tool == 0, self.skill, 1.0 - self.skill)
        gain = (0.5 + 0.5 * practice) * price[bi, tool]
        reward = take * gain * (1.0 + p.coop_bonus * near.any(-1))
        self.skill = self.skill + p.skill_rate * ((tool == 0) - self.skill)
        fld = self.field + occ * p.deposit
        neigh = np.roll(fld, 1, 1) + np.roll(fld, -1, 1) + np.roll(fld, 1, 2) + np.roll(fld, -1, 2)
        self.field = ((1.0 - p.diffusion) * fld + p.diffusion * 0.25 * neigh) * (
            1.0 - p.evaporation
        )
        self.res = self.res + p.regrow * (self.cap - self.res)
        self.pos = pos
        self.t += 1
        self._reset(self.t >= p.episode_length)
        return reward

    def rollout(self, length: int) -> float:
        """Acts for ``length`` steps; returns the mean reward.

        The rollout's uniforms are drawn in one call, as the trainer draws them.
        """
        uniforms = self.rng.random((length, self.b, self.p.n_agents), dtype=np.float32)
        total = 0.0
        for t in range(length):
            total += float(self.step(self.act(self.observe(), uniforms[t])).mean())
        return total / length
