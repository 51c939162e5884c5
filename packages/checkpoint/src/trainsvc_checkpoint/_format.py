"""The byte-level format: dtypes, canonical JSON, header building and checking.

Everything here follows docs/checkpoint-format.md (sections 1-4 and 6); the
section numbers in comments refer to that page.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import crc32c as _crc32c
import ml_dtypes
import numpy as np

from ._errors import CorruptCheckpointError, IncompatibleCheckpointError

FORMAT_NAME: Final = "trainsvc-checkpoint"
FORMAT_VERSION: Final = "1"
SUPPORTED_VERSIONS: Final = ("1",)
MAX_HEADER_BYTES: Final = 100 * 1024 * 1024
"""Readers refuse a header longer than this (section 6, check 1)."""
MAX_TREE_DEPTH: Final = 128
"""The deepest nest of containers a tree (and the caller's metadata) may have (section 5).

Writers refuse a deeper tree with ``InvalidTreeError``; readers refuse one as corrupt."""
MAX_DIMS: Final = 64
"""The most dimensions a tensor may have (NumPy's limit; section 2)."""
_MAX_ARRAY_BYTES: Final = 2**63 - 1
"""The product of a shape's non-zero dimensions times the item size must stay within this."""

KEY_FORMAT: Final = "trainsvc.format"
KEY_VERSION: Final = "trainsvc.format_version"
KEY_TREE: Final = "trainsvc.tree"
KEY_METADATA: Final = "trainsvc.metadata"
KEY_CRCS: Final = "trainsvc.crc32c"
KEY_HEADER_CRC: Final = "trainsvc.header_crc32c"
METADATA_KEYS: Final = frozenset(
    {KEY_FORMAT, KEY_VERSION, KEY_TREE, KEY_METADATA, KEY_CRCS, KEY_HEADER_CRC}
)
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"

DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_CODES: Final[dict[np.dtype[Any], str]] = {dt: code for code, dt in DTYPES.items()}


def crc32c(data: Any, value: int = 0) -> int:
    """CRC32C (Castagnoli) of a bytes-like object, continuing from ``value``.

    Works without copying on any C-contiguous buffer and releases the GIL.
    """
    return int(_crc32c.crc32c(data, value=value))


_CRC32C_POLY: Final = 0x82F63B78
"""The Castagnoli polynomial in reflected bit order (the bit for x^0 is 1 << 31)."""


def _gf2_mulmod(a: int, b: int) -> int:
    """``a * b`` modulo the CRC32C polynomial, both in reflected bit order."""
    product = 0
    bit = 1 << 31
    while bit:
        if a & bit:
            product ^= b
        b = (b >> 1) ^ _CRC32C_POLY if b & 1 else b >> 1
        bit >>= 1
    return product


def _x_pow_2n() -> tuple[int, ...]:
    table = [1 << 30]  # x^1
    for _ in range(70):
        table.append(_gf2_mulmod(table[-1], table[-1]))
    return tuple(table)


_X_POW_2N: Final = _x_pow_2n()
"""``x^(2^n)`` modulo the polynomial, for n = 0..70 (lengths below 2^64 bytes)."""


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32C of ``A + B`` from ``crc1 = crc32c(A)``, ``crc2 = crc32c(B)`` and ``len(B)``.

    Lets parts of one tensor be checked on different threads: ``crc1`` is
    shifted by ``8 * len2`` bits (a product with ``x^(8 * len2)`` modulo the
    polynomial, built from squares) and ``crc2`` is added.
    """
    if len2 < 0 or len2 >= 1 << 64:
        raise ValueError(f"len2: expected 0 <= len2 < 2**64, found {len2}")
    shift = 1 << 31  # x^0
    n, k = len2, 3  # x^(8 * len2) = product of x^(2^(k)) over the set bits of len2, k from 3
    while n:
        if n & 1:
            shift = _gf2_mulmod(_X_POW_2N[k], shift)
        n >>= 1
        k += 1
    return _gf2_mulmod(shift, crc1) ^ crc2


def crc_hex(value: int) -> str:
    """A CRC as the format writes it: 8 lowercase hex digits."""
    return f"{value:08x}"


def dtype_code(dtype: np.dtype[Any]) -> str | None:
    """The safetensors dtype code of a NumPy dtype, or None if unsupported."""
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
    return _CODES.get(dtype)


def canonical_json(obj: Any) -> str:
    """Serialize ``obj`` as canonical JSON (section 4).

    Raises:
        ValueError: NaN or infinity anywhere in ``obj``.
        TypeError: a value JSON cannot represent.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e999" parses as infinity, which is not JSON either
        raise ValueError(f"{text[:40]} is out of the range of a float")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_float=_finite_float
)


def parse_json(text: str, field: str) -> Any:
    """Parse one JSON text strictly (no duplicate keys, no NaN), naming ``field`` on error."""
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(
            f"{field}: expected a JSON text, found invalid JSON ({exc})"
        ) from None


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of the header: its name, dtype code, shape and data offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def np_dtype(self) -> np.dtype[Any]:
        """The NumPy dtype of this tensor."""
        return DTYPES[self.dtype]


def layout(specs: Sequence[tuple[str, str, tuple[int, ...]]]) -> list[TensorEntry]:
    """Place tensors in the data section (section 2): by decreasing item size, then name.

    Args:
        specs: ``(name, dtype code, shape)`` for every tensor.

    Returns:
        The entries in file order, with contiguous offsets starting at 0.
    """
    ordered = sorted(specs, key=lambda s: (-DTYPES[s[1]].itemsize, s[0]))
    entries: list[TensorEntry] = []
    offset = 0
    for name, code, shape in ordered:
        nbytes = math.prod(shape) * DTYPES[code].itemsize
        entries.append(TensorEntry(name, code, tuple(shape), offset, offset + nbytes))
        offset += nbytes
    return entries


def _header_object(entries: Sequence[TensorEntry], metadata: Mapping[str, str]) -> dict[str, Any]:
    obj: dict[str, Any] = {"__metadata__": dict(metadata)}
    for e in entries:
        obj[e.name] = {"data_offsets": [e.begin, e.end], "dtype": e.dtype, "shape": list(e.shape)}
    return obj


def build_header(
    entries: Sequence[TensorEntry],
    *,
    tree_json: str,
    metadata_json: str,
    crcs: Mapping[str, int],
) -> bytes:
    """Build the first ``8 + N`` bytes of a file: length prefix and padded header.

    The length does not depend on the CRC values (they are fixed-width), so a
    writer may call this with zeros first to learn where the data starts.
    """
    md = {
        KEY_FORMAT: FORMAT_NAME,
        KEY_VERSION: FORMAT_VERSION,
        KEY_TREE: tree_json,
        KEY_METADATA: metadata_json,
        KEY_CRCS: canonical_json({name: crc_hex(crcs[name]) for name in crcs}),
    }
    obj = _header_object(entries, md)
    header_crc = crc32c(canonical_json(obj).encode("ascii"))
    obj["__metadata__"][KEY_HEADER_CRC] = crc_hex(header_crc)
    text = canonical_json(obj).encode("ascii")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


@dataclass(frozen=True)
class Header:
    """A checked header.

    Attributes:
        header_len: ``N``, the header length; the data starts at ``8 + N``.
        entries: the tensors in file (offset) order.
        foreign: True for a safetensors file not written by trainsvc.
        tree: the parsed tree description (None for a foreign file).
        metadata: the caller's metadata (the raw ``__metadata__`` for a foreign file).
        crcs: the expected CRC32C of every tensor (empty for a foreign file).
    """

    header_len: int
    entries: tuple[TensorEntry, ...]
    foreign: bool
    tree: Any
    metadata: dict[str, Any]
    crcs: dict[str, int]

    @property
    def data_size(self) -> int:
        """Bytes in the data section."""
        return self.entries[-1].end if self.entries else 0


def read_length(prefix: bytes, file_size: int) -> int:
    """Check the 8-byte length prefix against the cap and the file size (check 1)."""
    if len(prefix) < 8:
        raise CorruptCheckpointError(
            f"header length: expected an 8-byte length prefix, found a file of {file_size} bytes"
        )
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise CorruptCheckpointError(
            f"header length: expected at most {MAX_HEADER_BYTES} bytes, found {n}"
        )
    if 8 + n > file_size:
        raise CorruptCheckpointError(
            f"header length: declares {n} bytes of header but the file has only "
            f"{file_size - 8} bytes after the length prefix"
        )
    return int(n)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded_nbytes(shape: list[int], itemsize: int, limit: int) -> int:
    """``product(shape) * itemsize``, or ``limit + 1`` as soon as it exceeds ``limit``.

    Stops early so that a hostile shape of millions of dimensions cannot make
    the reader multiply huge integers.
    """
    if 0 in shape:
        return 0
    total = itemsize
    for dim in shape:
        total *= dim
        if total > limit:
            return limit + 1
    return total


def _parse_entry(name: str, raw: Any, data_size: int) -> TensorEntry:
    where = f"tensor {name!r}"
    if not isinstance(raw, dict) or set(raw) != {"data_offsets", "dtype", "shape"}:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise CorruptCheckpointError(
            f"{where}: expected exactly the keys data_offsets, dtype, shape; found {found}"
        )
    code = raw["dtype"]
    if not isinstance(code, str) or code not in DTYPES:
        raise CorruptCheckpointError(
            f"{where} dtype: expected one of {', '.join(DTYPES)}; found {code!r}"
        )
    shape = raw["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CorruptCheckpointError(
            f"{where} shape: expected a list of non-negative integers, found {shape!r:.200}"
        )
    if len(shape) > MAX_DIMS:
        raise CorruptCheckpointError(
            f"{where} shape: expected at most {MAX_DIMS} dimensions, found {len(shape)}"
        )
    itemsize = DTYPES[code].itemsize
    if _bounded_nbytes([d for d in shape if d], itemsize, _MAX_ARRAY_BYTES) > _MAX_ARRAY_BYTES:
        # Even an empty array (one zero dimension) cannot have such a shape in NumPy.
        raise CorruptCheckpointError(
            f"{where} shape: {shape!r:.200} of {code}: its non-zero dimensions need more than "
            f"{_MAX_ARRAY_BYTES} bytes (2**63 - 1), the most an array can address"
        )
    offsets = raw["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise CorruptCheckpointError(
            f"{where} data_offsets: expected [begin, end] with 0 <= begin <= end, found {offsets!r:.200}"
        )
    nbytes = _bounded_nbytes(shape, itemsize, data_size)
    if nbytes > data_size:
        raise CorruptCheckpointError(
            f"{where} shape: {shape!r:.200} of {code} needs more than the {data_size} bytes "
            "of data the file holds"
        )
    if offsets[1] - offsets[0] != nbytes:
        raise CorruptCheckpointError(
            f"{where}: shape {shape} of {code} needs {nbytes} bytes but data_offsets "
            f"{offsets} span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(name, code, tuple(shape), offsets[0], offsets[1])


def _check_layout(entries: list[TensorEntry], data_size: int, *, canonical_order: bool) -> None:
    """Offsets contiguous from 0 to the end of the file (check 5), optionally in format order."""
    # Empty tensors share offsets with their neighbours: break ties in format order.
    entries.sort(key=lambda e: (e.begin, e.end, -DTYPES[e.dtype].itemsize, e.name))
    expected = 0
    for e in entries:
        if e.begin != expected:
            what = "overlaps the previous tensor" if e.begin < expected else "leaves a hole"
            raise CorruptCheckpointError(
                f"tensor {e.name!r} data_offsets: expected to begin at {expected}, found "
                f"{e.begin} ({what})"
            )
        expected = e.end
    if expected != data_size:
        raise CorruptCheckpointError(
            f"data section: the header declares {expected} bytes of tensor data, "
            f"the file holds {data_size}"
        )
    if canonical_order:
        order = sorted(entries, key=lambda e: (-DTYPES[e.dtype].itemsize, e.name))
        for want, got in zip(order, entries, strict=True):
            if want.name != got.name:
                raise CorruptCheckpointError(
                    f"tensor {got.name!r} data_offsets: expected tensor {want.name!r} at offset "
                    f"{got.begin} (order: decreasing item size, then name)"
                )


def _parse_hex_crc(value: Any, field: str) -> int:
    if not isinstance(value, str) or len(value) != 8 or value.strip("0123456789abcdef"):
        raise CorruptCheckpointError(
            f"{field}: expected 8 lowercase hex digits, found {value!r:.40}"
        )
    return int(value, 16)


def _canonical_inner(text: str, field: str) -> Any:
    obj = parse_json(text, field)
    try:
        encoded = canonical_json(obj)
    except (ValueError, RecursionError):  # pragma: no cover - parse_json refuses these first
        encoded = None
    if encoded != text:
        raise CorruptCheckpointError(
            f"{field}: expected canonical JSON, found a different encoding"
        )
    return obj


def parse_header(raw: bytes, header_len: int, file_size: int) -> Header:
    """Parse and check a header (section 6, checks 2-5 and the CRC table shape).

    Args:
        raw: the ``N`` header bytes (without the length prefix).
        header_len: ``N``.
        file_size: size of the whole (decompressed) file, to bound the data.

    Raises:
        CorruptCheckpointError: any failed check, naming the field.
        IncompatibleCheckpointError: a trainsvc file of an unknown format version.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptCheckpointError(
            f"header: expected UTF-8 JSON, found an invalid byte at offset {8 + exc.start}"
        ) from None
    body = text.rstrip(" ")
    obj = parse_json(body.lstrip(" "), "header")
    if not isinstance(obj, dict):
        raise CorruptCheckpointError(f"header: expected a JSON object, found {type(obj).__name__}")
    md = obj.pop("__metadata__", None)
    if md is None:
        md = {}
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise CorruptCheckpointError("__metadata__: expected an object of string values")
    # Any "trainsvc." key makes this a trainsvc file, so that damage to one key
    # (a flipped bit in "trainsvc.format") cannot pass it off as a foreign file.
    foreign = not any(key.startswith("trainsvc.") for key in md)
    data_size = file_size - 8 - header_len
    entries = [_parse_entry(name, raw_entry, data_size) for name, raw_entry in obj.items()]
    if foreign:
        _check_layout(entries, data_size, canonical_order=False)
        return Header(header_len, tuple(entries), True, None, dict(md), {})

    # Check 3: the stored bytes are exactly the canonical serialization.
    obj["__metadata__"] = md
    if canonical_json(obj) != body or (8 + header_len) % 8:
        raise CorruptCheckpointError(
            "header: expected canonical JSON padded with spaces to a multiple of 8 bytes, "
            "found a different encoding"
        )
    # Check 4, the header CRC, comes before the format name and version, so that a
    # flipped bit anywhere in the header (the version field included) is reported
    # as corruption, and a manager falls back to an older checkpoint.
    if KEY_HEADER_CRC not in md:
        raise CorruptCheckpointError(
            f"__metadata__.{KEY_HEADER_CRC}: expected the header CRC, found no such key"
        )
    stored_crc = _parse_hex_crc(md[KEY_HEADER_CRC], f"__metadata__.{KEY_HEADER_CRC}")
    unsigned = dict(obj)
    unsigned["__metadata__"] = {k: v for k, v in md.items() if k != KEY_HEADER_CRC}
    actual_crc = crc32c(canonical_json(unsigned).encode("ascii"))
    version = md.get(KEY_VERSION)
    if actual_crc != stored_crc:
        also = (
            ""
            if version in SUPPORTED_VERSIONS
            else f"; it also declares format version {version!r:.80}, which this reader "
            f"does not know (it supports {', '.join(SUPPORTED_VERSIONS)})"
        )
        raise CorruptCheckpointError(
            f"__metadata__.{KEY_HEADER_CRC}: expected {crc_hex(stored_crc)}, "
            f"found {crc_hex(actual_crc)} (the header was modified){also}"
        )
    if md.get(KEY_FORMAT) != FORMAT_NAME:
        raise CorruptCheckpointError(
            f"__metadata__.{KEY_FORMAT}: expected {FORMAT_NAME!r}, "
            f"found {md.get(KEY_FORMAT, '(missing)')!r:.80}"
        )
    if version not in SUPPORTED_VERSIONS:
        raise IncompatibleCheckpointError(
            f"__metadata__.{KEY_VERSION}: this reader supports format version(s) "
            f"{', '.join(SUPPORTED_VERSIONS)}; the file has version {version!r:.80}"
        )
    if set(md) != METADATA_KEYS:
        raise CorruptCheckpointError(
            f"__metadata__: expected exactly the keys {sorted(METADATA_KEYS)}, found {sorted(md)}"
        )
    _check_layout(entries, data_size, canonical_order=True)
    crc_table = _canonical_inner(md[KEY_CRCS], f"__metadata__.{KEY_CRCS}")
    names = {e.name for e in entries}
    if not isinstance(crc_table, dict) or set(crc_table) != names:
        found = sorted(crc_table)[:10] if isinstance(crc_table, dict) else crc_table
        raise CorruptCheckpointError(
            f"__metadata__.{KEY_CRCS}: expected one CRC per tensor {sorted(names)[:10]}, found {found!r:.200}"
        )
    crcs = {n: _parse_hex_crc(v, f"__metadata__.{KEY_CRCS}[{n!r}]") for n, v in crc_table.items()}
    tree = _canonical_inner(md[KEY_TREE], f"__metadata__.{KEY_TREE}")
    user_md = _canonical_inner(md[KEY_METADATA], f"__metadata__.{KEY_METADATA}")
    if not isinstance(user_md, dict):
        raise CorruptCheckpointError(
            f"__metadata__.{KEY_METADATA}: expected a JSON object, found {type(user_md).__name__}"
        )
    return Header(header_len, tuple(entries), False, tree, user_md, crcs)
