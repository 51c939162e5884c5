"""Judges: relative scores in [0, 1], originals kept, failures visible as skips."""

from __future__ import annotations

from typing import Any

import pytest
import trainsvc_trajectories as tt


def groups(n_groups: int = 2, size: int = 4) -> list[tt.ArtTrajectoryGroup]:
    return [
        tt.ArtTrajectoryGroup(
            trajectories=[
                tt.ArtTrajectory(
                    messages_and_choices=[{"role": "user", "content": f"g{g} t{k}"}],
                    reward=float(k * (g + 1)),
                )
                for k in range(size)
            ],
            metadata={"scenario_id": f"s{g}"},
        )
        for g in range(n_groups)
    ]


def test_rule_judge_scales_within_each_group() -> None:
    res = tt.judge_groups(tt.RuleJudge(), groups())
    assert not res.skipped and res.report.judged == 2
    for g, orig in zip(res.groups, groups(), strict=True):
        assert [t.reward for t in g.trajectories] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
        assert [t.metrics["independent_reward"] for t in g.trajectories] == [
            t.reward for t in orig.trajectories
        ]
        assert all(t.metrics["ruler_score"] == t.reward for t in g.trajectories)
        assert g.trajectories[3].logs[-1].startswith("rule explanation: rank 1 of 4")
    # judging again keeps the first original reward
    again = tt.judge_groups(tt.RuleJudge(), res.groups)
    assert [t.metrics["independent_reward"] for t in again.groups[1].trajectories] == [
        0.0,
        2.0,
        4.0,
        6.0,
    ]
    flat = tt.ArtTrajectoryGroup(trajectories=[tt.ArtTrajectory(reward=1.0)] * 3)
    assert [t.reward for t in tt.judge_groups(tt.RuleJudge(), [flat]).groups[0].trajectories] == [
        0.5
    ] * 3


def test_keep_judged_passes_an_earlier_judges_scores_through() -> None:
    """A file judged by another judge (scores unlike the rule's) keeps those scores; an
    unjudged group in the same batch is judged by the rule."""
    [first, second] = groups()
    inverted = tt.apply_scores(first, tt.GroupScore([1.0, 0.6, 0.3, 0.0], ["llm"] * 4), "llm")
    assert tt.is_judged(inverted) and not tt.is_judged(second)
    seen: list[tuple[int, int]] = []
    res = tt.judge_groups(
        tt.RuleJudge(), [inverted, second], keep_judged=True, progress=lambda *a: seen.append(a)
    )
    assert seen == [(1, 2), (2, 2)]  # progress after each group
    assert res.groups[0] == inverted
    assert [t.reward for t in res.groups[1].trajectories] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert (res.report.judged, res.report.already_judged) == (1, 1)
    rejudged = tt.judge_groups(tt.RuleJudge(), [inverted])
    assert [t.reward for t in rejudged.groups[0].trajectories] == pytest.approx(
        [0, 1 / 3, 2 / 3, 1]
    )


def test_llm_judge_parses_structured_output(fake_openai: Any) -> None:
    judge = tt.LLMJudge(fake_openai.url, "judge", timeout_s=5, price_per_1m_tokens=(1.0, 2.0))
    res = tt.judge_groups(judge, groups())
    assert res.report.judged == 2 and res.report.calls == 2 and res.report.failed_calls == 0
    assert res.report.cost_usd == pytest.approx((22 * 1.0 + 14 * 2.0) / 1e6)
    assert [t.reward for t in res.groups[0].trajectories] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    req = fake_openai.requests[0]
    assert req["response_format"]["type"] == "json_schema" and req["model"] == "judge"
    assert "Rubric" in req["messages"][0]["content"]


def test_llm_judge_timeout_and_malformed_are_visible_skips(fake_openai: Any) -> None:
    fake_openai.delay = 1.0
    # group 0: timeout, then malformed content -> skipped; group 1: bad body, then fine
    fake_openai.script = ["timeout", "malformed", "badjson", "ok"]
    judge = tt.LLMJudge(fake_openai.url, "judge", timeout_s=0.3, max_retries=1, backoff_s=0.01)
    gs = groups()
    res = tt.judge_groups(judge, gs)
    assert res.report.judged == 1 and res.report.skipped == 1
    [skip] = res.skipped
    assert skip.group_index == 0 and skip.group == gs[0]  # nothing lost
    assert "timeout" in skip.reason and "malformed scores" in skip.reason
    assert res.report.outcomes == {"timeout": 1, "malformed": 2, "ok": 1}
    assert res.report.skips == [{"group_index": 0, "reason": skip.reason}]
    assert res.groups[0].metadata == {"scenario_id": "s1"}


def test_parse_scores_checks_shape() -> None:
    ok = '```json\n{"scores": [{"trajectory_id": "1", "explanation": "x", "score": 1}]}\n```'
    assert tt.parse_scores(ok, 1) == ([1.0], ["x"])
    for bad, msg in [
        ("nope", "Expecting value"),
        ('{"scores": []}', "1 entries"),
        ('{"scores": [{"trajectory_id": "1", "explanation": "", "score": 2}]}', "not in"),
        ('{"scores": [{"trajectory_id": "9", "explanation": "", "score": 0}]}', "trajectory_id"),
    ]:
        with pytest.raises(ValueError, match=msg):
            tt.parse_scores(bad, 1)
    with pytest.raises(tt.InvalidRecordError, match="base_url"):
        tt.LLMJudge("ftp://x", "m")
