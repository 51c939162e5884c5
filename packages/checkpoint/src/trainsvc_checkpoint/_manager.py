"""CheckpointManager: a run's checkpoint directory (format section 9)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from ._errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ._io import (
    TMP_PREFIX,
    CheckpointInfo,
    Compression,
    PathLike,
    atomic_file,
    load_with_info,
    verify,
    write_flat,
)
from ._names import RetentionPolicy, _check_step, checkpoint_file_name, parse_checkpoint_file_name
from ._signals import SignalHandlers
from ._tree import FlatTree, flatten, to_host_array

LATEST = "latest"
_COPY_THREADS = 4
_PARALLEL_COPY_MIN = 32 * 1024 * 1024
_COPY_SLICE = 8 * 1024 * 1024

GetState = Callable[[], tuple[int, Any]]
"""Returns ``(step, tree)``: the state an emergency checkpoint should hold."""


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was corrupt and an older one was restored instead."""


@dataclass(frozen=True, order=True)
class CheckpointFile:
    """One checkpoint in a managed directory.

    Attributes:
        step: the training step in the file name.
        emergency: True for ``emergency_step_<N>`` files (never deleted by retention).
        path: the file.
    """

    step: int
    emergency: bool
    path: Path

    @property
    def checkpoint_id(self) -> str:
        """The file name without its extensions: ``step_<N>`` or ``emergency_step_<N>``."""
        return checkpoint_id(self.path)


def checkpoint_id(path: PathLike) -> str:
    """The checkpoint id of a file name or path: the name up to ``.safetensors``.

    For a checkpoint name that is :attr:`CheckpointName.checkpoint_id`; an id
    (``step_600``) is returned as it is.
    """
    parsed = parse_checkpoint_file_name(path)
    if parsed is not None:
        return parsed.checkpoint_id
    return Path(path).name.split(".safetensors")[0]


@dataclass(frozen=True)
class UnusableCheckpoint:
    """A checkpoint file that failed verification, and why (the error's message)."""

    file: CheckpointFile
    reason: str


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint file that passed every check of :func:`verify`.

    Attributes:
        file: its step, kind and path.
        size_bytes: the file's size.
        mtime: the file's modification time (seconds since the epoch).
        metadata: the caller's metadata stored in it (``metadata["step"] == file.step``).
    """

    file: CheckpointFile
    size_bytes: int
    mtime: float
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Reconciliation:
    """What a checkpoint directory really holds, against an index of it.

    The directory is the truth: every checkpoint file in it was verified
    (header, tree, every CRC, and the step in the metadata against the name).

    Attributes:
        valid: the verified checkpoints, oldest first (for one step, the
            periodic file before the emergency one, as restoring prefers the latter).
        unusable: checkpoint files that failed verification, with the reason.
        added: valid checkpoints whose id the index lacks (index them).
        removed: ids from the index with no valid file (gone or unusable: drop them).
    """

    valid: tuple[VerifiedCheckpoint, ...]
    unusable: tuple[UnusableCheckpoint, ...]
    added: tuple[VerifiedCheckpoint, ...]
    removed: tuple[str, ...]

    @property
    def newest(self) -> VerifiedCheckpoint | None:
        """The checkpoint to resume from: the newest valid one, or None when there is none."""
        return self.valid[-1] if self.valid else None


@dataclass(frozen=True)
class Restored:
    """A restored checkpoint: its step, tree, the caller's metadata and the file.

    ``skipped`` lists the newer checkpoints that were tried first and found
    unusable (newest first), so that a caller can report each one.
    """

    step: int
    tree: Any
    metadata: dict[str, Any]
    path: Path
    skipped: tuple[UnusableCheckpoint, ...] = ()
    url: str | None = None


def scan(directory: PathLike) -> list[CheckpointFile]:
    """Every checkpoint file in ``directory``, oldest first (not verified; nothing is changed).

    A missing directory has none.
    """
    found = []
    try:
        entries = list(Path(directory).iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        name = parse_checkpoint_file_name(entry)
        if name is not None and entry.is_file():
            found.append(CheckpointFile(name.step, name.emergency, entry))
    return sorted(found)


_Signature = tuple[int, int, int, int]
"""A file's identity and version: device, inode, size, modification time in ns."""


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _verify_file(
    ckpt: CheckpointFile, cache: dict[Path, tuple[_Signature, dict[str, Any]]] | None
) -> VerifiedCheckpoint | UnusableCheckpoint:
    try:
        st = ckpt.path.stat()
    except OSError as exc:
        return UnusableCheckpoint(ckpt, f"cannot read the file ({exc.strerror or exc})")
    sig = _signature(st)
    cached = cache.get(ckpt.path) if cache is not None else None
    if cached is not None and cached[0] == sig:
        return VerifiedCheckpoint(ckpt, st.st_size, st.st_mtime, cached[1])
    try:
        info = verify(ckpt.path)
    except CheckpointError as exc:
        return UnusableCheckpoint(ckpt, str(exc))
    except OSError as exc:
        return UnusableCheckpoint(ckpt, f"cannot read the file ({exc.strerror or exc})")
    if info.foreign:
        return UnusableCheckpoint(ckpt, "not a trainsvc checkpoint (a plain safetensors file)")
    step = info.metadata.get("step", ckpt.step)
    if step != ckpt.step or isinstance(step, bool):
        return UnusableCheckpoint(
            ckpt, f"metadata step: expected {ckpt.step} (the file name's step), found {step!r:.40}"
        )
    if cache is not None:
        cache[ckpt.path] = (sig, info.metadata)
    return VerifiedCheckpoint(ckpt, st.st_size, st.st_mtime, info.metadata)


def reconcile(
    directory: PathLike,
    indexed: Iterable[PathLike] = (),
    *,
    trust_indexed: bool = False,
    _cache: dict[Path, tuple[_Signature, dict[str, Any]]] | None = None,
) -> Reconciliation:
    """Verify every checkpoint in ``directory`` and compare them with an index of it.

    Read-only: it deletes nothing (not even ``.tmp-`` leftovers, which may be a
    save in progress), so a service can call it on a run directory that a
    worker is writing to. Cost: one full read of each file (see :func:`verify`).

    Args:
        directory: a checkpoint directory (a missing one holds no checkpoints).
        indexed: the checkpoints an index lists: ids (``step_600``), file names or paths.
        trust_indexed: count the files the index lists and that exist as valid without
            reading them (their ``metadata`` is then ``{}``); verify only the others. For
            runs whose files were verified when they were indexed, e.g. finished ones.

    Returns:
        The valid and unusable files, and what the index lacks or lists in excess.
    """
    wanted = {checkpoint_id(p) for p in indexed}
    results: list[VerifiedCheckpoint | UnusableCheckpoint] = []
    for c in scan(directory):
        if trust_indexed and c.checkpoint_id in wanted:
            try:
                st = c.path.stat()
            except OSError as exc:
                results.append(UnusableCheckpoint(c, f"cannot read the file ({exc.strerror})"))
                continue
            results.append(VerifiedCheckpoint(c, st.st_size, st.st_mtime, {}))
        else:
            results.append(_verify_file(c, _cache))
    valid = [r for r in results if isinstance(r, VerifiedCheckpoint)]
    unusable = [r for r in results if isinstance(r, UnusableCheckpoint)]
    present = {v.file.checkpoint_id for v in valid}
    return Reconciliation(
        valid=tuple(valid),
        unusable=tuple(unusable),
        added=tuple(v for v in valid if v.file.checkpoint_id not in wanted),
        removed=tuple(sorted(wanted - present)),
    )


def _is_jax_like(leaf: Any) -> bool:
    """True for a JAX array (immutable by contract), detected without importing jax."""
    module = type(leaf).__module__ or ""
    return module.split(".")[0] in ("jax", "jaxlib") or hasattr(leaf, "is_fully_addressable")


def _immutable(leaf: Any, arr: np.ndarray[Any, Any]) -> bool:
    """Whether ``arr`` (the host array of ``leaf``) can never change after ``save`` returns.

    True for a NumPy array that is read-only along its whole ``base`` chain
    (a read-only view of a writable array is not: the owner can still write),
    and for the read-only host view of a JAX array.
    """
    if arr.flags.writeable:
        return False
    if _is_jax_like(leaf) and not isinstance(leaf, np.ndarray):
        return True
    base: Any = arr
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    # The chain ends in a non-array owner (bytes, mmap, a buffer): only bytes is
    # immutable; anything else might be written through another handle.
    return base is None or isinstance(base, bytes)


class _ManagerBase(ABC):
    """What every checkpoint manager shares: async snapshots, emergency saves, signals,
    restoring with fallback. Subclasses own the storage (a directory, remote storage)."""

    def __init__(self, *, keep_last: int, keep_every: int | None, compression: Compression) -> None:
        self.retention = RetentionPolicy(keep_last, keep_every)
        if compression not in (None, "zstd"):
            raise ValueError(f"compression: expected None or 'zstd', found {compression!r}")
        self.compression: Compression = compression
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._buffers: dict[str, np.ndarray[Any, Any]] = {}
        self._signals: SignalHandlers | None = None
        self._copy_pool: ThreadPoolExecutor | None = None
        # Two threads at least (np.copyto releases the GIL, and the caller is
        # blocked meanwhile), half the cores beyond that.
        self._copy_workers = min(_COPY_THREADS, max(2, (os.cpu_count() or 1) // 2))

    @property
    def keep_last(self) -> int:
        """``retention.keep_last``; setting it replaces the policy (validated)."""
        return self.retention.keep_last

    @keep_last.setter
    def keep_last(self, value: int) -> None:
        self.retention = RetentionPolicy(value, self.retention.keep_every)

    @property
    def keep_every(self) -> int | None:
        """``retention.keep_every``; setting it replaces the policy (validated)."""
        return self.retention.keep_every

    @keep_every.setter
    def keep_every(self, value: int | None) -> None:
        self.retention = RetentionPolicy(self.retention.keep_last, value)

    # ------------------------------------------------------------------ storage (per subclass)

    @abstractmethod
    def checkpoints(self) -> list[CheckpointFile]:
        """Every checkpoint in the storage, oldest first (not verified)."""

    @abstractmethod
    def _where(self) -> str:
        """The storage, as messages name it."""

    @abstractmethod
    def _load_file(
        self, ckpt: CheckpointFile, target: Any
    ) -> tuple[Any, CheckpointInfo, str | None]:
        """Load one checkpoint: its tree, info and URL (None for a local file)."""

    @abstractmethod
    def _write(self, step: int, flat: FlatTree, md: dict[str, Any], *, emergency: bool) -> Path:
        """Write one checkpoint (under the lock), update ``latest``, apply retention."""

    def steps(self) -> list[int]:
        """The steps that have a checkpoint file on disk, ascending.

        An asynchronous save shows up once its file is written; call
        :meth:`wait` first to include it.
        """
        return sorted({c.step for c in self.checkpoints()})

    def latest_step(self) -> int | None:
        """The highest step with a checkpoint file on disk, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    # ------------------------------------------------------------------ saving

    def _metadata(self, step: int, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        md = dict(metadata or {})
        if "step" in md and md["step"] != step:
            raise ValueError(
                f"metadata['step']: expected {step} (the step saved), found {md['step']!r}"
            )
        md["step"] = step
        return md

    def save(
        self,
        step: int,
        tree: Any,
        *,
        metadata: Mapping[str, Any] | None = None,
        blocking: bool = False,
    ) -> None:
        """Save ``tree`` as ``step_<step>``.

        With ``blocking=False`` (the default) the call waits for the previous
        save to finish, copies every array leaf into host buffers owned by the
        manager (so later changes to the caller's arrays never reach the file),
        and returns; one background thread then writes, fsyncs, renames,
        updates ``latest`` and applies retention. Errors of a background save
        are raised by the next :meth:`save` or :meth:`wait` (restoring and
        emergency saves warn instead, so that they still work).

        Raises:
            InvalidTreeError: ``tree`` or ``metadata`` cannot be stored (raised here,
                before anything is written).
            CheckpointError: the previous background save failed.
        """
        step = _check_step(step)
        with self._busy():
            self.wait()
            md = self._metadata(step, metadata)
            if blocking:
                self._write(step, flatten(tree), md, emergency=False)
                return
            fresh: dict[str, np.ndarray[Any, Any]] = {}
            copies: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []

            def snapshot(leaf: Any, where: str) -> np.ndarray[Any, Any]:
                arr = to_host_array(leaf, where)
                if _immutable(leaf, arr):
                    return arr  # nobody can change it: written as it is, no copy
                buf = self._buffers.get(where)
                if buf is None or buf.shape != arr.shape or buf.dtype != arr.dtype:
                    buf = np.empty_like(arr)
                copies.append((arr, buf))
                fresh[where] = buf
                return buf

            flat = flatten(tree, convert=snapshot)
            self._copy(copies)
            self._buffers = fresh
            thread = threading.Thread(
                target=self._background, args=(step, flat, md), name=f"ckpt-save-{step}"
            )
            self._thread = thread
            thread.start()

    def _copy(self, copies: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]) -> None:
        """Copy every ``(source, buffer)`` pair, in slices spread over a few threads when large."""
        total = sum(src.nbytes for src, _ in copies)
        workers = self._copy_workers
        if workers <= 1 or total < _PARALLEL_COPY_MIN:
            for src, dst in copies:
                np.copyto(dst, src, casting="no")
            return
        jobs: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
        for src, dst in copies:
            s, d = src.reshape(-1), dst.reshape(-1)
            step = max(1, _COPY_SLICE // max(1, s.itemsize))
            jobs.extend((s[i : i + step], d[i : i + step]) for i in range(0, s.size, step))
        if self._copy_pool is None:
            self._copy_pool = ThreadPoolExecutor(workers, thread_name_prefix="ckpt-copy")
        for _ in self._copy_pool.map(lambda job: np.copyto(job[1], job[0], casting="no"), jobs):
            pass

    def _background(self, step: int, flat: FlatTree, md: dict[str, Any]) -> None:
        try:
            self._write(step, flat, md, emergency=False)
        except BaseException as exc:
            self._error = exc
            print(
                f"trainsvc-checkpoint: the background save of step {step} failed: {exc!r}",
                file=sys.stderr,
                flush=True,
            )

    def wait(self) -> None:
        """Block until the pending asynchronous save (if any) is on disk.

        Raises:
            CheckpointError: the background save failed (the cause is chained).
        """
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise CheckpointError(f"a background checkpoint save failed: {error}") from error

    def save_emergency(
        self, step: int, tree: Any, *, metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Save ``emergency_step_<step>`` now (blocking); retention never deletes it.

        A pending asynchronous save is finished first; if it failed, its error
        is reported as a warning so that the emergency save still happens.

        Returns:
            The file written.
        """
        step = _check_step(step)
        with self._busy():
            try:
                self.wait()
            except CheckpointError as exc:
                warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
            return self._write(step, flatten(tree), self._metadata(step, metadata), emergency=True)

    # ------------------------------------------------------------------ restoring

    def restore_checkpoint(self, step: int | None = None, *, target: Any = None) -> Restored:
        """Restore a checkpoint and say which one.

        Args:
            step: the step to restore; None for the newest valid checkpoint.
            target: optional tree giving the structure; leaves are checked (see ``load``).

        Returns:
            The step, tree, metadata and path restored.

        Raises:
            CheckpointNotFoundError: no checkpoint (for ``step``) in the directory.
            CorruptCheckpointError: every candidate checkpoint is corrupt.
            IncompatibleCheckpointError: unknown format version or ``target`` mismatch.
        """
        try:
            self.wait()
        except CheckpointError as exc:
            warnings.warn(str(exc), RuntimeWarning, stacklevel=3)
        files = self.checkpoints()
        if step is not None:
            step = _check_step(step)
            files = [c for c in files if c.step == step]
        # Newest first; for one step, the emergency file (written later) first.
        candidates = sorted(files, key=lambda c: (c.step, c.emergency), reverse=True)
        if not candidates:
            what = f"step {step}" if step is not None else "any step"
            raise CheckpointNotFoundError(
                f"no checkpoint for {what} in {self._where()}; steps on disk: {self.steps()}"
            )
        problems = []
        skipped: list[UnusableCheckpoint] = []
        for i, ckpt in enumerate(candidates):
            try:
                tree, info, url = self._load_file(ckpt, target)
            except (CorruptCheckpointError, CheckpointNotFoundError) as exc:
                problems.append(f"{ckpt.path.name}: {exc}")
                skipped.append(UnusableCheckpoint(ckpt, str(exc)))
                if i + 1 < len(candidates):
                    warnings.warn(
                        f"checkpoint {ckpt.path.name} is unusable ({exc}); falling back to "
                        f"{candidates[i + 1].path.name}",
                        CheckpointFallbackWarning,
                        stacklevel=3,
                    )
                continue
            return Restored(ckpt.step, tree, info.metadata, ckpt.path, tuple(skipped), url)
        raise CorruptCheckpointError(
            f"no valid checkpoint in {self._where()}: " + "; ".join(problems)
        )

    def restore(self, step: int | None = None, *, target: Any = None) -> Any:
        """Restore a tree: ``step``, or the newest valid checkpoint when None.

        When the newest checkpoint is corrupt, a :class:`CheckpointFallbackWarning`
        is issued and the next older one is tried. See :meth:`restore_checkpoint`.
        """
        return self.restore_checkpoint(step, target=target).tree

    # ------------------------------------------------------------------ signals

    @contextlib.contextmanager
    def _busy(self) -> Any:
        """Defer signal handling while the manager's own state is in flux."""
        signals = self._signals
        if signals is None:
            yield
            return
        with signals.deferred():
            yield

    def install_signal_handlers(self, get_state: GetState) -> None:
        """Save an emergency checkpoint on SIGTERM and SIGINT, then exit as the signal would.

        On either signal: ``get_state()`` gives ``(step, tree)``; pending writes
        are finished, ``emergency_step_<step>`` is saved, and the signal is
        re-raised with the default action, so the process's exit status says
        it died of that signal. (A handler installed before this one that is a
        Python function is called instead of the default action.) An ``atexit``
        hook finishes pending writes at interpreter exit, and saves the
        emergency checkpoint for a signal that arrived but could not be handled.
        Call from the main thread; works on Linux and macOS.
        """
        if self._signals is not None:
            self._signals.uninstall()
        self._signals = SignalHandlers(
            lambda signame: self._emergency_from_signal(get_state, signame), self.wait
        )
        self._signals.install()

    def _emergency_from_signal(self, get_state: GetState, signame: str) -> None:
        step, tree = get_state()
        path = self.save_emergency(step, tree)
        print(f"trainsvc-checkpoint: {signame}: saved {path}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Finish pending writes, release the snapshot buffers and signal handlers."""
        try:
            self.wait()
        finally:
            self._buffers = {}
            if self._copy_pool is not None:
                self._copy_pool.shutdown()
                self._copy_pool = None
            if self._signals is not None:
                self._signals.uninstall()
                self._signals = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class CheckpointManager(_ManagerBase):
    """Periodic, asynchronous, atomic checkpoints of one run in one directory.

    Files are ``step_<N>.safetensors`` (``.safetensors.zst`` when compressed),
    ``emergency_step_<N>.safetensors`` and a ``latest`` pointer. Opening a
    directory deletes ``.tmp-`` leftovers of a crashed save.

    Args:
        directory: the run's checkpoint directory (created if missing).
        keep_last: how many of the newest periodic checkpoints retention keeps (>= 1).
        keep_every: also keep every checkpoint whose step is a multiple of this.
        compression: None, or ``"zstd"`` for an outer zstd frame.

    Names come from :func:`checkpoint_file_name` and retention is
    :class:`RetentionPolicy` (``manager.retention``).
    """

    def __init__(
        self,
        directory: PathLike,
        *,
        keep_last: int = 5,
        keep_every: int | None = None,
        compression: Compression = None,
    ) -> None:
        super().__init__(keep_last=keep_last, keep_every=keep_every, compression=compression)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        self._trusted: set[Path] = set()
        self._verified: dict[Path, tuple[_Signature, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ listing

    def _remove_leftovers(self) -> None:
        for entry in self.directory.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    entry.unlink()

    def checkpoints(self) -> list[CheckpointFile]:
        """Every checkpoint file in the directory, oldest first (not verified)."""
        return scan(self.directory)

    def reconcile(self, indexed: Iterable[PathLike] = ()) -> Reconciliation:
        """Verify every checkpoint file and compare them with an index; see :func:`reconcile`.

        Waits for a pending save first. Files this manager wrote or verified
        before and that have not changed since (same inode, size and mtime) are
        not read again.
        """
        try:
            self.wait()
        except CheckpointError as exc:
            warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
        return reconcile(self.directory, indexed, _cache=self._verified)

    def _where(self) -> str:
        return str(self.directory)

    def _load_file(
        self, ckpt: CheckpointFile, target: Any
    ) -> tuple[Any, CheckpointInfo, str | None]:
        tree, info = load_with_info(ckpt.path, target=target)
        return tree, info, None

    def _write(self, step: int, flat: FlatTree, md: dict[str, Any], *, emergency: bool) -> Path:
        with self._lock:
            path = self.directory / checkpoint_file_name(
                step, emergency=emergency, compression=self.compression
            )
            self._trusted.discard(path)
            write_flat(path, flat, metadata=md, compression=self.compression)
            self._trusted.add(path)
            with contextlib.suppress(OSError):
                self._verified[path] = (_signature(path.stat()), dict(md))
            with atomic_file(self.directory / LATEST) as fd:
                os.write(fd, f"{path.name}\n".encode())
            if not emergency:
                self._apply_retention()
            return path

    # ------------------------------------------------------------------ retention

    def _is_valid(self, path: Path) -> bool:
        if path in self._trusted:
            return True
        try:
            verify(path)
        except CheckpointError:
            return False
        return True

    def _apply_retention(self) -> None:
        paths = [c.path for c in self.checkpoints()]
        for path in self.retention.select_for_deletion(paths, self._is_valid):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._trusted.discard(path)
