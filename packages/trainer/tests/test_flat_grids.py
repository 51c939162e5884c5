"""The environment holds its grids flat (row-major ``H * W``); checkpoints hold them ``(H, W)``.

The flat layout is an implementation detail for speed (docs/trainer.md, "Speed"):
these tests pin down that it computes the torus the 2-D definition describes and
that nothing outside the environment sees it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import pytest
from trainsvc_trainer import Config, Frame, Trainer, _env


@pytest.mark.parametrize(("height", "width"), [(4, 4), (5, 7), (7, 4), (16, 16)])
def test_flat_neighbour_sum_is_the_torus_neighbour_sum(height: int, width: int) -> None:
    grid = np.random.default_rng(height * 100 + width).random((height, width), np.float32)
    want = np.roll(grid, 1, 0) + np.roll(grid, -1, 0) + np.roll(grid, 1, 1) + np.roll(grid, -1, 1)
    got = jax.jit(_env._neighbour_sum, static_argnums=1)(grid.reshape(-1), width)
    np.testing.assert_allclose(np.asarray(got).reshape(height, width), want, rtol=1e-6)


def test_checkpoint_tree_holds_grids_as_images_and_round_trips(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(env={"height": 5, "width": 7, "n_envs": 3})
    trainer = Trainer(config)
    trainer.run(3)  # a field with something on it
    tree = trainer.state_dict()["env"]
    for name in _env.GRIDS:
        assert tree[name].shape == (3, 5, 7), name
    field = np.asarray(tree["field"])
    # row-major: the flat state's cell r * W + c is the image's (r, c)
    flat = np.asarray(trainer._state.env.field)
    assert flat.shape == (3, 35)
    np.testing.assert_array_equal(field[1, 2, 6], flat[1, 2 * 7 + 6])
    assert field.sum() > 0
    back = _env.env_state_from_tree(tree, config.env)
    for got, want in zip(back, trainer._state.env, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    trainer.close()


def test_frames_show_the_field_as_an_image(make_config: Callable[..., Config]) -> None:
    frames: list[Frame] = []
    config = make_config(env={"height": 5, "width": 7}, log={"frame_interval": 1})
    trainer = Trainer(config, frame_callback=frames.append)
    trainer.run(1)  # mid-episode (4 of 8 steps): the frame is the state itself
    trainer.close()
    frame = frames[-1]
    assert frame.field.shape == (5, 7)
    assert frame.grid_shape == (5, 7)
    tree = trainer.state_dict()["env"]
    np.testing.assert_allclose(frame.field, np.asarray(tree["field"])[0], rtol=1e-6)
