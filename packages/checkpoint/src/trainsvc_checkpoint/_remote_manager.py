"""RemoteCheckpointManager: a run's checkpoints under a remote prefix (format section 11)."""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ._errors import CheckpointError, CheckpointNotFoundError, RemoteStorageError
from ._io import TMP_PREFIX, CheckpointInfo, Compression, encode_flat
from ._manager import LATEST, CheckpointFile, _ManagerBase, checkpoint_id
from ._names import checkpoint_file_name, parse_checkpoint_file_name
from ._remote import (
    CONCURRENCY,
    PART_SIZE,
    Location,
    _check_tuning,
    _redact_url,
    load_remote_with_info,
    open_location,
    put_object,
    verify_remote,
)
from ._tree import FlatTree


@dataclass(frozen=True)
class RemoteCheckpoint:
    """A checkpoint object under a remote prefix, as a listing shows it (not verified)."""

    url: str
    step: int
    emergency: bool
    size_bytes: int
    mtime: float
    """Last-modified time (seconds since the epoch; 0.0 when the storage does not say)."""

    @property
    def name(self) -> str:
        """The object's file name (``step_<N>.safetensors``...)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def checkpoint_id(self) -> str:
        """The name without its extensions: ``step_<N>`` or ``emergency_step_<N>``."""
        return checkpoint_id(self.name)


@dataclass(frozen=True)
class Published:
    """What :meth:`RemoteCheckpointManager.publish_file` did."""

    url: str
    size_bytes: int
    deleted: tuple[str, ...]
    """URLs retention deleted after the publication (oldest first)."""


def list_remote_checkpoints(
    url: str, *, storage_options: Mapping[str, Any] | None = None
) -> list[RemoteCheckpoint]:
    """The checkpoint objects directly under the prefix ``url``, oldest first.

    Read-only (unlike opening a :class:`RemoteCheckpointManager`, which cleans up
    after killed saves): safe while another process writes to the prefix. A missing
    prefix lists nothing.

    Raises:
        RemoteStorageError: the storage failed (named, without credentials).
    """
    prefix = url.rstrip("/")
    found = []
    for name, entry in _listing(open_location(prefix, storage_options)):
        parsed = parse_checkpoint_file_name(name)
        if parsed is not None:
            size = int(entry.get("size") or 0)
            found.append(
                RemoteCheckpoint(
                    f"{prefix}/{name}", parsed.step, parsed.emergency, size, _mtime(entry)
                )
            )
    return sorted(found, key=lambda c: (c.step, c.emergency))


def download_remote_checkpoint(
    url: str,
    directory: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Copy the checkpoint object at ``url`` into ``directory`` under its name,
    atomically (a ``.tmp-`` file renamed into place); returns the local file. Not
    verified here: `load` or `verify` the copy.

    Read-only, like :func:`list_remote_checkpoints`: safe while another process writes
    to the prefix.

    Raises:
        CheckpointNotFoundError: the object is gone.
        RemoteStorageError: the storage failed (named, without credentials).
    """
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return _download(open_location(url, storage_options), Path(directory) / name)


def _download(loc: Location, dest: Path) -> Path:
    """Copy the object at ``loc`` to the local file ``dest`` through a ``.tmp-`` file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{TMP_PREFIX}download-{dest.name}"
    try:
        with loc.errors("downloading"):
            loc.fs.invalidate_cache(loc.path)
            loc.fs.get_file(loc.path, str(tmp))
        tmp.replace(dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def _listing(loc: Location) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, entry) of each object directly under ``loc`` (a fresh listing)."""
    with loc.errors("listing"):
        loc.fs.invalidate_cache(loc.path)
        try:
            found = loc.fs.ls(loc.path, detail=True)
        except FileNotFoundError:
            return []
    return [
        (str(e["name"]).rstrip("/").rsplit("/", 1)[-1], e)
        for e in found
        if e.get("type") != "directory"
    ]


def _mtime(entry: Mapping[str, Any]) -> float:
    value = entry.get("LastModified", entry.get("mtime", entry.get("created", 0.0)))
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class RemoteCheckpointManager(_ManagerBase):
    """Periodic, asynchronous checkpoints of one run under a remote prefix (any fsspec URL).

    The same API and names as :class:`CheckpointManager` (``step_<N>.safetensors``,
    ``emergency_step_<N>``, ``latest``, :class:`RetentionPolicy` over the
    listing, fallback on restore), with remote publication: each checkpoint
    object appears only once it is complete (a single PUT or a completed
    multipart upload on S3; a ``.tmp-`` object moved into place elsewhere).
    Opening the prefix aborts the incomplete multipart uploads and deletes the
    ``.tmp-`` objects that a killed save left under it.

    ``CheckpointFile.path`` and ``Restored.path`` are the objects' paths inside
    the storage (``bucket/run/step_1.safetensors``); :meth:`url_of` and
    ``Restored.url`` give their URLs.

    Args:
        url: the run's prefix, e.g. ``s3://bucket/runs/demo`` (``memory://runs/demo``).
        keep_last, keep_every, compression: as :class:`CheckpointManager`.
        storage_options: options of the fsspec filesystem (for s3fs: ``key``,
            ``secret``, ``client_kwargs={"endpoint_url": ...}``); never logged.
        part_size: bytes per part of a multipart upload (>= 5 MiB).
        concurrency: parallel requests of one upload or load.

    Raises:
        RemoteStorageError: the storage cannot be reached or refuses the
            credentials (the message names the setting), or fsspec/s3fs is missing.
        CheckpointNotFoundError: the bucket does not exist.
    """

    def __init__(
        self,
        url: str,
        *,
        keep_last: int = 5,
        keep_every: int | None = None,
        compression: Compression = None,
        storage_options: Mapping[str, Any] | None = None,
        part_size: int = PART_SIZE,
        concurrency: int = CONCURRENCY,
    ) -> None:
        super().__init__(keep_last=keep_last, keep_every=keep_every, compression=compression)
        _check_tuning(part_size, concurrency)
        self.url = url.rstrip("/")
        self._options = dict(storage_options or {})
        self._part_size = part_size
        self._concurrency = concurrency
        self.location: Location = open_location(self.url, self._options)
        self._trusted: set[str] = set()
        self._check_bucket()
        self._remove_leftovers()

    # ------------------------------------------------------------------ storage

    def _check_bucket(self) -> None:
        loc = self.location
        if not loc.is_s3:
            return
        bucket = loc.fs.split_path(loc.path)[0]
        with loc.errors("opening"):
            try:
                loc.fs.call_s3("head_bucket", Bucket=bucket)
            except FileNotFoundError:
                raise CheckpointNotFoundError(
                    f"opening {_redact_url(self.url)}: the bucket {bucket!r} does not exist"
                ) from None

    def _entries(self) -> list[str]:
        """The names of the objects directly under the prefix (fresh listing)."""
        return [name for name, _ in _listing(self.location)]

    def _remove_leftovers(self) -> None:
        loc = self.location
        for name in self._entries():
            if name.startswith(TMP_PREFIX):
                with loc.errors("deleting a leftover of"), contextlib.suppress(FileNotFoundError):
                    loc.fs.rm_file(loc.child(name).path)
        if loc.is_s3:
            self._abort_incomplete_uploads()

    def _abort_incomplete_uploads(self) -> None:
        """Abort the multipart uploads under the prefix that a killed save left."""
        loc = self.location
        bucket, key, _ = loc.fs.split_path(loc.path)
        prefix = f"{key.rstrip('/')}/" if key else ""
        with loc.errors("aborting incomplete uploads under"):
            markers: dict[str, str] = {}
            while True:
                reply = loc.fs.call_s3(
                    "list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers
                )
                for upload in reply.get("Uploads", []):
                    if "/" in upload["Key"][len(prefix) :]:
                        continue  # a deeper prefix: another run's
                    with contextlib.suppress(FileNotFoundError):
                        loc.fs.call_s3(
                            "abort_multipart_upload",
                            Bucket=bucket,
                            Key=upload["Key"],
                            UploadId=upload["UploadId"],
                        )
                if not reply.get("IsTruncated"):
                    return
                markers = {
                    "KeyMarker": reply["NextKeyMarker"],
                    "UploadIdMarker": reply["NextUploadIdMarker"],
                }

    def url_of(self, ckpt: CheckpointFile | str) -> str:
        """The URL of a checkpoint of this manager (a :class:`CheckpointFile` or a file name)."""
        name = ckpt if isinstance(ckpt, str) else ckpt.path.name
        return f"{self.url}/{name}"

    def checkpoints(self) -> list[CheckpointFile]:
        """Every checkpoint object under the prefix, oldest first (not verified)."""
        found = []
        for name in self._entries():
            parsed = parse_checkpoint_file_name(name)
            if parsed is not None:
                path = Path(self.location.child(name).path)
                found.append(CheckpointFile(parsed.step, parsed.emergency, path))
        return sorted(found)

    def _where(self) -> str:
        return _redact_url(self.url)

    def _load_file(
        self, ckpt: CheckpointFile, target: Any
    ) -> tuple[Any, CheckpointInfo, str | None]:
        url = self.url_of(ckpt)
        tree, info = load_remote_with_info(
            url, target=target, storage_options=self._options, concurrency=self._concurrency
        )
        return tree, info, url

    def _write(self, step: int, flat: FlatTree, md: dict[str, Any], *, emergency: bool) -> Path:
        with self._lock:
            name = checkpoint_file_name(step, emergency=emergency, compression=self.compression)
            loc = self.location.child(name)
            self._trusted.discard(name)
            pieces = encode_flat(flat, metadata=md, compression=self.compression)
            put_object(loc, pieces, part_size=self._part_size, concurrency=self._concurrency)
            self._trusted.add(name)
            put_object(self.location.child(LATEST), [memoryview(f"{name}\n".encode())])
            if not emergency:
                self._apply_retention()
            return Path(loc.path)

    def publish_file(self, path: str | os.PathLike[str]) -> Published:
        """Upload a checkpoint file written elsewhere (a trainer's local directory)
        under its own name, byte for byte, as :meth:`save` publishes: visible only once
        complete; then ``latest``, then retention (not after an emergency checkpoint).

        Raises:
            ValueError: ``path``'s name is not a checkpoint file name.
            FileNotFoundError: the file is gone (nothing was uploaded).
            RemoteStorageError: the upload failed (nothing partial is visible).
        """
        src = Path(path)
        parsed = parse_checkpoint_file_name(src.name)
        if parsed is None:
            raise ValueError(
                f"path: {src.name!r} is not a checkpoint file name (step_<N>.safetensors, "
                "emergency_step_<N>.safetensors, optionally .zst)"
            )
        with self._lock, src.open("rb") as f:
            loc = self.location.child(src.name)
            self._trusted.discard(src.name)
            size = os.fstat(f.fileno()).st_size
            tuning = {"part_size": self._part_size, "concurrency": self._concurrency}
            if size == 0:
                put_object(loc, [], **tuning)
            else:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    view = memoryview(mapped)
                    try:
                        put_object(loc, [view], **tuning)
                    finally:
                        view.release()
            self._trusted.add(src.name)
            put_object(self.location.child(LATEST), [memoryview(f"{src.name}\n".encode())])
            deleted = () if parsed.emergency else self._apply_retention()
        return Published(self.url_of(src.name), size, deleted)

    def download(self, ckpt: CheckpointFile | str, directory: str | os.PathLike[str]) -> Path:
        """Copy a checkpoint object into ``directory`` under its name, atomically (a
        ``.tmp-`` file renamed into place); not verified here.

        Raises:
            CheckpointNotFoundError: the object is gone.
            RemoteStorageError: the storage failed.
        """
        name = ckpt if isinstance(ckpt, str) else ckpt.path.name
        return _download(self.location.child(name), Path(directory) / name)

    # ------------------------------------------------------------------ retention

    def _is_valid(self, name: str) -> bool:
        """Whether a checkpoint verifies. A storage error is raised, not taken for
        invalidity: a network failure must never make retention delete a valid one."""
        if name in self._trusted:
            return True
        try:
            verify_remote(
                self.url_of(name), storage_options=self._options, concurrency=self._concurrency
            )
        except RemoteStorageError:
            raise
        except CheckpointError:
            return False
        return True

    def _apply_retention(self) -> tuple[str, ...]:
        """Delete what the retention policy selects; the URLs deleted."""
        try:
            names = [c.path.name for c in self.checkpoints()]
            doomed = self.retention.select_for_deletion(names, self._is_valid)
        except RemoteStorageError as exc:
            print(
                f"trainsvc-checkpoint: retention skipped this time, the storage failed: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return ()
        for name in doomed:
            loc = self.location.child(name)
            with loc.errors("deleting"), contextlib.suppress(FileNotFoundError):
                loc.fs.rm_file(loc.path)
            self._trusted.discard(name)
        return tuple(self.url_of(name) for name in doomed)
