"""ART's Parquet v2 and legacy JSONL: exact round trips, validation, the pinned schema,
and (where openpipe-art 0.5.18 installs) ART's own pydantic models reading our files."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trainsvc_trajectories as tt

ART_VERSION = "0.5.18"


def choice(text: str) -> dict[str, Any]:
    return {
        "finish_reason": "stop",
        "index": 0,
        "logprobs": None,
        "message": {
            "content": text,
            "refusal": None,
            "role": "assistant",
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": None,
        },
    }


def sample_groups() -> list[tt.ArtTrajectoryGroup]:
    def traj(i: int, reward: float) -> tt.ArtTrajectory:
        return tt.ArtTrajectory(
            messages_and_choices=[
                {"role": "system", "content": "be good"},
                {"role": "user", "content": f"q{i} ünïcødé"},
                choice(f"a{i}"),
                {"role": "tool", "content": "42", "tool_call_id": "c1"},
                choice(f"b{i}"),
            ],
            reward=reward,
            metrics={"n_steps": 2, "ok": True, "pnl": 1.5},
            metadata={
                "window_id": "w",
                "scenario_id": f"s{i // 3}",
                "trajectory_id": f"t{i}",
                "none": None,
            },
            logs=[f"step 0: {i}"],
        )

    return [
        tt.ArtTrajectoryGroup(
            trajectories=[traj(g * 3 + k, 0.1 * k) for k in range(3)],
            metadata={"window_id": "w", "scenario_id": f"s{g}"},
        )
        for g in range(2)
    ]


def test_parquet_round_trip_is_exact(tmp_path: Path) -> None:
    groups = sample_groups()
    groups.append(tt.ArtTrajectoryGroup(metadata={"window_id": "w", "scenario_id": "empty"}))
    path = tmp_path / "g.parquet"
    assert tt.write_parquet(groups, path) == 7  # 6 trajectories + one empty-group sentinel
    assert tt.read_parquet(path) == groups


def test_parquet_layout_matches_art_v2(tmp_path: Path) -> None:
    path = tmp_path / "g.parquet"
    tt.write_parquet(sample_groups(), path)
    f = pq.ParquetFile(path)
    assert f.schema_arrow.metadata[b"art.trajectory_parquet.version"] == b"2"
    assert f.metadata.row_group(0).column(0).compression == "ZSTD"
    # The columns and types read from ART's trajectory_logging.py (format v2).
    message = pa.struct(
        [
            ("role", pa.string()),
            ("content", pa.string()),
            ("tool_calls", pa.string()),
            ("tool_call_id", pa.string()),
            ("trainable", pa.bool_()),
        ]
    )
    expected = [
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
    ]
    assert [(x.name, x.type) for x in f.schema_arrow] == expected
    rows = f.read().to_pylist()
    assert [(r["group_index"], r["trajectory_index"]) for r in rows] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    assert json.loads(rows[0]["group_json"]) == {
        "metadata": {"window_id": "w", "scenario_id": "s0"}
    }
    tj = json.loads(rows[1]["trajectory_json"])
    assert (
        tj["reward"] == 0.1 and "additional_histories" not in tj
    )  # defaults left out, as ART does
    assert [m["trainable"] for m in rows[0]["messages"]] == [False, False, True, False, True]


def test_parquet_reader_refuses_damage(tmp_path: Path) -> None:
    path = tmp_path / "g.parquet"
    tt.write_parquet(sample_groups(), path)
    table = pq.read_table(path)
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.replace_schema_metadata({b"art.trajectory_parquet.version": b"3"}), bad)
    with pytest.raises(tt.FormatError, match="version"):
        tt.read_parquet(bad)
    i = table.schema.get_field_index("trajectory_index")
    pq.write_table(
        table.set_column(i, "trajectory_index", pa.array([0, 0, 1, 0, 1, 2], pa.int64())), bad
    )
    with pytest.raises(tt.FormatError, match="duplicate or missing"):
        tt.read_parquet(bad)
    i = table.schema.get_field_index("reward")
    pq.write_table(table.set_column(i, "reward", pa.array([9.0] * 6)), bad)
    with pytest.raises(tt.FormatError, match="reward column disagrees"):
        tt.read_parquet(bad)
    # reordered rows are fine: indexes restore the order
    pq.write_table(table.take(pa.array([5, 4, 3, 2, 1, 0])), bad)
    assert tt.read_parquet(bad) == sample_groups()


def test_write_validates_and_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(tt.FormatError, match=r"group 0: trajectories\.0\.reward"):
        tt.write_parquet([{"trajectories": [{"reward": float("nan")}]}], tmp_path / "x.parquet")
    with pytest.raises(tt.FormatError, match="role"):
        tt.write_jsonl(
            [{"trajectories": [{"messages_and_choices": [{"role": "robot"}]}]}],
            tmp_path / "x.jsonl",
        )
    with pytest.raises(tt.FormatError, match="metadata"):
        tt.write_jsonl([{"trajectories": [{"metadata": {"x": [1]}}]}], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.jsonl").exists()


def test_jsonl_round_trip_and_layout(tmp_path: Path) -> None:
    groups = sample_groups()
    path = tmp_path / "g.jsonl"
    assert tt.write_jsonl(groups, path) == 2
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["trajectories"]
    t = first["trajectories"][0]
    assert set(t) == {
        "reward",
        "metrics",
        "metadata",
        "messages_and_choices",
        "tools",
        "additional_histories",
        "logs",
    }
    assert "logprobs" not in t["messages_and_choices"][2]  # ART's legacy writer drops them
    assert t["metadata"]["window_id"] == "w" and t["metadata"]["scenario_id"] == "s0"
    assert tt.read_jsonl(path) == groups
    (tmp_path / "bad.jsonl").write_text('{"trajectories": [{"reward": 1}]}\n')
    with pytest.raises(tt.FormatError, match="missing 'messages_and_choices'"):
        tt.read_jsonl(tmp_path / "bad.jsonl")


def _uv() -> list[str]:
    """The command that runs uv: on PATH, else the module `make bootstrap` installs for the
    system's python3 (CI's case: uv is not in the project's environment), else this one's."""
    uv = shutil.which("uv")
    if uv:
        return [uv]
    python3 = shutil.which("python3")
    if (
        python3
        and subprocess.run([python3, "-m", "uv", "--version"], capture_output=True).returncode == 0
    ):
        return [python3, "-m", "uv"]
    return [sys.executable, "-m", "uv"]


@pytest.fixture(scope="session")
def art_models() -> Any:
    """ART's own modules from openpipe-art 0.5.18 installed without dependencies (its models
    need only pydantic, openai and pyyaml); its heavy package __init__ is bypassed."""
    target = os.environ.get("TRAINSVC_ART_TARGET")
    if target is None:
        cache = Path.home() / ".cache" / "trainsvc" / f"openpipe-art-{ART_VERSION}"
        if not (cache / "art" / "utils" / "trajectory_migration.py").exists():
            done = subprocess.run(
                [
                    *_uv(),
                    "pip",
                    "install",
                    "--python",
                    sys.executable,
                    "--target",
                    str(cache),
                    f"openpipe-art=={ART_VERSION}",
                    "--no-deps",
                    "--quiet",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                pytest.skip(
                    f"openpipe-art {ART_VERSION} did not install: {done.stderr.strip()[-300:]}"
                )
        target = str(cache)
    saved = {k: v for k, v in sys.modules.items() if k == "art" or k.startswith("art.")}
    for name in ("art", "art.utils"):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(target, *name.split(".")))]
        sys.modules[name] = pkg
    try:
        yield (
            importlib.import_module("art.trajectories"),
            importlib.import_module("art.utils.trajectory_migration"),
        )
    finally:
        for k in [k for k in sys.modules if k == "art" or k.startswith("art.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_art_reads_our_files(art_models: Any, tmp_path: Path) -> None:
    art_traj, migration = art_models
    groups = sample_groups()
    jl = tmp_path / "g.jsonl"
    tt.write_jsonl(groups, jl)
    loaded = migration.deserialize_trajectory_groups(jl.read_text())
    assert len(loaded) == 2
    for ours, theirs in zip(groups, loaded, strict=True):
        for a, b in zip(ours.trajectories, theirs.trajectories, strict=True):
            assert b.reward == a.reward and b.metrics == a.metrics and b.metadata == a.metadata
            assert type(b.messages_and_choices[2]).__name__ == "Choice"
            assert (
                b.messages_and_choices[2].message.content
                == a.messages_and_choices[2]["message"]["content"]
            )
            assert b.messages() == [
                {"role": "assistant", "content": m["message"]["content"]}
                if "finish_reason" in m
                else m
                for m in a.messages_and_choices
            ]
    pqp = tmp_path / "g.parquet"
    tt.write_parquet(groups, pqp)
    rows = pq.read_table(pqp).to_pylist()
    for r in rows:  # what ART's v2 reader does with each row: choices to Choice, then the models
        data = json.loads(r["trajectory_json"])
        data["messages_and_choices"] = [
            art_traj.Choice.model_validate(m) if "finish_reason" in m else m
            for m in data["messages_and_choices"]
        ]
        t = art_traj.Trajectory.model_validate(data)
        g = art_traj.TrajectoryGroup.model_validate(
            {**json.loads(r["group_json"]), "trajectories": [t]}
        )
        assert t.reward == r["reward"] and g.metadata["scenario_id"] == f"s{r['group_index']}"
        assert type(t.messages_and_choices[2]).__name__ == "Choice"
        dumped = t.model_dump(mode="json", exclude_defaults=True)
        dumped["messages_and_choices"] = [
            m.model_dump(mode="json") if isinstance(m, art_traj.Choice) else m
            for m in t.messages_and_choices
        ]
        assert dumped == json.loads(r["trajectory_json"])  # ART dumps back the same JSON
