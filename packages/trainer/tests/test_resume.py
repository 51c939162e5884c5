"""Bitwise-identical resume: 2N steps in one process == N + checkpoint + NEW process + restore + N."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from trainsvc_checkpoint import load
from trainsvc_trainer import Config, Trainer

N = 6

CHILD = textwrap.dedent(
    """
    import json, sys
    from trainsvc_checkpoint import save
    from trainsvc_trainer import Config, Trainer

    config = Config.from_dict(json.loads(sys.argv[1]))
    trainer = Trainer(config)
    restored = trainer.restore(sys.argv[2])
    assert trainer.step_count == int(sys.argv[4]), trainer.step_count
    trainer.run(int(sys.argv[4]))
    save(sys.argv[3], trainer.state_dict())
    print(restored)
    """
)


def test_resume_in_a_new_process_is_bitwise_identical(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    # frame and save intervals on, so that resume also crosses those code paths.
    config = make_config(
        log={"checkpoint_dir": str(tmp_path / "ck"), "frame_interval": 2, "save_interval": 0},
        train={"total_steps": 1000},
    )
    straight = Trainer(config, frame_callback=lambda f: None)
    straight.run(2 * N)

    first = Trainer(config, frame_callback=lambda f: None)
    first.run(N)
    path = first.save_checkpoint()
    first.close()
    out = tmp_path / "resumed.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(config.to_dict()), str(path), str(out), str(N)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(path)

    expected = straight.state_dict()
    resumed = load(out, target=expected)
    exp_meta, got_meta = json.loads(expected.pop("meta")), json.loads(resumed.pop("meta"))
    assert got_meta["step"] == exp_meta["step"] == 2 * N
    assert got_meta["trackers"] == exp_meta["trackers"]
    exp_leaves = jax.tree_util.tree_flatten_with_path(expected)[0]
    got_leaves = jax.tree_util.tree_flatten_with_path(resumed)[0]
    assert len(exp_leaves) == len(got_leaves) > 10
    names = set()
    for (path_e, e), (path_g, g) in zip(exp_leaves, got_leaves, strict=True):
        name = jax.tree_util.keystr(path_e)
        names.add(name.split("]")[0])
        assert jax.tree_util.keystr(path_g) == name
        e, g = np.asarray(e), np.asarray(g)
        assert e.dtype == g.dtype and e.shape == g.shape, name
        assert e.tobytes() == g.tobytes(), f"{name} differs after resume"
    assert {"['params'", "['agent_params'", "['opt_state'", "['prng_key'", "['env'"} <= names
