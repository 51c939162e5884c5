"""Reading and writing one checkpoint file: save, load, verify (format sections 1, 6-8)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, cast

import numpy as np
import zstandard

from ._errors import CheckpointNotFoundError, CorruptCheckpointError, InvalidTreeError
from ._format import (
    MAX_TREE_DEPTH,
    ZSTD_MAGIC,
    Header,
    TensorEntry,
    build_header,
    canonical_json,
    crc32c,
    crc32c_combine,
    crc_hex,
    dtype_code,
    layout,
    parse_header,
    read_length,
)
from ._tree import _NO_TARGET, FlatTree, build, check_tree, flatten

Compression = Literal["zstd"] | None
TMP_PREFIX = ".tmp-"
ZSTD_LEVEL = 3
_CHUNK = 16 * 1024 * 1024
"""Scratch chunk size when verifying; CRCs of one chunk overlap the read of the next."""
_BATCH = 64 * 1024 * 1024
"""Bytes per scatter read when loading (few, large batches: few thread hand-offs)."""
_PIPELINE_MIN = 4 * 1024 * 1024
"""Below this many bytes, CRCs run inline instead of on a worker thread."""
_READ_CHUNK = 2 * 1024 * 1024
"""Bytes per read of an uncompressed file; each chunk's CRC runs while it is still in cache."""
_READ_SHARE_MIN = 16 * 1024 * 1024
"""Bytes of data per reader thread at least (smaller files are read by fewer threads)."""
_READ_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Reader threads for a large uncompressed file: each reads and checks a contiguous part."""

PathLike = str | os.PathLike[str]


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 1 << 40


class _Worker:
    """Runs one function on a plain thread, or inline when no thread can be started.

    Plain threads rather than an executor: executors refuse work once the
    interpreter starts shutting down, which is when a pending save finishes.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="ckpt-crc", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError:  # interpreter shutdown: run inline when asked for the result
            self._thread = None

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as exc:
            self._error = exc

    def result(self) -> Any:
        """Wait for the function and return its result (or raise its error)."""
        if self._thread is None:
            self._run()
        else:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


# --------------------------------------------------------------------------- writing


def _byte_view(arr: np.ndarray[Any, Any]) -> memoryview:
    """A flat byte view of a C-contiguous array, without copying."""
    return arr.reshape(-1).view(np.uint8).data


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_EVERY = 32 * 1024 * 1024


def _write_streaming(fd: int, views: list[memoryview], offset: int) -> None:
    """Write ``views`` from ``offset`` on, starting the disk writeback of every
    32 MiB written (Linux ``sync_file_range``), so that the final fsync finds
    most of the data already on its way to the disk."""
    group: list[memoryview] = []
    size = start = 0
    pieces = (
        v[i : i + _WRITEBACK_EVERY] for v in views for i in range(0, len(v), _WRITEBACK_EVERY)
    )
    for piece in pieces:
        group.append(piece)
        size += len(piece)
        if size >= _WRITEBACK_EVERY:
            _write_all(fd, group)
            if _SYNC_FILE_RANGE is not None:
                _SYNC_FILE_RANGE(fd, offset + start, size, _SYNC_FILE_RANGE_WRITE)
            start += size
            group, size = [], 0
    _write_all(fd, group)


def _write_all(fd: int, views: list[memoryview]) -> None:
    """Write every view in order with ``writev``, handling short writes."""
    pending = [v for v in views if len(v)]
    while pending:
        batch = pending[:512]
        written = os.writev(fd, batch)
        consumed = 0
        while consumed < len(batch) and written >= len(batch[consumed]):
            written -= len(batch[consumed])
            consumed += 1
        pending = pending[consumed:]
        if written:
            pending[0] = pending[0][written:]


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[int]:
    """Open a ``.tmp-`` file beside ``path``; on success fsync it, rename it over ``path``
    and fsync the directory (section 8). On failure the temporary file is removed."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:12]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _json_depth_exceeds(obj: Any, limit: int) -> bool:
    """Whether dicts and lists in ``obj`` nest deeper than ``limit`` (walked without recursion).

    Stops at the first container past the limit, so a self-referencing value ends too.
    """
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping | list | tuple):
            if depth >= limit:
                return True
            values = node.values() if isinstance(node, Mapping) else node
            stack.extend((v, depth + 1) for v in values)
    return False


def _metadata_json(metadata: Mapping[str, Any] | None) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise InvalidTreeError(f"metadata: expected a dict, found {type(metadata).__name__}")
    if _json_depth_exceeds(metadata, MAX_TREE_DEPTH):
        raise InvalidTreeError(
            f"metadata: nested deeper than {MAX_TREE_DEPTH} objects and arrays, "
            "the most the format allows"
        )
    try:
        return canonical_json(dict(metadata))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidTreeError(
            f"metadata: expected JSON values with str keys (no NaN or infinity); {exc}"
        ) from None


def _crc_all(
    entries: list[TensorEntry], leaves: Mapping[str, np.ndarray[Any, Any]]
) -> dict[str, int]:
    return {e.name: crc32c(_byte_view(leaves[e.name])) for e in entries}


def _prepare(
    flat: FlatTree, metadata: Mapping[str, Any] | None, compression: Compression
) -> tuple[list[TensorEntry], str, str, list[memoryview]]:
    """The layout, tree and metadata JSON, and the data views (file order) of a flat tree."""
    if compression not in (None, "zstd"):
        raise ValueError(f"compression: expected None or 'zstd', found {compression!r}")
    specs = []
    for name, arr in flat.leaves.items():
        code = dtype_code(arr.dtype)
        assert code is not None  # flatten() converted every leaf
        specs.append((name, code, tuple(arr.shape)))
    entries = layout(specs)
    views = [_byte_view(flat.leaves[e.name]) for e in entries]
    return entries, canonical_json(flat.desc), _metadata_json(metadata), views


def encode_flat(
    flat: FlatTree,
    *,
    metadata: Mapping[str, Any] | None = None,
    compression: Compression = None,
) -> list[memoryview]:
    """The bytes of the file :func:`write_flat` writes, as consecutive pieces.

    Uncompressed: the header, then views of the arrays (no copies). With
    zstd: one piece, the compressed frame (built in memory).
    """
    entries, tree_json, md_json, views = _prepare(flat, metadata, compression)
    crcs = _crc_all(entries, flat.leaves)
    header = build_header(entries, tree_json=tree_json, metadata_json=md_json, crcs=crcs)
    if compression != "zstd":
        return [memoryview(header), *views]
    total = entries[-1].end if entries else 0
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)
    out = io.BytesIO()
    with cctx.stream_writer(out, size=len(header) + total, closefd=False) as writer:
        writer.write(header)
        for view in views:
            writer.write(view)
    return [out.getbuffer()]


def write_flat(
    path: PathLike,
    flat: FlatTree,
    *,
    metadata: Mapping[str, Any] | None = None,
    compression: Compression = None,
) -> Path:
    """Write an already flattened tree to ``path`` atomically. See :func:`save`."""
    path = Path(path)
    entries, tree_json, md_json, views = _prepare(flat, metadata, compression)
    leaves = flat.leaves
    total = entries[-1].end if entries else 0

    with atomic_file(path) as fd:
        if compression == "zstd":
            crcs = _crc_all(entries, leaves)
            header = build_header(entries, tree_json=tree_json, metadata_json=md_json, crcs=crcs)
            cctx = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=True, write_content_size=True
            )
            with (
                os.fdopen(os.dup(fd), "wb") as raw,
                cctx.stream_writer(raw, size=len(header) + total, closefd=False) as writer,
            ):
                writer.write(header)
                for view in views:
                    writer.write(view)
        else:
            # The header's length does not depend on the CRC values, so the data is
            # written first while a worker thread computes the CRCs of the same buffers.
            zeros = dict.fromkeys(leaves, 0)
            prefix_len = len(
                build_header(entries, tree_json=tree_json, metadata_json=md_json, crcs=zeros)
            )
            os.lseek(fd, prefix_len, os.SEEK_SET)
            if total >= _PIPELINE_MIN:
                worker = _Worker(lambda: _crc_all(entries, leaves))
                _write_streaming(fd, views, prefix_len)
                crcs = worker.result()
            else:
                _write_all(fd, views)
                crcs = _crc_all(entries, leaves)
            header = build_header(entries, tree_json=tree_json, metadata_json=md_json, crcs=crcs)
            assert len(header) == prefix_len
            os.lseek(fd, 0, os.SEEK_SET)
            _write_all(fd, [memoryview(header)])
    return path


def save(
    path: PathLike,
    tree: Any,
    *,
    metadata: Mapping[str, Any] | None = None,
    compression: Compression = None,
    storage_options: Mapping[str, Any] | None = None,
) -> PathLike:
    """Save ``tree`` to one checkpoint file, atomically.

    Args:
        path: the file to write (conventionally ``*.safetensors``, or
            ``*.safetensors.zst`` when compressed). Its directory must exist.
            A URL (``s3://bucket/run/step_1.safetensors``, any fsspec URL) saves
            to remote storage: the object appears only once complete (format
            section 11); ``file://`` is a local path.
        tree: a nest of dicts (str keys), lists, tuples, NamedTuples and None,
            with arrays (anything with ``__array__``: NumPy, JAX on any device,
            bfloat16) and Python bool/int/float/str leaves.
        metadata: a JSON-serializable dict stored beside the tree (config, step...).
        compression: None, or ``"zstd"`` for an outer zstd frame.
        storage_options: for a URL, options of its fsspec filesystem (for s3fs:
            ``key``, ``secret``, ``client_kwargs={"endpoint_url": ...}``).

    Returns:
        The path written (a URL as given).

    Raises:
        InvalidTreeError: something in ``tree`` or ``metadata`` cannot be stored;
            the message names the path. Nothing is written then.
    """
    if _is_url(path):
        from ._remote import save_remote

        save_remote(
            str(path),
            tree,
            metadata=metadata,
            compression=compression,
            storage_options=storage_options,
        )
        return path
    flat = flatten(tree)
    _metadata_json(metadata)
    return write_flat(_local(path), flat, metadata=metadata, compression=compression)


# --------------------------------------------------------------------------- reading


def _pread_into(fd: int, views: list[memoryview], offset: int) -> int:
    """Scatter-read at ``offset`` (``preadv``; ``lseek`` + ``readv`` where preadv is missing)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, views, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - platforms without preadv
    return os.readv(fd, views)  # pragma: no cover


class _FileSource:
    """An uncompressed file, read sequentially."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size
        self._pos = 0

    def read_exact(self, view: memoryview, what: str) -> None:
        while len(view):
            n = _pread_into(self._fd, [view], self._pos)
            if n == 0:
                raise CorruptCheckpointError(
                    f"{what}: the file ended at byte {self._pos} of the {self.size} expected (truncated)"
                )
            self._pos += n
            view = view[n:]

    def finish(self) -> None:
        if os.fstat(self._fd).st_size != self.size:
            raise CorruptCheckpointError("file: its size changed while it was being read")

    def read_data(
        self, header: Header, dests: Mapping[str, np.ndarray[Any, Any]] | None
    ) -> dict[str, int]:
        """Read the data section into ``dests`` (or scratch chunks when None); return the CRCs.

        The section is cut into up to ``_READ_THREADS`` contiguous parts, each
        read by its own thread through its own file descriptor (so that each
        part keeps its own sequential read-ahead) in ``_READ_CHUNK`` reads,
        each chunk's CRC taken right after its read, while it is in cache. A
        tensor cut between two parts gets its CRC from the parts' CRCs
        (:func:`crc32c_combine`).
        """
        base, size = self._pos, header.data_size
        parts = max(1, min(_READ_THREADS, size // _READ_SHARE_MIN))
        if not hasattr(os, "preadv"):  # pragma: no cover - readv needs the shared offset
            parts = 1
        share = max(_READ_CHUNK, -(-size // parts))
        share += -share % _READ_CHUNK
        ranges = [(lo, min(lo + share, size)) for lo in range(0, size, share)] or [(0, 0)]
        workers = [
            _Worker(functools.partial(self._read_part, header, dests, base, lo, hi))
            for lo, hi in ranges[1:]
        ]
        results: list[list[tuple[int, int, int]] | BaseException] = []
        try:
            results.append(self._read_part(header, dests, base, *ranges[0]))
        except BaseException as exc:
            results.append(exc)
        for worker in workers:  # wait for every thread before raising: none outlives the call
            try:
                results.append(worker.result())
            except BaseException as exc:
                results.append(exc)
        values = dict.fromkeys((e.name for e in header.entries), 0)
        started: set[str] = set()
        for result in results:
            if isinstance(result, BaseException):
                raise result
            for index, crc, nbytes in result:
                name = header.entries[index].name
                values[name] = crc32c_combine(values[name], crc, nbytes) if name in started else crc
                started.add(name)
        self._pos = base + size
        self.finish()
        return values

    def _read_part(
        self,
        header: Header,
        dests: Mapping[str, np.ndarray[Any, Any]] | None,
        base: int,
        lo: int,
        hi: int,
    ) -> list[tuple[int, int, int]]:
        """Read data bytes ``[lo, hi)``; return ``(entry index, CRC, bytes)`` per tensor piece."""
        pieces: list[tuple[int, int, int]] = []
        if hi <= lo:
            return pieces
        scratch = _scratch_buffer(min(_READ_CHUNK, hi - lo)) if dests is None else None
        fd = _reopen(self._fd) if lo else self._fd
        try:
            for index, e in enumerate(header.entries):
                start, stop = max(e.begin, lo), min(e.end, hi)
                if start >= stop:
                    if e.begin >= hi:
                        break
                    continue
                crc = 0
                for pos in range(start, stop, _READ_CHUNK):
                    n = min(_READ_CHUNK, stop - pos)
                    if scratch is None:
                        assert dests is not None
                        chunk = dests[e.name][pos - e.begin : pos - e.begin + n]
                    else:
                        chunk = scratch[:n]
                    _pread_exact(fd, chunk.data, base + pos, self.size)
                    crc = crc32c(chunk.data, crc)
                pieces.append((index, crc, stop - start))
        finally:
            if fd != self._fd:
                os.close(fd)
        return pieces


def _reopen(fd: int) -> int:
    """A new open file description of ``fd``'s file (its own read-ahead state), or ``fd``."""
    try:
        new = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return fd
    old_st, new_st = os.fstat(fd), os.fstat(new)
    if (old_st.st_dev, old_st.st_ino) != (new_st.st_dev, new_st.st_ino):  # pragma: no cover
        os.close(new)
        return fd
    return new


def _pread_exact(fd: int, view: memoryview, offset: int, size: int) -> None:
    """Fill ``view`` from ``offset``; a file that ends first is truncated."""
    while len(view):
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise CorruptCheckpointError(
                f"data at byte {offset}: the file ended at byte {offset} of the {size} expected (truncated)"
            )
        offset += n
        view = view[n:]


_ZSTD_READ = 1 << 20
"""Compressed bytes per read of a zstd file."""
_ZSTD_SCAN = 4096
"""Bytes per read when walking the block headers of a zstd frame."""


def _zstd_frame_end(fd: int, file_size: int, header_size: int, has_checksum: bool) -> int:
    """The offset just past the zstd frame that starts the file, from its block headers.

    Reads only the 3-byte block headers (RFC 8878, section 3.1.1.2), so that a
    truncated frame, a missing checksum or bytes after the frame are found
    before anything is decompressed.

    Raises:
        CorruptCheckpointError: a reserved block type, or a frame that runs past
            the end of the file.
    """
    pos = header_size
    window, window_start = b"", 0
    while True:
        if pos + 3 > file_size:
            raise CorruptCheckpointError(
                f"zstd frame: truncated (a block header at byte {pos} is beyond the end of "
                f"the {file_size}-byte file)"
            )
        if pos + 3 > window_start + len(window):
            window, window_start = os.pread(fd, _ZSTD_SCAN, pos), pos
            if len(window) < 3:  # the file shrank while it was being read
                raise CorruptCheckpointError(f"zstd frame: truncated at byte {pos}")
        b0, b1, b2 = window[pos - window_start : pos - window_start + 3]
        value = b0 | b1 << 8 | b2 << 16
        last, block_type, block_size = value & 1, (value >> 1) & 3, value >> 3
        if block_type == 3:
            raise CorruptCheckpointError(
                f"zstd frame: the block at byte {pos} has the reserved block type 3"
            )
        pos += 3 + (1 if block_type == 1 else block_size)  # an RLE block holds one byte
        if last:
            break
    pos += 4 if has_checksum else 0
    if pos > file_size:
        raise CorruptCheckpointError(
            f"zstd frame: truncated (the frame needs {pos} bytes, the file has {file_size})"
        )
    return pos


class _ZstdSource:
    """The content of one zstd frame, decompressed as it is read.

    Decompresses straight into the caller's buffers, never more than one
    buffer's worth per step, so that a small file of highly compressible
    content (a few KB of zeros declaring a GiB) needs no memory beyond the
    arrays it fills.
    """

    def __init__(self, f: BinaryIO, file_size: int, limit: int) -> None:
        fd = f.fileno()
        head = os.pread(fd, 18, 0)
        try:
            params = zstandard.get_frame_parameters(head)
            header_size = zstandard.frame_header_size(head)
        except zstandard.ZstdError as exc:
            raise CorruptCheckpointError(f"zstd frame header: invalid ({exc})") from None
        if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
            raise CorruptCheckpointError(
                "zstd frame header: expected a declared content size, found none"
            )
        if not params.has_checksum:
            raise CorruptCheckpointError(
                "zstd frame header: expected the content checksum flag, found it off"
            )
        if params.content_size > limit:
            raise CorruptCheckpointError(
                f"zstd frame header: declares {params.content_size} bytes of content, "
                f"more than this reader's limit of {limit} (max_decompressed_bytes)"
            )
        if _zstd_frame_end(fd, file_size, header_size, True) != file_size:
            raise CorruptCheckpointError(
                "file: expected nothing after the zstd frame, found more bytes"
            )
        self.size = int(params.content_size)
        f.seek(0)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            f, read_size=_ZSTD_READ, read_across_frames=False, closefd=False
        )
        self._pos = 0

    def read_exact(self, view: memoryview, what: str) -> None:
        while len(view):
            try:
                n = self._reader.readinto(view)
            except zstandard.ZstdError as exc:
                raise CorruptCheckpointError(f"zstd frame: {exc}") from None
            if not n:
                raise CorruptCheckpointError(
                    f"{what}: the zstd frame ended at byte {self._pos} of the {self.size} it declares (truncated)"
                )
            view = view[n:]
            self._pos += n

    def read_many(self, views: list[memoryview], what: str) -> None:
        """Fill ``views`` from consecutive bytes of the frame."""
        for view in views:
            self.read_exact(view, what)

    def finish(self) -> None:
        # The frame's extent was checked up front; reading on makes the
        # decompressor reach the end of the frame and check the content checksum.
        try:
            extra = self._reader.read(1)
        except zstandard.ZstdError as exc:
            raise CorruptCheckpointError(f"zstd frame: {exc}") from None
        if extra:
            raise CorruptCheckpointError("zstd frame: more content than the header describes")


_Source = _FileSource | _ZstdSource
"""An open checkpoint file: plain, or the content of its zstd frame."""


class ByteSource(Protocol):
    """What reading a header needs of an open checkpoint: its size and sequential reads.

    Implemented by plain and zstd files here, and by remote objects (``_remote``).
    """

    size: int

    def read_exact(self, view: memoryview, what: str) -> None:
        """Fill ``view`` with the next bytes; a source that ends first is truncated."""


class DataSource(ByteSource, Protocol):
    """A source that reads the whole data section itself, returning every tensor's CRC."""

    def read_data(
        self, header: Header, dests: Mapping[str, np.ndarray[Any, Any]] | None
    ) -> dict[str, int]:
        """Read the data section into ``dests`` (or scratch buffers when None); return the CRCs."""


@contextlib.contextmanager
def _open_source(path: Path, max_decompressed_bytes: int | None) -> Iterator[_Source]:
    try:
        f = path.open("rb", buffering=0)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"no checkpoint file at {path}") from None
    except IsADirectoryError:
        raise CheckpointNotFoundError(f"{path} is a directory, not a checkpoint file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        magic = os.pread(f.fileno(), 4, 0)
        if magic == ZSTD_MAGIC:
            limit = _physical_memory() if max_decompressed_bytes is None else max_decompressed_bytes
            yield _ZstdSource(f, size, limit)
        else:
            yield _FileSource(f.fileno(), size)


def _read_header(src: ByteSource) -> Header:
    prefix = bytearray(8)
    if src.size < 8:
        raise CorruptCheckpointError(
            f"header length: expected an 8-byte length prefix, found a file of {src.size} bytes"
        )
    src.read_exact(memoryview(prefix), "header length")
    n = read_length(bytes(prefix), src.size)
    raw = bytearray(n)
    src.read_exact(memoryview(raw), "header")
    header = parse_header(bytes(raw), n, src.size)
    if not header.foreign:
        check_tree(header.tree, {e.name: (e.dtype, e.shape) for e in header.entries})
    return header


def _scratch_buffer(nbytes: int) -> np.ndarray[Any, Any]:
    """A reusable byte buffer for streaming data through (verify)."""
    return np.empty(nbytes, dtype=np.uint8)


class _CrcTracker:
    """Running CRC32C per tensor over chunks that arrive in file order."""

    def __init__(self, entries: tuple[TensorEntry, ...]) -> None:
        self.entries = entries
        self.values = dict.fromkeys((e.name for e in entries), 0)
        self._i = 0

    def update(self, chunk: np.ndarray[Any, Any], start: int) -> None:
        """Fold ``chunk``, the data bytes ``[start, start + len)``, into the tensors it covers."""
        end = start + len(chunk)
        while self._i < len(self.entries):
            e = self.entries[self._i]
            lo, hi = max(e.begin, start), min(e.end, end)
            if lo < hi:
                self.values[e.name] = crc32c(
                    chunk[lo - start : hi - start].data, self.values[e.name]
                )
            if e.end > end:
                return
            self._i += 1


def _batches(
    header: Header, dests: Mapping[str, np.ndarray[Any, Any]]
) -> Iterator[list[tuple[np.ndarray[Any, Any], int]]]:
    """Group the tensors' byte buffers into ~64 MiB batches of ``(piece, data offset)``, in file order."""
    batch: list[tuple[np.ndarray[Any, Any], int]] = []
    size = 0
    for e in header.entries:
        flat = dests[e.name]
        for i in range(0, e.end - e.begin, _BATCH):
            piece = flat[i : i + _BATCH]
            batch.append((piece, e.begin + i))
            size += len(piece)
            if size >= _BATCH:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _read_data(
    src: _Source | DataSource, header: Header, dests: Mapping[str, np.ndarray[Any, Any]] | None
) -> dict[str, int]:
    """Read the data section into per-tensor byte buffers (or scratch buffers when None).

    The CRCs of one batch are computed on a worker thread while the next batch
    is read. With scratch buffers, three rotate: one being checked, one
    queued, one being read.
    """
    if not isinstance(src, _ZstdSource):
        return src.read_data(header, dests)
    size = header.data_size
    tracker = _CrcTracker(header.entries)
    if dests is not None:
        batches: Iterator[list[tuple[np.ndarray[Any, Any], int]]] = _batches(header, dests)
    else:
        scratch = [_scratch_buffer(min(size, _CHUNK)) for _ in range(3)]
        batches = (
            [(scratch[k % 3][: min(_CHUNK, size - pos)], pos)]
            for k, pos in enumerate(range(0, size, _CHUNK))
        )
    if size < _PIPELINE_MIN:
        for batch in batches:
            src.read_many([piece.data for piece, _ in batch], "data")
            for piece, pos in batch:
                tracker.update(piece, pos)
        src.finish()
        return tracker.values
    pending: queue.Queue[list[tuple[np.ndarray[Any, Any], int]] | None] = queue.Queue(maxsize=1)

    def consume() -> None:
        while (batch := pending.get()) is not None:
            for piece, pos in batch:
                tracker.update(piece, pos)

    worker = _Worker(consume)
    try:
        for batch in batches:
            src.read_many([piece.data for piece, _ in batch], f"data at byte {batch[0][1]}")
            pending.put(batch)
    finally:
        pending.put(None)
        worker.result()
    src.finish()
    return tracker.values


def _check_crcs(header: Header, actual: Mapping[str, int]) -> None:
    for e in header.entries:
        _check_crc(e.name, header.crcs[e.name], actual[e.name])


def _check_crc(name: str, expected: int, actual: int) -> None:
    if actual != expected:
        raise CorruptCheckpointError(
            f"tensor {name!r}: CRC32C expected {crc_hex(expected)}, "
            f"found {crc_hex(actual)} (the data was modified)"
        )


def _check_bools(header: Header, arrays: Mapping[str, np.ndarray[Any, Any]]) -> None:
    for e in header.entries:
        _check_bool(e, arrays[e.name])


def _check_bool(e: TensorEntry, arr: np.ndarray[Any, Any]) -> None:
    if e.dtype == "BOOL" and np.any(arr.view(np.uint8) > 1):
        raise CorruptCheckpointError(
            f"tensor {e.name!r}: BOOL data must be 0 or 1, found other bytes"
        )


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`verify` learned about a checkpoint file.

    Attributes:
        path: the file.
        foreign: True for a plain safetensors file not written by trainsvc (no CRCs checked).
        compressed: True when the file is an outer zstd frame.
        metadata: the caller's metadata (a foreign file's raw ``__metadata__``).
        tensors: tensor name → (dtype code, shape), in file order.
        nbytes: bytes of tensor data.
        url: for a checkpoint in remote storage, its URL (``path`` is then the
            object's path inside the storage, ``bucket/run/step_1.safetensors``);
            None for a local file.
    """

    path: Path
    foreign: bool
    compressed: bool
    metadata: dict[str, Any]
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    nbytes: int
    url: str | None = None


def _info(path: Path, header: Header, compressed: bool, url: str | None = None) -> CheckpointInfo:
    return CheckpointInfo(
        path=path,
        foreign=header.foreign,
        compressed=compressed,
        metadata=header.metadata,
        tensors={e.name: (e.dtype, e.shape) for e in header.entries},
        nbytes=header.data_size,
        url=url,
    )


def _empty(entry: TensorEntry) -> np.ndarray[Any, Any]:
    """The array a tensor is read into; its shape and size were checked against the file."""
    try:
        return np.empty(entry.shape, entry.np_dtype)
    except ValueError as exc:  # pragma: no cover - parse_header refuses such shapes first
        raise CorruptCheckpointError(
            f"tensor {entry.name!r} shape: {list(entry.shape)!r:.200} cannot be an array ({exc})"
        ) from None


def _load(
    path: PathLike, target: Any, max_decompressed_bytes: int | None
) -> tuple[Any, CheckpointInfo]:
    path = Path(path)
    with _open_source(path, max_decompressed_bytes) as src:
        compressed = isinstance(src, _ZstdSource)
        return load_from(src, target, lambda header: _info(path, header, compressed))


def load_from(
    src: _Source | DataSource, target: Any, make_info: Callable[[Header], CheckpointInfo]
) -> tuple[Any, CheckpointInfo]:
    """Load the tree from an open source (local or remote), checking every CRC."""
    header = _read_header(src)
    # One array per tensor (so that each can be freed on its own), read into
    # directly through flat byte views: no copies after the read.
    arrays = {e.name: _empty(e) for e in header.entries}
    dests = {name: a.reshape(-1).view(np.uint8) for name, a in arrays.items()}
    actual = _read_data(src, header, dests)
    if not header.foreign:
        _check_crcs(header, actual)
    _check_bools(header, arrays)
    info = make_info(header)
    if header.foreign:
        # A foreign file is a flat dict keyed by its raw tensor names.
        if target is _NO_TARGET:
            return arrays, info
        return build({"dict": {name: {"tensor": name} for name in arrays}}, arrays, target), info
    return build(header.tree, arrays, target), info


def load(
    path: PathLike,
    *,
    target: Any = None,
    max_decompressed_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Load a checkpoint file, checking every CRC as it is read.

    Args:
        path: a trainsvc checkpoint (plain or zstd-compressed), or any
            safetensors file, which loads as a flat ``{name: array}`` dict.
            A URL (any fsspec URL, ``s3://...``) loads from remote storage with
            parallel ranged requests; ``storage_options`` go to its filesystem.
        target: optional tree giving the structure to return; every leaf's
            kind, shape and dtype is checked against the file. Leaves may be
            arrays, JAX arrays or anything with ``shape`` and ``dtype``.
        max_decompressed_bytes: refuse a zstd frame declaring more content than
            this (default: the machine's physical memory).

    Returns:
        The tree. Arrays are writable NumPy arrays (bfloat16 via ml_dtypes),
        one allocation per tensor, filled straight from the file.

    Raises:
        CheckpointNotFoundError: no file at ``path``.
        CorruptCheckpointError: a failed integrity or bounds check, naming the
            tensor or header field.
        IncompatibleCheckpointError: an unknown format version, or a file that
            does not match ``target`` (naming the path).
    """
    tree, _ = load_with_info(
        path,
        target=target,
        max_decompressed_bytes=max_decompressed_bytes,
        storage_options=storage_options,
    )
    return tree


def load_with_info(
    path: PathLike,
    *,
    target: Any = None,
    max_decompressed_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[Any, CheckpointInfo]:
    """Like :func:`load`, also returning the file's :class:`CheckpointInfo` (metadata included)."""
    if _is_url(path):
        from ._remote import load_remote_with_info

        return load_remote_with_info(
            str(path),
            target=target,
            max_decompressed_bytes=max_decompressed_bytes,
            storage_options=storage_options,
        )
    return _load(_local(path), _NO_TARGET if target is None else target, max_decompressed_bytes)


def verify(
    path: PathLike,
    *,
    max_decompressed_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """Check a checkpoint file completely without keeping its data in memory.

    Runs every check of :func:`load` (header, bounds, tree, every CRC) while
    streaming the data through a small buffer.

    Returns:
        What the file holds, including the caller's metadata.

    Raises:
        CheckpointNotFoundError, CorruptCheckpointError, IncompatibleCheckpointError:
            as :func:`load`.
    """
    if _is_url(path):
        from ._remote import verify_remote

        return verify_remote(
            str(path),
            max_decompressed_bytes=max_decompressed_bytes,
            storage_options=storage_options,
        )
    path = Path(_local(path))
    with _open_source(path, max_decompressed_bytes) as src:
        header = _read_header(src)
        actual = _read_data(src, header, None)
        compressed = isinstance(src, _ZstdSource)
    if not header.foreign:
        _check_crcs(header, actual)
    return _info(path, header, compressed)


def read_info(
    path: PathLike,
    *,
    max_decompressed_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """Read and check only the header (its CRC, bounds and tree), not the tensor data.

    For a URL, one ranged request of the object's first 64 KiB (plus one for a
    longer header); a compressed object is fetched whole.
    """
    if _is_url(path):
        from ._remote import read_info_remote

        return read_info_remote(
            str(path),
            max_decompressed_bytes=max_decompressed_bytes,
            storage_options=storage_options,
        )
    path = Path(_local(path))
    with _open_source(path, max_decompressed_bytes) as src:
        header = _read_header(src)
        compressed = isinstance(src, _ZstdSource)
    return _info(path, header, compressed)


def tensor_entry(header: Header, name: str) -> TensorEntry:
    """The entry of tensor ``name``, or a KeyError naming the tensors there are."""
    for e in header.entries:
        if e.name == name:
            return e
    names = [e.name for e in header.entries]
    raise KeyError(
        f"name: no tensor {name!r} in this checkpoint; it has {len(names)}: {names[:20]!r}"
    )


def tensor_from_bytes(header: Header, entry: TensorEntry, data: Any) -> np.ndarray[Any, Any]:
    """A writable array of one tensor from its bytes, after checking its CRC (and BOOL values)."""
    arr = np.empty(entry.shape, entry.np_dtype)
    flat = arr.reshape(-1).view(np.uint8)
    flat[:] = np.frombuffer(data, np.uint8)
    if not header.foreign:
        _check_crc(entry.name, header.crcs[entry.name], crc32c(flat.data))
    _check_bool(entry, arr)
    return arr


def read_tensor(
    path: PathLike,
    name: str,
    *,
    max_decompressed_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> np.ndarray[Any, Any]:
    """Read one tensor (by its flattened tree path, e.g. ``params/w``), checking its CRC.

    Reads the header and that tensor's bytes only (for a URL: ranged requests);
    a compressed file is decompressed from its start up to the tensor.

    Raises:
        KeyError: no tensor of that name (the message lists the names there are).
        CheckpointNotFoundError, CorruptCheckpointError: as :func:`load`.
    """
    if _is_url(path):
        from ._remote import read_tensor_remote

        return read_tensor_remote(
            str(path),
            name,
            max_decompressed_bytes=max_decompressed_bytes,
            storage_options=storage_options,
        )
    path = Path(_local(path))
    with _open_source(path, max_decompressed_bytes) as src:
        header = _read_header(src)
        entry = tensor_entry(header, name)
        if isinstance(src, _FileSource):
            data = bytearray(entry.end - entry.begin)
            _pread_exact(src._fd, memoryview(data), 8 + header.header_len + entry.begin, src.size)
        else:
            skip = bytearray(min(_CHUNK, max(1, entry.begin)))
            pos = 0
            while pos < entry.begin:
                n = min(len(skip), entry.begin - pos)
                src.read_exact(memoryview(skip)[:n], f"data at byte {pos}")
                pos += n
            data = bytearray(entry.end - entry.begin)
            src.read_exact(memoryview(data), f"tensor {name!r}")
    return tensor_from_bytes(header, entry, data)


def _is_url(path: object) -> bool:
    """Whether ``path`` names remote storage (``scheme://``, not ``file://``)."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def _local(path: PathLike) -> PathLike:
    """A ``file://`` URL as a plain path; anything else unchanged."""
    if isinstance(path, str) and path.startswith("file://"):
        return path.removeprefix("file://")
    return path
