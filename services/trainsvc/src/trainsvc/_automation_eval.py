"""Held-out evaluation of model versions, run by the automation in a child process.

``python -m trainsvc._automation_eval REQUEST.json`` loads each version (a model
directory, with a PEFT adapter when the version is one), samples ``samples``
completions per held-out prompt from every version, scores them with the policy's
judge and prints one JSON line: ``{"scores": {"3": 0.71, "2": 0.52}, "counts": ...}``
(or ``{"error": "..."}`` with exit status 1). The service never imports JAX; this
process does, and dies with whatever memory it took.

Judges (the same one that scores the training data):

- ``task:<name>``: a shipped trainsvc-lm task's verifiable reward of each completion
  for the prompt's last user message (absolute, in [0, 1]).
- ``llm``: an LLM judge on an OpenAI-compatible endpoint (RULER-style): for each
  prompt, one group holds every version's completions, so the judge ranks the
  versions against each other; a version's score is its completions' mean.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _sample(
    version: Mapping[str, Any], prompts: Sequence[list[dict[str, Any]]], spec: Mapping[str, Any]
) -> list[list[str]]:
    """``samples`` completions of every prompt from one version."""
    from trainsvc_lm import Engine, SamplingConfig

    engine = Engine.from_dir(version["model_dir"], adapter=version.get("adapter") or None)
    try:
        out = []
        for i, messages in enumerate(prompts):
            text = engine.tokenizer.render_chat(messages, add_generation_prompt=True)
            ids = engine.tokenizer.encode(text)
            streams = [
                engine.submit(
                    ids,
                    SamplingConfig(
                        max_new_tokens=int(spec["max_new_tokens"]),
                        temperature=float(spec["temperature"]),
                        seed=int(spec["seed"]) * 100_003 + i * 1_009 + k,
                    ),
                )
                for k in range(int(spec["samples"]))
            ]
            out.append([s.result().text for s in streams])
        return out
    finally:
        engine.close()


def _last_user(messages: Sequence[Mapping[str, Any]]) -> str:
    return next(str(m["content"]) for m in reversed(messages) if m["role"] == "user")


def _task_scores(
    task_name: str, prompts: Sequence[list[dict[str, Any]]], completions: Sequence[list[str]]
) -> list[float]:
    from trainsvc_lm import TASKS

    if task_name not in TASKS:
        raise ValueError(f"judge task:{task_name}: unknown task (known: {', '.join(TASKS)})")
    task = TASKS[task_name]
    return [
        task.reward(_last_user(p), c)
        for p, cs in zip(prompts, completions, strict=True)
        for c in cs
    ]


def _llm_scores(
    spec: Mapping[str, Any],
    prompts: Sequence[list[dict[str, Any]]],
    by_version: Mapping[str, Sequence[list[str]]],
) -> dict[str, list[float]]:
    import trainsvc_trajectories as tt

    judge = tt.LLMJudge(spec["judge_base_url"], spec["judge_model"])
    names = list(by_version)
    scores: dict[str, list[float]] = {v: [] for v in names}
    for i, messages in enumerate(prompts):
        owners = [v for v in names for _ in by_version[v][i]]
        group = tt.ArtTrajectoryGroup(
            trajectories=[
                tt.ArtTrajectory(
                    messages_and_choices=[*messages, {"role": "assistant", "content": c}]
                )
                for v in names
                for c in by_version[v][i]
            ]
        )
        result = tt.judge_groups(judge, [group])
        if not result.groups:
            continue  # the judge skipped this prompt (its reason is in the report)
        for owner, t in zip(owners, result.groups[0].trajectories, strict=True):
            scores[owner].append(float(t.reward))
    return scores


def evaluate(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every version's mean judged score on the held-out prompts."""
    prompts: list[list[dict[str, Any]]] = spec["prompts"]
    if not prompts:
        raise ValueError("no held-out prompts to evaluate on")
    by_version = {v: _sample(d, prompts, spec) for v, d in spec["versions"].items()}
    judge = str(spec["judge"])
    if judge.startswith("task:"):
        scores = {
            v: _task_scores(judge.removeprefix("task:"), prompts, cs)
            for v, cs in by_version.items()
        }
    else:
        scores = _llm_scores(spec, prompts, by_version)
    return {
        "scores": {v: (sum(s) / len(s) if s else 0.0) for v, s in scores.items()},
        "counts": {v: len(s) for v, s in scores.items()},
        "examples": {v: cs[0][:2] for v, cs in by_version.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = evaluate(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    except Exception as exc:  # the parent reads the reason from the JSON line
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
