"""Trees: flattening a nest into named tensors and rebuilding it (format section 5)."""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import CorruptCheckpointError, IncompatibleCheckpointError, InvalidTreeError
from ._format import DTYPES, KEY_TREE, MAX_TREE_DEPTH, dtype_code

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


def _too_deep(path: Sequence[str]) -> str:
    shown = display(path[:6]) + ("/..." if len(path) > 6 else "")
    return (
        f"{shown}: the tree is nested deeper than {MAX_TREE_DEPTH} containers "
        f"(dicts, lists, tuples, NamedTuples), the most the format allows"
    )


def flatten(
    tree: Any, *, convert: Callable[[Any, str], np.ndarray[Any, Any]] = to_host_array
) -> FlatTree:
    """Describe ``tree`` and collect its array leaves under their tensor names.

    Walks the tree with an explicit stack (no recursion), so any depth up to
    ``MAX_TREE_DEPTH`` works and a deeper (or self-referencing) tree gets a
    clear error instead of a ``RecursionError``.

    Args:
        tree: a nest of dicts (string keys), lists, tuples, NamedTuples and None
            with arrays (anything with ``__array__``) and Python scalars as leaves.
        convert: turns an array leaf into a host array (the manager passes one
            that snapshots into its own buffers).

    Raises:
        InvalidTreeError: an unsupported type, key, dtype or int, a tree nested
            deeper than ``MAX_TREE_DEPTH``, naming the path.
    """
    leaves: dict[str, np.ndarray[Any, Any]] = {}
    root: list[Any] = [None]
    # Each item: a node, its path, and where its description goes (out[slot]).
    stack: list[tuple[Any, list[str], Any, Any]] = [(tree, [], root, 0)]

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

    def container_at(path: list[str]) -> None:
        if len(path) >= MAX_TREE_DEPTH:
            raise InvalidTreeError(_too_deep(path))

    while stack:
        node, path, out, slot = stack.pop()
        where = display(path)
        desc: Any
        children: list[tuple[Any, list[str], Any, Any]] = []
        if node is None:
            desc = None
        elif isinstance(node, bool):
            desc = {"bool": node}
        elif isinstance(node, np.ndarray | np.generic):
            desc = tensor(node, path)
        elif isinstance(node, int):
            if not _I64_MIN <= node <= _I64_MAX:
                raise InvalidTreeError(
                    f"{where}: Python ints must fit in a signed 64-bit integer; found {node}"
                )
            desc = {"int": int(node)}
        elif isinstance(node, float):
            name = name_of(path)
            leaves[name] = np.array(float(node), dtype=np.float64)
            desc = {"float": name}
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidTreeError(
                    f"{where}: the string is not valid Unicode (lone surrogate)"
                ) from None
            desc = {"str": str(node)}
        elif isinstance(node, Mapping):
            container_at(path)
            entries: dict[str, Any] = {}
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
                entries[key] = None
                children.append((value, [*path, escape_key(key)], entries, key))
            desc = {"dict": entries}
        elif is_namedtuple(node):
            container_at(path)
            fields = [str(f) for f in type(node)._fields]
            values: list[Any] = [None] * len(fields)
            children = [
                (v, [*path, f], values, i)
                for i, (f, v) in enumerate(zip(fields, node, strict=True))
            ]
            desc = {"namedtuple": {"fields": fields, "name": type(node).__name__, "values": values}}
        elif isinstance(node, tuple | list):
            container_at(path)
            items: list[Any] = [None] * len(node)
            children = [(v, [*path, str(i)], items, i) for i, v in enumerate(node)]
            desc = {"tuple": items} if isinstance(node, tuple) else {"list": items}
        elif hasattr(node, "__array__"):
            desc = tensor(node, path)
        else:
            raise InvalidTreeError(
                f"{where}: unsupported leaf type {type(node).__module__}.{type(node).__qualname__}; "
                "allowed: dict, list, tuple, NamedTuple, None, arrays, bool, int, float, str"
            )
        out[slot] = desc
        stack.extend(reversed(children))  # first child on top: leaves come in tree order
    return FlatTree(root[0], leaves)


@dataclass(frozen=True)
class TensorRef:
    """A tensor the tree refers to: its expected kind (``tensor`` or ``float``)."""

    name: str
    kind: str


def check_tree(desc: Any, tensors: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
    """Check a stored tree description against the header's tensors (section 6, check 6).

    Walks the description with an explicit stack (no recursion).

    Args:
        desc: the parsed ``trainsvc.tree``.
        tensors: tensor name → (dtype code, shape) from the header.

    Raises:
        CorruptCheckpointError: a malformed node, a missing, misnamed or
            unreferenced tensor, a tree nested deeper than ``MAX_TREE_DEPTH``,
            naming the path.
    """
    seen: set[str] = set()

    def bad(path: list[str], expected: str, node: Any) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{_TREE_FIELD} at {display(path)}: expected {expected}, found {node!r:.120}"
        )

    stack: list[tuple[Any, list[str]]] = [(desc, [])]
    while stack:
        node, path = stack.pop()
        if node is None:
            continue
        if not isinstance(node, dict) or len(node) != 1:
            raise bad(path, "null or an object with one key", node)
        ((kind, value),) = node.items()
        children: list[tuple[Any, list[str]]] = []
        if kind in ("dict", "list", "tuple", "namedtuple") and len(path) >= MAX_TREE_DEPTH:
            raise CorruptCheckpointError(f"{_TREE_FIELD} at {_too_deep(path)}")
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
            children = [(child, [*path, escape_key(key)]) for key, child in value.items()]
        elif kind in ("list", "tuple"):
            if not isinstance(value, list):
                raise bad(path, "an array", value)
            children = [(child, [*path, str(i)]) for i, child in enumerate(value)]
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
            children = [
                (child, [*path, field])
                for field, child in zip(value["fields"], value["values"], strict=True)
            ]
        else:
            raise bad(
                path,
                "a node kind (dict, list, tuple, namedtuple, tensor, float, int, bool, str)",
                kind,
            )
        stack.extend(reversed(children))
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


def _make_dict(keys: list[str], target: Any, children: list[Any]) -> Any:
    out = dict(zip(keys, children, strict=True))
    if target is not _NO_TARGET and type(target) is not dict:
        try:
            return type(target)(out)
        except Exception:
            return out
    return out


def _make_sequence(kind: str, value: Any, target: Any, children: list[Any]) -> Any:
    if target is not _NO_TARGET:
        if is_namedtuple(target):
            return type(target)(*children)
        return list(children) if isinstance(target, list) else tuple(children)
    if kind == "namedtuple":
        return _namedtuple_type(value["name"], tuple(value["fields"]))(*children)
    return children if kind == "list" else tuple(children)


def build(desc: Any, arrays: Mapping[str, np.ndarray[Any, Any]], target: Any = _NO_TARGET) -> Any:
    """Rebuild the tree from a checked description and its arrays.

    Without ``target`` the nest is rebuilt from the file (namedtuples get the
    recorded type name and fields). With ``target`` the container types come
    from ``target`` and every leaf's kind, shape and dtype is checked. Works
    with an explicit stack (no recursion), so any depth up to ``MAX_TREE_DEPTH``
    loads.

    Raises:
        IncompatibleCheckpointError: the file does not match ``target``, naming the path.
    """

    def mismatch(path: list[str], expected: str, found: str) -> IncompatibleCheckpointError:
        return IncompatibleCheckpointError(
            f"target mismatch at {display(path)}: the target has {expected}, the checkpoint has {found}"
        )

    def leaf(node: Any, kind: str, value: Any, target: Any, path: list[str]) -> Any:
        result: Any
        if kind == "tensor":
            result = arrays[value]
        elif kind == "float":
            result = float(arrays[value][()])
        else:
            result = value
        if target is _NO_TARGET:
            return result
        if kind == "tensor":
            spec = _target_spec(target)
            if spec is None:
                raise mismatch(path, type(target).__name__, "an array")
            shape, dtype = spec
            if (result.shape, result.dtype) != (shape, dtype):
                raise mismatch(path, f"{dtype}{list(shape)}", f"{result.dtype}{list(result.shape)}")
            return result
        wanted = {"float": float, "int": int, "bool": bool, "str": str}[kind]
        if type(target) is not wanted and not (
            isinstance(target, wanted) and not isinstance(target, bool | np.generic)
        ):
            raise mismatch(path, type(target).__name__, _describe_leaf(node))
        return result

    def check_sequence(kind: str, value: Any, target: Any, path: list[str]) -> list[str]:
        """Check a list/tuple/namedtuple against ``target``; return its children's labels."""
        if kind == "namedtuple":
            labels: list[str] = list(value["fields"])
            items = value["values"]
        else:
            items, labels = value, [str(i) for i in range(len(value))]
        if target is not _NO_TARGET:
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
        return labels

    root: list[Any] = [None]
    # ("visit", node, target, path, out, slot): build node into out[slot];
    # ("finish", make, children, out, slot): all children built, assemble the container.
    stack: list[tuple[Any, ...]] = [("visit", desc, target, [], root, 0)]
    while stack:
        task = stack.pop()
        if task[0] == "finish":
            out = task[3]
            out[task[4]] = task[1](task[2])
            continue
        _, node, tgt, path, out, slot = task
        has_target = tgt is not _NO_TARGET
        if node is None:
            if has_target and tgt is not None:
                raise mismatch(path, type(tgt).__name__, "None")
            out[slot] = None
            continue
        ((kind, value),) = node.items()
        if kind not in ("dict", "list", "tuple", "namedtuple"):
            out[slot] = leaf(node, kind, value, tgt, path)
            continue
        if kind == "dict":
            if has_target:
                if not isinstance(tgt, Mapping):
                    raise mismatch(path, type(tgt).__name__, "a dict")
                if set(tgt) != set(value):
                    missing = sorted(set(tgt) - set(value))
                    extra = sorted(set(value) - set(tgt))
                    raise mismatch(
                        path, f"keys missing from the file {missing}", f"extra keys {extra}"
                    )
            keys = list(value)
            make: Callable[[list[Any]], Any] = functools.partial(_make_dict, keys, tgt)
            specs = [
                (value[k], tgt[k] if has_target else _NO_TARGET, [*path, escape_key(k)])
                for k in keys
            ]
        else:
            labels = check_sequence(kind, value, tgt, path)
            items = value["values"] if kind == "namedtuple" else value
            make = functools.partial(_make_sequence, kind, value, tgt)
            specs = [
                (child, tgt[i] if has_target else _NO_TARGET, [*path, labels[i]])
                for i, child in enumerate(items)
            ]
        built: list[Any] = [None] * len(specs)
        stack.append(("finish", make, built, out, slot))
        stack.extend(
            ("visit", child, child_target, child_path, built, i)
            for i, (child, child_target, child_path) in reversed(list(enumerate(specs)))
        )
    return root[0]
