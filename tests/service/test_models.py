"""Model versions through a real service: two lora runs are registered from their
checkpoints (exported by the service), promoted to a traffic split through the CLI,
served on the OpenAI endpoint to the official `openai` client (sticky per user, the
service's token as api_key), recorded by trajectory header, rolled back, and still
there after a restart; every change is an event with the token's principal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import trainsvc_trajectories as tt
from trainsvc_client import InvalidArgumentError, NotFoundError, TrainsvcError, pb

from .conftest import TERMINAL, Service, free_port

TOKEN = "model-registry-token-0123456789"


def cli(svc: Service, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from trainsvc_client._cli import main; main()", *args]
    cmd += ["--server", svc.address, "--token", token]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_register_serve_route_record_rollback_and_restart(
    start_service: Any, lm_inputs: Any, wait_for: Any, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    db = f"sqlite:///{tmp_path}/trajectories.db"
    extra = [
        "--token-file", str(token_file), "--input-dir", str(lm_inputs.root),
        "--openai-listen", f"127.0.0.1:{port}", "--trajectory-db", db,
        "--token-principal", "ci-bot",
    ]  # fmt: skip
    svc: Service = start_service(extra=extra, token=TOKEN)
    with svc.client(TOKEN) as c:
        runs = [
            c.create_run("lora", step_budget=4, seed=seed, config=lm_inputs.config())
            for seed in (1, 2)
        ]
        for run in runs:
            done = wait_for(c, run.name, lambda r: r.state in TERMINAL, timeout=300)
            assert done.state == pb.Run.COMPLETED, done.state_message
        with pytest.raises(NotFoundError, match="no-such-run"):
            c.models.register("trader", "", source_run="runs/no-such-run")
        with pytest.raises(InvalidArgumentError) as info:
            c.models.register("trader", "", source_run="jobs/x")
        assert info.value.field == "source_run"

    # v1 through the CLI (the service exports the run's newest checkpoint), v2 through the API
    out = cli(svc, "models", "register", "trader", "", "--source-run", runs[0].name, "--json")
    assert out.returncode == 0, out.stderr
    v1 = json.loads(out.stdout)
    assert v1["version"] == "1" and v1["artifact_kind"] == "adapter"
    assert v1["base_model"] == str(lm_inputs.model) and v1["source_checkpoint"].startswith(
        runs[0].name + "/checkpoints/"
    )
    with svc.client(TOKEN) as c:
        v2 = c.models.register("trader", "", source_run=runs[1].name, reason="seed 2")
        assert v2.version == 2 and v2.artifact_sha256 != v1["artifact_sha256"]
    assert cli(svc, "models", "promote", "trader", "1").returncode == 0
    out = cli(svc, "models", "promote", "trader", "2", "--fraction", "0.5", "--reason", "canary")
    assert out.returncode == 0 and "v1: 50%, v2: 50%" in out.stdout, out.stdout + out.stderr
    bad = cli(svc, "models", "traffic", "trader", "1=0.7", "2=0.2")
    assert bad.returncode == 1 and "sum to 1" in bad.stderr

    base_url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["trader"]

    def ask(user: str, **kw: Any) -> str:
        reply = client.chat.completions.create(
            model="trader",
            messages=[{"role": "user", "content": "weather in Riga in celsius"}],
            max_tokens=8,
            temperature=0,
            user=user,
            **kw,
        )
        return reply.choices[0].message.content or ""

    answers = {f"agent-{i}": ask(f"agent-{i}") for i in range(10)}
    assert all(ask(u) == a for u, a in answers.items())  # sticky per user
    ask("agent-0", extra_headers={"X-Trajectory-Id": "ep-1", "X-Scenario-Id": "riga"})
    reward = openai.OpenAI(base_url=base_url, api_key=TOKEN).post(
        "/trajectories/ep-1/end", body={"reward": 1.0}, cast_to=object
    )
    assert reward == {"ok": True}

    out = cli(svc, "models", "rollback", "trader", "--yes", "--reason", "regression")
    assert out.returncode == 0 and "v1: 100%" in out.stdout, out.stdout + out.stderr
    with svc.client(TOKEN) as c:
        events = c.models.events("trader")
        assert [e.type for e in events] == [
            "registered", "registered", "promoted", "promoted", "rolled_back",
        ]  # fmt: skip
        assert {e.principal for e in events} == {"ci-bot"}
        with pytest.raises(TrainsvcError, match="no previous deployment"):
            c.models.rollback("never-deployed")
    assert svc.terminate() == 0

    with tt.Store(db) as store:  # the call was recorded, as the agent's trajectory
        [window] = store.windows()
        [traj] = store.trajectories(window.window_id)
    assert traj.status == "completed" and traj.scenario_id == "riga"
    assert traj.agent_id == "agent-0" and traj.steps[0].reward == 1.0
    assert traj.llm_calls[0].model.startswith("trader@v")

    again: Service = start_service(svc.data_dir, extra=extra, token=TOKEN)
    with again.client(TOKEN) as c:
        (model,) = c.models.list()
        assert [v.version for v in model.versions] == [1, 2]
        assert dict(model.deployment.traffic) == {1: 1.0}
    # Served again after the restart, by version 1 alone: every user gets one answer.
    after = {ask(u) for u in answers}
    assert len(after) == 1 and after <= set(answers.values())
