"""Plain files are read by several threads, each checking a contiguous part of the data.

A tensor cut between two parts gets its CRC from the parts' CRCs; these tests
force small parts and chunks so that cuts fall inside tensors, and check that
values come back exactly and that damage in any part names the right tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
from hypothesis import given, settings
from hypothesis import strategies as st
from trainsvc_checkpoint import _format, _io


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc_combine_equals_crc_of_concatenation(a: bytes, b: bytes) -> None:
    combined = _format.crc32c_combine(_format.crc32c(a), _format.crc32c(b), len(b))
    assert combined == _format.crc32c(a + b)


def test_crc_combine_of_long_lengths() -> None:
    a, b = os.urandom(1000), bytes(5_000_000)
    assert _format.crc32c_combine(_format.crc32c(a), _format.crc32c(b), len(b)) == (
        _format.crc32c(a + b)
    )
    with pytest.raises(ValueError, match="len2"):
        _format.crc32c_combine(0, 0, -1)


@pytest.fixture
def tiny_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """64-byte reads, parts of 256 bytes at least, 3 threads: cuts fall inside tensors."""
    monkeypatch.setattr(_io, "_READ_CHUNK", 64)
    monkeypatch.setattr(_io, "_READ_SHARE_MIN", 256)
    monkeypatch.setattr(_io, "_READ_THREADS", 3)


def odd_tree() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return {
        "big": rng.standard_normal(301).astype(np.float64),
        "mid": rng.integers(-9, 9, size=(7, 11)).astype(np.int32),
        "empty": np.zeros((0, 3), np.float32),
        "bytes": rng.integers(0, 255, size=97).astype(np.uint8),
        "flags": np.array([True, False, True]),
        "step": 12,
    }


def test_split_reads_round_trip(tmp_path: Path, tiny_parts: None) -> None:
    path = ckpt.save(tmp_path / "a.safetensors", odd_tree())
    back = ckpt.load(path)
    for name, value in odd_tree().items():
        np.testing.assert_array_equal(back[name], value)
    info = ckpt.verify(path)
    assert info.nbytes > 3 * 256  # the data really was split over three parts


def data_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """Each tensor's absolute byte range in the file."""
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = _format.parse_header(f.read(n), n, path.stat().st_size)
    return {e.name: (8 + n + e.begin, 8 + n + e.end) for e in header.entries}


def test_damage_in_any_part_names_its_tensor(tmp_path: Path, tiny_parts: None) -> None:
    path = ckpt.save(tmp_path / "a.safetensors", odd_tree())
    fd = os.open(path, os.O_RDWR)
    try:
        for name, (lo, hi) in data_ranges(path).items():
            for offset in sorted({lo, (lo + hi) // 2, hi - 1}) if hi > lo else []:
                (byte,) = os.pread(fd, 1, offset)
                os.pwrite(fd, bytes([byte ^ 0x10]), offset)
                for read in (ckpt.load, ckpt.verify):
                    with pytest.raises(ckpt.CorruptCheckpointError, match=repr(name)):
                        read(path)
                os.pwrite(fd, bytes([byte]), offset)
    finally:
        os.close(fd)
    ckpt.verify(path)  # restored: valid again


def test_default_parts_on_a_multi_part_file(tmp_path: Path) -> None:
    """A file big enough for several reader threads with the real settings."""
    rng = np.random.default_rng(3)
    tree = {"a": rng.standard_normal(5_000_001).astype(np.float32), "b": np.arange(3_000_000)}
    path = ckpt.save(tmp_path / "big.safetensors", tree)
    back = ckpt.load(path)
    np.testing.assert_array_equal(back["a"], tree["a"])
    np.testing.assert_array_equal(back["b"], tree["b"])
    ranges = data_ranges(path)
    offset = ranges["a"][1] - 5  # near the end of the last part
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ckpt.CorruptCheckpointError, match="'a'"):
        ckpt.load(path)
