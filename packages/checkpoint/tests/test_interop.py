"""Interop with the safetensors reference implementation, both ways, and with plain zstd."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
import zstandard
from safetensors import safe_open
from safetensors.numpy import load, load_file, save_file

NUMPY_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.float16, np.uint32,
                np.int32, np.float32, np.uint64, np.int64, np.float64]  # fmt: skip


def state() -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "params": {
            np.dtype(dt).name: (rng.standard_normal((3, 5)) * 10).astype(dt) for dt in NUMPY_DTYPES
        },
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.float64(2.5),
        "opt": [np.arange(7, dtype=np.int64), 0.125],
    }


def expected_flat() -> dict[str, np.ndarray]:
    s = state()
    flat = {f"params/{k}": np.asarray(v) for k, v in s["params"].items()}  # type: ignore[attr-defined]
    flat |= {"empty": s["empty"], "scalar": np.asarray(s["scalar"]), "opt/0": s["opt"][0]}  # type: ignore[index]
    flat["opt/1"] = np.asarray(0.125)
    return flat


def assert_flat_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype and actual[name].shape == value.shape, name
        assert actual[name].tobytes() == value.tobytes(), name


def test_safetensors_reads_our_files(tmp_path: Path) -> None:
    path = tmp_path / "ours.safetensors"
    ckpt.save(path, state(), metadata={"step": 4})
    assert_flat_equal(load_file(path), expected_flat())
    with safe_open(str(path), framework="np") as f:
        md = f.metadata()
    assert (
        md["trainsvc.format"] == "trainsvc-checkpoint" and md["trainsvc.metadata"] == '{"step":4}'
    )


def test_zstd_frame_decompresses_to_a_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "ours.safetensors.zst"
    ckpt.save(path, state(), compression="zstd")
    params = zstandard.get_frame_parameters(path.read_bytes()[:18])
    assert params.has_checksum and params.content_size > 0
    raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
    assert_flat_equal(load(raw), expected_flat())
    if shutil.which("zstd"):
        subprocess.run(
            ["zstd", "-q", "-d", str(path), "-o", str(tmp_path / "plain.safetensors")], check=True
        )
        assert_flat_equal(load_file(tmp_path / "plain.safetensors"), expected_flat())


def test_we_read_safetensors_files_as_flat_dicts(tmp_path: Path) -> None:
    path = tmp_path / "theirs.safetensors"
    flat = expected_flat()
    save_file(flat, path, metadata={"format": "pt"})
    loaded = ckpt.load(path)
    assert_flat_equal(loaded, flat)
    info = ckpt.verify(path)
    assert info.foreign and info.metadata == {"format": "pt"}
    assert_flat_equal(ckpt.load(path, target=flat), flat)
    with pytest.raises(
        ckpt.IncompatibleCheckpointError, match=r"opt~10: the target has int64\[3\]"
    ):  # tree paths escape "/"
        ckpt.load(path, target={**flat, "opt/0": np.zeros(3, np.int64)})
