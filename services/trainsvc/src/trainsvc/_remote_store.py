"""Run checkpoints in object storage: ``trainsvc serve --data-dir s3://bucket/prefix``.

With a URL data directory each run's checkpoints live under
``<url>/runs/<id>/checkpoints/`` (any fsspec URL; S3 through s3fs). Everything
else the service keeps stays in a local state directory (``--state-dir``): the
SQLite registry (unless ``--registry`` names another), the model registry,
artifacts, metric histories, and each run's *staging* directory, where the
run's trainer writes its checkpoints as it always does (every kind, the Rust
engine included). The worker then publishes each new file to the run's remote
prefix with trainsvc-checkpoint's publish-when-complete upload (one PUT, or a
multipart upload visible only once completed), applies the run's retention to
the remote listing (never deleting the only valid checkpoint), and reports the
object's URL: the registry indexes URLs. A restarting worker (here or on
another machine) empties its staging directory, fetches the checkpoint to
resume from, checks every CRC and restores it; a corrupt or missing one falls
back to the newest valid older object.

`RemoteStore` is the service's view (reachability at start-up, listing and
verifying a run's objects); `RemoteRunCheckpoints` is the worker's (publish,
retention, fetch). Credentials come from the environment (``AWS_*``, fsspec's
configuration) or ``--storage-option``; they are never logged, never written
to the registry, and redacted from every error.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainsvc_checkpoint import Published, parse_checkpoint_file_name
from trainsvc_checkpoint import RemoteCheckpoint as RemoteObject

log = logging.getLogger("trainsvc.remote")

_LOCAL_SCHEMES = ("file://", "local://")
ENV_PREFIXES = ("AWS_",)
"""Environment variables a worker gets from the service (credentials, region, endpoint)."""
STARTUP_ATTEMPTS = 2
"""Attempts of each request of the start-up check (unless ``--storage-option
config_kwargs=...`` says otherwise): an unreachable endpoint fails start-up in about a
second instead of botocore's default five attempts with back-off."""


def is_url(location: str) -> bool:
    """Whether a data directory or checkpoint path names remote storage (``s3://...``).

    ``file://`` URLs and plain paths are local.
    """
    return "://" in location and not location.startswith(_LOCAL_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` without a ``user:password@`` part (for logs and messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}://{netloc}{slash}{path}"


def default_state_dir(url: str) -> Path:
    """Where a service with the data directory ``url`` keeps its local state by default:
    ``$XDG_CACHE_HOME/trainsvc/<hash of the URL>`` (``~/.cache/trainsvc/...``)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return cache / "trainsvc" / digest


@dataclass(frozen=True)
class RemoteReconciliation:
    """A run's remote checkpoints against its index (see `RemoteStore.reconcile`)."""

    added: tuple[RemoteObject, ...]
    removed: tuple[str, ...]
    unusable: dict[str, str]


@dataclass(frozen=True)
class RemoteStore:
    """The runs' checkpoints under a data directory URL (picklable: workers get it).

    Attributes:
        url: the data directory (``s3://bucket/prefix``), without a trailing slash.
        storage_options: options of its fsspec filesystem (``endpoint_url``, ``key``,
            ``secret``...); kept out of ``repr`` and of every message.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The service's ``AWS_*`` environment variables (`from_environment`): a worker on
    another machine (a Ray node) gets the credentials the service was given."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))

    @classmethod
    def from_environment(cls, url: str, storage_options: Mapping[str, Any]) -> RemoteStore:
        """The store of ``url`` carrying this process's ``AWS_*`` variables for workers."""
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
        return cls(url, dict(storage_options), env)

    def export_env(self) -> None:
        """In a worker: set the service's ``AWS_*`` variables this machine's environment
        lacks (its own settings win), before any client of the storage is made."""
        for key, value in self.env.items():
            os.environ.setdefault(key, value)

    def describe(self) -> str:
        """The URL for logs and messages (credentials redacted)."""
        return redact_url(self.url)

    def check(self) -> None:
        """Make sure the storage answers and accepts the credentials (start-up).

        Opens the ``runs`` prefix as a checkpoint manager would: the bucket must exist,
        listing must work (and leftovers of killed uploads directly under it go).

        Raises:
            RemoteStorageError: unreachable, credentials refused, fsspec/s3fs missing.
            CheckpointNotFoundError: the bucket does not exist.
        """
        from trainsvc_checkpoint import RemoteCheckpointManager

        options = dict(self.storage_options)
        if "config_kwargs" not in options:  # botocore's 5 attempts take ~8 s to give up
            options["config_kwargs"] = {"retries": {"max_attempts": STARTUP_ATTEMPTS}}
        RemoteCheckpointManager(f"{self.url}/runs", storage_options=options)

    def run_url(self, run_id: str) -> str:
        """The run's checkpoint prefix: ``<url>/runs/<id>/checkpoints``."""
        return f"{self.url}/runs/{run_id}/checkpoints"

    def owns(self, run_id: str, url: str) -> bool:
        """Whether ``url`` is an object directly under the run's checkpoint prefix."""
        prefix = self.run_url(run_id) + "/"
        return url.startswith(prefix) and "/" not in url[len(prefix) :]

    def list(self, run_id: str) -> list[RemoteObject]:
        """The run's checkpoint objects, oldest first (a fresh, read-only listing; not
        verified).

        Raises:
            RemoteStorageError: the storage failed (named, without credentials).
        """
        from trainsvc_checkpoint import list_remote_checkpoints

        return list_remote_checkpoints(self.run_url(run_id), storage_options=self.storage_options)

    def download(self, url: str, directory: Path) -> Path:
        """A local copy of the checkpoint object at ``url``, made atomically in
        ``directory`` (read-only on the storage: safe while the run's worker writes).

        Raises:
            CheckpointNotFoundError: the object is gone.
            RemoteStorageError: the storage failed.
        """
        from trainsvc_checkpoint import download_remote_checkpoint

        return download_remote_checkpoint(url, directory, storage_options=self.storage_options)

    def verify(self, url: str, step: int | None = None) -> None:
        """Every check of a load on the object at ``url`` (ranged reads, every CRC).

        Raises:
            CorruptCheckpointError: a check failed, or its metadata's step is not ``step``.
            CheckpointNotFoundError: the object is gone.
            RemoteStorageError: the storage failed.
        """
        from trainsvc_checkpoint import CorruptCheckpointError, verify

        info = verify(url, storage_options=self.storage_options)
        if info.foreign:
            raise CorruptCheckpointError("not a trainsvc checkpoint (a plain safetensors file)")
        found = info.metadata.get("step", step)
        if step is not None and (found != step or isinstance(found, bool)):
            raise CorruptCheckpointError(
                f"metadata step: expected {step} (the object name's step), found {found!r:.40}"
            )

    def reconcile(
        self, run_id: str, indexed: set[str], *, trust_indexed: bool
    ) -> RemoteReconciliation:
        """Verify the run's objects and compare them with the ids an index lists.

        Read-only. ``trust_indexed``: objects the index lists count as valid unread.

        Raises:
            RemoteStorageError: the storage failed (nothing is concluded from a failure).
        """
        from trainsvc_checkpoint import CheckpointError, RemoteStorageError

        valid: list[RemoteObject] = []
        unusable: dict[str, str] = {}
        for obj in self.list(run_id):
            if not (trust_indexed and obj.checkpoint_id in indexed):
                try:
                    self.verify(obj.url, obj.step)
                except RemoteStorageError:
                    raise
                except CheckpointError as exc:
                    unusable[obj.checkpoint_id] = str(exc)
                    continue
            valid.append(obj)
        present = {o.checkpoint_id for o in valid}
        return RemoteReconciliation(
            added=tuple(o for o in valid if o.checkpoint_id not in indexed),
            removed=tuple(sorted(indexed - present)),
            unusable=unusable,
        )


def clear_staging(staging: Path) -> None:
    """Empty a run's staging directory of checkpoints, ``latest`` and temporaries: the
    remote prefix is the truth, and a trainer that resumes from the newest file of its
    directory (the Rust engine) must find only the one fetched to resume from."""
    if not staging.is_dir():
        return
    for entry in staging.iterdir():
        if entry.is_file() and (
            entry.name == "latest"
            or entry.name.startswith(".tmp-")
            or parse_checkpoint_file_name(entry) is not None
        ):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


class RemoteRunCheckpoints:
    """A worker's side of its run's remote prefix: publish (with retention), fetch.

    Opening it aborts incomplete multipart uploads and removes ``.tmp-`` objects a
    killed worker left under the prefix (one writer per prefix: the run's worker).

    Raises:
        RemoteStorageError, CheckpointNotFoundError: as `RemoteStore.check`.
    """

    def __init__(
        self, store: RemoteStore, run_id: str, staging: Path, *, keep_last: int, keep_every: int
    ) -> None:
        from trainsvc_checkpoint import RemoteCheckpointManager

        store.export_env()
        self.store = store
        self.staging = staging
        self.url = store.run_url(run_id)
        self.manager = RemoteCheckpointManager(
            self.url,
            keep_last=max(1, keep_last),
            keep_every=keep_every or None,
            storage_options=store.storage_options,
        )

    def url_of(self, name: str) -> str:
        """The URL of the checkpoint named ``name`` (a file name)."""
        return f"{self.url}/{name}"

    def publish(self, path: Path) -> Published:
        """Upload a checkpoint file the trainer wrote, unchanged (the CRCs in it are the
        ones a reader checks), visible only once complete; then ``latest``, then the
        run's retention on the remote listing (never the only valid checkpoint; skipped
        with a warning when the storage fails). Returns the URL, size and deletions.

        Raises:
            RemoteStorageError: the upload failed (nothing partial is visible).
            FileNotFoundError: the file is gone (nothing was uploaded).
        """
        return self.manager.publish_file(path)

    def fetch(self, url: str) -> Path:
        """Download the checkpoint at ``url`` (under the run's prefix) into the staging
        directory, atomically; return the local file. Not verified here.

        Raises:
            CheckpointNotFoundError: the object is gone.
            RemoteStorageError: the storage failed.
        """
        return self.manager.download(url.rsplit("/", 1)[-1], self.staging)

    def older(self, limit: int, exclude: str) -> list[str]:
        """URLs of the run's checkpoints at or before step ``limit`` but ``exclude``,
        newest first (restore fallbacks)."""
        return [
            self.url_of(c.path.name)
            for c in sorted(self.manager.checkpoints(), key=lambda c: (c.step, c.emergency))[::-1]
            if c.step <= limit and self.url_of(c.path.name) != exclude
        ]
