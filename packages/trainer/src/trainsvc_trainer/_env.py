"""The emergence environment, in pure JAX (one environment; the learner vmaps it).

N agents live on an H x W torus. Each step every agent senses the square patch
of radius ``patch_radius`` around it (the shared field, the resources and the
other agents), moves (stay, up, down, left, right), deposits onto the shared
field and harvests the resource of its cell. The field diffuses to the four
neighbours and evaporates; resources regrow toward a capacity map made of
Gaussian patches that move at every episode reset. Harvest is shared between
agents on the same cell and multiplied by ``1 + coop_bonus`` when another agent
is within ``coop_radius``: gathering on resource patches pays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from trainsvc_trainer._config import EnvConfig

N_ACTIONS = 5
MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
"""Row/column offsets of the actions stay, up, down, left, right."""

Array = jax.Array


class EnvState(NamedTuple):
    """One environment's state; every leaf is an array (batched by the learner)."""

    positions: Array  # (N, 2) int32 cell (row, col)
    field: Array  # (H, W) float32 shared field
    resources: Array  # (H, W) float32 current resources
    capacity: Array  # (H, W) float32 resource capacity (patches)
    t: Array  # () int32 steps into the episode
    episode_return: Array  # () float32 running per-agent mean return
    last_return: Array  # () float32 the last finished episode's per-agent mean return
    last_actions: Array  # (N,) int32


def obs_size(cfg: EnvConfig) -> int:
    """Length of one agent's observation vector."""
    return 3 * (2 * cfg.patch_radius + 1) ** 2


def _torus_delta(a: Array, b: Array, size: Array) -> Array:
    d = jnp.abs(a - b) % size
    return jnp.minimum(d, size - d)


def _capacity(key: Array, cfg: EnvConfig) -> Array:
    size = jnp.array([cfg.height, cfg.width], jnp.float32)
    centres = jax.random.uniform(key, (cfg.n_patches, 2)) * size
    rows = jnp.arange(cfg.height, dtype=jnp.float32)[:, None, None]
    cols = jnp.arange(cfg.width, dtype=jnp.float32)[None, :, None]
    dr = _torus_delta(rows, centres[None, None, :, 0], size[0])
    dc = _torus_delta(cols, centres[None, None, :, 1], size[1])
    blobs = jnp.exp(-(dr**2 + dc**2) / (2.0 * cfg.patch_size**2))
    return jnp.minimum(blobs.sum(axis=-1), 1.0)


def reset(key: Array, cfg: EnvConfig) -> EnvState:
    """A fresh episode: random agent cells, new resource patches at full capacity, empty field."""
    k_pos, k_cap = jax.random.split(key)
    rows = jax.random.randint(k_pos, (cfg.n_agents,), 0, cfg.height)
    cols = jax.random.randint(jax.random.fold_in(k_pos, 1), (cfg.n_agents,), 0, cfg.width)
    capacity = _capacity(k_cap, cfg)
    return EnvState(
        positions=jnp.stack([rows, cols], axis=-1).astype(jnp.int32),
        field=jnp.zeros((cfg.height, cfg.width), jnp.float32),
        resources=capacity,
        capacity=capacity,
        t=jnp.zeros((), jnp.int32),
        episode_return=jnp.zeros((), jnp.float32),
        last_return=jnp.zeros((), jnp.float32),
        last_actions=jnp.zeros((cfg.n_agents,), jnp.int32),
    )


def _onehots(positions: Array, cfg: EnvConfig) -> tuple[Array, Array]:
    """Row and column one-hots ``(N, H)``, ``(N, W)`` of the agents' cells.

    The occupancy grid is their outer product, a small dense contraction that XLA
    runs faster than an index scatter on CPU; it is exact.
    """
    rows = jax.nn.one_hot(positions[:, 0], cfg.height, dtype=jnp.float32)
    cols = jax.nn.one_hot(positions[:, 1], cfg.width, dtype=jnp.float32)
    return rows, cols


def _occupancy(rows: Array, cols: Array) -> Array:
    """Agents per cell ``(H, W)``."""
    return jnp.einsum("nh,nw->hw", rows, cols)


def observe(state: EnvState, cfg: EnvConfig) -> Array:
    """Every agent's observation ``(N, 3 * (2r + 1)^2)``: log-field, resource and other-agent patches."""
    r = cfg.patch_radius
    offs = jnp.arange(-r, r + 1)
    rows = (state.positions[:, 0, None, None] + offs[None, :, None]) % cfg.height
    cols = (state.positions[:, 1, None, None] + offs[None, None, :]) % cfg.width
    occ = _occupancy(*_onehots(state.positions, cfg))
    others = occ[rows, cols].at[:, r, r].add(-1.0)
    parts = (jnp.log1p(state.field[rows, cols]), state.resources[rows, cols], others)
    return jnp.concatenate([p.reshape(cfg.n_agents, -1) for p in parts], axis=-1)


def step(state: EnvState, actions: Array, cfg: EnvConfig) -> tuple[EnvState, Array]:
    """Advances one step (without the episode reset); returns the new state and rewards ``(N,)``."""
    moves = jnp.array(MOVES, jnp.int32)
    size = jnp.array([cfg.height, cfg.width], jnp.int32)
    pos = (state.positions + moves[actions]) % size
    rows, cols = _onehots(pos, cfg)
    occ = _occupancy(rows, cols)
    take = state.resources[pos[:, 0], pos[:, 1]] * cfg.harvest / occ[pos[:, 0], pos[:, 1]]
    resources = state.resources * (1.0 - cfg.harvest * (occ > 0))
    delta = _torus_delta(pos[:, None, :], pos[None, :, :], size).max(axis=-1)
    near = (delta <= cfg.coop_radius) & ~jnp.eye(cfg.n_agents, dtype=bool)
    reward = take * (1.0 + cfg.coop_bonus * near.any(axis=1))
    fld = state.field + cfg.deposit * occ
    neigh = jnp.roll(fld, 1, 0) + jnp.roll(fld, -1, 0) + jnp.roll(fld, 1, 1) + jnp.roll(fld, -1, 1)
    fld = ((1.0 - cfg.diffusion) * fld + cfg.diffusion * 0.25 * neigh) * (1.0 - cfg.evaporation)
    resources = resources + cfg.regrow * (state.capacity - resources)
    t = state.t + 1
    nxt = EnvState(
        positions=pos,
        field=fld,
        resources=resources,
        capacity=state.capacity,
        t=t,
        episode_return=state.episode_return + reward.mean(),
        last_return=state.last_return,
        last_actions=actions.astype(jnp.int32),
    )
    return nxt, reward


def reset_done(state: EnvState, key: Array, cfg: EnvConfig) -> EnvState:
    """``state``, or a fresh episode when it has run ``episode_length`` steps.

    A fresh episode keeps the finished episode's return in ``last_return``.
    """
    fresh = reset(key, cfg)._replace(
        last_return=state.episode_return, last_actions=state.last_actions
    )
    done = state.t >= cfg.episode_length
    out: EnvState = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, state)
    return out


def step_batch(
    states: EnvState, actions: Array, key: Array, cfg: EnvConfig
) -> tuple[EnvState, Array]:
    """:func:`step` for a batch of environments, then :func:`reset_done`.

    All environments of a batch start together and have the same episode length,
    so the (costly) reset is computed only on steps where some episode ends.
    """
    nxt, reward = jax.vmap(lambda s, a: step(s, a, cfg))(states, actions)
    keys = jax.random.split(key, states.t.shape[0])

    def with_resets(s: EnvState) -> EnvState:
        out: EnvState = jax.vmap(lambda s1, k: reset_done(s1, k, cfg))(s, keys)
        return out

    done_any = jnp.any(nxt.t >= cfg.episode_length)
    return jax.lax.cond(done_any, with_resets, lambda s: s, nxt), reward


def env_state_to_tree(state: EnvState) -> dict[str, Any]:
    """The state as a plain dict of arrays (the checkpoint's ``env`` subtree)."""
    return dict(state._asdict())


def env_state_from_tree(tree: dict[str, Any]) -> EnvState:
    """Inverse of :func:`env_state_to_tree`."""
    return EnvState(**{k: jnp.asarray(tree[k]) for k in EnvState._fields})
