"""Damaged and hostile files: every failure is a clear CheckpointError, before any big allocation."""

from __future__ import annotations

import json
import os
import random
import struct
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
import zstandard
from trainsvc_checkpoint import _format, _io


def small_tree() -> dict[str, Any]:
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "flags": np.array([True, False]),
        "opt": (np.int64(3), [0.5, None]),
        "name": "x",
    }


def each_flip(path: Path, bits: Iterable[int]) -> Iterator[tuple[int, Path]]:
    """Yield ``path`` with one bit flipped, for each bit in turn (flipped in place and back)."""
    fd = os.open(path, os.O_RDWR)
    try:
        for bit in bits:
            (byte,) = os.pread(fd, 1, bit // 8)
            os.pwrite(fd, bytes([byte ^ (1 << (bit % 8))]), bit // 8)
            yield bit, path
            os.pwrite(fd, bytes([byte]), bit // 8)
    finally:
        os.close(fd)


def test_every_bit_flip_of_a_small_file_is_detected(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    ckpt.save(good, small_tree())
    for bit, bad in each_flip(good, range(good.stat().st_size * 8)):
        with pytest.raises(ckpt.CheckpointError) as info:
            ckpt.load(bad)
        # Corruption, even in the version field (the header CRC is checked first),
        # so that a manager falls back to an older checkpoint.
        assert isinstance(info.value, ckpt.CorruptCheckpointError), (bit, info.value)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_sampled_bit_flips_of_a_larger_file_are_detected(tmp_path: Path, compression: Any) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "good.safetensors"
    tree = {f"layer{i}": rng.standard_normal(20_000).astype(np.float32) for i in range(12)}
    ckpt.save(good, tree, compression=compression)
    bits = random.Random(1).sample(range(good.stat().st_size * 8), 150)
    for _, bad in each_flip(good, bits):
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load(bad)
        with pytest.raises(ckpt.CheckpointError):
            ckpt.verify(bad)


def test_corrupt_tensor_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    ckpt.save(path, {"a": np.zeros(4, np.float64), "b": np.zeros(4, np.float64)})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10  # the last byte belongs to tensor "b"
    path.write_bytes(bytes(data))
    with pytest.raises(
        ckpt.CorruptCheckpointError, match=r"tensor 'b': CRC32C expected [0-9a-f]{8}, found"
    ):
        ckpt.load(path)
    with pytest.raises(ckpt.CorruptCheckpointError, match="tensor 'b'"):
        ckpt.verify(path)


def test_truncated_files(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    ckpt.save(good, small_tree())
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for cut in [0, 3, 8, 20, len(data) // 2, len(data) - 1]:
        bad.write_bytes(data[:cut])
        with pytest.raises(ckpt.CorruptCheckpointError):
            ckpt.load(bad)
    zgood = tmp_path / "good.safetensors.zst"
    ckpt.save(zgood, small_tree(), compression="zstd")
    zdata = zgood.read_bytes()
    for cut in [5, len(zdata) // 2, len(zdata) - 1]:
        bad.write_bytes(zdata[:cut])
        with pytest.raises(ckpt.CorruptCheckpointError):
            ckpt.load(bad)
    bad.write_bytes(data + b"\0")
    with pytest.raises(ckpt.CorruptCheckpointError, match="data section"):
        ckpt.load(bad)
    bad.write_bytes(zdata + b"extra")
    with pytest.raises(ckpt.CorruptCheckpointError, match="after the zstd frame"):
        ckpt.load(bad)


# ----------------------------------------------------------------- forged headers


def forge(
    tensors: dict[str, Any],
    data: bytes,
    *,
    tree: Any = None,
    tree_json: str | None = None,
    crcs: dict[str, str] | None = None,
    version: str = "1",
    trainsvc: bool = True,
    header_len: int | None = None,
) -> bytes:
    """A file with a hostile header whose header CRC is computed correctly (as an attacker would)."""
    obj: dict[str, Any] = dict(tensors)
    if trainsvc:
        md = {
            "trainsvc.format": "trainsvc-checkpoint",
            "trainsvc.format_version": version,
            "trainsvc.tree": tree_json
            or _format.canonical_json(
                tree if tree is not None else {"dict": {n: {"tensor": n} for n in tensors}}
            ),
            "trainsvc.metadata": "{}",
            "trainsvc.crc32c": _format.canonical_json(
                crcs if crcs is not None else dict.fromkeys(tensors, "00000000")
            ),
        }
        obj["__metadata__"] = md
        md["trainsvc.header_crc32c"] = _format.crc_hex(
            _format.crc32c(_format.canonical_json(obj).encode())
        )
    text = _format.canonical_json(obj).encode()
    text += b" " * (-len(text) % 8)
    n = len(text) if header_len is None else header_len
    return struct.pack("<Q", n) + text + data


@pytest.fixture
def no_big_allocation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail if the reader allocates more than 8 MiB (NumPy arrays included: NumPy reports
    its allocations to tracemalloc) or a scratch buffer."""

    def refuse(nbytes: int) -> Any:
        raise AssertionError(f"allocated a {nbytes}-byte data buffer for a hostile file")

    monkeypatch.setattr(_io, "_scratch_buffer", refuse)
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 8 * 1024 * 1024, peak
    finally:
        tracemalloc.stop()


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"data_offsets": [begin, end], "dtype": dtype, "shape": shape}


HOSTILE = {
    "offsets past the end": (
        {"a": entry("F32", [4], 0, 16)},
        b"\0" * 8,
        "8 bytes of data the file holds",
    ),
    "data past the end": (
        {"a": entry("F64", [1], 0, 8), "b": entry("F64", [1], 8, 16)},
        b"\0" * 8,
        "declares 16 bytes of tensor data, the file holds 8",
    ),
    "huge offsets": ({"a": entry("F32", [1 << 30], 0, 4 << 30)}, b"\0" * 16, "16 bytes of data"),
    "huge declared shape": ({"a": entry("F64", [1 << 40, 1 << 40], 0, 16)}, b"\0" * 16, "shape"),
    "many dimensions": ({"a": entry("U8", [2] * 20_000, 0, 16)}, b"\0" * 16, "shape"),
    "shape/size mismatch": ({"a": entry("F32", [3], 0, 16)}, b"\0" * 16, "needs 12 bytes"),
    "overlap": (
        {"a": entry("F64", [2], 0, 16), "b": entry("F64", [1], 8, 16)},
        b"\0" * 16,
        "overlaps",
    ),
    "hole": ({"a": entry("F64", [1], 0, 8), "b": entry("F64", [1], 16, 24)}, b"\0" * 24, "hole"),
    "negative offset": ({"a": entry("F64", [1], -8, 0)}, b"", "data_offsets"),
    "unknown dtype": ({"a": entry("C64", [1], 0, 8)}, b"\0" * 8, "dtype"),
    "extra key": ({"a": {**entry("F64", [1], 0, 8), "x": 1}}, b"\0" * 8, "exactly the keys"),
    "float shape": (
        {"a": {"data_offsets": [0, 8], "dtype": "F64", "shape": [1.0]}},
        b"\0" * 8,
        "shape",
    ),
}


@pytest.mark.parametrize("trainsvc", [True, False], ids=["trainsvc", "foreign"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers(
    tmp_path: Path, case: str, trainsvc: bool, no_big_allocation: None
) -> None:
    tensors, data, match = HOSTILE[case]
    path = tmp_path / "evil.safetensors"
    path.write_bytes(forge(tensors, data, trainsvc=trainsvc))
    with pytest.raises(ckpt.CorruptCheckpointError, match=match):
        ckpt.load(path)
    with pytest.raises(ckpt.CorruptCheckpointError, match=match):
        ckpt.verify(path)


def test_huge_header_length_is_refused(tmp_path: Path, no_big_allocation: None) -> None:
    path = tmp_path / "evil.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(ckpt.CorruptCheckpointError, match="header length: expected at most"):
        ckpt.load(path)
    path.write_bytes(struct.pack("<Q", 1 << 20) + b"{}      ")
    with pytest.raises(ckpt.CorruptCheckpointError, match="header length: declares 1048576"):
        ckpt.load(path)


def test_tree_must_match_tensors(tmp_path: Path) -> None:
    path = tmp_path / "evil.safetensors"
    a = {"a": entry("F64", [1], 0, 8)}
    path.write_bytes(forge(a, b"\0" * 8, tree={"dict": {"b": {"tensor": "b"}}}))
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"trainsvc\.tree at b"):
        ckpt.load(path)
    path.write_bytes(forge(a, b"\0" * 8, tree={"dict": {}}))
    with pytest.raises(
        ckpt.CorruptCheckpointError, match="tensor 'a': expected every tensor to be named"
    ):
        ckpt.load(path)
    path.write_bytes(forge(a, b"\0" * 8, tree={"dict": {"a": {"float": "a"}}}))
    with pytest.raises(ckpt.CorruptCheckpointError, match="0-d F64"):
        ckpt.load(path)
    path.write_bytes(forge(a, b"\0" * 8, tree={"dict": {"a": {"code": "import os"}}}))
    with pytest.raises(ckpt.CorruptCheckpointError, match="node kind"):
        ckpt.load(path)
    deep = '{"list":[' * 100_000 + '{"tensor":"a"}' + "]}" * 100_000
    path.write_bytes(forge(a, b"\0" * 8, tree_json=deep))
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"trainsvc\.tree"):
        ckpt.load(path)


def test_wrong_version_is_incompatible(tmp_path: Path) -> None:
    path = tmp_path / "v2.safetensors"
    path.write_bytes(forge({"a": entry("F64", [1], 0, 8)}, b"\0" * 8, version="2"))
    with pytest.raises(
        ckpt.IncompatibleCheckpointError,
        match=r"supports format version\(s\) 1; the file has version '2'",
    ):
        ckpt.load(path)


def test_header_tampering_without_crc_update_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    ckpt.save(path, {"a": np.zeros(2)}, metadata={"lr": 0.5})
    data = path.read_bytes()
    path.write_bytes(data.replace(b'\\"lr\\":0.5', b'\\"lr\\":0.7'))
    with pytest.raises(ckpt.CorruptCheckpointError, match="header_crc32c: expected"):
        ckpt.load(path)
    # Re-encoding the header non-canonically (same JSON value) is detected too.
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    with pytest.raises(ckpt.CorruptCheckpointError, match="canonical"):
        ckpt.load(path)


def test_bool_bytes_must_be_zero_or_one(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    crc = _format.crc_hex(_format.crc32c(b"\x02"))
    path.write_bytes(forge({"b": entry("BOOL", [1], 0, 1)}, b"\x02", crcs={"b": crc}))
    with pytest.raises(ckpt.CorruptCheckpointError, match="BOOL"):
        ckpt.load(path)


def test_zstd_frames_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors.zst"
    ckpt.save(path, {"a": np.zeros(100_000)}, compression="zstd")
    with pytest.raises(ckpt.CorruptCheckpointError, match="more than this reader's limit"):
        ckpt.load(path, max_decompressed_bytes=10_000)
    assert ckpt.load(path)["a"].shape == (100_000,)
    raw = tmp_path / "raw.safetensors"
    ckpt.save(raw, {"a": np.zeros(10)})
    no_size = zstandard.ZstdCompressor(write_content_size=False, write_checksum=True)
    with no_size.stream_writer(path.open("wb")) as w:
        w.write(raw.read_bytes())
    with pytest.raises(ckpt.CorruptCheckpointError, match="declared content size"):
        ckpt.load(path)
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=False).compress(raw.read_bytes()))
    with pytest.raises(ckpt.CorruptCheckpointError, match="checksum"):
        ckpt.load(path)
