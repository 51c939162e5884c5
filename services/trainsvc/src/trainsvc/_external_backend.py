"""Deployments that generate on an external OpenAI-compatible server (vLLM, Ollama, ...).

A deployment's ``external_base_url`` names the server; its scheme says what kind it
is (`parse_external_url`):

- ``vllm+http://host:port`` (or ``vllm+https``): vLLM with runtime LoRA updating. An
  ``adapter`` version is loaded before its first request with
  ``POST /v1/load_lora_adapter {"lora_name": "trader@v2", "lora_path": <the verified
  artifact directory>}`` (once per version; "already loaded" counts as done; loaded
  again when the server answers 404 for it, e.g. after a restart) and asked for as
  model ``trader@v2``; a ``full`` version must be served under that name
  (``--served-model-name trader@v2``). `ExternalBackend.unload` sends
  ``/v1/unload_lora_adapter`` when a version leaves the traffic.
- ``ollama+http://host:11434``: Ollama's OpenAI-compatible API. Version 2 of
  ``trader`` is the Ollama model ``trader:v2``; it must exist (checked once with
  ``/api/show``), unless the URL names a base model (``?from=qwen2.5:7b``): then an
  ``adapter`` version that is missing is created from its artifact's files (pushed
  as blobs, ``POST /api/create {"model", "from", "adapters"}``).
- ``http://host:port`` (or ``https``): any OpenAI-compatible server that serves the
  version names as they are (``trader@v2``).

A trailing ``/v1`` in the URL is accepted and ignored. The client's request body is
forwarded as it came (only ``model`` replaced, and ``stream_options.include_usage``
set on streams so the usage can be recorded); the reply is passed back under the
name the client asked for. Errors are OpenAI error objects naming the server: 502
when it is unreachable or fails, 504 when it does not answer within the timeout, 400
when it refuses the request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx
from trainsvc_lm._openai_protocol import APIError, ChatRequest

from trainsvc._domain import InvalidArgumentError

log = logging.getLogger("trainsvc.external")

Kind = Literal["vllm", "ollama", "openai"]
KINDS: dict[str, Kind] = {
    "vllm+http": "vllm",
    "vllm+https": "vllm",
    "ollama+http": "ollama",
    "ollama+https": "ollama",
    "http": "openai",
    "https": "openai",
}
SHOWN = {"vllm": "vLLM", "ollama": "Ollama", "openai": "OpenAI-compatible"}


@dataclass(frozen=True)
class ExternalServer:
    """A parsed ``external_base_url``.

    Attributes:
        kind: ``vllm``, ``ollama`` or ``openai`` (a generic OpenAI-compatible server).
        root: ``http(s)://host:port[/prefix]`` without the kind and without ``/v1``.
        ollama_from: for Ollama, the base model that missing adapter versions are
            created from (``?from=``), or empty.
    """

    kind: Kind
    root: str
    ollama_from: str = ""

    def __str__(self) -> str:
        return f"the external {SHOWN[self.kind]} server at {self.root}"

    def model_name(self, model: str, version: int) -> str:
        """The name this server knows version ``version`` of ``model`` by."""
        return f"{model}:v{version}" if self.kind == "ollama" else f"{model}@v{version}"


def parse_external_url(url: str, field: str = "external_base_url") -> ExternalServer:
    """The server ``url`` names (see the module doc for the schemes).

    Raises:
        InvalidArgumentError: (naming ``field``) an unknown scheme, no host, or a
            query other than Ollama's ``from``.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise InvalidArgumentError(field, f"{url!r} is not a URL: {exc}") from None
    kind = KINDS.get(parts.scheme.lower())
    if kind is None:
        raise InvalidArgumentError(
            field,
            f"{url!r}: the scheme must be vllm+http(s):// (vLLM), ollama+http(s):// (Ollama) "
            "or http(s):// (an OpenAI-compatible server), got "
            f"{parts.scheme + '://' if parts.scheme else 'none'}",
        )
    if not parts.hostname:
        raise InvalidArgumentError(field, f"{url!r} has no host")
    query = parse_qs(parts.query, keep_blank_values=True)
    allowed = {"from"} if kind == "ollama" else set()
    if set(query) - allowed or parts.fragment:
        extra = ", ".join(sorted(set(query) - allowed)) or f"#{parts.fragment}"
        raise InvalidArgumentError(
            field,
            f"{url!r}: unexpected {extra} (only ollama+http(s) URLs take a query: ?from=BASE)",
        )
    scheme = parts.scheme.lower().rpartition("+")[2]
    path = parts.path.rstrip("/").removesuffix("/v1").rstrip("/")
    return ExternalServer(kind, f"{scheme}://{parts.netloc}{path}", (query.get("from") or [""])[0])


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for the external server.

    Attributes:
        connect: to connect.
        read: between two reads of a reply (a whole non-streamed reply; one chunk
            of a stream).
        load: for loading an adapter (``load_lora_adapter``, Ollama's create).
    """

    connect: float = 10.0
    read: float = 300.0
    load: float = 600.0

    def http(self, read: float | None = None) -> httpx.Timeout:
        """The httpx timeout (``read`` overrides the read timeout)."""
        return httpx.Timeout(read if read is not None else self.read, connect=self.connect)


def _error_text(response: httpx.Response) -> str:
    """The error message in an error response (OpenAI's, vLLM's or Ollama's shape)."""
    try:
        doc = json.loads(response.content)
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if doc.get("message"):
            return str(doc["message"])
    return json.dumps(doc)[:500]


@dataclass
class ExternalBackend:
    """One model version generated by an external server (a `trainsvc_lm` ChatBackend).

    Attributes:
        server: the server.
        model, version: the version it answers for.
        adapter_dir: for an ``adapter`` version, returns its verified local artifact
            directory (fetched on first call; run in a worker thread); None for ``full``.
        timeouts: how long to wait for the server.
    """

    server: ExternalServer
    model: str
    version: int
    adapter_dir: Callable[[], Path] | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    ready: bool = False
    _lock: asyncio.Lock | None = field(default=None, repr=False)

    @property
    def upstream_model(self) -> str:
        """The model name sent to the server."""
        return self.server.model_name(self.model, self.version)

    # ------------------------------------------------------------------ generation

    async def chat_completion(self, request: ChatRequest) -> dict[str, Any]:
        """The server's ``chat.completion`` for ``request``."""
        async with httpx.AsyncClient(timeout=self.timeouts.http()) as client:
            response = await self._send(client, request, stream=False)
            try:
                reply = json.loads(response.content)
            except ValueError:
                raise self._bad_reply(f"not JSON: {response.text[:200]!r}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
            raise self._bad_reply(f"not a chat.completion: {json.dumps(reply)[:200]}")
        return reply

    async def chat_completion_chunks(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """The server's ``chat.completion.chunk`` objects for ``request`` (its SSE stream)."""
        async with httpx.AsyncClient(timeout=self.timeouts.http()) as client:
            response = await self._send(client, request, stream=True)
            try:
                async for line in self._guard(response.aiter_lines()):
                    if not line.startswith("data:"):
                        continue  # blank lines, comments, event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        piece = json.loads(data)
                    except ValueError:
                        raise self._bad_reply(
                            f"an event that is not JSON: {data[:200]!r}"
                        ) from None
                    if isinstance(piece, dict) and "error" in piece:
                        raise self._bad_reply(f"an error mid-stream: {json.dumps(piece)[:300]}")
                    if not isinstance(piece, dict):
                        raise self._bad_reply(f"an event that is not an object: {data[:200]!r}")
                    yield piece
            finally:
                await response.aclose()

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        body = {**request.raw, "model": self.upstream_model}
        if stream:
            body["stream_options"] = {**(request.raw.get("stream_options") or {})}
            body["stream_options"]["include_usage"] = True
        return body

    async def _send(
        self, client: httpx.AsyncClient, request: ChatRequest, *, stream: bool
    ) -> httpx.Response:
        """The server's response (status 200) to the request; loads the version first."""
        for attempt in (0, 1):
            await self.prepare()
            sent = client.build_request(
                "POST", f"{self.server.root}/v1/chat/completions", json=self._body(request, stream)
            )
            response = await self._call(client.send(sent, stream=stream))
            if response.status_code == 200:
                return response
            await response.aread()
            await response.aclose()
            if response.status_code == 404 and attempt == 0 and self._reloadable():
                log.warning("%s lost %s: loading it again", self.server, self.upstream_model)
                self.ready = False
                continue
            raise self._refused(response)
        raise AssertionError("unreachable")

    def _reloadable(self) -> bool:
        return self.adapter_dir is not None and (
            self.server.kind == "vllm" or bool(self.server.ollama_from)
        )

    # --------------------------------------------------------------------- loading

    async def prepare(self) -> None:
        """Makes the server ready to answer for this version (once; see the module doc)."""
        if self.ready:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.ready:  # another request may have loaded it meanwhile
                await self._load()
                self.ready = True

    async def _load(self) -> None:
        if self.server.kind == "vllm" and self.adapter_dir is not None:
            await self._load_vllm(await asyncio.to_thread(self.adapter_dir))
        elif self.server.kind == "ollama":
            await self._check_ollama()

    async def _load_vllm(self, path: Path) -> None:
        body = {"lora_name": self.upstream_model, "lora_path": str(path)}
        async with httpx.AsyncClient(timeout=self.timeouts.http(self.timeouts.load)) as client:
            response = await self._call(
                client.post(f"{self.server.root}/v1/load_lora_adapter", json=body)
            )
        text = _error_text(response) if response.status_code != 200 else ""
        if response.status_code == 200 or "already been loaded" in text:
            log.info("%s loaded %s from %s", self.server, self.upstream_model, path)
            return
        hint = ""
        if response.status_code in (404, 405):
            hint = (
                " (start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; "
                "the adapter directory must be readable by the vLLM server)"
            )
        raise APIError(
            f"{self.server} could not load adapter {self.upstream_model} from {path}: "
            f"{response.status_code} {text}{hint}",
            status=502,
            type="server_error",
            code="upstream_load_failed",
        )

    async def _check_ollama(self) -> None:
        name = self.upstream_model
        async with httpx.AsyncClient(timeout=self.timeouts.http(self.timeouts.load)) as client:
            shown = await self._call(
                client.post(f"{self.server.root}/api/show", json={"model": name})
            )
            if shown.status_code == 200:
                return
            if shown.status_code != 404:
                raise self._refused(shown)
            if not (self.server.ollama_from and self.adapter_dir is not None):
                raise APIError(
                    f"{self.server} has no model {name}; create it (e.g. `ollama create {name}` "
                    "from a Modelfile with FROM <base> and ADAPTER <the version's adapter "
                    "directory>), or add ?from=<base model> to the deployment's "
                    "external_base_url to let trainsvc create adapter versions",
                    status=502,
                    type="server_error",
                    code="upstream_model_missing",
                )
            await self._create_ollama(client, await asyncio.to_thread(self.adapter_dir))

    async def _create_ollama(self, client: httpx.AsyncClient, path: Path) -> None:
        adapters: dict[str, str] = {}
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
            blob = f"{self.server.root}/api/blobs/{digest}"
            if (await self._call(client.head(blob))).status_code != 200:
                pushed = await self._call(client.post(blob, content=file.read_bytes()))
                if pushed.status_code not in (200, 201):
                    raise self._refused(pushed)
            adapters[file.relative_to(path).as_posix()] = digest
        body = {
            "model": self.upstream_model,
            "from": self.server.ollama_from,
            "adapters": adapters,
            "stream": False,
        }
        created = await self._call(client.post(f"{self.server.root}/api/create", json=body))
        if created.status_code != 200:
            raise self._refused(created)
        log.info("%s created %s from %s", self.server, self.upstream_model, path)

    def unload(self) -> None:
        """Unloads a loaded vLLM adapter (best effort: failures are logged)."""
        if not (self.ready and self.server.kind == "vllm" and self.adapter_dir is not None):
            return
        self.ready = False
        try:
            response = httpx.post(
                f"{self.server.root}/v1/unload_lora_adapter",
                json={"lora_name": self.upstream_model},
                timeout=self.timeouts.http(),
            )
            if response.status_code != 200:
                log.warning(
                    "%s did not unload %s: %s",
                    self.server,
                    self.upstream_model,
                    _error_text(response),
                )
        except httpx.HTTPError as exc:
            log.warning("%s did not unload %s: %s", self.server, self.upstream_model, exc)

    # ---------------------------------------------------------------------- errors

    async def _call(self, sent: Any) -> httpx.Response:
        """Awaits an httpx call, its transport errors as OpenAI error objects."""
        try:
            response: httpx.Response = await sent
        except httpx.TimeoutException as exc:
            raise self._timeout(exc) from None
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return response

    async def _guard(self, lines: AsyncIterator[str]) -> AsyncIterator[str]:
        try:
            async for line in lines:
                yield line
        except httpx.TimeoutException as exc:
            raise self._timeout(exc) from None
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    def _timeout(self, exc: Exception) -> APIError:
        return APIError(
            f"{self.server} did not answer for {self.upstream_model} in time "
            f"({type(exc).__name__}; connect {self.timeouts.connect:g} s, read "
            f"{self.timeouts.read:g} s)",
            status=504,
            type="server_error",
            code="upstream_timeout",
        )

    def _unreachable(self, exc: Exception) -> APIError:
        return APIError(
            f"{self.server} is unreachable for {self.upstream_model}: "
            f"{type(exc).__name__}: {exc or 'no detail'}",
            status=502,
            type="server_error",
            code="upstream_unavailable",
        )

    def _refused(self, response: httpx.Response) -> APIError:
        text = _error_text(response)
        if response.status_code in (400, 422):
            return APIError(
                f"{self.server} refused the request for {self.upstream_model}: {text}",
                status=400,
                code="upstream_rejected",
            )
        return APIError(
            f"{self.server} answered {response.status_code} for {self.upstream_model} "
            f"({response.request.method} {response.request.url.path}): {text}",
            status=502,
            type="server_error",
            code="upstream_error",
        )

    def _bad_reply(self, what: str) -> APIError:
        return APIError(
            f"{self.server} sent {what}", status=502, type="server_error", code="upstream_error"
        )


__all__ = ["ExternalBackend", "ExternalServer", "Timeouts", "parse_external_url"]
