"""Generate the shared test vectors of the checkpoint format (docs/checkpoint-format.md §10).

Each vector is ``NAME.safetensors`` (or ``NAME.safetensors.zst``) plus
``NAME.json`` describing its content:

```
{"file": "NAME.safetensors", "compression": null | "zstd",
 "metadata": {...caller metadata...},
 "tree": node}
```

where ``node`` uses the vocabulary of the format's tree (section 5) with the
leaves inline:

- ``null``; ``{"dict": {key: node}}``; ``{"list": [node]}``; ``{"tuple": [node]}``;
  ``{"namedtuple": {"fields": [...], "name": "T", "values": [node]}}``;
- ``{"tensor": {"dtype": "F32", "shape": [2, 3], "data": [...]}}``: ``data``
  is the flat C-order list of values (numbers; ``true``/``false`` for BOOL),
  each exactly representable in the dtype;
- ``{"float": 0.5}``, ``{"int": 5}``, ``{"bool": true}``, ``{"str": "text"}``.

Run ``python packages/checkpoint/tests/vectors/generate.py`` to rewrite them;
``test_vectors.py`` checks that the library reproduces every uncompressed file
byte for byte and reads every file back to its description.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import trainsvc_checkpoint as ckpt

HERE = Path(__file__).resolve().parent

_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "U32": np.uint32,
    "I32": np.int32,
    "F32": np.float32,
    "U64": np.uint64,
    "I64": np.int64,
    "F64": np.float64,
}


def _code(dtype: np.dtype[Any]) -> str:
    for code, t in _DTYPES.items():
        if np.dtype(t) == dtype:
            return code
    raise ValueError(dtype)


def describe(tree: Any) -> Any:
    """The JSON description of a tree (the inverse of :func:`from_description`)."""
    if tree is None:
        return None
    if isinstance(tree, bool):
        return {"bool": tree}
    if isinstance(tree, np.ndarray | np.generic):
        arr = np.asarray(tree)
        data = (
            arr.reshape(-1).tolist()
            if arr.dtype == np.bool_
            else [
                float(v) if arr.dtype.kind == "f" or arr.dtype == ml_dtypes.bfloat16 else int(v)
                for v in arr.reshape(-1)
            ]
        )
        return {"tensor": {"data": data, "dtype": _code(arr.dtype), "shape": list(arr.shape)}}
    if isinstance(tree, int):
        return {"int": tree}
    if isinstance(tree, float):
        return {"float": tree}
    if isinstance(tree, str):
        return {"str": tree}
    if isinstance(tree, dict):
        return {"dict": {k: describe(v) for k, v in tree.items()}}
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        return {
            "namedtuple": {
                "fields": list(type(tree)._fields),
                "name": type(tree).__name__,
                "values": [describe(v) for v in tree],
            }
        }
    if isinstance(tree, tuple):
        return {"tuple": [describe(v) for v in tree]}
    if isinstance(tree, list):
        return {"list": [describe(v) for v in tree]}
    raise TypeError(type(tree))


def from_description(node: Any) -> Any:
    """Rebuild the tree a description stands for (namedtuples as collections.namedtuple)."""
    if node is None:
        return None
    ((kind, value),) = node.items()
    if kind == "tensor":
        dtype = np.dtype(_DTYPES[value["dtype"]])
        if value["dtype"] in ("F16", "BF16", "F32", "F64"):
            flat = np.array(value["data"], dtype=np.float64).astype(dtype)
        else:
            flat = np.array(value["data"], dtype=dtype)
        return flat.reshape(value["shape"])
    if kind in ("float", "int", "bool", "str"):
        return value
    if kind == "dict":
        return {k: from_description(v) for k, v in value.items()}
    if kind == "list":
        return [from_description(v) for v in value]
    if kind == "tuple":
        return tuple(from_description(v) for v in value)
    if kind == "namedtuple":
        cls = collections.namedtuple(value["name"], value["fields"])  # type: ignore[misc]
        return cls(*(from_description(v) for v in value["values"]))
    raise ValueError(kind)


class ScaleByAdamState(NamedTuple):
    """Shaped like optax's Adam state."""

    count: Any
    mu: Any
    nu: Any


class EmptyState(NamedTuple):
    """Shaped like optax's EmptyState: a NamedTuple with no fields."""


def vectors() -> dict[str, tuple[Any, dict[str, Any], str | None]]:
    """NAME → (tree, metadata, compression) for every vector."""
    every_dtype = {
        "bool": np.array([True, False, True]),
        "u8": np.array([0, 1, 255], np.uint8),
        "i8": np.array([-128, 0, 127], np.int8),
        "u16": np.array([0, 65535], np.uint16),
        "i16": np.array([[-32768, 1], [2, 32767]], np.int16),
        "f16": np.array([0.5, -2.0, 65504.0], np.float16),
        "bf16": np.array([1.0, -0.5, 3.140625, 256.0], ml_dtypes.bfloat16),
        "u32": np.array([4294967295, 7], np.uint32),
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "f32": np.array([[0.25, -1.5], [1e-3, 3.0e38]], np.float32),
        "u64": np.array([18446744073709551615, 0], np.uint64),
        "i64": np.array([-9223372036854775808, 9223372036854775807], np.int64),
        "f64": np.array([0.1, -0.0, 1e300], np.float64),
        "scalar_f32": np.float32(2.5),
        "scalar_i64": np.array(-7, np.int64),
        "empty_f32": np.zeros((0,), np.float32),
        "empty_2d_bf16": np.zeros((2, 0), ml_dtypes.bfloat16),
    }
    nested = {
        "params": {
            "dense_0": {
                "kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
                "bias": np.zeros(3, np.float32),
            },
            "a/b": np.array([1, 2], np.int32),
            "~tilde": np.array([3], np.int16),
            "ünï": np.array([1.5], np.float64),
        },
        "layers": [np.ones(2, np.float32), None, [np.array(True), "text"]],
        "pair": (np.array([9], np.uint8), 3),
        "lr": 0.001,
        "big_float": 1.5e16,
        "step": 1234,
        "neg": -9223372036854775808,
        "done": False,
        "name": "héllo wörld ✓ 𝄞",
        "nothing": None,
    }
    train_state = {
        "params": {
            "w": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4),
            "b": np.zeros(4, np.float32),
        },
        "opt_state": (
            ScaleByAdamState(
                count=np.array(3, np.int32),
                mu={"w": np.full((2, 4), 0.5, np.float32), "b": np.zeros(4, np.float32)},
                nu={"w": np.full((2, 4), 0.25, np.float32), "b": np.zeros(4, np.float32)},
            ),
            EmptyState(),
        ),
        "prng_key": np.array([0, 42], np.uint32),
        "step": 3,
    }
    metadata = {
        "config": {
            "lr": 0.001,
            "betas": [0.9, 0.999],
            "eps": 1e-08,
            "name": "émergence",
            "big": 1.5e16,
        },
        "seed": 7,
        "note": 'ctrl\u0001 and "quotes" and \\ and / and \u007f and 😀',
    }
    return {
        "every_dtype": (every_dtype, {}, None),
        "nested": (nested, metadata, None),
        "train_state": (train_state, {"step": 3, "trainer": "emergence"}, None),
        "single_leaf": (np.arange(4, dtype=np.int64), {}, None),
        "scalars_only": ({"step": 0, "loss": 0.5, "tag": "", "flags": [True, None]}, {}, None),
        "compressed": (train_state, {"step": 3}, "zstd"),
    }


def file_name(name: str, compression: str | None) -> str:
    """The vector's file name."""
    return f"{name}.safetensors" + (".zst" if compression else "")


def main() -> int:
    """Write every vector and its description into this directory."""
    for name, (tree, metadata, compression) in vectors().items():
        fname = file_name(name, compression)
        ckpt.save(HERE / fname, tree, metadata=metadata, compression=compression)  # type: ignore[arg-type]
        desc = {
            "compression": compression,
            "file": fname,
            "metadata": metadata,
            "tree": describe(tree),
        }
        (HERE / f"{name}.json").write_text(
            json.dumps(desc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        )
        print(f"wrote {fname}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
