"""The NumPy reference of bench/trainer.py computes what the JAX environment and policy compute.

bench/trainer.py measures the trainer's speed against bench/reference/emergence_numpy.py;
the comparison is only fair if both do the same work, so one step from the same
state and actions must give the same observations, logits, rewards and next state.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest
from trainsvc_trainer import Config, _env, _learner

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from reference.emergence_numpy import EnvParams, NumpyEmergence


@pytest.mark.parametrize(("height", "width"), [(8, 8), (5, 7)])
def test_numpy_reference_matches_the_jax_environment(
    make_config: Callable[..., Config], height: int, width: int
) -> None:
    """Also on a field that is not square, where swapping rows and columns would show."""
    config = make_config(
        env={"n_agents": 6, "n_envs": 3, "episode_length": 50, "height": height, "width": width}
    )
    spec = _learner.LearnerSpec.of(config.env, config.policy, config.train)
    state = _learner.init_state(5, spec)
    # give the per-agent parameters something to say, so that the comparison covers them
    agent = jax.tree.map(
        lambda a: a + 0.3 * np.sin(np.arange(a.size)).reshape(a.shape), state.agent_params
    )
    np_tree = jax.tree.map(np.asarray, (state.params, agent))
    ref = NumpyEmergence(
        EnvParams.of(config.env), config.env.n_envs, *np_tree, role_scale=config.policy.role_scale
    )
    env = state.env
    rng = np.random.default_rng(0)
    step = jax.jit(jax.vmap(lambda s, a: _env.step(s, a, config.env)))
    observe = jax.jit(jax.vmap(lambda s: _env.observe(s, config.env)))
    for t in range(12):
        # the checkpoint's view of the state: grids (n_envs, H, W), as the reference holds them
        host = {k: np.array(v) for k, v in _env.env_state_to_tree(env, config.env).items()}
        ref.pos = host["positions"].astype(np.int64)
        ref.field, ref.res, ref.cap = host["field"], host["resources"], host["capacity"]
        ref.skill, ref.t = host["skill"], host["t"].astype(np.int64)
        obs = np.asarray(observe(env))
        # log1p may differ in the last bit between XLA and NumPy
        np.testing.assert_allclose(obs, ref.observe(), rtol=1e-6, err_msg=f"observation, step {t}")
        logits, _ = _learner.policy_apply(state.params, agent, obs, config.policy.role_scale)
        np.testing.assert_allclose(np.asarray(logits), ref.logits(obs), rtol=1e-5, atol=1e-5)
        # crowd one tool on some steps so that the type quota matters
        high = 10 if t % 3 else 5
        actions = rng.integers(0, high, (config.env.n_envs, config.env.n_agents))
        env, reward = step(env, actions.astype(np.int32))
        ref_reward = ref.step(actions)
        np.testing.assert_allclose(np.asarray(reward), ref_reward, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(env.positions), ref.pos)
        grids = _env.env_state_to_tree(env, config.env)
        for name, got, want in (
            ("field", grids["field"], ref.field),
            ("resources", grids["resources"], ref.res),
            ("skill", env.skill, ref.skill),
        ):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7, err_msg=name)
    assert float(np.abs(np.asarray(env.field)).sum()) > 0


def test_action_sampling_follows_the_logits() -> None:
    logits = np.log(np.array([[0.5, 0.0, 0.2, 0.3] + [0.0] * 6], np.float32) + 1e-30)
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    actions = np.asarray(jax.vmap(lambda k: _learner.sample_actions(k, logits))(keys)).ravel()
    freq = np.bincount(actions, minlength=10) / actions.size
    np.testing.assert_allclose(freq[:4], [0.5, 0.0, 0.2, 0.3], atol=0.03)
    assert freq[4:].sum() == 0.0


def test_numpy_reference_samples_the_actions_the_trainer_samples(
    make_config: Callable[..., Config],
) -> None:
    """Same observations and uniforms give the same actions: both do the same sampling work."""
    config = make_config(env={"n_agents": 8, "n_envs": 64})
    spec = _learner.LearnerSpec.of(config.env, config.policy, config.train)
    state = _learner.init_state(3, spec)
    agent = jax.tree.map(
        lambda a: a + 0.5 * np.cos(np.arange(a.size)).reshape(a.shape), state.agent_params
    )
    obs = np.asarray(jax.vmap(lambda s: _env.observe(s, config.env))(state.env))
    ref = NumpyEmergence(
        EnvParams.of(config.env),
        config.env.n_envs,
        *jax.tree.map(np.asarray, (state.params, agent)),
        role_scale=config.policy.role_scale,
    )
    uniforms = np.random.default_rng(1).random(obs.shape[:2], dtype=np.float32)
    moves, tools, _ = _learner.policy_heads(state.params, agent, obs, config.policy.role_scale)
    got = np.asarray(_learner.actions_from_heads(uniforms, moves, tools))
    want = ref.act(obs, uniforms)
    # the running sums add in another order (a matrix product vs cumsum): a uniform
    # within rounding of a boundary may pick the neighbouring action, nothing else
    assert (got == want).mean() >= 0.99
    assert np.abs(got - want).max() <= 1
    assert len(np.unique(got)) > 3, "the test must cover more than a few actions"
