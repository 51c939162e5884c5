"""Run presets the page can start with one click."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainsvc_api.v1 import trainsvc_pb2 as pb


@dataclass(frozen=True)
class Preset:
    """A named run template: kind, typed config fields, budget and checkpoint interval."""

    id: str
    label: str
    kind: str
    step_budget: int
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint_interval: int = 0

    def create_args(self, seed: int) -> dict[str, Any]:
        """The keyword arguments of `AsyncClient.create_run` that start this preset."""
        config_type = pb.EmergenceConfig if self.kind == "emergence" else pb.OthelloConfig
        return {
            "kind": self.kind,
            "step_budget": self.step_budget,
            "seed": seed,
            "config": config_type(**self.config),
            "checkpoint_policy": pb.CheckpointPolicy(interval_steps=self.checkpoint_interval),
            "display_name": self.label,
        }

    def request(self, seed: int) -> pb.CreateRunRequest:
        """The `CreateRun` request that starts this preset with `seed`."""
        run = pb.Run(
            display_name=self.label,
            seed=seed,
            step_budget=self.step_budget,
            checkpoint_policy=pb.CheckpointPolicy(interval_steps=self.checkpoint_interval),
        )
        if self.kind == "emergence":
            run.kind = pb.Run.EMERGENCE
            run.emergence.CopyFrom(pb.EmergenceConfig(**self.config))
        else:
            run.kind = pb.Run.OTHELLO
            run.othello.CopyFrom(pb.OthelloConfig(**self.config))
        return pb.CreateRunRequest(run=run)

    def json(self) -> dict[str, str]:
        """The preset as the `hello` message lists it."""
        return {"id": self.id, "label": self.label, "kind": self.kind}


PRESETS: dict[str, Preset] = {
    p.id: p
    for p in (
        Preset(
            "emergence-demo",
            "Emergence · 32 agents, 64×64 field",
            "emergence",
            step_budget=20_000,
            config={"num_agents": 32, "field_height": 64, "field_width": 64, "frame_interval": 2},
        ),
        Preset(
            "emergence-tiny",
            "Emergence · tiny (8 agents, 16×16)",
            "emergence",
            step_budget=2_000,
            config={
                "num_agents": 8,
                "field_height": 16,
                "field_width": 16,
                "num_envs": 2,
                "rollout_length": 8,
                "frame_interval": 1,
            },
            checkpoint_interval=500,
        ),
        Preset(
            "othello-demo",
            "Othello · self-play TD(λ), depth 1",
            "othello",
            step_budget=200_000,
            config={"search_depth": 1, "threads": 1, "frame_interval": 1},
        ),
    )
}
"""The built-in presets, by id."""
