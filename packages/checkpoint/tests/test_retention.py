"""Retention: the shared vectors (tests/vectors/retention.json) through RetentionPolicy and a real manager."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt

VECTORS = json.loads((Path(__file__).parent / "vectors" / "retention.json").read_text())
CASES: list[dict[str, Any]] = VECTORS["cases"]
INVALID_POLICIES: list[dict[str, Any]] = VECTORS["invalid_policies"]
IDS = [c["description"] for c in CASES]


def test_vectors_have_the_shared_shape() -> None:
    assert VECTORS["format"] == 1
    for case in CASES:
        assert set(case) == {"description", "keep_last", "keep_every", "files", "invalid", "delete"}
        assert set(case["invalid"]) <= set(case["files"]) and set(case["delete"]) <= set(
            case["files"]
        )


def _sort_key(name: str) -> tuple[int, bool, str]:
    parsed = ckpt.parse_checkpoint_file_name(name)
    assert parsed is not None, f"{name!r} is deleted but is not a checkpoint"
    return parsed.sort_key()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_policy_selects_the_vector_deletions(case: dict[str, Any]) -> None:
    policy = ckpt.RetentionPolicy(case["keep_last"], case["keep_every"])
    invalid = set(case["invalid"])
    asked: list[str] = []

    def is_valid(name: str) -> bool:
        asked.append(name)
        return name not in invalid

    delete = policy.select_for_deletion(case["files"], is_valid)
    assert delete == case["delete"]
    assert delete == sorted(delete, key=_sort_key)  # oldest first, as the vectors list them
    if not delete:
        assert asked == []  # nothing read when nothing is deleted
    # The order of the directory listing does not matter; paths work as names.
    again = policy.select_for_deletion(
        [Path("run", n) for n in reversed(case["files"])], lambda p: p.name not in invalid
    )
    assert [p.name for p in again] == case["delete"]


def _write_valid(path: Path, step: int) -> None:
    parsed = ckpt.parse_checkpoint_file_name(path)
    compression = parsed.compression if parsed is not None else None
    ckpt.save(
        path, {"w": np.full(4, step, np.int64)}, metadata={"step": step}, compression=compression
    )


def _newest_valid_periodic(case: dict[str, Any]) -> ckpt.CheckpointName | None:
    names = [ckpt.parse_checkpoint_file_name(n) for n in case["files"] if n not in case["invalid"]]
    periodic = [n for n in names if n is not None and not n.emergency]
    return max(periodic, key=ckpt.CheckpointName.sort_key, default=None)


MANAGER_CASES = [c for c in CASES if _newest_valid_periodic(c) is not None]


def test_most_cases_run_through_a_real_manager() -> None:
    # Those left out have no valid periodic checkpoint: a manager never leaves
    # that behind, as retention runs right after it saves one.
    assert len(MANAGER_CASES) >= len(CASES) - 3


@pytest.mark.parametrize("case", MANAGER_CASES, ids=[c["description"] for c in MANAGER_CASES])
def test_a_manager_deletes_the_vector_deletions(tmp_path: Path, case: dict[str, Any]) -> None:
    """The directory holds the case's files; the manager saves the newest valid periodic one."""
    saved = _newest_valid_periodic(case)
    assert saved is not None
    manager = ckpt.CheckpointManager(
        tmp_path,
        keep_last=case["keep_last"],
        keep_every=case["keep_every"],
        compression=saved.compression,
    )
    for name in case["files"]:
        path = tmp_path / name
        parsed = ckpt.parse_checkpoint_file_name(name)
        if name == saved.file_name:
            continue
        if parsed is None or name in case["invalid"]:
            path.write_bytes(b"\x00" * 64 if parsed else b"not a checkpoint\n")
        else:
            _write_valid(path, parsed.step)
    manager.save(saved.step, {"w": np.full(4, saved.step, np.int64)}, blocking=True)
    left = {p.name for p in tmp_path.iterdir()} - {"latest"}
    assert left == set(case["files"]) - set(case["delete"]) - {"latest"}
    for name in left - set(case["invalid"]):
        if ckpt.parse_checkpoint_file_name(name) is not None:
            ckpt.verify(tmp_path / name)  # the valid ones are untouched
    manager.close()


@pytest.mark.parametrize("policy", INVALID_POLICIES, ids=[str(p) for p in INVALID_POLICIES])
def test_invalid_policies_are_refused_naming_the_field(
    tmp_path: Path, policy: dict[str, Any]
) -> None:
    pattern = rf"^{policy['field']}: expected"
    with pytest.raises(ValueError, match=pattern):
        ckpt.RetentionPolicy(policy["keep_last"], policy["keep_every"])
    with pytest.raises(ValueError, match=pattern):
        ckpt.CheckpointManager(
            tmp_path, keep_last=policy["keep_last"], keep_every=policy["keep_every"]
        )


@pytest.mark.parametrize(
    ("keep_last", "keep_every", "field"),
    [
        (True, None, "keep_last"),
        (2.0, None, "keep_last"),
        (1, False, "keep_every"),
        (1, "5", "keep_every"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(
    keep_last: Any, keep_every: Any, field: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: expected"):
        ckpt.RetentionPolicy(keep_last, keep_every)


def test_the_policy_is_frozen_and_the_manager_uses_a_replaced_one(tmp_path: Path) -> None:
    policy = ckpt.RetentionPolicy(3)
    assert policy == ckpt.RetentionPolicy(keep_last=3, keep_every=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.keep_last = 1  # type: ignore[misc]
    manager = ckpt.CheckpointManager(tmp_path, keep_last=3)
    assert manager.retention == policy
    with pytest.raises(ValueError, match=r"^keep_last: expected"):
        manager.keep_last = 0
    assert manager.retention == policy  # a refused value changes nothing
    for step in range(1, 5):
        manager.save(step, {"w": np.zeros(1)}, blocking=True)
    assert manager.steps() == [2, 3, 4]
    manager.keep_last = 1
    manager.keep_every = 2
    assert manager.retention == ckpt.RetentionPolicy(1, 2)
    manager.save(5, {"w": np.zeros(1)}, blocking=True)
    assert manager.steps() == [2, 4, 5]
