"""Round trips: trees of every supported shape and dtype, canonical bytes, targets, bad input."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    np.uint16,
    np.int16,
    np.float16,
    ml_dtypes.bfloat16,
    np.uint32,
    np.int32,
    np.float32,
    np.uint64,
    np.int64,
    np.float64,
]


class AdamState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


class Empty(NamedTuple):
    pass


class DeviceArray:
    """A stand-in for a JAX array: not an ndarray, converts through ``__array__``."""

    def __init__(self, value: np.ndarray[Any, Any]) -> None:
        self._value = value
        self.shape = value.shape
        self.dtype = value.dtype

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        out = self._value if dtype is None else self._value.astype(dtype)
        return out.copy() if copy else out


def assert_tree_equal(actual: Any, expected: Any, path: str = "<root>") -> None:
    """Equality of trees including container types, dtypes, shapes and exact bytes."""
    if isinstance(expected, np.ndarray | np.generic | DeviceArray):
        expected = np.asarray(expected)
        assert isinstance(actual, np.ndarray), path
        assert actual.dtype == expected.dtype, f"{path}: {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, path
        assert actual.tobytes() == expected.tobytes(), path
        return
    if isinstance(expected, tuple) and hasattr(type(expected), "_fields"):
        assert isinstance(actual, tuple) and hasattr(type(actual), "_fields"), path
        assert type(actual).__name__ == type(expected).__name__, path
        assert tuple(type(actual)._fields) == tuple(type(expected)._fields), path
    elif isinstance(expected, float):
        assert type(actual) is float, path
        assert actual == expected or (math.isnan(actual) and math.isnan(expected)), path
        return
    else:
        assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
    if isinstance(expected, dict):
        assert set(actual) == set(expected), path
        for key in expected:
            assert_tree_equal(actual[key], expected[key], f"{path}/{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_tree_equal(a, e, f"{path}/{i}")
    else:
        assert actual == expected, path


arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(
        np.dtype(dt) if dt is not ml_dtypes.bfloat16 else np.float32,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        elements={"allow_nan": True} if np.dtype(dt).kind == "f" else None,
    ).map(lambda a, dt=dt: a.astype(dt))
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
keys = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)


def trees(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.dictionaries(keys, children, max_size=4),
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.tuples(children, children, children).map(lambda t: AdamState(*t)),
        ),
        max_leaves=12,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=trees(st.one_of(arrays, scalars)), compression=st.sampled_from([None, "zstd"]))
def test_round_trip_arbitrary_trees(tmp_path: Path, tree: Any, compression: Any) -> None:
    path = tmp_path / "t.safetensors"
    ckpt.save(path, tree, metadata={"k": [1, 2.5, "é"]}, compression=compression)
    loaded, info = ckpt.load_with_info(path)
    assert_tree_equal(loaded, tree)
    assert info.metadata == {"k": [1, 2.5, "é"]}
    assert_tree_equal(ckpt.load(path, target=tree), tree)
    ckpt.verify(path)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=trees(st.one_of(arrays, scalars)))
def test_same_input_gives_same_bytes(tmp_path: Path, tree: Any) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ckpt.save(a, tree)
    ckpt.save(b, tree)
    assert a.read_bytes() == b.read_bytes()
    # Dict insertion order does not matter either.
    if isinstance(tree, dict):
        ckpt.save(b, dict(reversed(list(tree.items()))))
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_every_dtype_zero_d_empty_bf16_namedtuple(tmp_path: Path, compression: Any) -> None:
    tree = {
        "dtypes": {np.dtype(dt).name: np.arange(6).astype(dt).reshape(2, 3) for dt in DTYPES},
        "zero_d": np.float32(1.5),
        "empty": np.zeros((3, 0, 2), ml_dtypes.bfloat16),
        "opt": (AdamState(np.int32(4), {"w": np.ones(2)}, {"w": np.zeros(2)}), Empty()),
        "py": [1.25, -3, True, "ünï", None],
    }
    path = tmp_path / "x.safetensors"
    ckpt.save(path, tree, compression=compression)
    loaded = ckpt.load(path)
    assert_tree_equal(loaded, tree)
    assert type(loaded["opt"][0]).__name__ == "AdamState"
    assert loaded["opt"][0].mu["w"].flags.writeable


def test_empty_tensors_of_different_item_sizes(tmp_path: Path) -> None:
    # Found by hypothesis: empty tensors share offsets, so the reader's order check must
    # break ties the way the format orders tensors (item size, then name).
    tree = [np.zeros(0, np.bool_), np.zeros(0, np.uint16), np.ones(1, np.int8), np.zeros((2, 0))]
    path = tmp_path / "x.safetensors"
    ckpt.save(path, tree)
    assert_tree_equal(ckpt.load(path), tree)


def test_array_like_leaves_are_converted(tmp_path: Path) -> None:
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    tree = {"w": DeviceArray(value), "bf": DeviceArray(value.astype(ml_dtypes.bfloat16))}
    path = tmp_path / "x.safetensors"
    ckpt.save(path, tree)
    loaded = ckpt.load(path)
    np.testing.assert_array_equal(loaded["w"], value)
    assert loaded["bf"].dtype == ml_dtypes.bfloat16
    # Array-likes with shape and dtype work as targets too.
    assert_tree_equal(ckpt.load(path, target=tree), tree)


def test_non_contiguous_and_big_endian_arrays(tmp_path: Path) -> None:
    base = np.arange(20, dtype=np.int32).reshape(4, 5)
    tree = {"t": base.T, "s": base[::2, 1:], "be": base.astype(">f8")}
    path = tmp_path / "x.safetensors"
    ckpt.save(path, tree)
    loaded = ckpt.load(path)
    np.testing.assert_array_equal(loaded["t"], base.T)
    np.testing.assert_array_equal(loaded["s"], base[::2, 1:])
    assert loaded["be"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(loaded["be"], base)


def test_tensor_names_are_escaped_paths(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    ckpt.save(path, {"a/b": {"~c": [np.zeros(1), (np.ones(1),)]}, "single": 0.5})
    names = set(ckpt.read_info(path).tensors)
    assert names == {"a~1b/~0c/0", "a~1b/~0c/1/0", "single"}
    ckpt.save(path, np.zeros(2))
    assert set(ckpt.read_info(path).tensors) == {"_"}


def test_layout_is_aligned_and_ordered(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    ckpt.save(
        path, {"a": np.zeros(3, np.uint8), "b": np.zeros(3, np.float64), "c": np.zeros(1, np.int16)}
    )
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header["b"]["data_offsets"] == [0, 24]
    assert header["c"]["data_offsets"] == [24, 26]
    assert header["a"]["data_offsets"] == [26, 29]


def test_target_mismatch_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    tree = {"params": {"w": np.zeros((2, 3), np.float32)}, "step": 1, "opt": AdamState(1, 2, 3)}
    ckpt.save(path, tree)
    with pytest.raises(
        ckpt.IncompatibleCheckpointError, match=r"params/w.*float32\[3, 2\].*float32\[2, 3\]"
    ):
        ckpt.load(path, target={**tree, "params": {"w": np.zeros((3, 2), np.float32)}})
    with pytest.raises(ckpt.IncompatibleCheckpointError, match=r"params/w.*float64"):
        ckpt.load(path, target={**tree, "params": {"w": np.zeros((2, 3))}})
    with pytest.raises(ckpt.IncompatibleCheckpointError, match=r"<root>.*missing.*'extra'"):
        ckpt.load(path, target={**tree, "extra": 1})
    with pytest.raises(ckpt.IncompatibleCheckpointError, match="step"):
        ckpt.load(path, target={**tree, "step": "one"})
    # The structure comes from the target: its NamedTuple class is used.
    loaded = ckpt.load(path, target=tree)
    assert type(loaded["opt"]) is AdamState


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        ({"x": np.zeros(2, np.complex64)}, r"x: dtype complex64 is not supported"),
        ({"x": {1: np.zeros(1)}}, r"x: dict keys must be str"),
        ({"a": [object()]}, r"a/0: unsupported leaf type"),
        ({"big": 2**64}, r"big: Python ints must fit"),
        ({"__metadata__": np.zeros(1)}, r"__metadata__"),
        ({"s": np.array(["a"])}, r"s: dtype <U1 is not supported"),
    ],
)
def test_unsupported_trees_are_refused(tmp_path: Path, tree: Any, match: str) -> None:
    path = tmp_path / "x.safetensors"
    with pytest.raises(ckpt.InvalidTreeError, match=match):
        ckpt.save(path, tree)
    assert not list(tmp_path.iterdir()), "nothing may be written for a refused tree"


def test_bad_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ckpt.InvalidTreeError, match="metadata"):
        ckpt.save(tmp_path / "x.safetensors", {}, metadata={"lr": float("nan")})
    with pytest.raises(ckpt.InvalidTreeError, match="metadata"):
        ckpt.save(tmp_path / "x.safetensors", {}, metadata={"a": object()})
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ckpt.CheckpointNotFoundError, match="no checkpoint file"):
        ckpt.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        ckpt.verify(tmp_path / "nope.safetensors")
