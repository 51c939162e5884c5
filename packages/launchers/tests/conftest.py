"""Fixtures: a local fake Kaggle server that speaks the HTTP API of the official client.

Kaggle itself cannot be reached from tests, so the real ``kaggle`` package
(on ``kagglesdk``) talks to this server: ``KAGGLE_API_ENVIRONMENT=LOCALHOST``
makes it call ``http://localhost/api/v1/{service}/{Method}`` with JSON POSTs,
and ``HTTP_PROXY`` routes those requests to the port this server listens on
(a proxy receives the absolute URL in the request line).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

TOKEN = "fake-secret-token-0123456789"


@dataclass
class FakeSession:
    """What the fake returns for one kernel: statuses in order (the last repeats), output, log."""

    statuses: list[str] = field(default_factory=lambda: ["QUEUED", "RUNNING", "COMPLETE"])
    files: dict[str, bytes] = field(default_factory=dict)
    log: str = ""
    failure_message: str | None = None


@dataclass
class FakeKaggle:
    """The fake's state: scripted sessions, and every call received."""

    port: int = 0
    username: str = "tester"
    sessions: dict[str, FakeSession] = field(default_factory=dict)
    push_error: str | None = None
    saved_as: dict[str, str] = field(default_factory=dict)
    datasets: set[str] = field(default_factory=set)
    """Datasets that exist (owner/slug)."""
    """Requested kernel slug -> the slug Kaggle saves it under (its `ref`)."""
    quota_used_s: int = 3600
    quota_total_s: int = 30 * 3600
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pushed: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    auth_headers: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def methods(self) -> list[str]:
        """The API methods called, in order."""
        return [name for name, _ in self.calls]

    def handle(self, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Answer one API call."""
        with self.lock:
            self.calls.append((method, body))
        if method == "IntrospectToken":
            return 200, {"active": body.get("token") == TOKEN, "username": self.username}
        if method == "SaveKernel":
            self.pushed.append(body)
            if self.push_error:
                return 200, {"error": self.push_error}
            slug = self.saved_as.get(body["slug"], body["slug"])
            version = sum(1 for p in self.pushed if p["slug"] == body["slug"])
            return 200, {
                "ref": f"/code/{slug}",
                "url": f"http://localhost/code/{slug}",
                "versionNumber": version,
                "kernelId": 7,
            }
        if method == "GetKernelSessionStatus":
            session = self.sessions.get(body["kernelSlug"])
            if session is None:
                return 404, {"code": 404, "message": "kernel not found"}
            status = session.statuses.pop(0) if len(session.statuses) > 1 else session.statuses[0]
            out: dict[str, Any] = {"status": status}
            if session.failure_message and status == "ERROR":
                out["failureMessage"] = session.failure_message
            return 200, out
        if method == "ListKernelSessionOutput":
            slug = body["kernelSlug"]
            session = self.sessions[slug]
            files = [
                {"fileName": name, "url": f"http://localhost/files/{slug}/{name}"}
                for name in session.files
            ]
            return 200, {"files": files, "log": session.log}
        if method == "GetAcceleratorQuotaStatistics":
            return 200, {
                "gpuQuota": {
                    "timeUsed": f"{self.quota_used_s}s",
                    "totalTimeAllowed": f"{self.quota_total_s}s",
                },
                "quotaRefreshTime": "2026-11-28T00:00:00.000Z",
            }
        if method == "GetDatasetStatus":
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref in self.datasets:
                return 200, {"status": "ready"}
            return 404, {"code": 404, "message": "dataset not found"}
        if method == "CreateDatasetVersion":
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref not in self.datasets:
                return 404, {"code": 404, "message": "dataset not found"}
            return 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"}
        if method == "StartBlobUpload":
            token = f"blob-{len(self.uploads)}"
            return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}
        if method == "CreateDataset":
            self.datasets.add(f"{body['ownerSlug']}/{body['slug']}")
            return 200, {
                "ref": f"{body['ownerSlug']}/{body['slug']}",
                "url": f"http://localhost/datasets/{body['slug']}",
                "status": "ok",
            }
        return 404, {"code": 404, "message": f"unknown method {method}"}


def _handler(fake: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            body = self._body()
            fake.auth_headers.append(self.headers.get("Authorization", ""))
            if not path.startswith("/api/v1/"):
                self._send(404, {"code": 404, "message": "not found"})
                return
            method = path.rsplit("/", 1)[1]
            code, payload = fake.handle(method, json.loads(body or b"{}"))
            self._send(code, payload)

        def do_PUT(self) -> None:
            path = urlsplit(self.path).path
            fake.uploads[path.rsplit("/", 1)[1]] = self._body()
            self._send(200, {})

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            parts = path.split("/")
            if len(parts) >= 4 and parts[1] == "files":
                slug, name = parts[2], "/".join(parts[3:])
                session = fake.sessions.get(slug)
                if session is not None and name in session.files:
                    self._send(200, session.files[name], "application/octet-stream")
                    return
            self._send(404, {"code": 404, "message": "not found"})

    return Handler


@pytest.fixture
def fake_kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKaggle]:
    """A running fake Kaggle server, with the environment pointing the official client at it."""
    fake = FakeKaggle()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    home = tmp_path / "home"
    home.mkdir()
    for name in (
        "NO_PROXY",
        "no_proxy",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "HTTPS_PROXY",
        "https_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{fake.port}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{fake.port}")
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
