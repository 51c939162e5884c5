"""OpenPipe ART's trajectory formats: Parquet schema v2 and the legacy JSONL of groups.

The models mirror ``art.Trajectory`` / ``art.TrajectoryGroup`` field for field (ART
0.5.x), with messages kept as plain JSON dicts: a chat message (``role``, ``content``,
...) or an OpenAI ``Choice`` dict (``finish_reason``, ``index``, ``logprobs``,
``message``) for the trainable assistant turns. Files written here load with ART's own
readers and models; every file is validated when written and when read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import pydantic
from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ._errors import FormatError

PARQUET_FORMAT_VERSION: Final = 2
PARQUET_VERSION_KEY: Final = b"art.trajectory_parquet.version"
ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

MetadataValue = StrictBool | StrictInt | StrictFloat | StrictStr | None
MetricValue = StrictBool | StrictInt | StrictFloat

_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check_item(i: int, item: dict[str, Any]) -> None:
    if "finish_reason" in item:
        missing = {"finish_reason", "index", "message"} - item.keys()
        if missing:
            raise ValueError(f"messages_and_choices[{i}]: a choice needs {sorted(missing)}")
        msg = item["message"]
        if not isinstance(msg, dict) or msg.get("role") != "assistant":
            raise ValueError(f"messages_and_choices[{i}].message: must be an assistant message")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"messages_and_choices[{i}].message.content: must be a string")
        return
    role = item.get("role")
    if role not in ROLES:
        raise ValueError(f"messages_and_choices[{i}].role: {role!r} is not one of {sorted(ROLES)}")


class ArtHistory(pydantic.BaseModel):
    """``art.trajectories.History``: an extra conversation inside one trajectory."""

    model_config = _CONFIG
    messages_and_choices: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None

    @pydantic.field_validator("messages_and_choices")
    @classmethod
    def _items(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, item in enumerate(v):
            _check_item(i, item)
        return v


class ArtTrajectory(pydantic.BaseModel):
    """``art.Trajectory``: one rollout's messages and choices, reward, metrics, metadata."""

    model_config = _CONFIG
    messages_and_choices: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    additional_histories: list[ArtHistory] = Field(default_factory=list)
    reward: float = 0.0
    initial_policy_version: int | None = None
    final_policy_version: int | None = None
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    logs: list[str] = Field(default_factory=list)

    @pydantic.field_validator("messages_and_choices")
    @classmethod
    def _items(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, item in enumerate(v):
            _check_item(i, item)
        return v

    @pydantic.field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k, x in v.items():
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"metrics[{k!r}]: must be finite")
        return v


class ArtException(pydantic.BaseModel):
    """``art.trajectories.PydanticException``."""

    model_config = _CONFIG
    type: str
    message: str
    traceback: str


class ArtTrajectoryGroup(pydantic.BaseModel):
    """``art.TrajectoryGroup``: rollouts of one scenario, scored relative to each other."""

    model_config = _CONFIG
    trajectories: list[ArtTrajectory] = Field(default_factory=list)
    exceptions: list[ArtException] = Field(default_factory=list)
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    logs: list[str] = Field(default_factory=list)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _validate_groups(groups: Iterable[Any], where: str) -> list[ArtTrajectoryGroup]:
    out = []
    for gi, g in enumerate(groups):
        try:
            out.append(
                g if isinstance(g, ArtTrajectoryGroup) else ArtTrajectoryGroup.model_validate(g)
            )
        except pydantic.ValidationError as e:
            raise FormatError(f"{where}: group {gi}: {_first_error(e)}") from None
    return out


def _first_error(e: pydantic.ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


def _legacy_message(item: dict[str, Any]) -> dict[str, Any]:
    """The flat ``messages`` column entry (role, content, tool_calls, tool_call_id, trainable)."""
    if "finish_reason" in item:
        inner = item["message"]
        tool_calls = inner.get("tool_calls")
        return {
            "role": inner.get("role"),
            "content": inner.get("content"),
            "tool_calls": json.dumps(tool_calls) if tool_calls else None,
            "tool_call_id": None,
            "trainable": True,
        }
    tool_calls = item.get("tool_calls")
    content = item.get("content")
    return {
        "role": item.get("role"),
        "content": content if content is None or isinstance(content, str) else _compact(content),
        "tool_calls": json.dumps(tool_calls) if tool_calls else None,
        "tool_call_id": item.get("tool_call_id"),
        "trainable": False,
    }


def parquet_schema() -> Any:
    """The pyarrow schema of ART's trajectory Parquet v2 (with its file metadata)."""
    import pyarrow as pa  # type: ignore[import-untyped]

    message = pa.struct(
        [
            ("role", pa.string()),
            ("content", pa.string()),
            ("tool_calls", pa.string()),
            ("tool_call_id", pa.string()),
            ("trainable", pa.bool_()),
        ]
    )
    return pa.schema(
        [
            ("format_version", pa.int16()),
            ("group_index", pa.int64()),
            ("trajectory_index", pa.int64()),
            ("group_json", pa.large_string()),
            ("trajectory_json", pa.large_string()),
            ("group_metadata", pa.string()),
            ("group_metrics", pa.string()),
            ("group_logs", pa.list_(pa.string())),
            ("reward", pa.float64()),
            ("metrics", pa.string()),
            ("metadata", pa.string()),
            ("tools", pa.string()),
            ("logs", pa.list_(pa.string())),
            ("messages", pa.list_(message)),
        ],
        metadata={PARQUET_VERSION_KEY: str(PARQUET_FORMAT_VERSION).encode()},
    )


def _or_none(data: dict[str, Any], key: str) -> str | None:
    return _compact(data[key]) if data.get(key) else None


def write_parquet(groups: Sequence[ArtTrajectoryGroup | dict[str, Any]], path: str | Path) -> int:
    """Write groups as ART trajectory Parquet v2 (zstd); returns the number of rows.

    One row per trajectory (a sentinel row for an empty group); ``group_json`` and
    ``trajectory_json`` carry the complete models, the other columns are derived.

    Raises:
        FormatError: a group does not validate (the message names the field).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    checked = _validate_groups(groups, str(path))
    rows: list[dict[str, Any]] = []
    for gi, group in enumerate(checked):
        gdata = group.model_dump(mode="json", exclude={"trajectories"}, exclude_defaults=True)
        common = {
            "format_version": PARQUET_FORMAT_VERSION,
            "group_index": gi,
            "group_json": _compact(gdata),
            "group_metadata": _or_none(gdata, "metadata"),
            "group_metrics": _or_none(gdata, "metrics"),
            "group_logs": gdata.get("logs") or None,
        }
        if not group.trajectories:
            rows.append(
                {
                    **common,
                    **dict.fromkeys(
                        (
                            "trajectory_index",
                            "trajectory_json",
                            "reward",
                            "metrics",
                            "metadata",
                            "tools",
                            "logs",
                            "messages",
                        ),
                    ),
                }
            )
            continue
        for ti, traj in enumerate(group.trajectories):
            tdata = traj.model_dump(mode="json", exclude_defaults=True)
            rows.append(
                {
                    **common,
                    "trajectory_index": ti,
                    "trajectory_json": _compact(tdata),
                    "reward": traj.reward,
                    "metrics": _or_none(tdata, "metrics"),
                    "metadata": _or_none(tdata, "metadata"),
                    "tools": _or_none(tdata, "tools"),
                    "logs": tdata.get("logs") or None,
                    "messages": [_legacy_message(m) for m in traj.messages_and_choices],
                }
            )
    schema = parquet_schema()
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, str(path), compression="zstd")
    return len(rows)


def _json_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, str):
        raise FormatError(f"{what}: must be JSON text")
    try:
        out = json.loads(value)
    except json.JSONDecodeError as e:
        raise FormatError(f"{what}: invalid JSON ({e})") from None
    if not isinstance(out, dict):
        raise FormatError(f"{what}: must be a JSON object")
    return out


def read_parquet(path: str | Path) -> list[ArtTrajectoryGroup]:
    """Read an ART trajectory Parquet v2 file, checking indexes, versions and derived columns.

    Raises:
        FormatError: a missing or unknown version, missing columns, duplicate or missing
            indexes, conflicting group JSON, or derived columns that disagree with the JSON.
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(str(path))
    meta = pf.schema_arrow.metadata or {}
    version = meta.get(PARQUET_VERSION_KEY)
    if version != str(PARQUET_FORMAT_VERSION).encode():
        raise FormatError(
            f"{path}: art.trajectory_parquet.version is {version!r}; this reader knows 2"
        )
    missing = set(parquet_schema().names) - set(pf.schema_arrow.names)
    if missing:
        raise FormatError(f"{path}: missing columns {sorted(missing)}")
    grouped: dict[int, list[dict[str, Any]]] = {}
    for row in pf.read().to_pylist():
        if row["format_version"] != PARQUET_FORMAT_VERSION:
            raise FormatError(f"{path}: format_version {row['format_version']!r} in a row")
        gi = row["group_index"]
        if not isinstance(gi, int):
            raise FormatError(f"{path}: group_index must be an integer")
        grouped.setdefault(gi, []).append(row)
    if sorted(grouped) != list(range(len(grouped))):
        raise FormatError(f"{path}: group_index values are duplicate or not contiguous")
    groups = []
    for gi in range(len(grouped)):
        rows = grouped[gi]
        payloads = {r["group_json"] for r in rows}
        if len(payloads) != 1:
            raise FormatError(f"{path}: group {gi}: rows disagree on group_json")
        gdata = _json_object(payloads.pop(), f"{path}: group {gi}: group_json")
        if "trajectories" in gdata:
            raise FormatError(f"{path}: group {gi}: group_json must not hold trajectories")
        indexed: list[tuple[int, dict[str, Any]]] = []
        sentinels = 0
        for r in rows:
            if r["trajectory_index"] is None:
                if r["trajectory_json"] is not None:
                    raise FormatError(f"{path}: group {gi}: a sentinel row holds a trajectory")
                sentinels += 1
                continue
            tdata = _json_object(
                r["trajectory_json"], f"{path}: group {gi}: trajectory {r['trajectory_index']}"
            )
            if r["reward"] != float(tdata.get("reward", 0.0)):
                raise FormatError(
                    f"{path}: group {gi}: trajectory {r['trajectory_index']}: the reward column "
                    "disagrees with trajectory_json"
                )
            indexed.append((r["trajectory_index"], tdata))
        indexed.sort(key=lambda x: x[0])
        if [i for i, _ in indexed] != list(range(len(indexed))):
            raise FormatError(f"{path}: group {gi}: trajectory_index duplicate or missing")
        if (indexed and sentinels) or (not indexed and sentinels != 1):
            raise FormatError(f"{path}: group {gi}: bad empty-group sentinel rows")
        groups.append({**gdata, "trajectories": [t for _, t in indexed]})
    return _validate_groups(groups, str(path))


def _jsonl_trajectory(t: ArtTrajectory) -> dict[str, Any]:
    items = []
    for m in t.messages_and_choices:
        m = dict(m)
        if "finish_reason" in m:
            m.pop("logprobs", None)  # ART's legacy writer drops logprobs
        items.append(m)
    return {
        "reward": t.reward,
        "metrics": t.metrics,
        "metadata": t.metadata,
        "messages_and_choices": items,
        "tools": t.tools,
        "additional_histories": [h.model_dump(mode="json") for h in t.additional_histories],
        "logs": t.logs,
    }


def write_jsonl(groups: Sequence[ArtTrajectoryGroup | dict[str, Any]], path: str | Path) -> int:
    """Write ART's legacy JSONL: one ``{"trajectories": [...]}`` line per group.

    The format has no group fields; keep what identifies a group (window, scenario) in
    each trajectory's metadata, as :func:`window_groups` does. Returns the line count.
    """
    checked = _validate_groups(groups, str(path))
    lines = [
        _compact({"trajectories": [_jsonl_trajectory(t) for t in g.trajectories]}) for g in checked
    ]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def read_jsonl(path: str | Path) -> list[ArtTrajectoryGroup]:
    """Read ART's legacy JSONL; group metadata comes back from the trajectories' shared
    ``window_id`` / ``scenario_id`` metadata, choices get their dropped ``logprobs: null``.
    """
    groups = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}:{n}: invalid JSON ({e})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("trajectories"), list):
            raise FormatError(f"{path}:{n}: a line must be an object with a 'trajectories' list")
        trajectories = []
        for ti, t in enumerate(doc["trajectories"]):
            if not isinstance(t, dict):
                raise FormatError(f"{path}:{n}: trajectories[{ti}] must be an object")
            for key in ("messages_and_choices", "reward", "metrics", "metadata", "logs"):
                if key not in t:
                    raise FormatError(f"{path}:{n}: trajectories[{ti}]: missing {key!r}")
            t = dict(t)
            t["messages_and_choices"] = [
                {**m, "logprobs": m.get("logprobs")}
                if isinstance(m, dict) and "finish_reason" in m
                else m
                for m in t["messages_and_choices"]
            ]
            trajectories.append(t)
        meta: dict[str, Any] = {}
        for key in ("window_id", "scenario_id"):
            values = {
                json.dumps(t["metadata"].get(key))
                for t in trajectories
                if isinstance(t["metadata"], dict)
            }
            if trajectories and len(values) == 1 and key in trajectories[0]["metadata"]:
                meta[key] = trajectories[0]["metadata"][key]
        groups.append({"trajectories": trajectories, "metadata": meta})
    return _validate_groups(groups, str(path))
