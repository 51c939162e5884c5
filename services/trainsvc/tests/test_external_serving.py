"""Deployments on an external OpenAI-compatible server, through the service's endpoint
with the official `openai` client over real sockets.

vLLM and Ollama are not reachable here, so each is a local fake that speaks its HTTP
API on 127.0.0.1 (vLLM: ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, 404
for a LoRA it has not loaded, ``/v1/chat/completions`` with SSE; Ollama: ``/api/show``,
``/api/blobs``, ``/api/create`` and its ``/v1/chat/completions``). The registry, the
artifact store, the routing, the trajectory store and (in the last test) the
ModelService's SetTraffic over a gRPC socket are the real ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import trainsvc_trajectories as tt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from trainsvc._artifacts import ArtifactStore
from trainsvc._domain import InvalidArgumentError
from trainsvc._external_backend import Timeouts
from trainsvc._external_urls import parse_external_url
from trainsvc._metrics import Metrics
from trainsvc._model_registry import ModelRegistry
from trainsvc._models_servicer import ModelServicer
from trainsvc._openai_serving import CallRecorder, DeployedEngines, serving_app
from trainsvc._paths import InputRoots
from trainsvc._traffic import route
from trainsvc_api.v1 import models_pb2 as mpb
from trainsvc_api.v1 import models_pb2_grpc as mpb_grpc
from trainsvc_lm._openai_app import ServerThread

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "place_order",
            "parameters": {"type": "object", "properties": {"side": {"type": "string"}}},
        },
    }
]


# ------------------------------------------------------------------ the fakes


@dataclass
class FakeServer:
    """What a fake server was asked, and the models it serves."""

    served: set[str] = field(default_factory=set)
    loads: list[tuple[str, str]] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    chats: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    creates: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"message": message, **extra}}, status_code=status)


def _reply_text(body: dict[str, Any]) -> str:
    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return f"{body['model']} says: {user}"


async def _chat(state: FakeServer, http: Request, missing: Callable[[str], Response]) -> Response:
    """An OpenAI chat completion: the reply names the model; a tool call when offered."""
    body = await http.json()
    state.chats.append(body)
    if body["model"] not in state.served:
        return missing(body["model"])
    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if user == "slow":
        await asyncio.sleep(2)
    if user == "refuse":
        return _error(400, "temperature is too high for me", type="BadRequestError", code=400)
    text = _reply_text(body)
    call = None
    if body.get("tools"):
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "place_order", "arguments": json.dumps({"side": "buy"})},
        }
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    base = {"id": "chatcmpl-up", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
        if call:
            message["tool_calls"] = [call]
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}
        return JSONResponse(
            {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        )

    def chunk(delta: dict[str, Any] | None, reason: str | None = None, **kw: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": reason}]
        doc = {**base, "object": "chat.completion.chunk", "choices": choices, **kw}
        return f"data: {json.dumps(doc)}\n\n".encode()

    async def events() -> Any:
        yield chunk({"role": "assistant", "content": ""})
        if user == "break":  # the engine dies mid-stream
            yield b'data: {"error": {"message": "engine died", "code": 500}}\n\n'
            return
        if call:
            head = {**call, "function": {"name": "place_order", "arguments": ""}}
            yield chunk({"tool_calls": [{"index": 0, **head}]})
            for part in ('{"side": ', '"buy"}'):
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
        else:
            for word in text.split(" "):
                yield chunk({"content": word if word == text.split(" ")[0] else " " + word})
        yield chunk({}, "tool_calls" if call else "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield chunk(None, usage=usage)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def fake_vllm(state: FakeServer) -> Starlette:
    """vLLM's OpenAI server with runtime LoRA updating, as its HTTP API behaves."""

    def missing(model: str) -> Response:
        return JSONResponse(
            {"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError"}},
            status_code=404,
        )

    async def load(http: Request) -> Response:
        body = await http.json()
        name, path = body["lora_name"], body["lora_path"]
        state.loads.append((name, path))
        if name in state.served:
            return _error(400, f"The lora adapter '{name}' has already been loaded.", code=400)
        if not (Path(path) / "adapter_config.json").is_file():
            return _error(400, f"No adapter found for {path}", code=400)
        state.served.add(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(http: Request) -> Response:
        name = (await http.json())["lora_name"]
        state.unloads.append(name)
        if name not in state.served:
            return _error(404, f"The lora adapter '{name}' cannot be found.", code=404)
        state.served.discard(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def chat(http: Request) -> Response:
        return await _chat(state, http, missing)

    return Starlette(
        routes=[
            Route("/v1/load_lora_adapter", load, methods=["POST"]),
            Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


def fake_ollama(state: FakeServer) -> Starlette:
    """Ollama's model API and its OpenAI-compatible chat endpoint."""

    def missing(model: str) -> Response:
        message = f'model "{model}" not found, try pulling it first'
        return _error(404, message, type="api_error")

    async def show(http: Request) -> Response:
        name = (await http.json())["model"]
        if name not in state.served:
            return JSONResponse({"error": f"model '{name}' not found"}, status_code=404)
        return JSONResponse({"details": {"family": "llama"}})

    async def blob(http: Request) -> Response:
        digest = http.path_params["digest"]
        if http.method == "HEAD":
            return Response(status_code=200 if digest in state.blobs else 404)
        data = await http.body()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            return JSONResponse({"error": "digest mismatch"}, status_code=400)
        state.blobs[digest] = data
        return Response(status_code=201)

    async def create(http: Request) -> Response:
        body = await http.json()
        state.creates.append(body)
        if body["from"] not in state.served:
            return JSONResponse({"error": f"base model {body['from']} not found"}, status_code=404)
        if any(d not in state.blobs for d in body["adapters"].values()):
            return JSONResponse({"error": "missing blob"}, status_code=400)
        state.served.add(body["model"])
        return JSONResponse({"status": "success"})

    async def chat(http: Request) -> Response:
        return await _chat(state, http, missing)

    return Starlette(
        routes=[
            Route("/api/show", show, methods=["POST"]),
            Route("/api/blobs/{digest}", blob, methods=["HEAD", "POST"]),
            Route("/api/create", create, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


@pytest.fixture
def vllm() -> Iterator[FakeServer]:
    state = FakeServer(served={"base"})
    with ServerThread(fake_vllm(state)) as server:
        state.url = server.url
        yield state


@pytest.fixture
def ollama() -> Iterator[FakeServer]:
    state = FakeServer(served={"llama3.2:1b"})
    with ServerThread(fake_ollama(state)) as server:
        state.url = server.url
        yield state


# ---------------------------------------------------------------- the service


def _adapter(root: Path, seed: int) -> Path:
    """A PEFT adapter directory (its bytes differ per seed)."""
    root.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (root / "adapter_config.json").write_text(json.dumps({**config, "seed": seed}))
    (root / "adapter_model.safetensors").write_bytes(bytes([seed]) * 64)
    return root


@pytest.fixture
def service(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Versions 1 and 2 (adapters) and 3 (full) of `trader`, served by the endpoint."""
    registry = ModelRegistry(tmp_path / "models.db")
    store = ArtifactStore(tmp_path / "artifacts")
    for seed, kind in ((1, "adapter"), (2, "adapter"), (3, "full")):
        stored = store.put("trader", _adapter(tmp_path / f"src{seed}", seed))
        registry.register(
            "trader",
            base_model="base",
            artifact_uri=stored.uri,
            artifact_sha256=stored.sha256,
            artifact_kind=kind,
        )
    engines = DeployedEngines(
        registry,
        store,
        tmp_path / "cache",
        InputRoots.of([tmp_path]),
        external_timeouts=Timeouts(connect=1.0, read=1.0, load=5.0),
    )
    db = f"sqlite:///{tmp_path}/traj.db"
    recorder = tt.TrajectoryRecorder(db)
    server = ServerThread(serving_app(engines, CallRecorder(recorder)))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="local", max_retries=0, timeout=20)
    try:
        yield {
            "registry": registry,
            "engines": engines,
            "client": client,
            "db": db,
            "recorder": recorder,
            "cache": tmp_path / "cache",
            "src": tmp_path,
        }
    finally:
        server.close()
        engines.close()
        recorder.close()
        registry.close()


def _ask(client: openai.OpenAI, content: str = "buy or sell?", **kw: Any) -> Any:
    return client.chat.completions.create(
        model="trader", messages=[{"role": "user", "content": content}], **kw
    )


# ------------------------------------------------------------------- the tests


def test_vllm_loads_each_version_once_and_routes_sticky(
    service: dict[str, Any], vllm: FakeServer
) -> None:
    registry: ModelRegistry = service["registry"]
    client: openai.OpenAI = service["client"]
    split = {1: 0.5, 2: 0.5}
    registry.set_traffic("trader", split, external_base_url=f"vllm+{vllm.url}/v1")

    got: dict[str, str] = {}
    for user in (f"agent-{i}" for i in range(12)):
        first, again = (_ask(client, user=user) for _ in range(2))
        assert first.model == "trader"  # the name the client asked for
        text = first.choices[0].message.content
        assert text == again.choices[0].message.content  # sticky
        got[user] = text
        assert text == f"trader@v{route('trader', split, user)} says: buy or sell?"
    assert {t.split(" ")[0] for t in got.values()} == {"trader@v1", "trader@v2"}

    # Each adapter was loaded once, from its verified copy in the cache.
    assert sorted(vllm.loads) == [
        ("trader@v1", str(service["cache"] / "trader" / "1")),
        ("trader@v2", str(service["cache"] / "trader" / "2")),
    ]
    for version in (1, 2):
        cached = service["cache"] / "trader" / str(version) / "adapter_config.json"
        assert (
            cached.read_bytes()
            == (service["src"] / f"src{version}/adapter_config.json").read_bytes()
        )
    forwarded = vllm.chats[0]
    assert forwarded["user"].startswith("agent-") and forwarded["model"].startswith("trader@v")

    # A restarted vLLM forgets its adapters: the 404 makes trainsvc load it again.
    vllm.served.discard("trader@v1")
    user = next(u for u, t in got.items() if t.startswith("trader@v1"))
    assert _ask(client, user=user).choices[0].message.content == got[user]
    assert [name for name, _ in vllm.loads].count("trader@v1") == 2

    # A version that leaves the traffic is unloaded from the server.
    registry.set_traffic("trader", {2: 1.0})
    assert ("trader", 1) in service["engines"].unload_undeployed()
    assert vllm.unloads == ["trader@v1"] and "trader@v1" not in vllm.served


def test_streaming_tools_and_recording(service: dict[str, Any], vllm: FakeServer) -> None:
    registry: ModelRegistry = service["registry"]
    client: openai.OpenAI = service["client"]
    registry.set_traffic("trader", {2: 1.0}, external_base_url=f"vllm+{vllm.url}")
    headers = {"X-Trajectory-Id": "t-9", "X-Agent-Id": "agent-7"}

    whole = _ask(client, "price 10?", extra_headers=headers)
    assert whole.choices[0].message.content == "trader@v2 says: price 10?"
    assert whole.usage is not None and whole.usage.total_tokens == 12

    chunks = list(_ask(client, "price 12?", stream=True, extra_headers=headers))
    assert all(c.model == "trader" and c.usage is None for c in chunks)  # no usage: not asked
    assert all(c.choices for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "trader@v2 says: price 12?"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert vllm.chats[-1]["stream_options"] == {"include_usage": True}  # asked for recording

    with_usage = list(_ask(client, "x", stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.total_tokens == 12

    called = _ask(client, "go", tools=TOOLS)
    (call,) = called.choices[0].message.tool_calls or []
    assert called.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "place_order",
        {"side": "buy"},
    )
    streamed = list(_ask(client, "go", tools=TOOLS, stream=True))
    args = "".join(
        tc.function.arguments or ""
        for c in streamed
        for tc in (c.choices[0].delta.tool_calls or [])
        if tc.function is not None
    )
    assert json.loads(args) == {"side": "buy"}
    assert vllm.chats[-1]["tools"] == TOOLS

    base = service["client"].base_url
    http = client._client
    assert http.post(f"{base}trajectories/t-9/reward", json={"reward": 1.5}).status_code == 200
    assert http.post(f"{base}trajectories/t-9/end", json={"final_metrics": {"pnl": 2}}).json() == {
        "ok": True
    }
    service["recorder"].flush()
    with tt.Store(service["db"]) as store:
        (traj,) = [t for w in store.windows() for t in store.trajectories(w.window_id)]
    assert traj.status == "completed" and traj.agent_id == "agent-7"
    assert [c.model for c in traj.llm_calls] == ["trader@v2", "trader@v2"]
    assert [c.response for c in traj.llm_calls] == [
        "trader@v2 says: price 10?",
        "trader@v2 says: price 12?",
    ]
    assert [s.reward for s in traj.steps] == [None, 1.5]


def test_upstream_failures_are_openai_errors(service: dict[str, Any], vllm: FakeServer) -> None:
    registry: ModelRegistry = service["registry"]
    client: openai.OpenAI = service["client"]
    registry.set_traffic("trader", {1: 1.0}, external_base_url=f"vllm+{vllm.url}")

    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as timed_out:
        _ask(client, "slow")
    assert timed_out.value.status_code == 504 and vllm.url in timed_out.value.message
    assert time.monotonic() - start < 2.5
    with pytest.raises(openai.APIStatusError) as streamed_timeout:
        list(_ask(client, "slow", stream=True))
    assert streamed_timeout.value.status_code == 504

    with pytest.raises(openai.BadRequestError, match="temperature is too high"):
        _ask(client, "refuse")
    with pytest.raises(openai.APIError, match=r"error mid-stream.*engine died"):
        list(_ask(client, "break", stream=True))

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        dead = f"vllm+http://127.0.0.1:{probe.getsockname()[1]}"
    registry.set_traffic("trader", {1: 1.0}, external_base_url=dead)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as down:
            list(_ask(client, stream=True)) if stream else _ask(client)
        assert down.value.status_code == 502
        body: Any = down.value.body
        assert (
            body["code"] == "upstream_unavailable" and dead.removeprefix("vllm+") in body["message"]
        )

    with pytest.raises(InvalidArgumentError) as refused:  # refused when set, nothing saved
        registry.set_traffic("trader", {1: 1.0}, external_base_url="vllm://127.0.0.1:1")
    assert refused.value.field == "external_base_url"
    kept = registry.deployment("trader")
    assert kept is not None and kept.external_base_url.startswith("vllm+http://")
    with registry.transaction() as db:  # a URL stored by an older trainsvc, say
        db.execute("UPDATE deployments SET external_base_url = 'vllm://127.0.0.1:1'")
    with pytest.raises(openai.InternalServerError, match=r"external_base_url.*vllm\+http"):
        _ask(client)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host:1",
        "host:8000",
        "vllm+ftp://h",
        "ollama+http://",
        "http://h:x",
        "vllm+http://h?from=a",
    ],
)
def test_bad_external_urls_name_the_field(url: str) -> None:
    with pytest.raises(InvalidArgumentError) as bad:
        parse_external_url(url)
    assert bad.value.field == "external_base_url" and url in bad.value.description


def test_external_url_schemes() -> None:
    vllm = parse_external_url("vllm+https://gpu:8000/v1/")
    assert (vllm.kind, vllm.root, vllm.model_name("trader", 2)) == (
        "vllm",
        "https://gpu:8000",
        "trader@v2",
    )
    ollama = parse_external_url("ollama+http://box:11434?from=qwen2.5:7b")
    assert (ollama.kind, ollama.ollama_from, ollama.model_name("trader", 2)) == (
        "ollama",
        "qwen2.5:7b",
        "trader:v2",
    )
    assert parse_external_url("http://x/prefix").root == "http://x/prefix"


def test_ollama_creates_adapter_versions_from_its_base(
    service: dict[str, Any], ollama: FakeServer
) -> None:
    registry: ModelRegistry = service["registry"]
    client: openai.OpenAI = service["client"]
    registry.set_traffic("trader", {1: 1.0}, external_base_url=f"ollama+{ollama.url}")
    with pytest.raises(openai.APIStatusError, match="ollama create trader:v1") as missing:
        _ask(client)
    assert missing.value.status_code == 502

    registry.set_traffic(
        "trader", {1: 1.0}, external_base_url=f"ollama+{ollama.url}?from=llama3.2:1b"
    )
    assert _ask(client).choices[0].message.content == "trader:v1 says: buy or sell?"
    (created,) = ollama.creates
    src = service["src"] / "src1"
    assert created["model"] == "trader:v1" and created["from"] == "llama3.2:1b"
    assert created["adapters"] == {
        p.name: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()
    }
    streamed = "".join(c.choices[0].delta.content or "" for c in _ask(client, stream=True))
    assert streamed == "trader:v1 says: buy or sell?" and len(ollama.creates) == 1

    ollama.served.add("trader:v3")  # a full version made by hand in Ollama
    registry.set_traffic("trader", {3: 1.0})  # keeps the URL
    assert _ask(client).choices[0].message.content == "trader:v3 says: buy or sell?"


def test_generic_server_serves_version_names_as_they_are(
    service: dict[str, Any], vllm: FakeServer
) -> None:
    vllm.served.add("trader@v3")  # e.g. a server started with --served-model-name trader@v3
    service["registry"].set_traffic("trader", {3: 1.0}, external_base_url=vllm.url)
    reply = _ask(service["client"])
    assert reply.choices[0].message.content == "trader@v3 says: buy or sell?"
    assert vllm.loads == []
    vllm.served.discard("trader@v3")
    with pytest.raises(
        openai.APIStatusError, match=r"answered 404 for trader@v3.*does not exist"
    ) as gone:
        _ask(service["client"])
    assert gone.value.status_code == 502


def test_a_restarted_service_finds_its_adapter_already_loaded(
    service: dict[str, Any], vllm: FakeServer, tmp_path: Path
) -> None:
    service["registry"].set_traffic("trader", {2: 1.0}, external_base_url=f"vllm+{vllm.url}")
    assert _ask(service["client"]).choices[0].message.content.startswith("trader@v2")
    restarted = DeployedEngines(
        service["registry"],
        ArtifactStore(tmp_path / "artifacts"),
        tmp_path / "cache2",
        InputRoots.of([]),
    )
    backend = restarted.external("trader", 2, f"vllm+{vllm.url}")
    asyncio.run(backend.prepare())  # vLLM answers "already been loaded": that is success
    assert backend.ready and [name for name, _ in vllm.loads] == ["trader@v2", "trader@v2"]
    restarted.close()


def test_set_over_grpc_then_served(tmp_path: Path, vllm: FakeServer, serve_grpc: Any) -> None:
    """The URL travels the real path: ModelService.SetTraffic over a gRPC socket into
    the registry the endpoint reads."""
    registry = ModelRegistry(tmp_path / "models.db")
    store = ArtifactStore(tmp_path / "artifacts")
    inputs = InputRoots.of([tmp_path / "inputs"])
    servicer = ModelServicer(registry, store, inputs, Metrics(), lambda _ctx: "alice")
    channel = serve_grpc(
        lambda server: mpb_grpc.add_ModelServiceServicer_to_server(servicer, server)
    )
    engines = DeployedEngines(registry, store, tmp_path / "cache", inputs)
    endpoint = ServerThread(serving_app(engines, None))
    try:
        stub = mpb_grpc.ModelServiceStub(channel)
        adapter = _adapter(tmp_path / "inputs" / "v1", 1)
        stub.RegisterModelVersion(
            mpb.RegisterModelVersionRequest(
                model="models/trader", artifact_dir=str(adapter), artifact_kind="adapter"
            )
        )
        deployment = stub.SetTraffic(
            mpb.SetTrafficRequest(
                model="models/trader", traffic={1: 1.0}, external_base_url=f"vllm+{vllm.url}"
            )
        )
        assert deployment.external_base_url == f"vllm+{vllm.url}"
        client = openai.OpenAI(base_url=endpoint.url + "/v1", api_key="x", max_retries=0)
        assert _ask(client).choices[0].message.content == "trader@v1 says: buy or sell?"
        assert vllm.loads == [("trader@v1", str(tmp_path / "cache" / "trader" / "1"))]
    finally:
        endpoint.close()
        engines.close()
        registry.close()
