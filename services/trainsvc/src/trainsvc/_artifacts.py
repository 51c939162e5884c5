"""Model artifacts (adapter or full-weight directories) in a storage backend.

A local directory by default; any fsspec URL (``s3://bucket/prefix`` with
``s3fs``, ``gs://``, ...) for object stores. `ArtifactStore.put` copies a model
directory to ``<root>/<model>/<digest>/`` and writes ``MANIFEST.json`` (every
file's size and SHA-256) **last**: an upload cut short has no manifest and is never
served. The artifact's digest is the manifest's SHA-256, so the same files give the
same URI and a registered version names exactly the bytes it was evaluated with.
`ArtifactStore.fetch` copies an artifact to a local directory and verifies every
file against the manifest before anything loads it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainsvc._domain import FailedPreconditionError, InvalidArgumentError, NotFoundError

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredArtifact:
    """Where an artifact lives and what it holds.

    Attributes:
        uri: ``<root>/<model>/<digest>`` (a local path or an fsspec URL).
        sha256: the manifest's SHA-256 (the artifact's identity).
        files: relative path -> (size, sha256).
    """

    uri: str
    sha256: str
    files: dict[str, tuple[int, str]]


class ArtifactStore:
    """Artifacts under one root (a local directory or an fsspec URL).

    Args:
        root: where artifacts go; ``s3://bucket/prefix`` etc. need the protocol's
            fsspec package (``s3fs``).
        storage_options: passed to fsspec (e.g. ``{"endpoint_url": ..., "key": ...}``).
    """

    def __init__(self, root: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec  # type: ignore[import-untyped]

        text = str(root)
        if "://" not in text:
            Path(text).mkdir(parents=True, exist_ok=True)
            text = str(Path(text).resolve())
        self.root = text.rstrip("/")
        try:
            self.fs, _ = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise InvalidArgumentError("models.storage", f"cannot open {self.root}: {exc}") from exc

    def put(self, model: str, source: str | Path) -> StoredArtifact:
        """Uploads the files of directory ``source`` for ``model``; returns where they are.

        Raises:
            InvalidArgumentError: ``source`` is not a directory with files.
        """
        src = Path(source)
        if not src.is_dir():
            raise InvalidArgumentError("artifact", f"{src} is not a directory")
        files = {
            p.relative_to(src).as_posix(): (p.stat().st_size, _sha256_file(p))
            for p in sorted(src.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        if not files:
            raise InvalidArgumentError("artifact", f"{src} holds no files")
        manifest = json.dumps(
            {"format": 1, "model": model, "files": {k: list(v) for k, v in files.items()}},
            sort_keys=True,
            indent=1,
        ).encode()
        digest = hashlib.sha256(manifest).hexdigest()
        uri = f"{self.root}/{model}/{digest[:32]}"
        if self._complete(uri):
            return StoredArtifact(uri, digest, files)  # the same bytes are already there
        for rel in files:
            target = f"{uri}/{rel}"
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(src / rel), target)
        with self.fs.open(f"{uri}/{MANIFEST}", "wb") as f:  # last: the commit marker
            f.write(manifest)
        return StoredArtifact(uri, digest, files)

    def _complete(self, uri: str) -> bool:
        return bool(self.fs.exists(f"{uri}/{MANIFEST}"))

    def manifest(self, uri: str) -> StoredArtifact:
        """The stored manifest of ``uri``.

        Raises:
            NotFoundError: no artifact (or an upload that never finished) at ``uri``.
        """
        try:
            with self.fs.open(f"{uri}/{MANIFEST}", "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise NotFoundError(f"no complete artifact at {uri} (no {MANIFEST})") from None
        doc = json.loads(raw)
        files = {k: (int(v[0]), str(v[1])) for k, v in doc["files"].items()}
        return StoredArtifact(uri, hashlib.sha256(raw).hexdigest(), files)

    def fetch(self, uri: str, dest: str | Path, expected_sha256: str | None = None) -> Path:
        """Copies the artifact at ``uri`` into ``dest`` (created; replaced atomically when
        complete) and verifies every file.

        Raises:
            NotFoundError: no complete artifact at ``uri``.
            FailedPreconditionError: the manifest is not the expected one, or a file's
                size or SHA-256 differs from it (nothing is left at ``dest``).
        """
        stored = self.manifest(uri)
        if expected_sha256 is not None and stored.sha256 != expected_sha256:
            raise FailedPreconditionError(
                f"artifact {uri}: manifest sha256 {stored.sha256[:16]}... is not the "
                f"registered {expected_sha256[:16]}..."
            )
        final = Path(dest)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            for rel, (size, sha) in stored.files.items():
                local = staging / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{uri}/{rel}", str(local))
                if local.stat().st_size != size or _sha256_file(local) != sha:
                    raise FailedPreconditionError(
                        f"artifact {uri}: {rel} does not match its manifest (corrupt or "
                        "changed after upload)"
                    )
            if final.exists():
                shutil.rmtree(final)
            staging.replace(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final


__all__ = ["MANIFEST", "ArtifactStore", "StoredArtifact"]
