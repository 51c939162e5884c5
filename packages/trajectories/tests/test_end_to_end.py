"""8 writer threads record 100 agent trajectories (LLM calls through wrap_openai against a
local fake endpoint), then the window is checked, exported and judged."""

from __future__ import annotations

import threading
from pathlib import Path

import openai
import trainsvc_trajectories as tt
from trainsvc_trajectories.testing import LocalOpenAI as FakeOpenAI

N_TRAJ, N_THREADS, N_STEPS = 100, 8, 3


def run_agents(url: str, fake: FakeOpenAI) -> None:
    with tt.TrajectoryRecorder(url, max_pending=64) as rec:
        client = openai.OpenAI(base_url=fake.url, api_key="test", max_retries=0)
        llm = tt.wrap_openai(client, rec, purpose="decide", action_type="trade")
        errors: list[BaseException] = []

        def writer(k: int) -> None:
            try:
                for i in range(k, N_TRAJ, N_THREADS):
                    scenario = f"scenario-{i % 10}"
                    with rec.trajectory(f"agent-{k}", window_id="w", scenario_id=scenario) as t:
                        for s in range(N_STEPS):
                            rec.start_step(t, {"tick": s, "scenario": scenario})
                            rec.log_provider_access(t, "prices", {"p": i + s})
                            out = llm.chat.completions.create(
                                model="agent-model",
                                messages=[
                                    {"role": "system", "content": "trade well"},
                                    {"role": "user", "content": f"tick {s} of {i}"},
                                ],
                                temperature=0.7,
                                max_tokens=16,
                            )
                            rec.complete_step(
                                t, {"say": out.choices[0].message.content}, (i % 7) / 7
                            )
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(N_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        client.close()
        assert not errors


def test_eight_writers_export_and_judge(
    db_url: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run_agents(db_url, fake_openai)
    with tt.Store(db_url) as store:
        report = tt.quality_report(store, "w")
        groups = tt.window_groups(store, "w")
        some = store.trajectories("w")[0]
    assert report.passed, report.failures
    assert report.by_status["completed"] == N_TRAJ and report.steps == N_TRAJ * N_STEPS
    assert report.llm_step_fraction == 1.0 and report.reward_coverage == 1.0
    assert report.provider_accesses == N_TRAJ * N_STEPS and report.duplicates == 0
    assert report.complete_groups == 10
    [c0, *_] = some.llm_calls
    assert c0.model == "agent-model" and c0.response.startswith("echo: tick 0")
    assert (c0.prompt_tokens, c0.completion_tokens, c0.total_tokens) == (11, 7, 18)
    assert c0.temperature == 0.7 and c0.max_tokens == 16 and c0.latency is not None

    assert sorted(len(g.trajectories) for g in groups) == [10] * 10
    t0 = groups[0].trajectories[0]
    # system once, then user + trainable choice per tick
    roles = [m.get("role") or "choice" for m in t0.messages_and_choices]
    assert roles == ["system"] + ["user", "choice"] * N_STEPS
    assert (
        t0.metadata["window_id"] == "w"
        and t0.metadata["scenario_id"] == groups[0].metadata["scenario_id"]
    )

    pq_path, jl_path = tmp_path / "w.parquet", tmp_path / "w.jsonl"
    tt.write_parquet(groups, pq_path)
    tt.write_jsonl(groups, jl_path)
    assert tt.read_parquet(pq_path) == groups
    assert tt.read_jsonl(jl_path) == groups

    ruled = tt.judge_groups(tt.RuleJudge(), groups)
    assert ruled.report.judged == 10 and not ruled.skipped
    llm = tt.judge_groups(tt.LLMJudge(fake_openai.url, "judge-model", timeout_s=10), groups)
    assert llm.report.judged == 10 and llm.report.calls == 10
    assert llm.report.prompt_tokens == 110 and llm.report.completion_tokens == 70
    for g, orig in zip(llm.groups, groups, strict=True):
        for t, o in zip(g.trajectories, orig.trajectories, strict=True):
            assert t.metrics["independent_reward"] == o.reward
            assert t.metrics["ruler_score"] == t.reward and 0.0 <= t.reward <= 1.0
            assert t.logs[-1].startswith("llm explanation: judged")
