"""Fuzzing the checkpoint reader with hypothesis (issue 24).

Valid files (plain, zstd, foreign, the shared test vectors) are mutated:
bit flips, overwritten, inserted and deleted bytes, truncations, and
structure-aware edits of the header JSON that are then re-signed with a
correct header CRC (and re-compressed for zstd files), so that they get past
the CRC to the bounds, shape and tree checks. For every mutant, ``load``,
``verify`` and ``read_info``:

- raise only ``CheckpointError`` subclasses, never anything else;
- never load a damaged trainsvc file silently: a load that succeeds on an
  unsigned mutant gives exactly the original tree, and one that fails raises
  ``CorruptCheckpointError`` (so that a manager falls back);
- agree: ``verify`` succeeds exactly when ``load`` does, and ``load`` fails
  whenever ``read_info`` does.

In the normal test suite this runs a few hundred derandomized examples (a few
seconds). ``make fuzz`` sets ``FUZZ_SECONDS`` (default 60) and runs fresh
random examples until the time is spent, then prints a table of outcomes.
"""

from __future__ import annotations

import collections
import json
import os
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainsvc_checkpoint import _format

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "0") or 0)
"""0 in the normal suite; ``make fuzz`` sets it to the time budget in seconds."""
LIMIT = 16 * 1024 * 1024
"""max_decompressed_bytes for every read: a mutant never makes the fuzzer allocate much."""
VECTORS = Path(__file__).parent / "vectors"

Pair = collections.namedtuple("Pair", ["mu", "nu"])


def _base_trees() -> dict[str, Any]:
    return {
        "mixed": {
            "params": {"dense/0": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4)}},
            "opt": (Pair(np.int64(3), [0.5, None]), ()),
            "flags": np.array([True, False, True]),
            "half": np.arange(5, dtype=np.float16),
            "bf16": np.arange(4, dtype=ml_dtypes.bfloat16),
            "empty": np.zeros((0, 3), np.int32),
            "u64": np.array([2**64 - 1], np.uint64),
            "step": 7,
            "name": "run\u00e9",
            "on": True,
        },
        "scalars": [1, 2.5, "x", None, False],
        "leaf": np.arange(3, dtype=np.int8),
    }


class Corpus:
    """Valid files to mutate, with what they hold."""

    def __init__(self, directory: Path) -> None:
        self.files: dict[str, bytes] = {}
        self.trees: dict[str, Any] = {}
        self.trainsvc: dict[str, bool] = {}
        for name, tree in _base_trees().items():
            for compression in (None, "zstd"):
                key = f"{name}{'.zst' if compression else ''}"
                path = directory / f"{key}.safetensors"
                ckpt.save(
                    path, tree, metadata={"step": 1, "cfg": {"lr": 0.1}}, compression=compression
                )
                self.files[key] = path.read_bytes()
                self.trees[key] = ckpt.load(path)
                self.trainsvc[key] = True
        text = json.dumps(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]},
            }
        ).encode()
        self.files["foreign"] = struct.pack("<Q", len(text)) + text + bytes(range(11))
        self.trainsvc["foreign"] = False
        for vector in sorted(VECTORS.glob("*.safetensors*")):
            key = f"vector:{vector.name}"
            self.files[key] = vector.read_bytes()
            self.trees[key] = ckpt.load(vector)
            self.trainsvc[key] = True
        self.names = sorted(self.files)


_WORKDIR = tempfile.TemporaryDirectory(prefix="ckpt-fuzz-")
CORPUS = Corpus(Path(_WORKDIR.name))
MUTANT = Path(_WORKDIR.name) / "mutant.safetensors"

INTERESTING: list[Any] = [
    0,
    1,
    -1,
    7,
    255,
    2**31,
    2**32,
    2**53 + 1,
    2**62,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    10**400,
    0.5,
    1e308,
    "",
    "F32",
    "BOOL",
    "tensor",
    "float",
    "__metadata__",
    "x" * 300,
    None,
    True,
    False,
    [],
    {},
    [0],
    [1] * 65,
    [0, 2**62, 2**62],
    [2**61, 2**61],
    [-1],
    {"tensor": "_"},
    {"dict": {}},
    {"namedtuple": {"fields": ["a", "a"], "name": "T", "values": [None, None]}},
    {"namedtuple": {"fields": ["_x"], "name": "class", "values": [None]}},
]


# --------------------------------------------------------------------------- mutations


def _split(raw: bytes) -> tuple[bytes, bytes] | None:
    """Header JSON bytes and data bytes of an uncompressed file, or None."""
    if len(raw) < 8:
        return None
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        return None
    return raw[8 : 8 + n], raw[8 + n :]


def _resign(obj: Any) -> bytes:
    """Serialize a header object canonically with a correct header CRC (when it has metadata)."""
    md = obj.get("__metadata__") if isinstance(obj, dict) else None
    if isinstance(md, dict) and any(str(k).startswith("trainsvc.") for k in md):
        md.pop(_format.KEY_HEADER_CRC, None)
        crc = _format.crc32c(_format.canonical_json(obj).encode("ascii"))
        md[_format.KEY_HEADER_CRC] = _format.crc_hex(crc)
    text = _format.canonical_json(obj).encode("ascii")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _mutate_json(value: Any, draw: Callable[[Any], Any], depth: int = 0) -> Any:
    """Replace, delete or add one thing somewhere in ``value`` (chosen by ``draw``)."""
    if isinstance(value, str) and value[:1] in "{[" and draw(st.booleans()):
        # A JSON text inside a metadata string: mutate inside, re-encode (canonically or not).
        try:
            inner = json.loads(value)
        except ValueError:
            inner = None
        if inner is not None:
            mutated = _mutate_json(inner, draw, depth + 1)
            if draw(st.booleans()):
                return _format.canonical_json(mutated)
            return json.dumps(mutated)
    if isinstance(value, dict) and value and depth < 12 and draw(st.integers(0, 4)):
        key = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["descend", "descend", "delete", "add", "rename"]))
        out = dict(value)
        if action == "descend":
            out[key] = _mutate_json(value[key], draw, depth + 1)
        elif action == "delete":
            del out[key]
        elif action == "add":
            out[
                draw(st.sampled_from(["x", "shape", "__metadata__", "trainsvc.extra", key + "~"]))
            ] = draw(st.sampled_from(INTERESTING))
        else:
            out[draw(st.text(max_size=4))] = out.pop(key)
        return out
    if isinstance(value, list) and value and depth < 12 and draw(st.integers(0, 4)):
        i = draw(st.integers(0, len(value) - 1))
        action = draw(st.sampled_from(["descend", "descend", "delete", "duplicate"]))
        out_list = list(value)
        if action == "descend":
            out_list[i] = _mutate_json(value[i], draw, depth + 1)
        elif action == "delete":
            del out_list[i]
        else:
            out_list.insert(i, value[i])
        return out_list
    if isinstance(value, int) and not isinstance(value, bool) and draw(st.booleans()):
        return value + draw(st.sampled_from([-1, 1, 8, -8, 2**32]))
    return draw(st.sampled_from(INTERESTING))


@st.composite
def mutants(draw: Any) -> tuple[str, bytes, bool]:
    """A corpus file name, its mutated bytes, and whether the mutant was re-signed."""
    name = draw(st.sampled_from(CORPUS.names))
    raw = CORPUS.files[name]
    compressed = raw[:4] == _format.ZSTD_MAGIC
    kind = draw(
        st.sampled_from(
            ["flip", "flip", "bytes", "truncate", "insert", "delete", "header", "header"]
        )
    )
    data = bytearray(raw)
    if kind == "flip":
        for bit in draw(st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=4)):
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "bytes":
        for pos in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
            data[pos] = draw(st.integers(0, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(raw) - 1)) :]
    elif kind == "insert":
        pos = draw(st.integers(0, len(raw)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        pos = draw(st.integers(0, len(raw) - 1))
        del data[pos : pos + draw(st.integers(1, 16))]
    else:
        content = zstandard.ZstdDecompressor().decompress(raw) if compressed else raw
        parts = _split(content)
        assert parts is not None
        obj = json.loads(parts[0])
        mutated = _mutate_json(obj, draw)
        body = parts[1]
        if draw(st.integers(0, 5)) == 0:
            body = body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=8))
        try:
            new = _resign(mutated) + body
        except (TypeError, ValueError):  # not canonical-JSON-able (a float like 1e308 is)
            new = content
        if compressed:
            new = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(
                new
            )
        return name, new, True
    return name, bytes(data), False


# --------------------------------------------------------------------------- the oracle

STATS: collections.Counter[str] = collections.Counter()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _outcome(reader: Callable[..., Any]) -> tuple[Any, ckpt.CheckpointError | None]:
    try:
        return reader(MUTANT, max_decompressed_bytes=LIMIT), None
    except ckpt.CheckpointError as exc:
        return None, exc


def check(name: str, data: bytes, resigned: bool) -> None:
    """Run the three readers on one mutant and check the oracle."""
    MUTANT.write_bytes(data)
    STATS["trials"] += 1
    tree, load_error = _outcome(ckpt.load)
    _, verify_error = _outcome(ckpt.verify)
    _, info_error = _outcome(ckpt.read_info)
    assert (load_error is None) == (verify_error is None), (load_error, verify_error)
    assert info_error is None or load_error is not None, info_error
    if load_error is not None:
        if CORPUS.trainsvc[name] and not resigned:
            # Damage is corruption, wherever it is (the header CRC comes first),
            # so that a manager falls back to an older checkpoint.
            assert isinstance(load_error, ckpt.CorruptCheckpointError), load_error
        STATS[f"refused: {type(load_error).__name__}"] += 1
        return
    if data == CORPUS.files[name]:
        STATS["loaded: unchanged bytes"] += 1
    elif not CORPUS.trainsvc[name] or resigned:
        # No CRC protects a foreign file, and a re-signed header is a forgery
        # that is well-formed: any content is acceptable, only errors are not.
        STATS["loaded: foreign or re-signed file"] += 1
    else:
        assert _same(tree, CORPUS.trees[name]), "a damaged trainsvc file loaded different content"
        STATS["loaded: same content (damage outside it)"] += 1


def _suite_settings(**kwargs: Any) -> settings:
    return settings(
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        **kwargs,
    )


def _fuzz(**kwargs: Any) -> None:
    """Run one hypothesis search over mutants with these settings."""

    @_suite_settings(**kwargs)
    @given(mutants())
    def fuzz_one(mutant: tuple[str, bytes, bool]) -> None:
        check(*mutant)

    fuzz_one()


def test_fuzz_the_reader_briefly() -> None:
    """A few hundred reproducible mutants, in the normal suite."""
    _fuzz(max_examples=400, derandomize=True)
    assert STATS["trials"] >= 400


@pytest.mark.skipif(FUZZ_SECONDS <= 0, reason="make fuzz sets FUZZ_SECONDS")
def test_fuzz_the_reader_for_a_while() -> None:
    """Fresh random mutants until FUZZ_SECONDS have passed; prints the outcomes."""
    STATS.clear()
    end = time.monotonic() + FUZZ_SECONDS
    rounds = 0
    while time.monotonic() < end:
        _fuzz(max_examples=200)
        rounds += 1
    good = STATS["trials"]  # any failure raised above
    print(f"\ncheckpoint reader fuzz: {rounds} rounds in {FUZZ_SECONDS:.0f} s")
    print("| probe | trials | good outcomes | failures |")
    print("| --- | --- | --- | --- |")
    print(f"| mutated checkpoint files (load/verify/read_info) | {STATS['trials']} | {good} | 0 |")
    for key, count in sorted(STATS.items()):
        if key != "trials":
            print(f"|   {key} | {count} | | |")
