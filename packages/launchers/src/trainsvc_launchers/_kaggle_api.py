"""The official ``kaggle`` client (2.x, on ``kagglesdk``), wrapped for the launchers.

Importing ``kaggle`` authenticates at import time, so the import happens only
here, lazily, after the credentials are in the environment. Anything the
client prints goes to standard error so that ``--json`` output stays clean.
Output files are downloaded as bytes and the log is written as UTF-8 (the
client's own ``kernels_output`` writes the log in the locale's encoding).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from trainsvc_launchers._credentials import KaggleCredentials, redact

__all__ = ["KaggleError", "KaggleService", "PushResult", "Quota"]

_HTTP_TIMEOUT_S = 300


class KaggleError(RuntimeError):
    """A Kaggle call that failed (including HTTP 200 responses carrying an ``error``)."""


@dataclass(frozen=True)
class PushResult:
    """What a kernel push returned."""

    ref: str
    url: str
    version: int | None


@dataclass(frozen=True)
class Quota:
    """The weekly GPU quota, in hours."""

    used_hours: float
    total_hours: float
    refresh_time: str | None

    @property
    def remaining_hours(self) -> float:
        """Hours left this week."""
        return max(0.0, self.total_hours - self.used_hours)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _hours(value: Any) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds() / 3600
    return 0.0


class KaggleService:
    """The calls the launchers make, through the official client.

    Args:
        credentials: exported into the environment before the client loads.
    """

    def __init__(self, credentials: KaggleCredentials) -> None:
        credentials.apply()
        self._secrets = credentials.secrets
        with _quiet():
            from kaggle.api.kaggle_api_extended import KaggleApi  # type: ignore[import-untyped]

            self._api = KaggleApi()
            try:
                self._api.authenticate()
            except SystemExit as exc:
                raise KaggleError("Kaggle authentication failed: check your credentials") from exc

    def _error(self, message: str) -> KaggleError:
        """A :class:`KaggleError` whose message has every secret scrubbed out."""
        return KaggleError(redact(message, self._secrets))

    @property
    def username(self) -> str:
        """The authenticated user's name."""
        return str(self._api.config_values.get("username", ""))

    def push(self, folder: Path) -> PushResult:
        """Push a kernel folder (a new version when the kernel exists).

        Raises:
            KaggleError: the push failed, even when Kaggle answered HTTP 200
                with an ``error`` field or listed invalid sources.
        """
        try:
            with _quiet():
                resp = self._api.kernels_push(str(folder))
        except (requests.RequestException, ValueError) as exc:
            raise self._error(f"push failed: {exc}") from exc
        problems = []
        if resp.error:
            problems.append(str(resp.error))
        for name in (
            "invalid_dataset_sources",
            "invalid_kernel_sources",
            "invalid_competition_sources",
            "invalid_tags",
        ):
            bad = getattr(resp, name, None)
            if bad:
                problems.append(f"{name.replace('_', ' ')}: {', '.join(map(str, bad))}")
        if problems:
            raise self._error("push rejected by Kaggle: " + "; ".join(problems))
        return PushResult(ref=str(resp.ref), url=str(resp.url), version=resp.version_number)

    def status(self, kernel: str) -> tuple[str, str | None]:
        """The kernel's latest session status (``QUEUED``, ``RUNNING``, ``COMPLETE``, ``ERROR``, ...)."""
        try:
            with _quiet():
                resp = self._api.kernels_status(kernel)
        except (requests.RequestException, ValueError) as exc:
            raise self._error(f"status of {kernel} failed: {exc}") from exc
        status = resp.status
        name = status.name if hasattr(status, "name") else str(status)
        return name, resp.failure_message or None

    def download_output(self, kernel: str, dest: Path) -> tuple[list[Path], str]:
        """Download the kernel's output files into ``dest`` and return them with the log text."""
        from kagglesdk.kernels.types.kernels_api_service import (  # type: ignore[import-untyped]
            ApiListKernelSessionOutputRequest,
        )

        owner, slug = kernel.split("/", 1)
        files: list[Path] = []
        log = ""
        token: str | None = None
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        try:
            with _quiet(), self._api.build_kaggle_client() as client:
                while True:
                    request = ApiListKernelSessionOutputRequest()
                    request.user_name = owner
                    request.kernel_slug = slug
                    request.page_size = 100
                    if token:
                        request.page_token = token
                    resp = client.kernels.kernels_api_client.list_kernel_session_output(request)
                    for item in resp.files or []:
                        target = (dest / item.file_name).resolve()
                        if not target.is_relative_to(root):
                            raise KaggleError(
                                f"refusing output file outside {dest}: {item.file_name!r}"
                            )
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with requests.get(item.url, stream=True, timeout=_HTTP_TIMEOUT_S) as got:
                            got.raise_for_status()
                            with target.open("wb") as out:
                                for chunk in got.iter_content(1 << 20):
                                    out.write(chunk)
                        files.append(target)
                    log = log or (resp.log or "")
                    token = resp.next_page_token
                    if not token:
                        break
        except requests.RequestException as exc:
            raise self._error(f"output download of {kernel} failed: {exc}") from exc
        if log:
            log_path = dest / f"{slug}.log"
            log_path.write_text(log, encoding="utf-8")
            files.append(log_path)
        return files, log

    def quota(self) -> Quota | None:
        """The weekly GPU quota; ``None`` when Kaggle does not report it."""
        try:
            with _quiet():
                resp = self._api.quota_view()
        except requests.RequestException as exc:
            raise self._error(f"quota lookup failed: {exc}") from exc
        gpu = resp.gpu_quota
        if gpu is None:
            return None
        refresh = resp.quota_refresh_time
        return Quota(
            used_hours=_hours(gpu.time_used),
            total_hours=_hours(gpu.total_time_allowed),
            refresh_time=refresh.isoformat() if refresh else None,
        )

    def dataset_exists(self, ref: str) -> bool:
        """Whether the dataset ``owner/slug`` exists (Kaggle answers its status)."""
        try:
            with _quiet():
                self._api.dataset_status(ref)
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return False
            raise self._error(f"status of dataset {ref} failed: {exc}") from exc
        except (requests.RequestException, ValueError) as exc:
            raise self._error(f"status of dataset {ref} failed: {exc}") from exc
        return True

    def create_dataset(
        self, folder: Path, public: bool = False, new_version: bool = False, notes: str = ""
    ) -> str:
        """Create a dataset from ``folder`` (with its ``dataset-metadata.json``), or with
        ``new_version`` add a version to the existing one; return its URL."""
        try:
            with _quiet():
                if new_version:
                    resp = self._api.dataset_create_version(
                        str(folder), version_notes=notes or "new files", quiet=True, dir_mode="zip"
                    )
                else:
                    resp = self._api.dataset_create_new(
                        str(folder), public=public, quiet=True, dir_mode="zip"
                    )
        except (requests.RequestException, ValueError) as exc:
            raise self._error(f"dataset upload failed: {exc}") from exc
        if resp.error:
            raise self._error(f"dataset upload rejected by Kaggle: {resp.error}")
        return str(resp.url or resp.ref)
