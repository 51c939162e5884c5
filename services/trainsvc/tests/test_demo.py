"""The `make run` demo: a config the service accepts, on which emergence shows quickly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from trainsvc._cli import demo_spec
from trainsvc.kinds.emergence import EmergenceKind


def test_demo_learns_visibly_in_its_first_steps(tmp_path: Path) -> None:
    from trainsvc_trainer import Config, Trainer

    spec = demo_spec()
    resolved = EmergenceKind().resolve_config(spec, None)  # type: ignore[arg-type]
    config = Config.from_dict(resolved)
    assert (config.env.height, config.env.width, config.env.n_agents) == (32, 32, 16)
    assert spec.step_budget >= 100 * 8000  # runs long enough to watch
    config = config.replace(
        {"log.save_interval": 0, "log.frame_interval": 0, "log.checkpoint_dir": str(tmp_path)}
    )
    trainer = Trainer(config)
    history = np.array(
        [
            (m["reward"], m["emergence/emergence_index"])
            for m in (trainer.step() for _ in range(1500))
        ]
    )
    trainer.close()
    first, last = history[:150].mean(axis=0), history[-150:].mean(axis=0)
    print(f"reward {first[0]:.3f} -> {last[0]:.3f}, emergence {first[1]:.3f} -> {last[1]:.3f}")
    assert last[0] > 1.1 * first[0]  # reward up by a tenth within 1,500 steps (~10 s)
    assert last[1] > 1.1 * first[1]  # and the emergence index
