"""Turning a stored window into ART trajectory groups (one group per scenario)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from ._art import ArtTrajectory, ArtTrajectoryGroup
from ._errors import InvalidRecordError, NoCompleteGroupsError
from ._store import Store, StoredTrajectory

RESERVED_METADATA = ("trajectory_id", "agent_id", "window_id", "scenario_id")


def _choice(content: str | None) -> dict[str, Any]:
    """An OpenAI ``Choice`` as ``Choice.model_dump(mode="json")`` writes it."""
    return {
        "finish_reason": "stop",
        "index": 0,
        "logprobs": None,
        "message": {
            "content": content,
            "refusal": None,
            "role": "assistant",
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": None,
        },
    }


def _as_message(item: dict[str, Any]) -> dict[str, Any]:
    if "finish_reason" in item:
        return {"role": "assistant", "content": item["message"]["content"]}
    return item


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def to_art_trajectory(t: StoredTrajectory) -> ArtTrajectory:
    """One stored trajectory as an ART trajectory.

    Each LLM call adds its prompt (the full ``messages`` when recorded, only the part
    not already in the conversation) and its response as a trainable choice; steps go
    to ``logs``; counts and numeric final metrics to ``metrics``; ids and scalar
    metadata (others JSON-encoded) to ``metadata``.
    """
    items: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    for call in t.llm_calls:
        if call.messages is not None:
            prompt = call.messages
        else:
            prompt = []
            if call.system_prompt is not None:
                prompt.append({"role": "system", "content": call.system_prompt})
            if call.user_prompt is not None:
                prompt.append({"role": "user", "content": call.user_prompt})
        if prompt[: len(seen)] == seen and seen:
            new = prompt[len(seen) :]
        else:
            new = prompt
            if prompt[:1] and seen and prompt[0].get("role") == "system" and prompt[0] in seen:
                new = prompt[1:]
        items.extend(new)
        seen.extend(new)
        choice = _choice(call.response)
        items.append(choice)
        seen.append(_as_message(choice))
    metrics: dict[str, Any] = {
        "n_steps": t.n_steps,
        "n_llm_calls": len(t.llm_calls),
        "n_provider_accesses": len(t.provider_accesses),
    }
    for k, v in (t.final_metrics or {}).items():
        if isinstance(v, bool | int | float) and k not in metrics:
            metrics[k] = v
    metadata: dict[str, Any] = {
        "trajectory_id": t.trajectory_id,
        "agent_id": t.agent_id,
        "window_id": t.window_id,
        "scenario_id": t.scenario_id,
    }
    for k, v in t.metadata.items():
        metadata[f"meta.{k}" if k in RESERVED_METADATA else k] = _scalar(v)
    logs = [
        f"step {s.step_index}: action={json.dumps(s.action, sort_keys=True)} reward={s.reward}"
        for s in t.steps
    ]
    if t.reward is None:
        raise InvalidRecordError("reward", f"trajectory {t.trajectory_id!r} has no reward")
    return ArtTrajectory(
        messages_and_choices=items, reward=t.reward, metrics=metrics, metadata=metadata, logs=logs
    )


def window_groups(
    store: Store, window_id: str, *, min_group_size: int = 2
) -> list[ArtTrajectoryGroup]:
    """The window's complete trajectories as ART groups, one per scenario, oldest first.

    A trajectory takes part when it is ``completed``, has a reward and a scenario; a
    scenario takes part when it has at least ``min_group_size`` such trajectories (a
    relative score needs company).

    Raises:
        NoCompleteGroupsError: no scenario of the window qualifies; the message counts why.
    """
    if min_group_size < 1:
        raise InvalidRecordError("min_group_size", f"must be >= 1, got {min_group_size}")
    all_t = store.trajectories(window_id)
    if not all_t:
        raise NoCompleteGroupsError(window_id, "no trajectories in this window")
    by: dict[str, list[StoredTrajectory]] = defaultdict(list)
    for t in all_t:
        if t.status == "completed" and t.reward is not None and t.scenario_id is not None:
            by[t.scenario_id].append(t)
    groups = [
        ArtTrajectoryGroup(
            trajectories=[to_art_trajectory(t) for t in ts],
            metadata={"window_id": window_id, "scenario_id": scenario},
        )
        for scenario, ts in by.items()
        if len(ts) >= min_group_size
    ]
    if not groups:
        usable = sum(len(v) for v in by.values())
        raise NoCompleteGroupsError(
            window_id,
            f"no complete groups: {len(all_t)} trajectories, {usable} completed with a reward "
            f"and a scenario, spread over {len(by)} scenarios; a group needs >= "
            f"{min_group_size} of one scenario",
        )
    return groups
