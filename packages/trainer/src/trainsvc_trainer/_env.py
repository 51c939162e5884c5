"""The emergence environment, in pure JAX (one environment; the learner vmaps it).

N agents live on an H x W torus. Each step every agent senses the square patch
of radius ``patch_radius`` around it (the shared field, the resources and the
other agents), moves (stay, up, down, left, right) with one of two tools,
deposits onto the shared field and harvests the resource of its cell as the
product of its tool. The field diffuses to the four neighbours and evaporates;
resources regrow toward a capacity map of Gaussian patches that move at every
episode reset.

Three rules make cooperation and a division of labour pay:

- harvest is shared between the agents on a cell and multiplied by
  ``1 + coop_bonus`` when another agent is within ``coop_radius``: gathering on
  resource patches pays;
- each product pays in full for up to ``type_quota * n_agents`` agents using its
  tool in an environment; with more, each one's harvest is scaled by
  ``quota / users``: crowding one product wastes effort, the team does best split;
- an agent's efficiency with a tool is ``0.5 + 0.5 * practice``, its practice the
  running share of its steps with that tool this episode (rate ``skill_rate``, 0.5
  at the start): switching tools costs, sticking to one pays (learning by doing).

Nothing an agent observes tells it which tool to use (the practice and the other
agents' tools are not observed): keeping to a tool across episodes can come only
from its own parameters (``agent_params``), which is where roles live.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from trainsvc_trainer._config import EnvConfig

N_MOVES = 5
N_TOOLS = 2
N_ACTIONS = N_MOVES * N_TOOLS
"""Action ``a`` is move ``a % N_MOVES`` with tool ``a // N_MOVES``."""
MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
"""Row/column offsets of the moves stay, up, down, left, right."""
N_GRIDS = 3
"""Observed grids: log(1 + field), resources, other agents."""

Array = jax.Array


class EnvState(NamedTuple):
    """One environment's state; every leaf is an array (batched by the learner)."""

    positions: Array  # (N, 2) int32 cell (row, col)
    field: Array  # (H * W,) float32 shared field, row-major (see ``_neighbour_sum``)
    resources: Array  # (H * W,) float32 current resources, row-major
    capacity: Array  # (H * W,) float32 resource capacity (patches), row-major
    skill: Array  # (N,) float32 practice share of tool 0 this episode (tool 1: 1 - skill)
    t: Array  # () int32 steps into the episode
    episode_return: Array  # () float32 running per-agent mean return
    last_return: Array  # () float32 the last finished episode's per-agent mean return
    last_actions: Array  # (N,) int32


def obs_size(cfg: EnvConfig) -> int:
    """Length of one agent's observation vector."""
    return N_GRIDS * (2 * cfg.patch_radius + 1) ** 2


def _torus_delta(a: Array, b: Array, size: Array | int) -> Array:
    """Distance along one torus axis between coordinates ``a`` and ``b``, both in ``[0, size)``."""
    d = jnp.abs(a - b)  # < size: no remainder needed (an integer one is slow on CPU)
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
    capacity = _capacity(k_cap, cfg).reshape(-1)
    return EnvState(
        positions=jnp.stack([rows, cols], axis=-1).astype(jnp.int32),
        field=jnp.zeros((cfg.height * cfg.width,), jnp.float32),
        resources=capacity,
        capacity=capacity,
        skill=jnp.full((cfg.n_agents,), 0.5, jnp.float32),
        t=jnp.zeros((), jnp.int32),
        episode_return=jnp.zeros((), jnp.float32),
        last_return=jnp.zeros((), jnp.float32),
        last_actions=jnp.zeros((cfg.n_agents,), jnp.int32),
    )


def _cell(positions: Array, cfg: EnvConfig) -> Array:
    """Flat row-major index of each ``(row, col)`` in ``positions`` ``(..., 2)``."""
    return positions[..., 0] * cfg.width + positions[..., 1]


def _occupancy(cells: Array, cfg: EnvConfig) -> Array:
    """Agents per cell, flat ``(H * W,)``, a scatter-add of one per agent at its flat ``cells`` index.

    Under ``vmap`` XLA's CPU backend runs this as one short loop over the agents of
    all environments: cheaper than comparing every agent with every cell (which
    was evaluated anew wherever a fusion read the grid) or a one-hot product.
    """
    zeros = jnp.zeros((cfg.height * cfg.width,), jnp.float32)
    return zeros.at[cells].add(1.0, mode="promise_in_bounds")


def self_index(cfg: EnvConfig) -> int:
    """Index, in an observation, of the count of agents on the observer's own cell."""
    r = cfg.patch_radius
    side = 2 * r + 1
    return 2 * side * side + r * side + r


def observe(state: EnvState, cfg: EnvConfig) -> Array:
    """Every agent's observation ``(N, 3 * (2r + 1)^2)``: its patch, grid by grid.

    Three patches, each's cells in row-major order: ``log(1 + field)``, the
    resources, and the agents on each cell other than the observer.
    """
    return observe_counting_self(state, cfg).at[:, self_index(cfg)].add(-1.0)


def observe_counting_self(state: EnvState, cfg: EnvConfig) -> Array:
    """:func:`observe`, except that the observer is counted on its own cell (index :func:`self_index`).

    That count is one more than :func:`observe`'s for every agent, a constant the
    policy folds into its first layer's bias (see ``policy_heads``), which saves two
    passes over the observations a step.

    Each grid's patch is its own gather, and the ``log1p`` is taken of the observed
    cells only, in place after the three are joined: a ``log1p`` of the whole field
    cost more than the rest of the observation, and one fused into the joining
    loop runs element by element there (XLA's CPU backend emits a concatenation
    as a branch per element).
    """
    r = cfg.patch_radius
    pos = state.positions
    # offsets shifted to be non-negative, so that the wrap is a plain remainder
    offs = jnp.arange(-r, r + 1, dtype=jnp.int32)
    rows = jax.lax.rem(pos[:, 0, None, None] + (offs + cfg.height)[:, None], cfg.height)
    cols = jax.lax.rem(pos[:, 1, None, None] + (offs + cfg.width)[None, :], cfg.width)
    cells = (rows * cfg.width + cols).reshape(cfg.n_agents, -1)  # (N, P * P)
    agents = _occupancy(_cell(pos, cfg), cfg)
    raw = jnp.concatenate([state.field[cells], state.resources[cells], agents[cells]], axis=-1)
    patch = cells.shape[-1]  # P * P cells
    return raw.at[:, :patch].set(jnp.log1p(raw[:, :patch]))  # (N, 3 * P * P)


def _neighbour_sum(flat: Array, width: int) -> Array:
    """The sum of each cell's four torus neighbours in ``flat``, a row-major ``(H * W,)`` grid.

    The grid is held flat (here and in :func:`step`) because XLA's CPU backend
    vectorizes a loop over its innermost dimension only, and a row of a small
    field (16 cells) is too short for that: the same arithmetic on ``(H, W)``
    grids ran 2.5x slower. Flat, the rows above and below are the cells ``width``
    before and after, torus wrap included, and the cells to the left and right
    are one before and after except in the first and last columns, which take
    them from the other end of their own row. All four are static slices of the
    grid extended by ``width`` cells at each end, held in memory: ``jnp.roll``
    (a select per element between two sources) is several times slower.
    """
    n = flat.shape[-1]
    extended: Array = jax.lax.optimization_barrier(  # type: ignore[no-untyped-call]
        jnp.concatenate([flat[-width:], flat, flat[:width]])
    )

    def shifted(offset: int) -> Array:  # the cell ``offset`` after each, wrapped
        return extended[width + offset : width + offset + n]

    col = jnp.arange(n, dtype=jnp.int32) % width
    left = jnp.where(col == 0, shifted(width - 1), shifted(-1))
    right = jnp.where(col == width - 1, shifted(1 - width), shifted(1))
    return shifted(-width) + shifted(width) + left + right


def step(state: EnvState, actions: Array, cfg: EnvConfig) -> tuple[EnvState, Array]:
    """Advances one step (without the episode reset); returns the new state and rewards ``(N,)``."""
    move = actions % N_MOVES
    tool = actions // N_MOVES
    d_row = (move == 2).astype(jnp.int32) - (move == 1).astype(jnp.int32)
    d_col = (move == 4).astype(jnp.int32) - (move == 3).astype(jnp.int32)
    size = jnp.array([cfg.height, cfg.width], jnp.int32)
    moved = state.positions + jnp.stack([d_row, d_col], axis=-1)  # one cell off at most
    pos = jnp.where(moved < 0, moved + size, jnp.where(moved >= size, moved - size, moved))
    cells = _cell(pos, cfg)
    occ = _occupancy(cells, cfg)
    # Chebyshev distance of every pair, the two axes apart (a max over an axis of two
    # compiles to a scalar loop on CPU)
    rows, cols = pos[:, 0], pos[:, 1]
    delta = jnp.maximum(
        _torus_delta(rows[:, None], rows[None, :], cfg.height),
        _torus_delta(cols[:, None], cols[None, :], cfg.width),
    )
    sharing = (delta == 0).sum(axis=1, dtype=jnp.int32).astype(jnp.float32)  # occ at own cell
    take = state.resources[cells] * cfg.harvest / sharing
    resources = state.resources * (1.0 - cfg.harvest * (occ > 0))
    near = (delta <= cfg.coop_radius) & ~jnp.eye(cfg.n_agents, dtype=bool)
    first = tool == 0
    users0 = first.sum(dtype=jnp.int32).astype(jnp.float32)
    users = jnp.where(first, users0, cfg.n_agents - users0)
    price = jnp.minimum(1.0, cfg.type_quota * cfg.n_agents / users)
    practice = jnp.where(first, state.skill, 1.0 - state.skill)
    gain = (0.5 + 0.5 * practice) * price
    reward = take * gain * (1.0 + cfg.coop_bonus * near.any(axis=1))
    skill = state.skill + cfg.skill_rate * (first.astype(jnp.float32) - state.skill)
    fld = state.field + cfg.deposit * occ
    neigh = _neighbour_sum(fld, cfg.width)
    fld = ((1.0 - cfg.diffusion) * fld + cfg.diffusion * 0.25 * neigh) * (1.0 - cfg.evaporation)
    resources = resources + cfg.regrow * (state.capacity - resources)
    nxt = EnvState(
        positions=pos,
        field=fld,
        resources=resources,
        capacity=state.capacity,
        skill=skill,
        t=state.t + 1,
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
    out, reward, _ = step_batch_seen(states, actions, key, cfg)
    return out, reward


def step_batch_seen(
    states: EnvState, actions: Array, key: Array, cfg: EnvConfig, done_any: Array | None = None
) -> tuple[EnvState, Array, EnvState]:
    """:func:`step_batch`, also returning the stepped states before any episode reset.

    The third value is what the step showed: an episode's last state rather than the
    fresh, empty one that replaces it (what live frames should draw). ``done_any``:
    whether the episodes end at this step, when the caller knows it (the batch's
    environments share the episode clock); computed from the states otherwise.
    """
    nxt, reward = jax.vmap(lambda s, a: step(s, a, cfg))(states, actions)

    def with_resets(s: EnvState) -> EnvState:
        keys = jax.random.split(key, states.t.shape[0])
        out: EnvState = jax.vmap(lambda s1, k: reset_done(s1, k, cfg))(s, keys)
        return out

    if done_any is None:
        done_any = jnp.any(nxt.t >= cfg.episode_length)
    return jax.lax.cond(done_any, with_resets, lambda s: s, nxt), reward, nxt


GRIDS = ("field", "resources", "capacity")
"""The :class:`EnvState` fields that are grids, flat in the state and ``(H, W)`` in checkpoints."""


def env_state_to_tree(state: EnvState, cfg: EnvConfig) -> dict[str, Any]:
    """The batched state as a plain dict of arrays (the checkpoint's ``env`` subtree).

    Grids are stored ``(n_envs, H, W)``: a checkpoint shows the field as an image.
    """
    tree = dict(state._asdict())
    for name in GRIDS:
        tree[name] = tree[name].reshape(-1, cfg.height, cfg.width)
    return tree


def env_state_from_tree(tree: dict[str, Any], cfg: EnvConfig) -> EnvState:
    """Inverse of :func:`env_state_to_tree`."""
    flat = {k: jnp.asarray(tree[k]) for k in EnvState._fields}
    for name in GRIDS:
        flat[name] = flat[name].reshape(-1, cfg.height * cfg.width)
    return EnvState(**flat)
