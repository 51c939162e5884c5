"""The learner's fast paths compute what the plain definitions compute.

The rollout observes with the observer counted on its own cell and folds that
constant into the first layer's bias, and samples from the two heads' logits
instead of the joint ones; both must agree with the public definitions.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from trainsvc_trainer import Config, _env, _learner


def _state(make_config: Callable[..., Config]) -> tuple[Config, _learner.TrainState]:
    config = make_config(env={"n_agents": 8, "n_envs": 16, "patch_radius": 2})
    spec = _learner.LearnerSpec.of(config.env, config.policy, config.train)
    state = _learner.init_state(11, spec)
    # agents placed at random (several share cells), a field with something on it
    key = jax.random.PRNGKey(4)
    env = state.env._replace(
        positions=jax.random.randint(key, state.env.positions.shape, 0, 4),
        field=jax.random.uniform(key, state.env.field.shape) * 3.0,
    )
    return config, state._replace(env=env)


def test_counting_self_differs_from_observe_only_at_the_self_index(
    make_config: Callable[..., Config],
) -> None:
    config, state = _state(make_config)
    plain = np.asarray(jax.vmap(lambda s: _env.observe(s, config.env))(state.env))
    counted = np.asarray(jax.vmap(lambda s: _env.observe_counting_self(s, config.env))(state.env))
    index = _env.self_index(config.env)
    np.testing.assert_array_equal(counted[..., index], plain[..., index] + 1.0)
    np.testing.assert_array_equal(np.delete(counted, index, -1), np.delete(plain, index, -1))
    assert plain[..., index].max() >= 1.0, "the test must cover agents sharing a cell"


def test_folded_bias_gives_the_policy_of_the_plain_observation(
    make_config: Callable[..., Config],
) -> None:
    config, state = _state(make_config)
    plain = jax.vmap(lambda s: _env.observe(s, config.env))(state.env)
    counted = jax.vmap(lambda s: _env.observe_counting_self(s, config.env))(state.env)
    want = _learner.policy_heads(state.params, state.agent_params, plain)
    got = _learner.policy_heads(
        state.params, state.agent_params, counted, self_counted_at=_env.self_index(config.env)
    )
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_sampling_from_the_heads_matches_sampling_from_the_joint_logits() -> None:
    rng = np.random.default_rng(0)
    moves = rng.normal(size=(4000, 5)).astype(np.float32) * 2
    tools = rng.normal(size=(4000, 2)).astype(np.float32) * 2
    uniforms = rng.random(4000, dtype=np.float32)
    joint = _learner.joint_logits(moves, tools)
    got = np.asarray(_learner.actions_from_heads(uniforms, moves, tools))
    want = np.asarray(_learner.actions_from_uniforms(uniforms, joint))
    # exp(a + b) vs exp(a) * exp(b) round differently: only a uniform within rounding
    # of a boundary may land on the neighbouring action
    assert (got == want).mean() >= 0.99
    assert np.abs(got - want).max() <= 1
    assert len(np.unique(got)) == 10
