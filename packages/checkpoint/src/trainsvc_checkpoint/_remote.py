"""Checkpoints in remote storage: any fsspec URL (``s3://`` through s3fs, ``memory://``...).

The bytes are exactly those of a local file (format sections 1-7); what
changes is how they become visible (section 11):

- **S3** (``s3://``): a file of at most one part is one ``PutObject``; a larger
  one is a multipart upload whose parts go up in parallel, and the object
  exists only once ``CompleteMultipartUpload`` succeeds. Both are atomic: a
  reader sees the whole new object or none (or the previous one under that
  key). A killed upload leaves an incomplete multipart upload, invisible to
  every listing and read; a manager aborts those when it opens its prefix.
- **Any other filesystem**: the file is written to ``.tmp-<name>-<uuid>`` beside
  its final name, then moved (copied server-side and deleted where the store
  has no rename). A ``.tmp-`` object is never a checkpoint name.

Either way a reader trusts a checkpoint only when its final name exists and
its header CRC and every tensor CRC verify. Reads are ranged: the header
comes with one request of its first 64 KiB (plus one more when it is
longer), a single tensor with one more, and a full load or verify reads the
data section in parallel ranged requests, copying each response into the
arrays and taking each chunk's CRC as it arrives.

fsspec (and s3fs for ``s3://``) are imported on first use: install
``trainsvc-checkpoint[s3]``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    RemoteStorageError,
)
from ._format import ZSTD_MAGIC, Header, crc32c, crc32c_combine
from ._io import (
    TMP_PREFIX,
    CheckpointInfo,
    Compression,
    _check_crcs,
    _info,
    _read_header,
    encode_flat,
    load_from,
    read_tensor,
    tensor_entry,
    tensor_from_bytes,
)
from ._io import load_with_info as _load_local_with_info
from ._io import read_info as _read_info_local
from ._io import verify as _verify_local
from ._tree import _NO_TARGET, flatten

PART_SIZE = 8 * 1024 * 1024
"""Default bytes per part of a multipart upload (S3 allows 5 MiB to 5 GiB)."""
READ_CHUNK = 16 * 1024 * 1024
"""Bytes per ranged request when reading a data section."""
CONCURRENCY = 8
"""Default parallel requests of one upload or read."""
_HEAD = 64 * 1024
"""Bytes of the first request of a read: the length prefix and most headers."""
_MIN_PART = 5 * 1024 * 1024
_MAX_PARTS = 10_000
_SECRET_OPTIONS = ("secret", "key", "token", "password", "session_token")


@dataclass(frozen=True)
class Location:
    """Where a remote object lives: its filesystem, the path inside it and the URL."""

    fs: Any
    path: str
    url: str
    options: Mapping[str, Any]

    @property
    def is_s3(self) -> bool:
        """True for S3 (s3fs): uploads are multipart, published by their completion."""
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        return "s3" in protocols and hasattr(self.fs, "call_s3")

    def child(self, name: str) -> Location:
        """The object ``name`` inside this location (a "directory")."""
        return Location(
            self.fs,
            f"{self.path.rstrip('/')}/{name}",
            f"{self.url.rstrip('/')}/{name}",
            self.options,
        )

    def errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Translate storage errors of ``action`` into this library's errors."""
        return _translate(self, action)


def open_location(url: str, storage_options: Mapping[str, Any] | None = None) -> Location:
    """Resolve ``url`` with fsspec (``storage_options`` go to its filesystem).

    Raises:
        RemoteStorageError: fsspec or the filesystem's package is not installed,
            or the options are refused (naming the option).
    """
    options = dict(storage_options or {})
    try:
        import fsspec.core  # type: ignore[import-untyped]
    except ImportError:
        raise RemoteStorageError(
            f"{_redact_url(url)}: remote checkpoints need fsspec (and s3fs for s3://): "
            "pip install 'trainsvc-checkpoint[s3]'"
        ) from None
    scheme = url.split("://", 1)[0].split("::")[-1]
    if scheme not in fsspec.available_protocols():
        raise RemoteStorageError(
            f"{_redact_url(url)}: unknown storage scheme {scheme!r}; fsspec knows s3, gcs, "
            "memory, file and the others of fsspec.available_protocols()"
        )
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise RemoteStorageError(
            f"{_redact_url(url)}: no filesystem for this URL's scheme is installed ({exc}); "
            "for s3:// pip install 'trainsvc-checkpoint[s3]'"
        ) from None
    except (TypeError, ValueError) as exc:
        raise RemoteStorageError(
            f"storage_options for {_redact_url(url)}: refused by the filesystem "
            f"({_redact(str(exc), options)})"
        ) from None
    return Location(fs, str(path), url, options)


def _redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part."""
    return re.sub(r"://[^/@]*@", "://***@", url)


def _secrets(options: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for key, value in options.items():
        if isinstance(value, Mapping):
            found.extend(_secrets(value))
        elif isinstance(value, str) and any(s in key.lower() for s in _SECRET_OPTIONS):
            found.append(value)
    return found


def _redact(text: str, options: Mapping[str, Any]) -> str:
    """``text`` with every credential value of ``options`` replaced by ``***``."""
    for secret in sorted(_secrets(options), key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def _endpoint(options: Mapping[str, Any]) -> str:
    client_kwargs = options.get("client_kwargs") or {}
    endpoint = options.get("endpoint_url") or client_kwargs.get("endpoint_url")
    if endpoint:
        return f"{endpoint} (storage_options endpoint_url)"
    env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f"{env} (AWS_ENDPOINT_URL)" if env else "the default endpoint"


_CREDENTIAL_CODES = re.compile(
    r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|ExpiredToken|"
    r"InvalidToken|Forbidden|NoCredentials|Unable to locate credentials|403"
)


_STORAGE_MODULES = (
    "botocore",
    "aiobotocore",
    "aiohttp",
    "s3fs",
    "fsspec",
    "gcsfs",
    "adlfs",
    "urllib3",
)


def _from_storage(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the storage (I/O, a client library), not by this library."""
    if isinstance(exc, OSError):
        return True
    return any((c.__module__ or "").split(".")[0] in _STORAGE_MODULES for c in type(exc).__mro__)


@contextlib.contextmanager
def _translate(loc: Location, action: str) -> Iterator[None]:
    """Storage exceptions as CheckpointNotFoundError / RemoteStorageError, credentials redacted."""
    where = _redact_url(loc.url)
    try:
        yield
    except CheckpointError:
        raise
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"{action} {where}: not found ({_redact(str(exc), loc.options)})"
        ) from None
    except PermissionError as exc:
        raise RemoteStorageError(
            f"{action} {where}: access denied ({_redact(str(exc), loc.options)}); check the "
            "credentials: storage_options key/secret (or AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY) and their permissions on the bucket"
        ) from None
    except Exception as exc:
        if not _from_storage(exc):
            raise
        text = _redact(f"{type(exc).__name__}: {exc}", loc.options)
        if _CREDENTIAL_CODES.search(text):
            raise RemoteStorageError(
                f"{action} {where}: the storage refused the credentials ({text}); check "
                "storage_options key/secret (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            ) from None
        if isinstance(exc, OSError) or "Connect" in type(exc).__name__ or "connect" in text:
            raise RemoteStorageError(
                f"{action} {where}: cannot reach the storage at {_endpoint(loc.options)} ({text})"
            ) from None
        raise RemoteStorageError(f"{action} {where}: {text}") from None


# --------------------------------------------------------------------------- writing


def _parts(pieces: list[memoryview], part_size: int) -> list[list[memoryview]]:
    """Cut consecutive pieces into parts of ``part_size`` bytes (the last may be shorter)."""
    parts: list[list[memoryview]] = []
    current: list[memoryview] = []
    room = part_size
    for piece in pieces:
        while len(piece):
            take = piece[:room]
            current.append(take)
            room -= len(take)
            piece = piece[len(take) :]
            if room == 0:
                parts.append(current)
                current, room = [], part_size
    if current:
        parts.append(current)
    return parts


def _join(views: list[memoryview]) -> bytes:
    return views[0].tobytes() if len(views) == 1 else b"".join(views)  # [] -> b""


def _body(views: list[memoryview]) -> io.BytesIO:
    """A request body of consecutive views. A file object rather than bytes: botocore
    then streams it with a trailing checksum instead of hashing it first (1.3x faster
    for a 100 MB state to a local S3 server in a side test)."""
    return io.BytesIO(_join(views))


def _put_s3(loc: Location, pieces: list[memoryview], part_size: int, concurrency: int) -> None:
    """Publish ``pieces`` as one object: a PutObject, or a parallel multipart upload.

    The object is visible only once the single PUT or ``CompleteMultipartUpload``
    succeeds; an upload that fails is aborted (one whose process is killed is
    aborted by the next ``RemoteCheckpointManager`` opening its prefix). Parts
    grow beyond ``part_size`` when the object needs more than S3's 10,000.
    """
    bucket, key, _ = loc.fs.split_path(loc.path)
    total = sum(len(p) for p in pieces)
    parts = _parts(pieces, max(part_size, -(-total // _MAX_PARTS)))
    if len(parts) <= 1:
        body = _body(parts[0] if parts else [])
        loc.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body)
        loc.fs.invalidate_cache(loc.path)
        return
    upload_id = loc.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    try:

        def upload(numbered: tuple[int, list[memoryview]]) -> dict[str, Any]:
            number, views = numbered
            reply = loc.fs.call_s3(
                "upload_part",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=_body(views),
            )
            return {"PartNumber": number, "ETag": reply["ETag"]}

        with ThreadPoolExecutor(min(concurrency, len(parts)), "ckpt-upload") as pool:
            done = list(pool.map(upload, enumerate(parts, 1)))
        loc.fs.call_s3(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": done},
        )
    except BaseException:
        with contextlib.suppress(Exception):
            loc.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    finally:
        loc.fs.invalidate_cache(loc.path)


def _put_moved(loc: Location, pieces: list[memoryview]) -> None:
    """Write a ``.tmp-`` object beside the final name, then move it there."""
    name = loc.path.rstrip("/").rsplit("/", 1)[-1]
    parent = loc.path.rstrip("/")[: -len(name)].rstrip("/")
    tmp = f"{parent}/{TMP_PREFIX}{name}-{uuid.uuid4().hex[:12]}"
    try:
        loc.fs.pipe_file(tmp, b"".join(pieces))
        loc.fs.mv(tmp, loc.path)
    except BaseException:
        with contextlib.suppress(Exception):
            loc.fs.rm_file(tmp)
        raise


def put_object(
    loc: Location,
    pieces: list[memoryview],
    *,
    part_size: int = PART_SIZE,
    concurrency: int = CONCURRENCY,
) -> None:
    """Make ``pieces`` (consecutive bytes) the object at ``loc``, atomically (see the module doc)."""
    with loc.errors("saving to"):
        if loc.is_s3:
            _put_s3(loc, pieces, part_size, concurrency)
        else:
            _put_moved(loc, pieces)


def _check_tuning(part_size: int, concurrency: int) -> None:
    if isinstance(part_size, bool) or not isinstance(part_size, int) or part_size < _MIN_PART:
        raise ValueError(
            f"part_size: expected an int of at least {_MIN_PART} bytes (5 MiB, the S3 "
            f"minimum), found {part_size!r}"
        )
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency: expected an int >= 1, found {concurrency!r}")


def save_remote(
    url: str,
    tree: Any,
    *,
    metadata: Mapping[str, Any] | None = None,
    compression: Compression = None,
    storage_options: Mapping[str, Any] | None = None,
    part_size: int = PART_SIZE,
    concurrency: int = CONCURRENCY,
) -> str:
    """Save ``tree`` to the object at ``url``, visible only once complete. Returns ``url``."""
    _check_tuning(part_size, concurrency)
    flat = flatten(tree)
    pieces = encode_flat(flat, metadata=metadata, compression=compression)
    put_object(
        open_location(url, storage_options), pieces, part_size=part_size, concurrency=concurrency
    )
    return url


# --------------------------------------------------------------------------- reading


class RemoteSource:
    """An uncompressed checkpoint object, read by ranged requests.

    The first request fetches the first 64 KiB (the length prefix and, usually,
    the whole header); sequential reads are served from it, then by ranged
    requests. The data section is read by parallel ranged requests.
    """

    def __init__(self, loc: Location, size: int, head: bytes, concurrency: int) -> None:
        self.loc = loc
        self.size = size
        self._head = head
        self._pos = 0
        self._concurrency = concurrency

    def range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object (one ranged request)."""
        if end <= start:
            return b""
        data = self.loc.fs.cat_file(self.loc.path, start=start, end=end)
        if len(data) != end - start:
            raise CorruptCheckpointError(
                f"data at byte {start}: the object ended at byte {start + len(data)} of the "
                f"{self.size} expected (truncated, or replaced while it was being read)"
            )
        return bytes(data)

    def read_exact(self, view: memoryview, what: str) -> None:
        start, end = self._pos, self._pos + len(view)
        if end > self.size:
            raise CorruptCheckpointError(
                f"{what}: the object ended at byte {self.size} of the {end} expected (truncated)"
            )
        if end <= len(self._head):
            view[:] = self._head[start:end]
        else:
            view[:] = self.range(start, end)
        self._pos = end

    def read_data(
        self, header: Header, dests: Mapping[str, np.ndarray[Any, Any]] | None
    ) -> dict[str, int]:
        """Read the data section with parallel ranged requests; return every tensor's CRC."""
        base, size = self._pos, header.data_size
        chunks = [(lo, min(lo + READ_CHUNK, size)) for lo in range(0, size, READ_CHUNK)]

        def read_chunk(bounds: tuple[int, int]) -> list[tuple[int, int, int]]:
            lo, hi = bounds
            data = self.range(base + lo, base + hi)
            pieces = []
            for index, e in enumerate(header.entries):
                start, stop = max(e.begin, lo), min(e.end, hi)
                if start >= stop:
                    if e.begin >= hi:
                        break
                    continue
                chunk = memoryview(data)[start - lo : stop - lo]
                if dests is not None:
                    dests[e.name][start - e.begin : stop - e.begin] = np.frombuffer(chunk, np.uint8)
                pieces.append((index, crc32c(chunk), stop - start))
            return pieces

        values = dict.fromkeys((e.name for e in header.entries), 0)
        started: set[str] = set()
        workers = max(1, min(self._concurrency, len(chunks)))
        with ThreadPoolExecutor(workers, "ckpt-read") as pool:
            for result in pool.map(read_chunk, chunks):
                for index, crc, nbytes in result:
                    name = header.entries[index].name
                    values[name] = (
                        crc32c_combine(values[name], crc, nbytes) if name in started else crc
                    )
                    started.add(name)
        self._pos = base + size
        return values


@contextlib.contextmanager
def _open_remote(
    url: str, storage_options: Mapping[str, Any] | None, concurrency: int
) -> Iterator[RemoteSource | Path]:
    """Open a remote checkpoint: a :class:`RemoteSource`, or for a zstd object a local
    temporary copy (a zstd frame is read from its start; the copy is removed after)."""
    loc = open_location(url, storage_options)
    with loc.errors("reading"):
        # A listing cached by this process may predate a newer object under the same key.
        loc.fs.invalidate_cache(loc.path)
        try:
            size = int(loc.fs.size(loc.path))
        except IsADirectoryError:
            raise CheckpointNotFoundError(
                f"{_redact_url(url)} is a directory, not a checkpoint object"
            ) from None
        head = bytes(loc.fs.cat_file(loc.path, start=0, end=min(size, _HEAD))) if size else b""
        if head[:4] != ZSTD_MAGIC:
            yield RemoteSource(loc, size, head, concurrency)
            return
        with tempfile.TemporaryDirectory(prefix="trainsvc-ckpt-") as tmp:
            local = Path(tmp) / "object.safetensors.zst"
            loc.fs.get_file(loc.path, str(local))
            yield local


def _remote_info(src: RemoteSource, header: Header) -> CheckpointInfo:
    return _info(Path(src.loc.path), header, False, src.loc.url)


def _as_remote(
    info: CheckpointInfo, url: str, storage_options: Mapping[str, Any] | None
) -> CheckpointInfo:
    loc_path = open_location(url, storage_options).path
    return CheckpointInfo(
        Path(loc_path), info.foreign, info.compressed, info.metadata, info.tensors, info.nbytes, url
    )


def load_remote_with_info(
    url: str,
    *,
    target: Any = None,
    max_decompressed_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    concurrency: int = CONCURRENCY,
) -> tuple[Any, CheckpointInfo]:
    """Load a remote checkpoint, checking every CRC; see :func:`trainsvc_checkpoint.load`."""
    _check_tuning(PART_SIZE, concurrency)
    tgt = _NO_TARGET if target is None else target
    with _open_remote(url, storage_options, concurrency) as src:
        if isinstance(src, Path):
            tree, info = _load_local_with_info(
                src, target=target, max_decompressed_bytes=max_decompressed_bytes
            )
            return tree, _as_remote(info, url, storage_options)
        with src.loc.errors("reading"):
            return load_from(src, tgt, lambda header: _remote_info(src, header))


def verify_remote(
    url: str,
    *,
    max_decompressed_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    concurrency: int = CONCURRENCY,
) -> CheckpointInfo:
    """Run every check of a load on a remote checkpoint without keeping its data."""
    _check_tuning(PART_SIZE, concurrency)
    with _open_remote(url, storage_options, concurrency) as src:
        if isinstance(src, Path):
            info = _verify_local(src, max_decompressed_bytes=max_decompressed_bytes)
            return _as_remote(info, url, storage_options)
        with src.loc.errors("reading"):
            header = _read_header(src)
            actual = src.read_data(header, None)
        if not header.foreign:
            _check_crcs(header, actual)
        return _remote_info(src, header)


def read_info_remote(
    url: str,
    *,
    max_decompressed_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """The header of a remote checkpoint (checked), from ranged requests of its start only.

    A compressed object is fetched whole (a zstd frame is read from its start).
    """
    with _open_remote(url, storage_options, 1) as src:
        if isinstance(src, Path):
            info = _read_info_local(src, max_decompressed_bytes=max_decompressed_bytes)
            return _as_remote(info, url, storage_options)
        with src.loc.errors("reading"):
            return _remote_info(src, _read_header(src))


def read_tensor_remote(
    url: str,
    name: str,
    *,
    max_decompressed_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> np.ndarray[Any, Any]:
    """One tensor of a remote checkpoint: a ranged request for the header, one for the
    tensor, whose CRC is checked. A compressed object is fetched and read whole."""
    with _open_remote(url, storage_options, 1) as src:
        if isinstance(src, Path):
            return read_tensor(src, name, max_decompressed_bytes=max_decompressed_bytes)
        with src.loc.errors("reading"):
            header = _read_header(src)
            entry = tensor_entry(header, name)
            start = 8 + header.header_len + entry.begin
            data = src.range(start, start + entry.end - entry.begin)
        return tensor_from_bytes(header, entry, data)
