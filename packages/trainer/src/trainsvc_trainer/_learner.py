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
import itertools
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

    @classmethod
    def of(cls, env: EnvConfig, policy: PolicyConfig, train: TrainConfig) -> LearnerSpec:
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
        )


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


def actions_from_uniforms(uniforms: Array, logits: Array) -> Array:
    """Actions ``(...)`` for ``logits`` ``(..., A)``: the CDF inverted at ``uniforms`` ``(...)`` in [0, 1).

    One uniform per agent (instead of one Gumbel per action) is the cheap part of
    the step on CPU; the NumPy reference samples the same way. The running sum is
    spelled out action by action (the order ``cumsum`` adds in): XLA's CPU backend
    lowers ``cumsum`` to a slow reduce-window.
    """
    probs = jax.nn.softmax(logits, axis=-1)
    cdf = list(itertools.accumulate(probs[..., a] for a in range(logits.shape[-1])))
    u = uniforms * cdf[-1]
    index = sum((c < u).astype(jnp.int32) for c in cdf)
    return jnp.minimum(jnp.asarray(index), logits.shape[-1] - 1)


def policy_apply(
    params: Params, agent_params: Params, obs: Array, role_scale: float = 10.0
) -> tuple[Array, Array]:
    """Action logits ``(..., N, A)`` and values ``(..., N)`` for observations ``(..., N, D)``.

    The moves come from the shared MLP plus each agent's move bias; the tool only
    from the agent's own ``tool_logits`` (times ``role_scale``): nothing observed
    says which tool pays, so an agent's tool is its role, a per-agent parameter.
    Without agent parameters one shared ``tool_logits`` serves every agent.
    """
    pre = obs @ params["hidden"]["kernel"] + params["hidden"]["bias"]
    if agent_params:
        pre = pre + agent_params["embed"]
    h = jnp.tanh(pre)
    moves = h @ params["logits"]["kernel"] + params["logits"]["bias"]
    if agent_params:
        moves = moves + agent_params["action_bias"]
        tools = role_scale * agent_params["tool_logits"]
    else:
        tools = params["tool_logits"]
    logits = joint_logits(moves, jnp.broadcast_to(tools, (*moves.shape[:-1], _env.N_TOOLS)))
    value = (h @ params["value"]["kernel"] + params["value"]["bias"])[..., 0]
    return logits, value


def make_optimizer(spec: LearnerSpec) -> optax.GradientTransformation:
    """Gradient clipping then Adam."""
    return optax.chain(
        optax.clip_by_global_norm(spec.max_grad_norm), optax.adam(spec.learning_rate)
    )


def init_state(seed: int, spec: LearnerSpec) -> TrainState:
    """The initial train state for ``seed`` (computed by one jitted program per spec)."""
    state: TrainState = _compiled_init(spec)(jnp.uint32(seed))
    return state


@functools.cache
def _compiled_init(spec: LearnerSpec) -> Any:
    def init(seed: Array) -> TrainState:
        key = jax.random.PRNGKey(seed)
        key, k_params, k_env = jax.random.split(key, 3)
        params, agent_params = init_params(k_params, spec.env, spec.policy)
        env_keys = jax.random.split(k_env, spec.env.n_envs)
        env_state = jax.vmap(lambda k: _env.reset(k, spec.env))(env_keys)
        opt_state = make_optimizer(spec).init((params, agent_params))
        return TrainState(params, agent_params, opt_state, key, env_state)

    return jax.jit(init)


def _rollout(
    params: Params,
    agent_params: Params,
    env_state: _env.EnvState,
    key: Array,
    spec: LearnerSpec,
    length: int,
    random_policy: bool = False,
) -> tuple[_env.EnvState, dict[str, Array]]:
    cfg = spec.env
    observe: Any = jax.vmap(lambda s: _env.observe(s, cfg))
    # all the rollout's random numbers in two calls: on CPU, jax.random's threefry runs
    # as a loop whose cost per call dwarfs a step's few thousand uniforms
    k_act, k_env = jax.random.split(key)
    n_envs, n_agents = env_state.positions.shape[:2]
    uniforms = jax.random.uniform(k_act, (length, n_envs, n_agents), jnp.float32)
    env_keys = jax.random.split(k_env, length)

    def body(
        state: _env.EnvState, xs: tuple[Array, Array]
    ) -> tuple[_env.EnvState, dict[str, Array]]:
        u, k_step = xs
        obs = observe(state)
        logits, _ = policy_apply(params, agent_params, obs, spec.policy.role_scale)
        if random_policy:
            logits = jnp.zeros_like(logits)
        actions = actions_from_uniforms(u, logits)
        nxt, reward = _env.step_batch(state, actions, k_step, cfg)
        done = nxt.t == 0
        return nxt, {"obs": obs, "actions": actions, "rewards": reward, "dones": done}

    final, traj = jax.lax.scan(body, env_state, (uniforms, env_keys))
    return final, traj


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
    logits, values = policy_apply(params, agent_params, traj["obs"], spec.policy.role_scale)
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


def make_train_step(spec: LearnerSpec) -> Any:
    """The jitted policy update ``state -> (state, metrics, tracker_inputs)`` for ``spec``."""
    return _compiled_train_step(spec)


@functools.cache
def _compiled_train_step(spec: LearnerSpec) -> Any:
    optimizer = make_optimizer(spec)
    cfg = spec.env

    def train_step(
        state: TrainState,
    ) -> tuple[TrainState, dict[str, Array], dict[str, Array]]:
        key, k_roll = jax.random.split(state.key)
        env_final, traj = _rollout(
            state.params, state.agent_params, state.env, k_roll, spec, spec.rollout_length
        )
        obs_last = jax.vmap(lambda s: _env.observe(s, cfg))(env_final)
        _, v_last = policy_apply(state.params, state.agent_params, obs_last, spec.policy.role_scale)
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
            "field": env_final.field,
            "actions": env_final.last_actions,
            "action_counts": counts,
        }
        new_state = TrainState(params, agent_params, opt_state, key, env_final)
        return new_state, metrics, tracker_inputs

    return jax.jit(train_step)


@functools.cache
def compiled_rollout(spec: LearnerSpec) -> Any:
    """Jitted acting only (no learning): ``(params, agent_params, env, key) -> (env, mean reward)``.

    Runs ``rollout_length`` steps of the batched environments (for benchmarks).
    """

    def act(params: Params, agent_params: Params, env: _env.EnvState, key: Array) -> Any:
        final, traj = _rollout(params, agent_params, env, key, spec, spec.rollout_length)
        return final, traj["rewards"].mean()

    return jax.jit(act)


@functools.cache
def _compiled_evaluate(spec: LearnerSpec, random_policy: bool) -> Any:
    cfg = spec.env

    def evaluate(params: Params, agent_params: Params, seeds: Array) -> Array:
        def one(seed: Array) -> Array:
            key = jax.random.PRNGKey(seed)
            k_reset, k_roll = jax.random.split(key)
            state = _env.reset(k_reset, cfg)
            batched = jax.tree.map(lambda a: a[None], state)
            _, traj = _rollout(
                params, agent_params, batched, k_roll, spec, cfg.episode_length, random_policy
            )
            return traj["rewards"].sum(axis=0).mean()

        return jax.vmap(one)(seeds)

    return jax.jit(evaluate)


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
