"""Trees: flattening a nest into named tensors and rebuilding it (format section 5)."""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import CorruptCheckpointError, IncompatibleCheckpointError, InvalidTreeError
from ._format import DTYPES, KEY_TREE, dtype_code

ROOT_NAME = "_"
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_TREE_FIELD = f"__metadata__.{KEY_TREE}"


def escape_key(key: str) -> str:
    """A dict key as a path component: ``~`` → ``~0``, ``/`` → ``~1``."""
    return key.replace("~", "~0").replace("/", "~1")


def tensor_name(components: Sequence[str]) -> str:
    """The tensor name of a leaf at ``components`` (``_`` for a tree that is one leaf)."""
    return "/".join(components) if components else ROOT_NAME


def display(components: Sequence[str]) -> str:
    """A tree path for messages."""
    return "/".join(components) if components else "<root>"


def is_namedtuple(node: Any) -> bool:
    """True for instances of NamedTuple / collections.namedtuple types."""
    return isinstance(node, tuple) and isinstance(getattr(type(node), "_fields", None), tuple)


def _is_arraylike(node: Any) -> bool:
    return isinstance(node, np.ndarray | np.generic) or hasattr(node, "__array__")


def to_host_array(leaf: Any, where: str) -> np.ndarray[Any, Any]:
    """Convert an array leaf to a C-contiguous little-endian host array, without copying when possible.

    Raises:
        InvalidTreeError: the dtype is not one the format stores.
    """
    try:
        arr = np.asarray(leaf)
    except Exception as exc:
        raise InvalidTreeError(
            f"{where}: cannot convert {type(leaf).__name__} to an array ({exc})"
        ) from exc
    code = dtype_code(arr.dtype)
    if code is None:
        raise InvalidTreeError(
            f"{where}: dtype {arr.dtype} is not supported; allowed: bool, (u)int8-64, "
            "float16, bfloat16, float32, float64"
        )
    if arr.dtype.byteorder == ">":
        arr = arr.astype(DTYPES[code])
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


@dataclass
class FlatTree:
    """A flattened tree.

    Attributes:
        desc: the JSON-able tree description stored in ``trainsvc.tree``.
        leaves: tensor name → host array, in tree order (Python floats as 0-d float64).
    """

    desc: Any
    leaves: dict[str, np.ndarray[Any, Any]]


def flatten(
    tree: Any, *, convert: Callable[[Any, str], np.ndarray[Any, Any]] = to_host_array
) -> FlatTree:
    """Describe ``tree`` and collect its array leaves under their tensor names.

    Args:
        tree: a nest of dicts (string keys), lists, tuples, NamedTuples and None
            with arrays (anything with ``__array__``) and Python scalars as leaves.
        convert: turns an array leaf into a host array (the manager passes one
            that snapshots into its own buffers).

    Raises:
        InvalidTreeError: an unsupported type, key, dtype or int, naming the path.
    """
    leaves: dict[str, np.ndarray[Any, Any]] = {}

    def walk(node: Any, path: list[str]) -> Any:
        where = display(path)
        if node is None:
            return None
        if isinstance(node, bool):
            return {"bool": node}
        if isinstance(node, np.ndarray | np.generic):
            return tensor(node, path)
        if isinstance(node, int):
            if not _I64_MIN <= node <= _I64_MAX:
                raise InvalidTreeError(
                    f"{where}: Python ints must fit in a signed 64-bit integer; found {node}"
                )
            return {"int": int(node)}
        if isinstance(node, float):
            name = name_of(path)
            leaves[name] = np.array(float(node), dtype=np.float64)
            return {"float": name}
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidTreeError(
                    f"{where}: the string is not valid Unicode (lone surrogate)"
                ) from None
            return {"str": str(node)}
        if isinstance(node, Mapping):
            out: dict[str, Any] = {}
            for key, value in node.items():
                if not isinstance(key, str):
                    raise InvalidTreeError(
                        f"{where}: dict keys must be str; found {type(key).__name__} {key!r:.80}"
                    )
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidTreeError(
                        f"{where}: dict key {key!r} is not valid Unicode"
                    ) from None
                out[key] = walk(value, [*path, escape_key(key)])
            return {"dict": out}
        if is_namedtuple(node):
            fields = [str(f) for f in type(node)._fields]
            values = [walk(v, [*path, f]) for f, v in zip(fields, node, strict=True)]
            return {"namedtuple": {"fields": fields, "name": type(node).__name__, "values": values}}
        if isinstance(node, tuple | list):
            items = [walk(v, [*path, str(i)]) for i, v in enumerate(node)]
            return {"tuple": items} if isinstance(node, tuple) else {"list": items}
        if hasattr(node, "__array__"):
            return tensor(node, path)
        raise InvalidTreeError(
            f"{where}: unsupported leaf type {type(node).__module__}.{type(node).__qualname__}; "
            "allowed: dict, list, tuple, NamedTuple, None, arrays, bool, int, float, str"
        )

    def name_of(path: list[str]) -> str:
        name = tensor_name(path)
        if name == "__metadata__":
            raise InvalidTreeError(
                "__metadata__: a leaf at this path would collide with the safetensors metadata; "
                "rename the key"
            )
        return name

    def tensor(node: Any, path: list[str]) -> dict[str, str]:
        name = name_of(path)
        leaves[name] = convert(node, display(path))
        return {"tensor": name}

    desc = walk(tree, [])
    return FlatTree(desc, leaves)


@dataclass(frozen=True)
class TensorRef:
    """A tensor the tree refers to: its expected kind (``tensor`` or ``float``)."""

    name: str
    kind: str


def check_tree(desc: Any, tensors: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
    """Check a stored tree description against the header's tensors (section 6, check 6).

    Args:
        desc: the parsed ``trainsvc.tree``.
        tensors: tensor name → (dtype code, shape) from the header.

    Raises:
        CorruptCheckpointError: a malformed node, a missing, misnamed or
            unreferenced tensor, naming the path.
    """
    seen: set[str] = set()

    def bad(path: list[str], expected: str, node: Any) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{_TREE_FIELD} at {display(path)}: expected {expected}, found {node!r:.120}"
        )

    def walk(node: Any, path: list[str]) -> None:
        if node is None:
            return
        if not isinstance(node, dict) or len(node) != 1:
            raise bad(path, "null or an object with one key", node)
        ((kind, value),) = node.items()
        if kind in ("tensor", "float"):
            name = tensor_name(path)
            if value != name:
                raise bad(path, f"the tensor name {name!r}", value)
            if name not in tensors:
                raise CorruptCheckpointError(
                    f"{_TREE_FIELD} at {display(path)}: names tensor {name!r}, which the header lacks"
                )
            if kind == "float" and tensors[name] != ("F64", ()):
                raise CorruptCheckpointError(
                    f"tensor {name!r}: a float leaf must be a 0-d F64 tensor, found "
                    f"{tensors[name][0]}{list(tensors[name][1])}"
                )
            seen.add(name)
        elif kind == "int":
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not _I64_MIN <= value <= _I64_MAX
            ):
                raise bad(path, "a signed 64-bit integer", value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise bad(path, "true or false", value)
        elif kind == "str":
            if not isinstance(value, str):
                raise bad(path, "a string", value)
        elif kind == "dict":
            if not isinstance(value, dict):
                raise bad(path, "an object", value)
            for key, child in value.items():
                walk(child, [*path, escape_key(key)])
        elif kind in ("list", "tuple"):
            if not isinstance(value, list):
                raise bad(path, "an array", value)
            for i, child in enumerate(value):
                walk(child, [*path, str(i)])
        elif kind == "namedtuple":
            if (
                not isinstance(value, dict)
                or set(value) != {"fields", "name", "values"}
                or not isinstance(value["name"], str)
                or not isinstance(value["fields"], list)
                or not all(isinstance(f, str) for f in value["fields"])
                or not isinstance(value["values"], list)
                or len(value["values"]) != len(value["fields"])
            ):
                raise bad(path, "{fields, name, values} with one value per field", value)
            try:
                _namedtuple_type(value["name"], tuple(value["fields"]))
            except ValueError as exc:
                raise bad(path, f"a valid NamedTuple type ({exc})", value) from None
            for field, child in zip(value["fields"], value["values"], strict=True):
                walk(child, [*path, field])
        else:
            raise bad(
                path,
                "a node kind (dict, list, tuple, namedtuple, tensor, float, int, bool, str)",
                kind,
            )

    try:
        walk(desc, [])
    except RecursionError:
        raise CorruptCheckpointError(f"{_TREE_FIELD}: the tree is nested too deeply") from None
    unreferenced = sorted(set(tensors) - seen)
    if unreferenced:
        raise CorruptCheckpointError(
            f"tensor {unreferenced[0]!r}: expected every tensor to be named by the tree, "
            f"found {len(unreferenced)} that are not"
        )


@functools.lru_cache(maxsize=256)
def _namedtuple_type(name: str, fields: tuple[str, ...]) -> type[tuple[Any, ...]]:
    return collections.namedtuple(name, fields)


_NO_TARGET: Any = object()


def _describe_leaf(node: Any) -> str:
    if node is None:
        return "None"
    ((kind, _value),) = node.items()
    return {
        "tensor": "an array",
        "float": "a float",
        "int": "an int",
        "bool": "a bool",
        "str": "a str",
    }.get(kind, f"a {kind}")


def _target_spec(target: Any) -> tuple[tuple[int, ...], np.dtype[Any]] | None:
    """Shape and dtype of an array-like target leaf (arrays, JAX arrays, ShapeDtypeStruct)."""
    shape, dtype = getattr(target, "shape", None), getattr(target, "dtype", None)
    if shape is not None and dtype is not None:
        try:
            return tuple(int(d) for d in shape), np.dtype(dtype)
        except TypeError:
            pass
    if _is_arraylike(target):
        arr = np.asarray(target)
        return arr.shape, arr.dtype
    return None


def build(desc: Any, arrays: Mapping[str, np.ndarray[Any, Any]], target: Any = _NO_TARGET) -> Any:
    """Rebuild the tree from a checked description and its arrays.

    Without ``target`` the nest is rebuilt from the file (namedtuples get the
    recorded type name and fields). With ``target`` the container types come
    from ``target`` and every leaf's kind, shape and dtype is checked.

    Raises:
        IncompatibleCheckpointError: the file does not match ``target``, naming the path.
    """

    def mismatch(path: list[str], expected: str, found: str) -> IncompatibleCheckpointError:
        return IncompatibleCheckpointError(
            f"target mismatch at {display(path)}: the target has {expected}, the checkpoint has {found}"
        )

    def walk(node: Any, target: Any, path: list[str]) -> Any:
        has_target = target is not _NO_TARGET
        if node is None:
            if has_target and target is not None:
                raise mismatch(path, type(target).__name__, "None")
            return None
        ((kind, value),) = node.items()
        if kind in ("dict", "list", "tuple", "namedtuple"):
            return container(kind, value, target, path)
        leaf: Any
        if kind == "tensor":
            leaf = arrays[value]
        elif kind == "float":
            leaf = float(arrays[value][()])
        else:
            leaf = value
        if not has_target:
            return leaf
        if kind == "tensor":
            spec = _target_spec(target)
            if spec is None:
                raise mismatch(path, type(target).__name__, "an array")
            shape, dtype = spec
            if (leaf.shape, leaf.dtype) != (shape, dtype):
                raise mismatch(path, f"{dtype}{list(shape)}", f"{leaf.dtype}{list(leaf.shape)}")
            return leaf
        wanted = {"float": float, "int": int, "bool": bool, "str": str}[kind]
        if type(target) is not wanted and not (
            isinstance(target, wanted) and not isinstance(target, bool | np.generic)
        ):
            raise mismatch(path, type(target).__name__, _describe_leaf(node))
        return leaf

    def container(kind: str, value: Any, target: Any, path: list[str]) -> Any:
        has_target = target is not _NO_TARGET
        if kind == "dict":
            if has_target:
                if not isinstance(target, Mapping):
                    raise mismatch(path, type(target).__name__, "a dict")
                if set(target) != set(value):
                    missing = sorted(set(target) - set(value))
                    extra = sorted(set(value) - set(target))
                    raise mismatch(
                        path, f"keys missing from the file {missing}", f"extra keys {extra}"
                    )
            out = {
                k: walk(v, target[k] if has_target else _NO_TARGET, [*path, escape_key(k)])
                for k, v in value.items()
            }
            if has_target and type(target) is not dict:
                try:
                    return type(target)(out)
                except Exception:
                    return out
            return out
        if kind == "namedtuple":
            fields, name, items = value["fields"], value["name"], value["values"]
            labels: list[str] = list(fields)
        else:
            items, labels = value, [str(i) for i in range(len(value))]
        if has_target:
            if kind == "list" and not isinstance(target, list):
                raise mismatch(path, type(target).__name__, "a list")
            if kind != "list" and not isinstance(target, tuple):
                raise mismatch(path, type(target).__name__, f"a {kind}")
            if len(target) != len(items):
                raise mismatch(path, f"{len(target)} items", f"{len(items)}")
            if (
                is_namedtuple(target)
                and kind == "namedtuple"
                and list(type(target)._fields) != labels
            ):
                raise mismatch(path, f"fields {list(type(target)._fields)}", f"fields {labels}")
        children = [
            walk(v, target[i] if has_target else _NO_TARGET, [*path, labels[i]])
            for i, v in enumerate(items)
        ]
        if has_target:
            if is_namedtuple(target):
                return type(target)(*children)
            return list(children) if isinstance(target, list) else tuple(children)
        if kind == "namedtuple":
            return _namedtuple_type(name, tuple(fields))(*children)
        return children if kind == "list" else tuple(children)

    return walk(desc, target, [])
