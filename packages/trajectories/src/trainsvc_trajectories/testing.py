"""Test utilities: a throwaway PostgreSQL server and a local OpenAI-compatible endpoint.

For the tests of trainsvc and of agents that record with this library, on one machine
and without the network:

- `postgres_server` starts a real PostgreSQL cluster from the Debian/Ubuntu binaries
  (``apt-get install postgresql``) on ``127.0.0.1`` and a free port, as the
  ``postgres`` user when run as root (PostgreSQL refuses root), and removes it after;
  `create_database` makes a fresh, empty database on it.
- `LocalOpenAI` serves ``POST /v1/chat/completions`` like the OpenAI API does (the
  official ``openai`` client talks to it unchanged); an ``answer`` function decides
  each reply's content, and a ``script`` of modes makes the next replies time out,
  fail with HTTP 500, or return a malformed body, so error paths can be tested.

Nothing here is imported by the library itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class PostgresUnavailableError(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` (or ``initdb`` on PATH), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres_user(datadir: Path) -> list[str]:
    """The command prefix that runs PostgreSQL's tools as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
        user = pwd.getpwnam("postgres")
    os.chown(datadir, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields its URL ``postgresql://postgres@127.0.0.1:PORT``.

    Durability is off (``fsync=off``, no synchronous commit) unless ``durable``: tests
    want speed, benchmarks the server's real commit cost. Stopped (immediate mode)
    and deleted on exit.

    Raises:
        PostgresUnavailableError: no ``initdb`` (``apt-get install postgresql`` provides it).
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise PostgresUnavailableError(
            "PostgreSQL binaries not found (no initdb under /usr/lib/postgresql/*/bin or on "
            "PATH); install them with `apt-get install postgresql`"
        )
    datadir = Path(tempfile.mkdtemp(prefix="trainsvc-traj-pg-"))
    prefix = _as_postgres_user(datadir)
    port, pgdata = free_port(), datadir / "data"
    initdb = [str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust"]
    subprocess.run([*prefix, *initdb, "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -h 127.0.0.1 -k {datadir} -c max_connections=200"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(pgdata)]
    subprocess.run(
        [*pg_ctl, "-l", str(datadir / "log"), "-w", "-o", options, "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server_or_skip() -> Iterator[str]:
    """`postgres_server` for a pytest fixture: the test is skipped (with the reason and
    the install command) where the PostgreSQL binaries are missing."""
    import pytest

    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailableError as exc:
        pytest.skip(f"{exc}; .ci/run installs them")


def create_database(server_url: str) -> str:
    """A fresh, empty database on the server at ``server_url``; returns its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"


Answer = Callable[[dict[str, Any], str], str]
"""``answer(request_body, mode) -> content`` of a `LocalOpenAI` reply."""


def echo_answer(body: dict[str, Any], mode: str) -> str:
    """The default answer: ``echo: <last user message>``."""
    messages = body.get("messages", [])
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return f"echo: {user}"


class LocalOpenAI:
    """A local ``/v1/chat/completions`` endpoint on ``127.0.0.1`` (see the module doc).

    Attributes:
        url: the base URL to give ``openai.OpenAI(base_url=...)``.
        script: the next replies' modes, consumed one per request: ``ok`` (the default
            when empty), ``timeout`` (sleep ``delay`` seconds first), ``malformed``
            (passed to ``answer``), ``badjson`` (a non-JSON body), ``http500``.
        requests: every request body received, in order.
        usage: the ``usage`` object of every reply.
    """

    def __init__(self, answer: Answer = echo_answer) -> None:
        self.answer = answer
        self.script: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.delay = 1.0
        self.usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, body: dict[str, Any], mode: str) -> bytes:
        """The response body for a request in ``mode``."""
        if mode == "badjson":
            return b"{not json"
        doc = {
            "id": "chatcmpl-local",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "local"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": self.answer(body, mode)},
                }
            ],
            "usage": self.usage,
        }
        return json.dumps(doc).encode()

    def close(self) -> None:
        """Stops the server."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> LocalOpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (timeout tests) is not an error here


def _handler(endpoint: LocalOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with endpoint.lock:
                endpoint.requests.append(body)
                mode = endpoint.script.pop(0) if endpoint.script else "ok"
            if self.path != "/v1/chat/completions":
                self.send_response(404)
                self.end_headers()
                return
            if mode == "timeout":
                time.sleep(endpoint.delay)
            if mode == "http500":
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            raw = endpoint.reply(body, mode)
            with contextlib.suppress(OSError):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

    return Handler


__all__ = [
    "Answer",
    "LocalOpenAI",
    "PostgresUnavailableError",
    "create_database",
    "echo_answer",
    "free_port",
    "postgres_bindir",
    "postgres_server",
    "postgres_server_or_skip",
]
