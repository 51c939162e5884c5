"""Policy and learner: a shared MLP with per-agent parameters, trained by REINFORCE + baseline.

One call of the jitted :func:`make_train_step` function is one policy update:
a ``lax.scan`` rollout of ``rollout_length`` steps in ``n_envs`` vmapped
environments, discounted returns (cut at episode ends, bootstrapped from the
baseline at the rollout's end), then one Adam step on

``loss = -mean(logp(a) * A) + value_coef * mean((G - V)^2) - entropy_coef * mean(H)``

with ``A = normalise(G - V)``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax  # type: ignore[import-untyped]

from trainsvc_trainer import _env
from trainsvc_trainer._config import EnvConfig, PolicyConfig, TrainConfig

Array = jax.Array
Params = dict[str, Any]


class TrainState(NamedTuple):
    """Everything a policy update reads and writes (all arrays)."""

    params: Params
    agent_params: Params
    opt_state: Any
    key: Array  # raw uint32 key data, shape (2,)
    env: _env.EnvState  # batched over n_envs


class LearnerSpec(NamedTuple):
    """The config fields that define the compiled computation (the compile-cache key)."""

    env: EnvConfig
    policy: PolicyConfig
    rollout_length: int
    learning_rate: float
    gamma: float
    entropy_coef: float
    value_coef: float
    max_grad_norm: float
    data_parallel: bool = False
    """The rollout avoids cross-process collectives per environment step (see :func:`_rollout`)."""

    @classmethod
    def of(
        cls,
        env: EnvConfig,
        policy: PolicyConfig,
        train: TrainConfig,
        *,
        data_parallel: bool = False,
    ) -> LearnerSpec:
        """The spec of a config."""
        return cls(
            env,
            policy,
            train.rollout_length,
            train.learning_rate,
            train.gamma,
            train.entropy_coef,
            train.value_coef,
            train.max_grad_norm,
            data_parallel,
        )


CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
"""XLA options of the learner's programs on CPU: no operation is handed to YNNPACK.

By default XLA's CPU backend hands each matrix product to YNNPACK together with
the elementwise operations around it (bias, ``tanh``, ``exp``), and YNNPACK runs
those several times slower than XLA's own loops. The policy's products are small
(27 x 32, 32 x 5), and XLA's own code for them beats a library call as well:
acting ran 10% faster with no YNNPACK fusion at all than with the products alone
handed over, and training 3-10% faster (bench/trainer.py, docs/trainer.md).
"""


def _jit(fn: Any, **kwargs: Any) -> Any:
    """``jax.jit`` with :data:`CPU_COMPILER_OPTIONS` when the default backend is the CPU."""
    if jax.default_backend() == "cpu":
        return jax.jit(fn, compiler_options=CPU_COMPILER_OPTIONS, **kwargs)
    return jax.jit(fn, **kwargs)


def _out_shardings(*parts: Any) -> dict[str, Any]:
    """``out_shardings=parts`` for :func:`_jit` when a data-parallel layout is given."""
    return {} if parts[0] is None else {"out_shardings": parts if len(parts) > 1 else parts[0]}


def _dense(key: Array, n_in: int, n_out: int, scale: float) -> dict[str, Array]:
    w = jax.random.normal(key, (n_in, n_out), jnp.float32) * (scale / jnp.sqrt(n_in))
    return {"kernel": w, "bias": jnp.zeros((n_out,), jnp.float32)}


def init_params(key: Array, env: EnvConfig, policy: PolicyConfig) -> tuple[Params, Params]:
    """Shared policy parameters and per-agent parameters."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params: Params = {
        "hidden": _dense(k1, _env.obs_size(env), policy.hidden, 1.0),
        "logits": _dense(k2, policy.hidden, _env.N_MOVES, 0.01),
        "value": _dense(k3, policy.hidden, 1, 1.0),
    }
    agent_params: Params = {}
    if not policy.agent_embedding:
        params["tool_logits"] = jnp.zeros((_env.N_TOOLS,), jnp.float32)
    else:
        agent_params = {
            "embed": jax.random.normal(k4, (env.n_agents, policy.hidden), jnp.float32) * 0.1,
            "action_bias": jnp.zeros((env.n_agents, _env.N_MOVES), jnp.float32),
            "tool_logits": jnp.zeros((env.n_agents, _env.N_TOOLS), jnp.float32),
        }
    return params, agent_params


def joint_logits(moves: Array, tools: Array) -> Array:
    """Logits ``(..., N_ACTIONS)`` of (move, tool) pairs from move ``(..., 5)`` and tool ``(..., 2)`` logits.

    Action ``a`` is move ``a % 5`` with tool ``a // 5``; its logit is the sum of the
    two, so the move and the tool are drawn independently.
    """
    joint = tools[..., :, None] + moves[..., None, :]
    return joint.reshape(*joint.shape[:-2], _env.N_ACTIONS)


def sample_actions(key: Array, logits: Array) -> Array:
    """Samples actions from ``logits`` ``(..., A)`` by inverting the CDF with one uniform each."""
    return actions_from_uniforms(jax.random.uniform(key, logits.shape[:-1], jnp.float32), logits)


def _invert_cdf(uniforms: Array, weights: Array) -> Array:
    """The index ``i`` where the running sum of ``weights`` ``(..., A)`` passes ``uniforms * total``.

    The running sum is a product with a triangular matrix of ones and the count of
    entries below the threshold a reduction: both are computed once into memory.
    Written as a chain of adds and compares (or ``cumsum``), XLA's CPU backend
    fused the whole chain into every consumer of the actions (about eight of
    them), each recomputing it.
    """
    n = weights.shape[-1]
    cdf = weights @ jnp.triu(jnp.ones((n, n), weights.dtype))
    index = (cdf < uniforms[..., None] * cdf[..., -1:]).sum(-1, dtype=jnp.int32)
    return jnp.minimum(index, n - 1)


def actions_from_uniforms(uniforms: Array, logits: Array) -> Array:
    """Actions ``(...)`` for ``logits`` ``(..., A)``: the CDF inverted at ``uniforms`` ``(...)`` in [0, 1).

    One uniform per agent (instead of one Gumbel per action) is the cheap part of
    the step on CPU; the NumPy reference samples the same way.
    """
    return _invert_cdf(uniforms, jnp.exp(logits - logits.max(-1, keepdims=True)))


def actions_from_heads(uniforms: Array, moves: Array, tools: Array) -> Array:
    """:func:`actions_from_uniforms` for the joint logits of ``moves`` ``(..., 5)`` and ``tools`` ``(..., 2)``.

    A joint logit is a sum, so its exponential is the product of the move's and the
    tool's: seven exponentials instead of ten, each head's maximum taken over its own
    few entries (XLA recomputes a fused maximum for every element that reads it).
    """
    e_moves = jnp.exp(moves - moves.max(-1, keepdims=True))
    e_tools = jnp.exp(tools - tools.max(-1, keepdims=True))
    joint = e_tools[..., :, None] * e_moves[..., None, :]
    return _invert_cdf(uniforms, joint.reshape(*joint.shape[:-2], _env.N_ACTIONS))


def policy_heads(
    params: Params,
    agent_params: Params,
    obs: Array,
    role_scale: float = 10.0,
    self_counted_at: int | None = None,
) -> tuple[Array, Array, Array]:
    """Move logits ``(..., N, 5)``, tool logits ``(..., N, 2)`` and values ``(..., N)``.

    With ``self_counted_at``, ``obs`` counts the observer at that index
    (``_env.observe_counting_self``): the first layer subtracts that one in its bias.

    The moves come from the shared MLP plus each agent's move bias; the tool only
    from the agent's own ``tool_logits`` (times ``role_scale``): nothing observed
    says which tool pays, so an agent's tool is its role, a per-agent parameter.
    Without agent parameters one shared ``tool_logits`` serves every agent.
    """
    bias = params["hidden"]["bias"]
    if self_counted_at is not None:
        bias = bias - params["hidden"]["kernel"][self_counted_at]
    pre = obs @ params["hidden"]["kernel"] + bias
    if agent_params:
        pre = pre + agent_params["embed"]
    h = jnp.tanh(pre)
    moves = h @ params["logits"]["kernel"] + params["logits"]["bias"]
    if agent_params:
        moves = moves + agent_params["action_bias"]
        tools = role_scale * agent_params["tool_logits"]
    else:
        tools = params["tool_logits"]
    value = (h @ params["value"]["kernel"] + params["value"]["bias"])[..., 0]
    return moves, jnp.broadcast_to(tools, (*moves.shape[:-1], _env.N_TOOLS)), value


def policy_apply(
    params: Params, agent_params: Params, obs: Array, role_scale: float = 10.0
) -> tuple[Array, Array]:
    """Joint action logits ``(..., N, A)`` and values ``(..., N)`` (see :func:`policy_heads`)."""
    moves, tools, value = policy_heads(params, agent_params, obs, role_scale)
    return joint_logits(moves, tools), value


def _observe_batch(env: _env.EnvState, cfg: EnvConfig) -> Array:
    """The learner's observations of a batch of environments: the observer counted on its cell."""
    out: Array = jax.vmap(lambda s: _env.observe_counting_self(s, cfg))(env)
    return out


def _policy(
    params: Params, agent_params: Params, obs: Array, spec: LearnerSpec
) -> tuple[Array, Array, Array]:
    """:func:`policy_heads` of :func:`_observe_batch`'s observations."""
    return policy_heads(
        params, agent_params, obs, spec.policy.role_scale, _env.self_index(spec.env)
    )


def make_optimizer(spec: LearnerSpec) -> optax.GradientTransformation:
    """Gradient clipping then Adam."""
    return optax.chain(
        optax.clip_by_global_norm(spec.max_grad_norm), optax.adam(spec.learning_rate)
    )


def init_state(seed: int, spec: LearnerSpec, shardings: Any = None) -> TrainState:
    """The initial train state for ``seed`` (computed by one jitted program per spec).

    ``shardings``: a ``TrainState`` of shardings (``DataParallel.state_shardings``)
    to lay the state out across a data-parallel run's processes.
    """
    state: TrainState = _compiled_init(spec, shardings)(jnp.uint32(seed))
    return state


@functools.cache
def _compiled_init(spec: LearnerSpec, shardings: Any = None) -> Any:
    def init(seed: Array) -> TrainState:
        key = jax.random.PRNGKey(seed)
        key, k_params, k_env = jax.random.split(key, 3)
        params, agent_params = init_params(k_params, spec.env, spec.policy)
        env_keys = jax.random.split(k_env, spec.env.n_envs)
        env_state = jax.vmap(lambda k: _env.reset(k, spec.env))(env_keys)
        opt_state = make_optimizer(spec).init((params, agent_params))
        return TrainState(params, agent_params, opt_state, key, env_state)

    return _jit(init, **_out_shardings(shardings))


def _rollout(
    params: Params,
    agent_params: Params,
    env_state: _env.EnvState,
    key: Array,
    spec: LearnerSpec,
    length: int,
    random_policy: bool = False,
) -> tuple[_env.EnvState, dict[str, Array], tuple[Array, Array]]:
    """Runs ``length`` steps; returns the final states, the trajectory and what environment 0
    last showed: its positions and field after the last step, before any episode reset.

    With ``spec.data_parallel`` (the environments sharded across processes) a step
    needs no collective: the episode clock, shared by every environment, is carried
    as one number instead of reduced over the batch, and every environment's last
    view is carried (sharded) and environment 0's taken once after the scan. Taking
    environment 0's at every step, or reducing the clocks, cost three collectives
    per environment step.
    """
    cfg = spec.env
    # all the rollout's random numbers in two calls: on CPU, jax.random's threefry runs
    # as a loop whose cost per call dwarfs a step's few thousand uniforms
    k_act, k_env = jax.random.split(key)
    n_envs, n_agents = env_state.positions.shape[:2]
    uniforms = jax.random.uniform(k_act, (length, n_envs, n_agents), jnp.float32)
    env_keys = jax.random.split(k_env, length)

    dp = spec.data_parallel

    def body(
        carry: tuple[_env.EnvState, Array, Array, Array], xs: tuple[Array, Array]
    ) -> tuple[tuple[_env.EnvState, Array, Array, Array], dict[str, Array]]:
        state, clock = carry[0], carry[3]
        u, k_step = xs
        obs = _observe_batch(state, cfg)
        moves, tools, _ = _policy(params, agent_params, obs, spec)
        if random_policy:
            moves, tools = jnp.zeros_like(moves), jnp.zeros_like(tools)
        actions = actions_from_heads(u, moves, tools)
        if dp:
            ends = clock + 1 >= cfg.episode_length
            nxt, reward, seen = _env.step_batch_seen(state, actions, k_step, cfg, ends)
            carry = (nxt, seen.positions, seen.field, jnp.where(ends, 0, clock + 1))
        else:
            nxt, reward, seen = _env.step_batch_seen(state, actions, k_step, cfg)
            carry = (nxt, seen.positions[0], seen.field[0], clock)
        done = nxt.t == 0
        out = {"obs": obs, "actions": actions, "rewards": reward, "dones": done}
        return carry, out

    if dp:
        start = (env_state, env_state.positions, env_state.field, env_state.t[0])
    else:
        start = (env_state, env_state.positions[0], env_state.field[0], jnp.int32(0))
    (final, seen_pos, seen_field, _), traj = jax.lax.scan(body, start, (uniforms, env_keys))
    if dp:
        seen_pos, seen_field = seen_pos[0], seen_field[0]
    return final, traj, (seen_pos, seen_field)


def _returns(rewards: Array, dones: Array, bootstrap: Array, gamma: float) -> Array:
    """Discounted returns over time (axis 0), cut where ``dones`` (per env) is set."""

    def back(carry: Array, x: tuple[Array, Array]) -> tuple[Array, Array]:
        r, d = x
        g = r + gamma * carry * (1.0 - d[:, None])
        return g, g

    _, out = jax.lax.scan(back, bootstrap, (rewards, dones.astype(jnp.float32)), reverse=True)
    return out


def _loss(
    trainable: tuple[Params, Params], traj: dict[str, Array], returns: Array, spec: LearnerSpec
) -> tuple[Array, dict[str, Array]]:
    params, agent_params = trainable
    moves, tools, values = _policy(params, agent_params, traj["obs"], spec)
    logits = joint_logits(moves, tools)
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, traj["actions"][..., None], axis=-1)[..., 0]
    adv = jax.lax.stop_gradient(returns - values)
    adv = (adv - adv.mean()) / (adv.std() + 1e-6)
    pg_loss = -(logp * adv).mean()
    value_loss = ((returns - values) ** 2).mean()
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
    loss = pg_loss + spec.value_coef * value_loss - spec.entropy_coef * entropy
    return loss, {"pg_loss": pg_loss, "value_loss": value_loss, "entropy": entropy}


def _global_norm(tree: Any) -> Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def make_train_step(spec: LearnerSpec, shardings: Any = None, replicated: Any = None) -> Any:
    """The jitted policy update ``state -> (state, metrics, tracker_inputs)`` for ``spec``.

    Data-parallel (``shardings``: a ``TrainState`` of shardings, ``replicated``: the
    mesh's replicated sharding): the state keeps its layout across updates and the
    metrics and tracker inputs come out whole on every process.
    """
    return _compiled_train_step(spec, shardings, replicated)


@functools.cache
def _compiled_train_step(spec: LearnerSpec, shardings: Any = None, replicated: Any = None) -> Any:
    optimizer = make_optimizer(spec)
    cfg = spec.env

    def train_step(
        state: TrainState,
    ) -> tuple[TrainState, dict[str, Array], dict[str, Array]]:
        key, k_roll = jax.random.split(state.key)
        env_final, traj, (seen_pos, seen_field) = _rollout(
            state.params, state.agent_params, state.env, k_roll, spec, spec.rollout_length
        )
        obs_last = _observe_batch(env_final, cfg)
        _, _, v_last = _policy(state.params, state.agent_params, obs_last, spec)
        returns = _returns(traj["rewards"], traj["dones"], v_last, spec.gamma)
        trainable = (state.params, state.agent_params)
        grads, aux = jax.grad(_loss, has_aux=True)(trainable, traj, returns, spec)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        params, agent_params = optax.apply_updates(trainable, updates)
        metrics = {
            "reward": traj["rewards"].mean(),
            "episode_return": env_final.last_return.mean(),
            "grad_norm": _global_norm(grads),
            **aux,
        }
        counts = jax.nn.one_hot(traj["actions"], _env.N_ACTIONS).sum(axis=(0, 1))
        tracker_inputs = {
            "positions": env_final.positions,
            "field": env_final.field.reshape(-1, cfg.height, cfg.width),
            "actions": env_final.last_actions,
            "action_counts": counts,
            # environment 0 as the last step left it, before any episode reset: frames
            # draw this, never the empty field of an episode that has just begun
            "frame_positions": seen_pos,
            "frame_field": seen_field.reshape(cfg.height, cfg.width),
        }
        new_state = TrainState(params, agent_params, opt_state, key, env_final)
        return new_state, metrics, tracker_inputs

    return _jit(train_step, **_out_shardings(shardings, replicated, replicated))


@functools.cache
def compiled_rollout(spec: LearnerSpec) -> Any:
    """Jitted acting only (no learning): ``(params, agent_params, env, key) -> (env, mean reward)``.

    Runs ``rollout_length`` steps of the batched environments (for benchmarks).
    """

    def act(params: Params, agent_params: Params, env: _env.EnvState, key: Array) -> Any:
        final, traj, _ = _rollout(params, agent_params, env, key, spec, spec.rollout_length)
        return final, traj["rewards"].mean()

    return _jit(act)


@functools.cache
def _compiled_evaluate(spec: LearnerSpec, random_policy: bool) -> Any:
    cfg = spec.env

    def evaluate(params: Params, agent_params: Params, seeds: Array) -> Array:
        def one(seed: Array) -> Array:
            key = jax.random.PRNGKey(seed)
            k_reset, k_roll = jax.random.split(key)
            state = _env.reset(k_reset, cfg)
            batched = jax.tree.map(lambda a: a[None], state)
            _, traj, _ = _rollout(
                params, agent_params, batched, k_roll, spec, cfg.episode_length, random_policy
            )
            return traj["rewards"].sum(axis=0).mean()

        return jax.vmap(one)(seeds)

    return _jit(evaluate)


def evaluate(
    params: Params,
    agent_params: Params,
    spec: LearnerSpec,
    seeds: list[int],
    *,
    random_policy: bool = False,
) -> float:
    """Mean per-agent episode reward over one episode per seed (same seeds give the same episodes).

    With ``random_policy`` the agents act uniformly at random instead.
    """
    out = _compiled_evaluate(spec, random_policy)(
        params, agent_params, jnp.asarray(seeds, jnp.uint32)
    )
    return float(out.mean())
