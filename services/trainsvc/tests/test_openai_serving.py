"""The service's OpenAI endpoint with the official `openai` client over a real socket:
deployments routed by traffic (sticky per user), versions loaded from verified
artifacts (a full model and a PEFT adapter), calls recorded into the trajectory
store by header, rewards and ends posted, clear errors."""

from __future__ import annotations

import collections
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import openai
import pytest
import trainsvc_trajectories as tt
from trainsvc._artifacts import ArtifactStore
from trainsvc._model_registry import ModelRegistry
from trainsvc._openai_serving import CallRecorder, DeployedEngines, serving_app
from trainsvc._paths import InputRoots
from trainsvc_lm import LoraConfig, export_peft, load_model
from trainsvc_lm._lora import init_lora
from trainsvc_lm._openai_app import ServerThread
from trainsvc_lm._tiny import init_tiny


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base model and a PEFT adapter (non-zero B, so it changes the outputs)."""
    root = tmp_path_factory.mktemp("inputs")
    base = root / "base"
    init_tiny(base, "llama", seed=0)
    config, _ = load_model(base)
    lora_config = LoraConfig(rank=8, alpha=16)
    lora = init_lora(lora_config, config, jax.random.PRNGKey(1))
    rng = np.random.default_rng(2)
    lora = {
        t: {"a": ab["a"], "b": rng.normal(0, 0.5, np.shape(ab["b"])).astype(np.float32)}
        for t, ab in lora.items()
    }
    export_peft(root / "adapter", lora, lora_config, base_model_name_or_path=str(base))
    return root


@pytest.fixture
def endpoint(inputs: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    registry = ModelRegistry(tmp_path / "models.db")
    store = ArtifactStore(tmp_path / "artifacts")
    full = store.put("trader", inputs / "base")
    adapter = store.put("trader", inputs / "adapter")
    common = {"base_model": str(inputs / "base")}
    registry.register(
        "trader", artifact_uri=full.uri, artifact_sha256=full.sha256, artifact_kind="full", **common
    )
    registry.register(
        "trader",
        artifact_uri=adapter.uri,
        artifact_sha256=adapter.sha256,
        artifact_kind="adapter",
        **common,
    )
    engines = DeployedEngines(registry, store, tmp_path / "cache", InputRoots.of([inputs]), slots=4)
    db = f"sqlite:///{tmp_path}/traj.db"
    recorder = tt.TrajectoryRecorder(db)
    server = ServerThread(serving_app(engines, CallRecorder(recorder)))
    try:
        yield {"url": server.url, "registry": registry, "db": db, "recorder": recorder}
    finally:
        server.close()
        engines.close()
        recorder.close()
        registry.close()


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_traffic_split_is_sticky_per_user_and_calls_are_recorded(endpoint: dict[str, Any]) -> None:
    registry: ModelRegistry = endpoint["registry"]
    client = openai.OpenAI(base_url=endpoint["url"] + "/v1", api_key="local", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="trader"):
        client.chat.completions.create(model="trader", messages=[{"role": "user", "content": "hi"}])
    registry.promote("trader", 1)
    registry.promote("trader", 2, 0.5)
    assert [m.id for m in client.models.list().data] == ["trader"]

    def ask(user: str) -> str:
        out = client.chat.completions.create(
            model="trader",
            messages=[{"role": "user", "content": "buy or sell?"}],
            max_tokens=6,
            temperature=0,
            user=user,
        )
        return out.choices[0].message.content or ""

    answers = {u: [ask(u), ask(u)] for u in (f"agent-{i}" for i in range(12))}
    assert all(a == b for a, b in answers.values())  # sticky and deterministic
    assert len({a for a, _ in answers.values()}) == 2  # the two versions answer differently
    served = {}  # each reply names the version that wrote it, for streams too
    for user in answers:
        for stream in (False, True):
            raw = client.chat.completions.with_raw_response.create(
                model="trader",
                messages=[{"role": "user", "content": "buy or sell?"}],
                max_tokens=6,
                temperature=0,
                user=user,
                stream=stream,
            )
            served.setdefault(user, set()).add(raw.headers["x-trainsvc-version"])
            reply = raw.parse()
            if stream:
                with reply:  # read to the end (and release the connection)
                    assert [c for c in reply if c.choices]
    assert all(len(v) == 1 for v in served.values())
    by_version = {next(iter(v)): answers[u][0] for u, v in served.items()}
    assert sorted(by_version) == ["1", "2"] and len(set(by_version.values())) == 2

    headers = {"X-Trajectory-Id": "t-1", "X-Agent-Id": "agent-0", "X-Scenario-Id": "s1"}
    for turn in ("price 10?", "price 12?"):
        client.chat.completions.create(
            model="trader",
            messages=[{"role": "system", "content": "trade"}, {"role": "user", "content": turn}],
            max_tokens=4,
            extra_headers=headers,
        )
    base = endpoint["url"] + "/v1/trajectories"
    assert _post(f"{base}/t-1/reward", {"reward": 0.75}) == (200, {"ok": True})
    status, error = _post(f"{base}/t-1/reward", {"reward": 0.5})
    assert status == 400 and error["error"]["param"] == "trajectory"  # no call waits for it
    status, error = _post(f"{base}/t-1/end", {"reward": float("nan")})
    assert status == 400 and error["error"]["param"] == "reward"
    assert _post(f"{base}/t-1/end", {"final_metrics": {"pnl": 3.5}}) == (200, {"ok": True})
    status, error = _post(f"{base}/nope/end", {})
    assert status == 400 and "not an open trajectory" in error["error"]["message"]

    endpoint["recorder"].flush()
    with tt.Store(endpoint["db"]) as store:
        (traj,) = [t for w in store.windows() for t in store.trajectories(w.window_id)]
    assert traj.status == "completed" and traj.agent_id == "agent-0" and traj.scenario_id == "s1"
    assert traj.metadata["external_id"] == "t-1"
    assert [s.reward for s in traj.steps] == [None, 0.75]
    version = collections.Counter(c.model for c in traj.llm_calls)
    assert len(version) == 1 and next(iter(version)).startswith("trader@v")
    assert [c.user_prompt for c in traj.llm_calls] == ["price 10?", "price 12?"]
    assert traj.llm_calls[0].system_prompt == "trade"
