"""Judges score a whole group of trajectories relative to each other (RULER-style)."""

from __future__ import annotations

import json
import math
import re
import statistics
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._art import ArtTrajectory, ArtTrajectoryGroup
from ._errors import InvalidRecordError, TrajectoryError


class JudgeError(TrajectoryError):
    """A judge could not score a group (after its retries); the group is skipped, not lost."""

    def __init__(self, reason: str, calls: Sequence[CallStat] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.calls = list(calls)


@dataclass(frozen=True)
class CallStat:
    """One request a judge made: latency, tokens, and how it ended."""

    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outcome: str = "ok"  # ok | timeout | http_error | malformed


@dataclass(frozen=True)
class GroupScore:
    """Scores in [0, 1], one per trajectory in group order, with explanations."""

    scores: list[float]
    explanations: list[str]
    calls: list[CallStat] = field(default_factory=list)


class Judge(ABC):
    """Scores every trajectory of a group relative to the others, in [0, 1]."""

    name: str = "judge"

    @abstractmethod
    def score_group(self, group: ArtTrajectoryGroup) -> GroupScore:
        """Score a group.

        Raises:
            JudgeError: the group cannot be scored (the reason is recorded as a skip).
        """


def original_reward(t: ArtTrajectory) -> float:
    """The reward before any judge: ``metrics["independent_reward"]`` once judged."""
    v = t.metrics.get("independent_reward", t.reward)
    return float(v)


def apply_scores(
    group: ArtTrajectoryGroup, score: GroupScore, judge_name: str
) -> ArtTrajectoryGroup:
    """A copy of ``group`` whose rewards are the judge's scores.

    ``metrics["independent_reward"]`` keeps the original reward (also on a re-judge),
    ``metrics["ruler_score"]`` the score, and the explanation is appended to ``logs``.
    """
    n = len(group.trajectories)
    if len(score.scores) != n or len(score.explanations) != n:
        raise JudgeError(f"{judge_name}: {len(score.scores)} scores for {n} trajectories")
    out = []
    for t, s, why in zip(group.trajectories, score.scores, score.explanations, strict=True):
        if not (isinstance(s, int | float) and math.isfinite(s) and 0.0 <= s <= 1.0):
            raise JudgeError(f"{judge_name}: score {s!r} is not in [0, 1]")
        metrics = {**t.metrics, "independent_reward": original_reward(t), "ruler_score": float(s)}
        out.append(
            t.model_copy(
                update={
                    "reward": float(s),
                    "metrics": metrics,
                    "logs": [*t.logs, f"{judge_name} explanation: {why}"],
                }
            )
        )
    return group.model_copy(update={"trajectories": out})


@dataclass(frozen=True)
class JudgeSkip:
    """A group the judge could not score; ``group`` is the untouched original."""

    group_index: int
    reason: str
    group: ArtTrajectoryGroup


@dataclass
class JudgeReport:
    """What judging cost: groups judged and skipped, calls, retries, latency and tokens."""

    judge: str
    groups: int = 0
    judged: int = 0
    already_judged: int = 0
    skipped: int = 0
    calls: int = 0
    failed_calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    latency_s_total: float = 0.0
    latency_s_p50: float = 0.0
    latency_s_max: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    skips: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JudgeResult:
    """Judged groups (in input order, skipped ones left out) plus the skips and the report."""

    groups: list[ArtTrajectoryGroup]
    skipped: list[JudgeSkip]
    report: JudgeReport


def is_judged(group: ArtTrajectoryGroup) -> bool:
    """Whether a judge scored every trajectory of ``group`` (``metrics["ruler_score"]``)."""
    return bool(group.trajectories) and all("ruler_score" in t.metrics for t in group.trajectories)


def judge_groups(
    judge: Judge,
    groups: Sequence[ArtTrajectoryGroup],
    *,
    keep_judged: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> JudgeResult:
    """Score each group; a group that fails is skipped visibly (``result.skipped``) with its reason.

    With ``keep_judged``, a group that a judge already scored (`is_judged`, e.g. a file
    written by ``trainsvc-traj judge --judge llm``) keeps its scores and is counted in
    ``report.already_judged`` instead of being judged again. ``progress(done, total)``
    is called after each group (an LLM judge takes seconds per group).
    """
    report = JudgeReport(judge=judge.name, groups=len(groups))
    stats: list[CallStat] = []
    judged: list[ArtTrajectoryGroup] = []
    skipped: list[JudgeSkip] = []
    for gi, group in enumerate(groups):
        if keep_judged and is_judged(group):
            judged.append(group)
            report.already_judged += 1
        else:
            try:
                if len(group.trajectories) < 1:
                    raise JudgeError("empty group")
                score = judge.score_group(group)
                stats.extend(score.calls)
                judged.append(apply_scores(group, score, judge.name))
            except JudgeError as e:
                stats.extend(e.calls)
                skipped.append(JudgeSkip(gi, e.reason, group))
                report.skips.append({"group_index": gi, "reason": e.reason})
        if progress is not None:
            progress(gi + 1, len(groups))
    report.judged, report.skipped = len(judged) - report.already_judged, len(skipped)
    report.calls = len(stats)
    report.failed_calls = sum(1 for s in stats if s.outcome != "ok")
    for s in stats:
        report.outcomes[s.outcome] = report.outcomes.get(s.outcome, 0) + 1
    lat = [s.latency_s for s in stats]
    report.latency_s_total = sum(lat)
    report.latency_s_p50 = statistics.median(lat) if lat else 0.0
    report.latency_s_max = max(lat, default=0.0)
    report.prompt_tokens = sum(s.prompt_tokens for s in stats)
    report.completion_tokens = sum(s.completion_tokens for s in stats)
    price = getattr(judge, "price_per_1m_tokens", (0.0, 0.0))
    report.cost_usd = (report.prompt_tokens * price[0] + report.completion_tokens * price[1]) / 1e6
    return JudgeResult(judged, skipped, report)


Rule = tuple[str, float, Callable[[ArtTrajectory], float]]


class RuleJudge(Judge):
    """Offline judge: a weighted sum of rules per trajectory, min-max scaled within the group.

    The default rule is the trajectory's original (independent) reward, so the best
    trajectory of a group scores 1, the worst 0; a group whose raw scores are all equal
    scores 0.5 throughout.

    Args:
        rules: ``(name, weight, fn(trajectory) -> float)`` triples.
    """

    name = "rule"

    def __init__(self, rules: Sequence[Rule] | None = None) -> None:
        self.rules: list[Rule] = list(rules or [("reward", 1.0, original_reward)])
        if not self.rules:
            raise InvalidRecordError("rules", "need at least one rule")

    def score_group(self, group: ArtTrajectoryGroup) -> GroupScore:
        parts = [[(name, w * fn(t)) for name, w, fn in self.rules] for t in group.trajectories]
        raw = [math.fsum(v for _, v in p) for p in parts]
        if not all(math.isfinite(r) for r in raw):
            raise JudgeError("a rule returned a non-finite value")
        lo, hi = min(raw), max(raw)
        scores = [0.5 if hi == lo else (r - lo) / (hi - lo) for r in raw]
        order = sorted(range(len(raw)), key=lambda i: -raw[i])
        rank = {i: k + 1 for k, i in enumerate(order)}
        why = [
            f"rank {rank[i]} of {len(raw)}; " + ", ".join(f"{name}={v:.6g}" for name, v in p)
            for i, p in enumerate(parts)
        ]
        return GroupScore(scores, why)


DEFAULT_RUBRIC = """\
- A trajectory that achieves its goal should score higher than one that does not.
- Among trajectories that achieve the goal, more efficient ones score higher.
- Use the whole range: the best trajectory of the group near 1, the worst near 0."""

_SCHEMA = {
    "type": "object",
    "properties": {
        "scores": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "trajectory_id": {"type": "string"},
                    "explanation": {"type": "string"},
                    "score": {"type": "number"},
                },
                "required": ["trajectory_id", "explanation", "score"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["scores"],
    "additionalProperties": False,
}


def _render(t: ArtTrajectory) -> list[dict[str, Any]]:
    out = []
    for m in t.messages_and_choices:
        if "finish_reason" in m:
            out.append({"role": "assistant", "content": m["message"].get("content")})
        else:
            out.append({"role": m.get("role"), "content": m.get("content")})
    return out


def parse_scores(content: str, n: int) -> tuple[list[float], list[str]]:
    """Parse the judge's JSON (code fences allowed) into n scores and explanations.

    Raises:
        ValueError: not JSON, wrong shape, wrong ids, or a score outside [0, 1].
    """
    text = content.strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    if fenced:
        text = fenced.group(1)
    doc = json.loads(text)
    items = doc.get("scores") if isinstance(doc, dict) else None
    if not isinstance(items, list) or len(items) != n:
        raise ValueError(f"expected 'scores' with {n} entries")
    by_id: dict[str, tuple[float, str]] = {}
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each score must be an object")
        tid, score, why = item.get("trajectory_id"), item.get("score"), item.get("explanation")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ValueError(f"score of {tid!r} is not a number")
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise ValueError(f"score of {tid!r} is {score!r}, not in [0, 1]")
        by_id[str(tid)] = (float(score), str(why or ""))
    ids = [str(i + 1) for i in range(n)]
    if sorted(by_id) != sorted(ids):
        raise ValueError(f"trajectory_id values must be {ids}")
    return [by_id[i][0] for i in ids], [by_id[i][1] for i in ids]


class LLMJudge(Judge):
    """RULER-style judge on any OpenAI-compatible ``/chat/completions`` endpoint.

    One request per group: a system message with the rubric, a user message with every
    trajectory; the answer must be JSON ``{"scores": [{"trajectory_id", "explanation",
    "score"}]}`` (requested with ``response_format`` json_schema; code fences tolerated).
    Timeouts, HTTP errors and malformed answers are retried ``max_retries`` times with
    backoff, then the group is skipped with the reason.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: the judge model's name.
        rubric: what a good trajectory is.
        price_per_1m_tokens: (prompt, completion) USD per million tokens, for the report.
    """

    name = "llm"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        rubric: str = DEFAULT_RUBRIC,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        temperature: float = 0.0,
        price_per_1m_tokens: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidRecordError("base_url", f"must be an http(s) URL, got {base_url!r}")
        if timeout_s <= 0:
            raise InvalidRecordError("timeout_s", f"must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise InvalidRecordError("max_retries", f"must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.rubric = rubric
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.temperature = temperature
        self.price_per_1m_tokens = price_per_1m_tokens

    def _messages(self, group: ArtTrajectoryGroup) -> list[dict[str, str]]:
        system = (
            "You are a judge. Compare the trajectories of one group, which all attempt the "
            "same task, and score each from 0 to 1 relative to the others.\n\nRubric:\n"
            f"{self.rubric}\n\nAnswer with JSON only: "
            '{"scores": [{"trajectory_id": "1", "explanation": "...", "score": 0.0}, ...]} '
            "with one entry per trajectory."
        )
        body = "\n\n".join(
            f'<trajectory id="{i + 1}">\n{json.dumps(_render(t), ensure_ascii=False)}\n</trajectory>'
            for i, t in enumerate(group.trajectories)
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": body}]

    def score_group(self, group: ArtTrajectoryGroup) -> GroupScore:
        payload = json.dumps(
            {
                "model": self.model,
                "messages": self._messages(group),
                "temperature": self.temperature,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "ruler_scores", "schema": _SCHEMA, "strict": True},
                },
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        calls: list[CallStat] = []
        reasons: list[str] = []
        n = len(group.trajectories)
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            start = time.perf_counter()
            req = urllib.request.Request(
                f"{self.base_url}/chat/completions", data=payload, headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    doc = json.loads(resp.read())
            except TimeoutError as e:
                calls.append(CallStat(time.perf_counter() - start, outcome="timeout"))
                reasons.append(f"timeout after {self.timeout_s}s ({e})")
                continue
            except urllib.error.HTTPError as e:
                calls.append(CallStat(time.perf_counter() - start, outcome="http_error"))
                reasons.append(f"HTTP {e.code}")
                continue
            except urllib.error.URLError as e:
                outcome = "timeout" if isinstance(e.reason, TimeoutError) else "http_error"
                calls.append(CallStat(time.perf_counter() - start, outcome=outcome))
                reasons.append(f"{outcome}: {e.reason}")
                continue
            except (json.JSONDecodeError, OSError) as e:
                calls.append(CallStat(time.perf_counter() - start, outcome="malformed"))
                reasons.append(f"malformed response body: {e}")
                continue
            latency = time.perf_counter() - start
            usage = doc.get("usage") or {} if isinstance(doc, dict) else {}
            pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            try:
                content = doc["choices"][0]["message"]["content"]
                scores, why = parse_scores(str(content), n)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                calls.append(CallStat(latency, pt, ct, outcome="malformed"))
                reasons.append(f"malformed scores: {e}")
                continue
            calls.append(CallStat(latency, pt, ct))
            return GroupScore(scores, why, calls)
        raise JudgeError(f"{len(calls)} attempts failed: " + "; ".join(reasons), calls)
