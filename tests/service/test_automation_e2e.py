"""The model automation end to end, with real processes.

Agent processes (the official `openai` client against the service's OpenAI endpoint)
answer two scenarios and report their environment's rewards; the scenario ``oslo``
is held out. The automation, on a 1-second schedule, trains a `grpo` run on the new
window, registers the version, evaluates it against the deployed one on the held-out
scenario with the same LLM judge that scored the training data (a local fake of an
OpenAI-compatible judge), promotes it to 20%, soaks, and promotes it fully; the
service is killed with SIGKILL in the middle of the soak and the cycle goes on after
the restart with nothing lost. The next version is deliberately worse in the agents'
world (their environment takes reward away from its answers): the soak sees its live
reward fall behind and the automation rolls it back by itself.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from trainsvc_client import Client
from trainsvc_trajectories.testing import LocalOpenAI

from .conftest import Service, free_port

pytestmark = pytest.mark.slow(45)

TOKEN = "automation-token-0123456789abcdef"
PROMPTS = {"riga": "Describe Riga in one word.", "oslo": "Describe Oslo in one word."}


def score(text: str) -> float:
    """The agents' world: answers with more distinct letters are better (in [0, 1])."""
    return min(1.0, len({c for c in text.lower() if c.isalpha()}) / 8)


AGENT = f"""
import sys, uuid
import openai

PROMPTS = {PROMPTS!r}
def score(text):
    return min(1.0, len({{c for c in text.lower() if c.isalpha()}}) / 8)

base_url, token, window, bad = sys.argv[1:5]
plan = [item.split(":") for item in sys.argv[5].split(",")]
client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=2)
for agent, scenario in plan:
    tid = uuid.uuid4().hex
    raw = client.chat.completions.with_raw_response.create(
        model="trader",
        messages=[{{"role": "user", "content": PROMPTS[scenario]}}],
        max_tokens=6,
        temperature=1.0,
        user=agent,
        extra_headers={{"X-Trajectory-Id": tid, "X-Scenario-Id": scenario, "X-Window-Id": window}},
    )
    version = raw.headers.get("x-trainsvc-version")
    reward = score(raw.parse().choices[0].message.content or "")
    if version == bad:
        reward -= 0.5  # this version's answers do badly in the world
    client.post(f"/trajectories/{{tid}}/end", body={{"reward": reward}}, cast_to=object)
    print(agent, version, reward, flush=True)
"""


def judge_answer(body: dict[str, Any], mode: str) -> str:
    """The LLM judge: scores each trajectory's last answer with the agents' `score`."""
    blocks = re.findall(
        r'<trajectory id="(\d+)">\n(.*?)\n</trajectory>', body["messages"][-1]["content"], re.S
    )
    scores = []
    for tid, doc in blocks:
        said = next(m["content"] for m in reversed(json.loads(doc)) if m["role"] == "assistant")
        scores.append({"trajectory_id": tid, "explanation": "letters", "score": score(said)})
    return json.dumps({"scores": scores})


def run_agents(url: str, window: str, plan: list[tuple[str, str]], bad: str = "") -> list[str]:
    """Runs the plan's episodes in 2 agent processes; their output lines."""
    procs = []
    for half in (plan[0::2], plan[1::2]):
        episodes = ",".join(f"{a}:{s}" for a, s in half)
        cmd = [sys.executable, "-c", AGENT, url, TOKEN, window, bad or "-", episodes]
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        lines += out.splitlines()
    return lines


def wait_event(c: Client, action: str, after: int, timeout: float = 300.0) -> Any:
    """The first automation event with ``action`` after sequence ``after``."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        for e in c.models.events("trader", after=after):
            if e.type == "automation":
                details = json.loads(e.details_json)
                seen.append(f"{details['action']}: {e.reason}")
                if details["action"] == action:
                    return e
                if details["action"] == "fail":
                    pytest.fail(f"the automation failed: {e.reason}")
        time.sleep(0.5)
    pytest.fail(f"no {action!r} decision within {timeout} s; decisions: {seen[-5:]}")


@pytest.fixture
def judge() -> Iterator[LocalOpenAI]:
    with LocalOpenAI(judge_answer) as server:
        yield server


def test_automation_trains_promotes_soaks_and_rolls_back_a_worse_version(
    start_service: Callable[..., Service], lm_inputs: Any, judge: LocalOpenAI, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    extra = [
        "--token-file", str(token_file), "--input-dir", str(lm_inputs.root),
        "--openai-listen", f"127.0.0.1:{port}",
        "--trajectory-db", f"sqlite:///{tmp_path}/trajectories.db",
        "--automation-poll", "0.5", "--metrics-listen", "127.0.0.1:0",
    ]  # fmt: skip
    svc = start_service(extra=extra, token=TOKEN)
    url = f"http://127.0.0.1:{port}/v1"
    with svc.client(TOKEN) as c:
        c.models.register("trader", str(lm_inputs.model), artifact_kind="full", reason="base")
        c.models.promote("trader", 1)

    agents = [f"agent-{i}" for i in range(12)]
    lines = run_agents(url, "w1", [(a, s) for a in agents for s in ("riga", "oslo")])
    assert {line.split()[1] for line in lines} == {"1"}  # every call served by version 1

    policy = {
        "enabled": True, "interval_seconds": 1, "min_new_trajectories": 10,
        "step_budget": 2, "seed": 3, "holdout_scenarios": ["oslo"], "eval_samples": 2,
        "grpo_overrides": {"grpo.max_new_tokens": "6"},
        "judge": "llm", "judge_base_url": judge.url, "judge_model": "judge",
        "margin": -1.0, "initial_fraction": 0.2,
        "soak_seconds": 1, "min_soak_trajectories": 2, "regression_margin": 1.0,
    }  # fmt: skip
    with svc.client(TOKEN) as c:
        c.models.set_automation("trader", {**policy, "enabled": False}, reason="try it")
        (dry,) = c.models.run_automation("trader", dry_run=True).decisions
        assert (dry.action, dry.dry_run) == ("train", True)
        assert json.loads(dry.details_json)["new_trajectories"] == 12  # oslo is held out
        assert list(c.list_runs()) == []  # a dry run starts nothing
        automation = c.models.set_automation("trader", policy, reason="close the loop")
        assert automation.phase == "idle"
        promoted = wait_event(c, "promote", after=0)
        assert promoted.version == 2
        details = json.loads(promoted.details_json)
        assert details["baseline"] == 1 and details["fraction"] == 0.2
        v2 = c.models.get("trader", 2)
        assert v2.evaluation == "passed" and list(v2.windows) == ["w1"]
        assert v2.source_run == "runs/auto-trader-1"
        assert dict(c.models.deployments()[0].traffic) == pytest.approx({1: 0.8, 2: 0.2})
        events_before = [(e.sequence, e.type) for e in c.models.events("trader")]

    # SIGKILL in the middle of the soak; the restarted service carries on from its state
    svc.kill_all()  # SIGKILL to the service and its workers
    svc = start_service(svc.data_dir, extra=extra, token=TOKEN)
    with svc.client(TOKEN) as c:
        assert [(e.sequence, e.type) for e in c.models.events("trader")][: len(events_before)] == (
            events_before
        )
        assert [v.version for v in c.models.list()[0].versions] == [1, 2]
        assert c.models.get_automation("trader").phase in ("soaking", "idle")

    soak_agents = [f"soak-{i}" for i in range(20)]
    lines = run_agents(url, "w2", [(a, "riga") for a in soak_agents])
    served = {line.split()[0]: line.split()[1] for line in lines}
    assert set(served.values()) == {"1", "2"}  # the 20% split sends some agents to version 2
    with svc.client(TOKEN) as c:
        full = wait_event(c, "promote_full", after=events_before[-1][0])
        assert full.version == 2
        assert dict(c.models.deployments()[0].traffic) == {2: 1.0}
        # the next cycle: a soak that does not forgive a regression
        c.models.set_automation(
            "trader", {**policy, "regression_margin": 0.0, "soak_seconds": 600}, reason="strict"
        )
        promoted = wait_event(c, "promote", after=full.sequence)
        assert promoted.version == 3

    lines = run_agents(url, "w3", [(a, "riga") for a in soak_agents], bad="3")
    assert "3" in {line.split()[1] for line in lines}
    with svc.client(TOKEN) as c:
        rollback = wait_event(c, "rollback", after=promoted.sequence)
        assert rollback.version == 3 and rollback.severity == "warning"
        numbers = json.loads(rollback.details_json)
        assert numbers["candidate_reward"] < numbers["baseline_reward"]
        assert dict(c.models.deployments()[0].traffic) == {2: 1.0}
        after = c.models.get_automation("trader")  # its cycle is over (another may start)
        assert after.phase != "soaking" and after.candidate_version != 3
        types = [e.type for e in c.models.events("trader")]
        assert types.count("registered") == 3 and "rolled_back" in types

    scrape = urllib.request.Request(
        f"http://127.0.0.1:{svc.metrics_port()}/metrics",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(scrape, timeout=10) as r:
        scraped = r.read().decode()
    assert 'trainsvc_automation_regressions_total{model="trader"} 1.0' in scraped
    assert 'trainsvc_automation_decisions_total{action="rollback",model="trader"} 1.0' in scraped
