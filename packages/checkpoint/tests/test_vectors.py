"""The shared test vectors: byte-for-byte reproduction and reading back (format §10)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt

VECTORS = Path(__file__).parent / "vectors"
_spec = importlib.util.spec_from_file_location("ckpt_vectors_generate", VECTORS / "generate.py")
assert _spec is not None and _spec.loader is not None
gen: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

RUN_DIRECTORY_VECTORS = {
    "names",
    "retention",
}  # file names and retention: test_names, test_retention
NAMES = sorted(p.stem for p in VECTORS.glob("*.json") if p.stem not in RUN_DIRECTORY_VECTORS)


def test_every_vector_is_listed() -> None:
    assert set(NAMES) == set(gen.vectors()), "regenerate with tests/vectors/generate.py"
    assert len(NAMES) >= 5


def assert_same(actual: Any, expected: Any, path: str = "") -> None:
    """Deep equality that also compares container types, dtypes and shapes."""
    if isinstance(expected, np.ndarray | np.generic):
        assert isinstance(actual, np.ndarray), path
        expected = np.asarray(expected)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, path
        assert actual.tobytes() == expected.tobytes(), path
        return
    if isinstance(expected, tuple) and hasattr(type(expected), "_fields"):
        assert type(actual).__name__ == type(expected).__name__, path
        assert type(actual)._fields == type(expected)._fields, path
    else:
        assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
    if isinstance(expected, dict):
        assert set(actual) == set(expected), path
        for k in expected:
            assert_same(actual[k], expected[k], f"{path}/{k}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}/{i}")
    else:
        assert actual == expected, path


@pytest.mark.parametrize("name", NAMES)
def test_reads_to_description(name: str) -> None:
    desc = json.loads((VECTORS / f"{name}.json").read_text())
    path = VECTORS / desc["file"]
    tree, info = ckpt.load_with_info(path)
    assert_same(tree, gen.from_description(desc["tree"]))
    assert info.metadata == desc["metadata"]
    assert info.compressed == (desc["compression"] == "zstd")
    ckpt.verify(path)


@pytest.mark.parametrize("name", NAMES)
def test_reproduced_byte_for_byte(name: str, tmp_path: Path) -> None:
    desc = json.loads((VECTORS / f"{name}.json").read_text())
    out = tmp_path / desc["file"]
    ckpt.save(
        out,
        gen.from_description(desc["tree"]),
        metadata=desc["metadata"],
        compression=desc["compression"],
    )
    if desc["compression"] is None:
        assert out.read_bytes() == (VECTORS / desc["file"]).read_bytes()
    else:  # byte identity is promised for uncompressed files only; the content must match
        assert_same(ckpt.load(out), ckpt.load(VECTORS / desc["file"]))


def test_description_round_trips_the_generator_trees() -> None:
    for tree, _, _ in gen.vectors().values():
        assert gen.describe(gen.from_description(gen.describe(tree))) == gen.describe(tree)
