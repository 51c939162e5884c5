"""The service's OpenAI-compatible endpoint: deployments routed by traffic, calls recorded.

`trainsvc serve --openai-listen HOST:PORT` serves trainsvc-lm's OpenAI app
(``/v1/chat/completions``, ``/v1/models``) for the model registry's deployments:

- **Routing.** A request for model ``trader`` goes to a version of its deployment's
  traffic split (`trainsvc._traffic.route`), sticky per routing key: the request's
  ``user``, else its ``X-Agent-Id`` header; a request with neither is routed at
  random. The response's ``X-Trainsvc-Version`` header names the version that
  answered. Each version's engine is loaded on first use from its artifact (fetched
  into the cache and verified against the registered SHA-256): a ``full`` artifact
  is a model directory, an ``adapter`` one a PEFT adapter on its ``base_model``
  directory (which must lie in one of the service's ``--input-dir`` roots).
- **External servers.** A deployment with an ``external_base_url`` is routed the
  same way, but the chosen version generates on that server (vLLM with LoRA
  hot-loading, Ollama, or any OpenAI-compatible server; see
  `trainsvc._external_backend`): trainsvc forwards the request and passes the
  reply (or its stream) back, and records it like its own.
- **Recording.** A request with an ``X-Trajectory-Id: T`` header is recorded into the
  trajectory store without code changes in the agent: the first call opens a
  trajectory (agent ``X-Agent-Id`` or ``user``, window ``X-Window-Id``, scenario
  ``X-Scenario-Id``; ``T`` kept as ``metadata.external_id``), each call is a step with
  its LLM call (model ``trader@v2``), and ``POST /v1/trajectories/T/reward``
  ``{"reward": r}`` completes the open step with its reward;
  ``POST /v1/trajectories/T/end`` ``{"reward": r?, "final_metrics": {...}}`` ends the
  trajectory. A trajectory the service never ended is marked abandoned on the
  recorder's next start.
"""

from __future__ import annotations

import hmac
import math
import random
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from trainsvc_lm import APIError, ChatRequest, Engine, model_not_found, openai_app

from trainsvc._artifacts import ArtifactStore
from trainsvc._domain import InvalidArgumentError
from trainsvc._external_backend import ExternalBackend, Timeouts, parse_external_url
from trainsvc._model_registry import ModelRegistry
from trainsvc._paths import InputRoots
from trainsvc._traffic import route

VERSION_HEADER = "x-trainsvc-version"
"""Set by `DeployedEngines.select` in the request's header dict for `on_completion`, and
sent back as a response header: the version that answered (for agents' own A/B books)."""


class DeployedEngines:
    """The engines of deployed model versions, loaded from their artifacts on first use."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: ArtifactStore,
        cache_dir: Path,
        inputs: InputRoots,
        *,
        slots: int = 8,
        external_timeouts: Timeouts | None = None,
    ) -> None:
        self.registry, self.store, self.cache_dir, self.inputs = registry, store, cache_dir, inputs
        self.slots = slots
        self.external_timeouts = external_timeouts or Timeouts()
        self._engines: dict[tuple[str, int], Engine] = {}
        self._external: dict[tuple[str, str, int], ExternalBackend] = {}
        self._artifacts: dict[tuple[str, int], Path] = {}
        self._lock = threading.RLock()
        self._fetch_lock = threading.Lock()
        self._rng = random.Random()

    def artifact(self, model: str, version: int) -> Path:
        """The local, verified copy of the version's artifact (fetched on first use)."""
        with self._fetch_lock:
            found = self._artifacts.get((model, version))
            if found is not None:
                return found
            v = self.registry.version(model, version)
            local = self.store.fetch(
                v.artifact_uri,
                self.cache_dir / model / str(version),
                expected_sha256=v.artifact_sha256,
            )
            self._artifacts[(model, version)] = local
            return local

    def engine(self, model: str, version: int) -> Engine:
        """The engine of ``model`` version ``version`` (loaded and cached on first use)."""
        with self._lock:
            found = self._engines.get((model, version))
            if found is not None:
                return found
            v = self.registry.version(model, version)
            local = self.artifact(model, version)
            if v.artifact_kind == "full":
                engine = Engine.from_dir(local, name=model, slots=self.slots)
            else:
                base = self.inputs.resolve(v.base_model, "base_model", expect="dir")
                engine = Engine.from_dir(base, adapter=local, name=model, slots=self.slots)
            self._engines[(model, version)] = engine
            return engine

    def external(self, model: str, version: int, url: str) -> ExternalBackend:
        """The backend of ``model`` version ``version`` on the server at ``url`` (cached).

        Raises:
            APIError: 500 naming the deployment when ``url`` is not a valid
                external server URL.
        """
        key = (url, model, version)
        with self._lock:
            found = self._external.get(key)
            if found is not None:
                return found
            try:
                server = parse_external_url(url)
            except InvalidArgumentError as exc:
                raise APIError(
                    f"the deployment of {model} is misconfigured: {exc.field}: {exc.description}",
                    status=500,
                    type="server_error",
                    code="bad_deployment",
                ) from None
            adapter = self.registry.version(model, version).artifact_kind == "adapter"
            backend = ExternalBackend(
                server,
                model,
                version,
                adapter_dir=(lambda: self.artifact(model, version)) if adapter else None,
                timeouts=self.external_timeouts,
            )
            self._external[key] = backend
            return backend

    def select(self, request: ChatRequest, headers: dict[str, str]) -> Engine | ExternalBackend:
        """The engine (or external server) for ``request`` by its model's traffic split
        (see the module doc).

        Raises:
            APIError: 404 for a model with no deployment.
        """
        deployment = self.registry.deployment(request.model)
        if deployment is None or not deployment.traffic:
            raise model_not_found(request.model)
        key = request.user or headers.get("x-agent-id")
        version = route(request.model, deployment.traffic, key, fallback=self._rng.random())
        headers[VERSION_HEADER] = str(version)
        if deployment.external_base_url:
            return self.external(request.model, version, deployment.external_base_url)
        return self.engine(request.model, version)

    def unload_undeployed(self) -> list[tuple[str, int]]:
        """Closes the engines of versions that no deployment routes to any more, and
        unloads their adapters from external servers (vLLM's ``unload_lora_adapter``)."""
        deployments = self.registry.deployments()
        live = {(d.model, v) for d in deployments for v in d.traffic}
        live_external = {(d.external_base_url, d.model, v) for d in deployments for v in d.traffic}
        with self._lock:
            gone = [key for key in self._engines if key not in live]
            for key in gone:
                self._engines.pop(key).close()
            left = [key for key in self._external if key not in live_external]
            backends = [self._external.pop(key) for key in left]
        for backend in backends:
            backend.unload()
        return gone + [(model, version) for _, model, version in left]

    def close(self) -> None:
        """Closes every engine (adapters stay loaded on external servers)."""
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()
            self._external.clear()


class _Card:
    """What ``/v1/models`` shows of a deployment (its creation time)."""

    def __init__(self, created: float) -> None:
        self.created = int(created)


class _DeployedModels(Mapping[str, Any]):
    """The deployments as the app's model list (no engine is loaded to list them)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def __getitem__(self, name: str) -> Any:
        deployment = self.registry.deployment(name)
        if deployment is None:
            raise KeyError(name)
        return _Card(deployment.update_time)

    def __iter__(self) -> Iterator[str]:
        return iter([d.model for d in self.registry.deployments()])

    def __len__(self) -> int:
        return len(self.registry.deployments())


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        return "".join(str(p.get("text", "")) for p in value if isinstance(p, Mapping))
    return None


class CallRecorder:
    """Records the endpoint's calls into a `TrajectoryRecorder` (see the module doc)."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self._open: dict[str, Any] = {}
        self._stepping: set[str] = set()
        self._lock = threading.Lock()

    def on_completion(
        self,
        body: dict[str, Any],
        response: dict[str, Any],
        latency: float,
        headers: dict[str, str],
    ) -> None:
        """Records one completed call when its request names a trajectory."""
        external = headers.get("x-trajectory-id")
        if not external:
            return
        messages = list(body.get("messages") or [])
        system = next(
            (_text(m.get("content")) for m in messages if m.get("role") == "system"), None
        )
        user = next(
            (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), None
        )
        message = response["choices"][0]["message"]
        usage = response.get("usage") or {}
        model = f"{body.get('model')}@v{headers.get(VERSION_HEADER, '?')}"
        rec = self.recorder
        with self._lock:
            handle = self._open.get(external)
            if handle is None:
                agent = headers.get("x-agent-id") or body.get("user") or "anonymous"
                handle = rec.start_trajectory(
                    agent,
                    window_id=headers.get("x-window-id"),
                    scenario_id=headers.get("x-scenario-id"),
                    metadata={"external_id": external, "via": "trainsvc openai endpoint"},
                )
                self._open[external] = handle
            if external in self._stepping:
                rec.complete_step(handle, None, None)
            rec.start_step(handle, {"messages": messages})
            self._stepping.add(external)
            rec.log_llm_call(
                handle,
                model=model,
                system_prompt=system,
                user_prompt=user,
                response=message.get("content") or "",
                temperature=body.get("temperature"),
                max_tokens=body.get("max_tokens") or body.get("max_completion_tokens"),
                purpose="chat",
                action_type="tool_calls" if message.get("tool_calls") else "message",
                latency=latency,
                tokens=usage or None,
                messages=messages,
            )

    def reward(self, external: str, reward: object) -> None:
        """Completes the trajectory's open step with ``reward``.

        Raises:
            InvalidArgumentError: an unknown trajectory, no open step, or a reward that
                is not a finite number.
        """
        value = _finite_reward(reward)
        with self._lock:
            handle = self._handle(external)
            if external not in self._stepping:
                raise InvalidArgumentError(
                    "trajectory", f"{external!r} has no call waiting for a reward"
                )
            self.recorder.complete_step(handle, None, value)
            self._stepping.discard(external)

    def end(self, external: str, reward: object, final_metrics: Mapping[str, Any] | None) -> None:
        """Completes any open step (with ``reward``) and ends the trajectory."""
        value = None if reward is None else _finite_reward(reward)
        with self._lock:
            handle = self._handle(external)
            if external in self._stepping:
                self.recorder.complete_step(handle, None, value)
                self._stepping.discard(external)
            self.recorder.end_trajectory(handle, dict(final_metrics or {}))
            del self._open[external]

    def _handle(self, external: str) -> Any:
        handle = self._open.get(external)
        if handle is None:
            raise InvalidArgumentError(
                "trajectory", f"{external!r} is not an open trajectory of this endpoint"
            )
        return handle


def _finite_reward(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgumentError("reward", f"must be a finite number, got {value!r}")
    return float(value)


def serving_app(
    engines: DeployedEngines, calls: CallRecorder | None, *, token: str | None = None
) -> Any:
    """The endpoint: trainsvc-lm's OpenAI app plus the trajectory reward/end routes.

    With ``token``, every request needs ``Authorization: Bearer <token>`` (what the
    OpenAI client sends for ``api_key=<token>``); others get a 401 error object.
    """
    inner = openai_app(
        _DeployedModels(engines.registry),
        select=engines.select,
        on_completion=calls.on_completion if calls is not None else None,
        expose_headers=(VERSION_HEADER,),
    )

    async def json_body(http: Request) -> dict[str, Any]:
        try:
            body = await http.json()
        except ValueError:
            raise APIError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object")
        return body

    def recording() -> CallRecorder:
        if calls is None:
            raise APIError(
                "this endpoint does not record trajectories (start the service with "
                "--trajectory-db)",
                status=404,
            )
        return calls

    async def reward(http: Request) -> Response:
        body = await json_body(http)
        try:
            recording().reward(http.path_params["tid"], body.get("reward"))
        except InvalidArgumentError as exc:
            raise APIError(exc.description, param=exc.field) from None
        return JSONResponse({"ok": True})

    async def end(http: Request) -> Response:
        body = await json_body(http)
        try:
            recording().end(http.path_params["tid"], body.get("reward"), body.get("final_metrics"))
        except InvalidArgumentError as exc:
            raise APIError(exc.description, param=exc.field) from None
        return JSONResponse({"ok": True})

    async def api_error(http: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return JSONResponse(exc.body(), status_code=exc.status)

    app = Starlette(
        routes=[
            Route("/v1/trajectories/{tid}/reward", reward, methods=["POST"]),
            Route("/v1/trajectories/{tid}/end", end, methods=["POST"]),
            Mount("/", app=inner),
        ],
        exception_handlers={APIError: api_error},
    )
    return app if token is None else _BearerAuth(app, token)


class _BearerAuth:
    """ASGI middleware: HTTP requests need ``Authorization: Bearer <token>`` (else 401)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                error = APIError(
                    "missing or wrong bearer token (use the service's token as api_key)",
                    status=401,
                    type="authentication_error",
                    code="invalid_api_key",
                )
                await JSONResponse(error.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["VERSION_HEADER", "CallRecorder", "DeployedEngines", "serving_app"]
