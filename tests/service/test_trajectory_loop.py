"""The recording-to-training loop end to end, with real processes, on SQLite and PostgreSQL.

8 agent processes record 100 trajectories: each asks a local OpenAI-compatible endpoint
(through `wrap_openai`, the official `openai` client) to answer its scenario, then
records the environment's reward. `trainsvc-traj report`, `export` and
`judge --judge llm` run as the CLI (the judge talks to the same local endpoint, which
scores each trajectory's answer), and a `grpo` run of a real service trains on the
judged export: its rewards are the LLM judge's scores, its prompts the recorded
scenarios, and nothing recorded is lost.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_trajectories as tt
from trainsvc_client import pb
from trainsvc_lm import TASKS
from trainsvc_trajectories.testing import (
    LocalOpenAI,
    create_database,
    postgres_server_or_skip,
)

from .conftest import TERMINAL, Service

TASK = TASKS["increment4"]
SCENARIOS = TASK.train_prompts(np.random.default_rng(3), 10)
WRITERS, TRAJECTORIES, STEPS = 8, 100, 6
AGENT_ARGS = (str(WRITERS), str(TRAJECTORIES), ",".join(SCENARIOS))

AGENT = """
import sys
import openai
import trainsvc_trajectories as tt
from trainsvc_lm import TASKS

db, base_url = sys.argv[1], sys.argv[2]
writer, writers, total = (int(x) for x in sys.argv[3:6])
scenarios = sys.argv[6].split(",")
task = TASKS["increment4"]
with tt.TrajectoryRecorder(db) as rec:
    client = openai.OpenAI(base_url=base_url, api_key="local", max_retries=0)
    llm = tt.wrap_openai(client, rec, purpose="answer", action_type="answer")
    for i in range(writer, total, writers):
        k = i % len(scenarios)
        with rec.trajectory(f"agent-{writer}", window_id="w", scenario_id=f"s{k}") as t:
            rec.start_step(t, {"scenario": scenarios[k]})
            out = llm.chat.completions.create(
                model="policy",
                messages=[{"role": "user", "content": scenarios[k]}],
                temperature=1.0,
                max_tokens=4,
            )
            said = out.choices[0].message.content
            rec.complete_step(t, {"answer": said}, task.reward(scenarios[k], said))
    client.close()
"""


def policy_and_judge() -> Any:
    """The endpoint's answers: a noisy increment policy, and a judge that scores each
    trajectory's answer by the positions it gets right."""
    counter = itertools.count()

    def answer(body: dict[str, Any], mode: str) -> str:
        messages = body["messages"]
        if messages[0]["role"] == "system" and messages[0]["content"].startswith("You are a judge"):
            blocks = re.findall(
                r'<trajectory id="(\d+)">\n(.*?)\n</trajectory>', messages[-1]["content"], re.S
            )
            scores = []
            for tid, doc in blocks:
                chat = json.loads(doc)
                prompt = next(m["content"] for m in chat if m["role"] == "user")
                said = next(m["content"] for m in reversed(chat) if m["role"] == "assistant")
                score = TASK.reward(prompt, said)
                scores.append({"trajectory_id": tid, "explanation": "right", "score": score})
            return json.dumps({"scores": scores})
        prompt = messages[-1]["content"]
        rng = random.Random(f"{prompt}/{next(counter)}")
        right = TASK.answer_of(TASK.digits_of(prompt))
        return "".join(c if rng.random() < 0.5 else str(rng.randrange(10)) for c in right)

    return answer


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture(scope="module")
def loop_service(tmp_path_factory: pytest.TempPathFactory, inputs: Path) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("loop") / "data", extra=["--input-dir", str(inputs)])
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.kill_all()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with postgres_server_or_skip() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/trajectories.db"
    return create_database(request.getfixturevalue("pg_server"))


def traj_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from trainsvc_trajectories._cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_recorded_judged_groups_train_a_grpo_run(
    store_url: str, inputs: Path, loop_service: Service, wait_for: Any
) -> None:
    with LocalOpenAI(policy_and_judge()) as endpoint:
        agents = [
            subprocess.Popen(
                [sys.executable, "-c", AGENT, store_url, endpoint.url, str(k), *AGENT_ARGS],
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(WRITERS)
        ]
        for agent in agents:
            _, err = agent.communicate(timeout=180)
            assert agent.returncode == 0, err
        assert len(endpoint.requests) == TRAJECTORIES

        report = traj_cli("report", "--window", "w", "--db", store_url, "--json")
        assert report.returncode == 0, report.stdout + report.stderr
        quality = json.loads(report.stdout)
        assert quality["passed"] and quality["complete_groups"] == len(SCENARIOS)

        tag = store_url.split(":", 1)[0]
        exported, judged = inputs / f"{tag}-w.jsonl", inputs / f"{tag}-w-judged.jsonl"
        out = traj_cli("export", "--window", "w", "--out", str(exported), "--db", store_url)
        assert out.returncode == 0, out.stderr
        out = traj_cli(
            "judge", "--in", str(exported), "--out", str(judged), "--judge", "llm",
            "--base-url", endpoint.url, "--model", "judge", "--json",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["judged"] == len(SCENARIOS)

    groups = tt.read_jsonl(judged)
    rewards = [t.reward for g in groups for t in g.trajectories]
    assert len(rewards) == TRAJECTORIES
    for g in groups:
        for t in g.trajectories:  # the judge's score is the answer's positions right
            prompt = t.messages_and_choices[0]["content"]
            said = t.messages_and_choices[-1]["message"]["content"]
            assert t.reward == TASK.reward(prompt, said)

    with loop_service.client() as c:
        config = {
            "data_file": str(judged),
            "prompts_per_step": 5,
            "grpo.max_new_tokens": 4,
            "model.hidden_size": 32,
            "model.num_layers": 1,
            "model.num_heads": 2,
        }
        run = c.create_run("grpo", step_budget=STEPS, seed=1, config=config)
        frames = []
        for frame in c.stream_frames(run.name, max_rate_hz=100, timeout=300):
            frames.append(frame)
            if frame.step >= STEPS:
                break
        done = wait_for(c, run.name, lambda r: r.state in TERMINAL, timeout=300, what="the run")
    assert done.state == pb.Run.COMPLETED, done.state_message
    assert done.step == STEPS and done.latest_checkpoint
    metrics = done.metrics
    assert min(rewards) <= metrics["reward_mean"] <= max(rewards)
    assert metrics["groups_kept"] > 0 and metrics["train_loss"] != 0.0
    sampled = [f for f in frames if f.lm.sample_prompt]
    assert sampled and all(f.lm.sample_prompt in SCENARIOS for f in sampled)

    with tt.Store(store_url) as store:  # nothing recorded was lost or changed by training
        after = tt.quality_report(store, "w")
    assert after.by_status["completed"] == TRAJECTORIES and after.steps == TRAJECTORIES
