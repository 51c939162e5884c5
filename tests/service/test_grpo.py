"""The `grpo` kind: a GRPO run on a shipped task through a real service, and the rule judge."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from trainsvc_client import InvalidArgumentError, pb

from .conftest import TERMINAL, Service

pytestmark = pytest.mark.slow(35)

SMALL = {
    "task": "increment4",
    "group_size": 4,
    "prompts_per_step": 4,
    "sample_interval": 2,
    "eval_interval": 3,
    "data.eval_prompts": 16,
    "model.hidden_size": 32,
    "model.num_layers": 1,
    "model.num_heads": 2,
}


def _frames(client: Any, name: str, until: Any) -> list[pb.Frame]:
    frames: list[pb.Frame] = []
    stream = client.stream_frames(name, max_rate_hz=100, timeout=300)
    for frame in stream:
        frames.append(frame)
        if until(frames):
            stream.cancel()
            break
    return frames


def test_bad_grpo_config_is_refused_naming_the_field(shared_service: Service) -> None:
    with shared_service.client() as c:
        cases = [
            ({"task": "nope"}, "run.grpo.task"),
            ({}, "run.grpo.task"),
            ({"task": "sort4", "group_size": 1}, "run.grpo.group_size"),
            ({"task": "sort4", "judge": "llm"}, "run.grpo.judge"),
            ({"task": "sort4", "log.checkpoint_dir": "/tmp/x"}, "run.grpo.overrides"),
            ({"task": "sort4", "loss_norm": "mean"}, "run.grpo.loss_norm"),
            ({"task": "sort4", "grpo.beta": -1}, "run.grpo.overrides[grpo.beta]"),
        ]
        for config, field in cases:
            with pytest.raises(InvalidArgumentError) as info:
                c.create_run("grpo", step_budget=10, config=config)
            assert field in str(info.value), (config, str(info.value))


def test_grpo_run_trains_pauses_and_resumes(shared_service: Service, wait_for: Any) -> None:
    with shared_service.client() as c:
        run = c.create_run(
            "grpo",
            step_budget=1_000_000,
            seed=5,
            config=SMALL,
            checkpoint_policy=pb.CheckpointPolicy(interval_steps=5, keep_last=2),
        )
        assert run.kind == pb.Run.GRPO and run.grpo.task == "increment4"
        name = run.name
        frames = _frames(
            c,
            name,
            lambda fs: (
                any(f.lm.sample_step for f in fs) and any("eval_reward" in f.metrics for f in fs)
            ),
        )
        sampled = next(f for f in frames if f.lm.sample_step)
        assert sampled.lm.sample_prompt.endswith(">")
        assert len(sampled.lm.sample_completion) <= 4
        last = frames[-1].metrics
        for key in ("reward_mean", "reward_std", "kl", "clip_fraction", "train_loss"):
            assert key in last, last
        assert 0.0 <= last["reward_mean"] <= 1.0
        paused = c.pause_run(name)
        assert paused.state == pb.Run.PAUSED and paused.step >= 3
        assert paused.latest_checkpoint
        time.sleep(1.0)
        assert c.get_run(name).step == paused.step
        assert c.resume_run(name).state == pb.Run.RUNNING
        wait_for(c, name, lambda r: r.step >= paused.step + 3, what="steps after resume")
        assert "reward_mean" in c.get_run(name).metrics
        c.stop_run(name)
        done = wait_for(c, name, lambda r: r.state in TERMINAL, what="the stop")
        assert done.state == pb.Run.STOPPED


def test_increment_learns_from_chance_with_the_rule_judge(tmp_path: Path) -> None:
    """RL from a random init, rewarded by the trajectory library's RuleJudge (relative
    min-max scores per group), not the task's reward: held-out accuracy >= 0.99."""
    from trainsvc.kinds.grpo import rule_judge_reward
    from trainsvc_lm import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig.from_dict(
        {
            "data": {"task": "increment4", "reward": "judge"},
            "train": {"steps": 130},
            "log": {
                "checkpoint_dir": str(tmp_path),
                "save_interval": 0,
                "eval_interval": 0,
                "sample_interval": 0,
                "frame_interval": 0,
            },
        }
    )
    judge = rule_judge_reward("increment4")
    scores = judge(["1234>"] * 3, ["2345", "2300", "9999"])
    assert scores == [1.0, 0.5, 0.0]
    trainer = GRPOTrainer(cfg, reward_fn=judge)
    assert (trainer.evaluate() or 1) < 0.2
    trainer.run()
    assert (trainer.evaluate() or 0) >= 0.99


def test_offline_groups_from_an_art_jsonl_export_train(tmp_path: Path) -> None:
    """Recorded groups (ART legacy JSONL, as `trainsvc-traj export` writes) are read, judged
    with the RuleJudge, and trained on; behaviour log-probs are recomputed."""
    import trainsvc_trajectories as tt
    from trainsvc.kinds.grpo import read_offline_groups
    from trainsvc_lm import TASKS, GRPOConfig, GRPOTrainer

    task = TASKS["increment4"]
    prompts = task.eval_prompts(6)
    groups = [
        tt.ArtTrajectoryGroup(
            trajectories=[
                tt.ArtTrajectory(
                    messages_and_choices=[
                        {"role": "user", "content": p},
                        {"role": "assistant", "content": c},
                    ],
                    reward=task.reward(p, c),
                    metadata={"scenario_id": f"s{i}", "window_id": "w"},
                )
                for c in (task.answer_of(task.digits_of(p)), "0000", "1234")
            ]
        )
        for i, p in enumerate(prompts)
    ]
    path = tmp_path / "window.jsonl"
    tt.write_jsonl(groups, path)
    offline = read_offline_groups(str(path))
    assert len(offline) == 6 and all(len(g) == 3 for g in offline)
    best = [max(g, key=lambda s: s.reward) for g in offline]
    assert all(s.reward == 1.0 for s in best)  # the judge's relative score of the best
    cfg = GRPOConfig.from_dict(
        {
            "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2},
            "data": {"task": None, "offline_file": str(path)},
            "grpo": {"prompts_per_step": 3},
            "train": {"steps": 3},
            "log": {"checkpoint_dir": str(tmp_path / "ck"), "save_interval": 0},
        }
    )
    trainer = GRPOTrainer(cfg, offline_groups=offline)
    assert trainer.run() == 3
    assert trainer.last_metrics["groups_kept"] == 1.0
    assert trainer.last_metrics["loss"] != 0.0


def test_cli_creates_a_grpo_run_on_a_shipped_task(shared_service: Service) -> None:
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "from trainsvc_client._cli import main; main()"]
    args = ["runs", "create", "--kind", "grpo", "--steps", "2", "--set", "task=sort4"]
    args += ["--set", "group_size=4", "--set", "model.hidden_size=32", "--json"]
    out = subprocess.run(
        [*cmd, *args, "--server", shared_service.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    assert run["kind"] == "GRPO" and run["grpo"]["task"] == "sort4"
    assert run["grpo"]["group_size"] == 4
