"""Checkpoint file names: the shared vectors (tests/vectors/names.json) through the functions and real files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt

VECTORS = json.loads((Path(__file__).parent / "vectors" / "names.json").read_text())
VALID: list[dict[str, Any]] = VECTORS["valid"]
INVALID: list[str] = VECTORS["invalid"]


def test_vectors_have_the_shared_shape() -> None:
    assert VECTORS["format"] == 1
    assert {"step_12.safetensors", "emergency_step_12.safetensors", "step_12.safetensors.zst"} <= {
        v["name"] for v in VALID
    }
    assert {
        "step_012.safetensors",
        "step_-1.safetensors",
        "step_1.safetensors.tmp",
        "latest",
    } <= set(INVALID)
    assert not {v["name"] for v in VALID} & set(INVALID)


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_names_parse_and_are_built_back(vector: dict[str, Any]) -> None:
    parsed = ckpt.parse_checkpoint_file_name(vector["name"])
    assert parsed == ckpt.CheckpointName(vector["step"], vector["emergency"], vector["compression"])
    assert parsed.file_name == str(parsed) == vector["name"]
    assert parsed.checkpoint_id == ckpt.checkpoint_id(vector["name"])
    assert parsed.checkpoint_id == vector["name"].split(".")[0]
    built = ckpt.checkpoint_file_name(
        vector["step"], emergency=vector["emergency"], compression=vector["compression"]
    )
    assert built == vector["name"]
    # The last component of a path is what counts.
    assert ckpt.parse_checkpoint_file_name(Path("runs", "demo", vector["name"])) == parsed


@pytest.mark.parametrize("name", INVALID, ids=[repr(n) for n in INVALID])
def test_invalid_names_are_not_checkpoints(name: str) -> None:
    assert ckpt.parse_checkpoint_file_name(name) is None


def test_a_checkpoint_name_as_a_directory_component_is_not_enough() -> None:
    assert ckpt.parse_checkpoint_file_name("step_1.safetensors/latest") is None
    assert ckpt.parse_checkpoint_file_name("/runs/step_1.safetensors/notes.txt") is None


def test_scan_and_the_manager_list_exactly_the_valid_names(tmp_path: Path) -> None:
    for vector in VALID:
        ckpt.save(
            tmp_path / vector["name"],
            {"w": np.arange(3, dtype=np.int32)},
            metadata={"step": vector["step"]},
            compression=vector["compression"],
        )
    for name in INVALID:
        if name and "/" not in name:
            (tmp_path / name).write_bytes(b"not a checkpoint")
    (tmp_path / "step_5.safetensors").mkdir()  # a directory with a checkpoint's name
    found = {(c.path.name, c.step, c.emergency) for c in ckpt.scan(tmp_path)}
    assert found == {(v["name"], v["step"], v["emergency"]) for v in VALID}
    manager = ckpt.CheckpointManager(tmp_path)
    assert {c.path.name for c in manager.checkpoints()} == {v["name"] for v in VALID}
    assert manager.latest_step() == max(v["step"] for v in VALID)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_the_manager_writes_the_names_the_function_gives(tmp_path: Path, compression: Any) -> None:
    with ckpt.CheckpointManager(tmp_path, compression=compression) as manager:
        manager.save(12, {"w": np.zeros(2)}, blocking=True)
        emergency = manager.save_emergency(12, {"w": np.ones(2)})
    periodic = ckpt.checkpoint_file_name(12, compression=compression)
    assert emergency.name == ckpt.checkpoint_file_name(12, emergency=True, compression=compression)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["latest", periodic, emergency.name]
    )
    assert (tmp_path / "latest").read_text() == emergency.name + "\n"
    for path in (tmp_path / periodic, emergency):
        parsed = ckpt.parse_checkpoint_file_name(path)
        assert parsed is not None and parsed.step == 12 and parsed.compression == compression
        assert ckpt.load_with_info(path)[1].metadata["step"] == 12


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"step": -1}, "step"),
        ({"step": True}, "step"),
        ({"step": 1.0}, "step"),
        ({"step": "1"}, "step"),
        ({"step": ckpt.MAX_STEP + 1}, "step"),
        ({"step": 1, "compression": "gzip"}, "compression"),
        ({"step": 1, "emergency": 1}, "emergency"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    step = kwargs.pop("step")
    with pytest.raises(ValueError, match=rf"^{field}: expected"):
        ckpt.checkpoint_file_name(step, **kwargs)
    with pytest.raises(ValueError, match=rf"^{field}: expected"):
        ckpt.CheckpointName(step, **kwargs)


def test_numpy_integer_steps_are_plain_ints() -> None:
    assert ckpt.checkpoint_file_name(np.int64(7)) == "step_7.safetensors"
    name = ckpt.CheckpointName(np.uint32(7))  # type: ignore[arg-type]
    assert type(name.step) is int and name == ckpt.CheckpointName(7)
    with pytest.raises(ValueError, match=r"^step: expected"):
        ckpt.checkpoint_file_name(np.bool_(True))  # type: ignore[arg-type]


def test_the_manager_refuses_a_step_no_name_can_hold(tmp_path: Path) -> None:
    manager = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match=r"^step: expected"):
        manager.save(ckpt.MAX_STEP + 1, {"w": np.zeros(1)}, blocking=True)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_names_are_frozen_and_sort_oldest_first() -> None:
    name = ckpt.CheckpointName(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        name.step = 4  # type: ignore[misc]
    names = [
        ckpt.CheckpointName(10, emergency=True),
        ckpt.CheckpointName(10),
        ckpt.CheckpointName(9, compression="zstd"),
        ckpt.CheckpointName(10, compression="zstd"),
    ]
    assert [str(n) for n in sorted(names, key=ckpt.CheckpointName.sort_key)] == [
        "step_9.safetensors.zst",
        "step_10.safetensors",
        "step_10.safetensors.zst",
        "emergency_step_10.safetensors",
    ]
