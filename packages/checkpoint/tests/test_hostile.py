"""Crafted and damaged files found by a fault-injection probe (issue 24, items 7-10).

Each test here failed before its fix: a flipped bit in the version field read
as "incompatible" (no fallback), compressed zeros peaked at twice their size,
deep trees saved but did not load (or raised RecursionError), and crafted
shapes raised NumPy's ValueError instead of CorruptCheckpointError.
"""

from __future__ import annotations

import collections
import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
import zstandard
from trainsvc_checkpoint import _format, _io

DEPTH = ckpt.MAX_TREE_DEPTH


def craft(
    tensors: dict[str, dict[str, Any]],
    data: bytes,
    *,
    tree: Any = None,
    metadata: Any = None,
    version: str = "1",
    crcs: dict[str, str] | None = None,
    metadata_text: str | None = None,
    tree_text: str | None = None,
) -> bytes:
    """A trainsvc file with any header content, signed with a correct header CRC.

    The tree defaults to a dict naming each tensor at the top level.
    """
    if tree is None:
        tree = {"dict": {name: {"tensor": name} for name in tensors}}
    md = {
        _format.KEY_FORMAT: _format.FORMAT_NAME,
        _format.KEY_VERSION: version,
        _format.KEY_TREE: tree_text or _format.canonical_json(tree),
        _format.KEY_METADATA: metadata_text or _format.canonical_json(metadata or {}),
        _format.KEY_CRCS: _format.canonical_json(
            crcs if crcs is not None else dict.fromkeys(tensors, "00000000")
        ),
    }
    obj: dict[str, Any] = {"__metadata__": md, **tensors}
    md[_format.KEY_HEADER_CRC] = _format.crc_hex(
        _format.crc32c(_format.canonical_json(obj).encode("ascii"))
    )
    text = _format.canonical_json(obj).encode("ascii")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def foreign(tensors: dict[str, dict[str, Any]], data: bytes) -> bytes:
    text = json.dumps(tensors).encode()
    return struct.pack("<Q", len(text)) + text + data


def refuses(path: Path, error: type[ckpt.CheckpointError] = ckpt.CorruptCheckpointError) -> None:
    """``load``, ``verify`` and ``read_info`` all raise ``error`` (nothing else)."""
    for reader in (ckpt.load, ckpt.verify, ckpt.read_info):
        with pytest.raises(error):
            reader(path)


# --------------------------------------------------------------------------- item 7


def test_a_flipped_bit_in_the_version_field_is_corruption_and_restore_falls_back(
    tmp_path: Path,
) -> None:
    manager = ckpt.CheckpointManager(tmp_path)
    manager.save(1, {"w": np.arange(3.0)}, blocking=True)
    manager.save(2, {"w": np.arange(3.0) + 1}, blocking=True)
    newest = tmp_path / "step_2.safetensors"
    raw = bytearray(newest.read_bytes())
    at = raw.index(b'"trainsvc.format_version":"1"') + len(b'"trainsvc.format_version":"')
    for flipped in (0x30, 0x33, 0x35, 0x39, 0x71):  # "1" with one bit flipped: 0 3 5 9 q
        raw[at] = flipped
        newest.write_bytes(bytes(raw))
        with pytest.raises(ckpt.CorruptCheckpointError, match="header_crc32c"):
            ckpt.load(newest)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored = ckpt.CheckpointManager(tmp_path).restore_checkpoint()
        assert restored.step == 1 and np.array_equal(restored.tree["w"], np.arange(3.0))
        assert [s.file.path for s in restored.skipped] == [newest]
        assert any(issubclass(w.category, ckpt.CheckpointFallbackWarning) for w in caught)


def test_a_well_signed_unknown_version_is_still_incompatible(tmp_path: Path) -> None:
    path = tmp_path / "v2.safetensors"
    path.write_bytes(craft({}, b"", tree={"dict": {}}, version="2"))
    with pytest.raises(ckpt.IncompatibleCheckpointError, match="version '2'"):
        ckpt.load(path)


def test_a_corrupt_unknown_version_says_both(tmp_path: Path) -> None:
    path = tmp_path / "v2.safetensors"
    good = craft({}, b"", tree={"dict": {}}, version="2")
    assert good.count(b"dict") == 1
    path.write_bytes(good.replace(b"dict", b"dicu"))
    with pytest.raises(ckpt.CorruptCheckpointError, match="version '2'"):
        ckpt.load(path)


# --------------------------------------------------------------------------- item 8

CONTENT = 48 * 1024 * 1024


def _zeros_file(tmp_path: Path) -> Path:
    path = tmp_path / "zeros.safetensors.zst"
    ckpt.save(path, {"z": np.zeros(CONTENT, np.uint8)}, compression="zstd")
    assert path.stat().st_size < CONTENT // 1000  # a few KB
    return path


def test_compressed_zeros_load_without_a_second_copy(tmp_path: Path) -> None:
    path = _zeros_file(tmp_path)
    tracemalloc.start()
    try:
        tree = ckpt.load(path)
        _, peak = tracemalloc.get_traced_memory()
        assert tree["z"].nbytes == CONTENT and not tree["z"].any()
        del tree
        tracemalloc.reset_peak()
        ckpt.verify(path)
        _, verify_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The array itself, plus small buffers: nowhere near two copies.
    assert peak < 1.2 * CONTENT, peak
    assert verify_peak < 3 * _io._CHUNK + 4 * 1024 * 1024, verify_peak  # its scratch buffers


def test_compressed_zeros_load_rss_stays_near_the_content_size(tmp_path: Path) -> None:
    path = _zeros_file(tmp_path)
    script = textwrap.dedent(
        f"""
        import resource, sys
        import trainsvc_checkpoint as ckpt
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tree = ckpt.load({str(path)!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert tree["z"].nbytes == {CONTENT}
        print((after - before) * 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=120
    )
    grown = int(out.stdout.split()[-1])
    assert grown < 1.35 * CONTENT, f"peak RSS grew by {grown} bytes for {CONTENT} of content"


@pytest.mark.parametrize("cut", ["checksum", "trailing", "reserved"])
def test_zstd_frame_extent_is_checked_before_decompressing(tmp_path: Path, cut: str) -> None:
    good = tmp_path / "good.safetensors.zst"
    ckpt.save(good, {"w": np.arange(1000.0)}, compression="zstd")
    raw = good.read_bytes()
    bad = tmp_path / "bad.safetensors.zst"
    if cut == "checksum":
        bad.write_bytes(raw[:-2])  # the decompressor alone does not notice this one
    elif cut == "trailing":
        bad.write_bytes(raw + raw)
    else:
        head = zstandard.frame_header_size(raw)
        block = bytearray(raw)
        block[head] |= 0b110  # block type 3
        bad.write_bytes(bytes(block))
    refuses(bad)


# --------------------------------------------------------------------------- item 9

Pair = collections.namedtuple("Pair", ["a", "b"])


def nest(kind: str, depth: int) -> Any:
    node: Any = np.arange(2.0)
    for _ in range(depth):
        if kind == "dict":
            node = {"k": node}
        elif kind == "list":
            node = [node]
        elif kind == "tuple":
            node = (node, 1)
        else:
            node = Pair(node, "x")
    return node


@pytest.mark.parametrize("kind", ["dict", "list", "tuple", "namedtuple"])
def test_trees_at_the_depth_limit_round_trip(tmp_path: Path, kind: str) -> None:
    tree = nest(kind, DEPTH)
    path = tmp_path / "deep.safetensors"
    ckpt.save(path, tree)
    back = ckpt.load(path)
    ckpt.load(path, target=tree)
    node, leaf = back, tree
    for _ in range(DEPTH):
        node, leaf = (node["k"], leaf["k"]) if kind == "dict" else (node[0], leaf[0])
    assert np.array_equal(node, leaf)


def test_a_tree_at_the_limit_loads_from_a_deep_call_stack(tmp_path: Path) -> None:
    path = tmp_path / "deep.safetensors"
    ckpt.save(path, nest("namedtuple", DEPTH))

    def descend(n: int) -> Any:
        return ckpt.load(path) if n == 0 else descend(n - 1)

    descend(sys.getrecursionlimit() // 4)  # no walk of the tree recurses per level


@pytest.mark.parametrize("depth", [DEPTH + 1, 495, 5000])
def test_deeper_trees_are_refused_on_save_with_a_clear_error(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.safetensors"
    with pytest.raises(ckpt.InvalidTreeError, match=f"deeper than {DEPTH}"):
        ckpt.save(path, nest("dict", depth))
    assert not path.exists() and not list(tmp_path.iterdir())


def test_a_self_referencing_tree_is_refused(tmp_path: Path) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ckpt.InvalidTreeError, match="deeper than"):
        ckpt.save(tmp_path / "x.safetensors", {"loop": loop})


def test_deep_metadata_is_refused_on_save(tmp_path: Path) -> None:
    deep: Any = 1
    for _ in range(DEPTH + 1):
        deep = {"k": deep}
    with pytest.raises(ckpt.InvalidTreeError, match="metadata: nested deeper"):
        ckpt.save(tmp_path / "x.safetensors", {"w": np.zeros(1)}, metadata=deep)
    ckpt.save(tmp_path / "ok.safetensors", {"w": np.zeros(1)}, metadata=deep["k"])


@pytest.mark.parametrize("depth", [DEPTH + 1, 300, 420, 100_000])
def test_crafted_deeper_trees_are_corrupt(tmp_path: Path, depth: int) -> None:
    text = '{"list":[' * depth + '{"int":1}' + "]}" * depth
    path = tmp_path / "deep.safetensors"
    path.write_bytes(craft({}, b"", tree_text=text))
    refuses(path)


# --------------------------------------------------------------------------- item 10

HOSTILE_SHAPES: list[tuple[str, list[int], str]] = [
    ("65 dims", [1] * 65, "at most 64 dimensions"),
    ("1000 dims", [1] * 1000, "at most 64 dimensions"),
    ("empty but huge", [0, 2**62, 2**62], "2\\*\\*63 - 1"),
    ("empty, 2**63", [0, 2**63], "2\\*\\*63 - 1"),
    ("empty, 2**64", [0, 2**64], "2\\*\\*63 - 1"),
    ("empty, overflowing bytes", [0, 2**61, 2], "2\\*\\*63 - 1"),
    ("negative", [-1], "non-negative"),
    ("overflowing bytes", [2**61, 2**61], "2\\*\\*63 - 1"),
    ("more bytes than the file", [2**30, 2**30], "needs more than"),
]


@pytest.mark.parametrize(("label", "shape", "message"), HOSTILE_SHAPES)
def test_crafted_shapes_are_corrupt_not_numpy_errors(
    tmp_path: Path, label: str, shape: list[int], message: str
) -> None:
    entry = {"t": {"data_offsets": [0, 0], "dtype": "F32", "shape": shape}}
    signed = tmp_path / "signed.safetensors"
    signed.write_bytes(craft(entry, b""))
    plain = tmp_path / "foreign.safetensors"
    plain.write_bytes(foreign(entry, b""))
    for path in (signed, plain):
        for reader in (ckpt.load, ckpt.verify, ckpt.read_info):
            with pytest.raises(ckpt.CorruptCheckpointError, match=message):
                reader(path)


def test_64_dims_of_one_still_load(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    ckpt.save(path, {"t": np.ones([1] * 64, np.float32)})
    assert ckpt.load(path)["t"].shape == (1,) * 64
    empty = tmp_path / "e.safetensors"
    ckpt.save(empty, {"t": np.ones((0, 2**40), np.float32)})
    assert ckpt.load(empty)["t"].shape == (0, 2**40)


@pytest.mark.parametrize("text", ['{"lr":1e999}', '{"lr":-1e400}', '{"x":[NaN]}'])
def test_non_finite_numbers_in_metadata_are_corrupt(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(craft({}, b"", tree={"dict": {}}, metadata_text=text))
    refuses(path)


def test_scan_ignores_names_with_a_trailing_newline(tmp_path: Path) -> None:
    ckpt.save(tmp_path / "step_1.safetensors", {"w": np.zeros(1)}, metadata={"step": 1})
    os.link(tmp_path / "step_1.safetensors", tmp_path / "step_2.safetensors\n")
    assert [c.step for c in ckpt.scan(tmp_path)] == [1]


@pytest.mark.parametrize("dtype", [[], {}, 5, None, ["F32"]])
def test_a_dtype_that_is_not_a_string_is_corrupt(tmp_path: Path, dtype: Any) -> None:
    # Found by the fuzzer (test_fuzz.py): a list dtype raised TypeError (unhashable).
    entry = {"t": {"data_offsets": [0, 4], "dtype": dtype, "shape": [1]}}
    for i, raw in enumerate((craft(entry, b"\0" * 4), foreign(entry, b"\0" * 4))):
        path = tmp_path / f"{i}.safetensors"
        path.write_bytes(raw)
        for reader in (ckpt.load, ckpt.verify, ckpt.read_info):
            with pytest.raises(ckpt.CorruptCheckpointError, match="dtype: expected one of"):
                reader(path)
