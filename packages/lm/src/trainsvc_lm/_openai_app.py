"""An OpenAI-compatible HTTP endpoint over `Engine`: an ASGI app (Starlette) and its server.

`openai_app` serves ``POST /v1/chat/completions`` (streaming and not, tool
calls), ``GET /v1/models`` and ``GET /v1/models/{model}`` for a mapping of model
names to engines (read on every request, so a service may add and remove
engines while it runs). `ServerThread` runs it with uvicorn on a socket in a
background thread (tests, benches, ``trainsvc-lm serve``, a service that embeds it). Needs the ``serve`` extra
(``pip install 'trainsvc-lm[serve]'``).

A request may also be answered by a `ChatBackend` instead of an engine (what
``select`` returns): something that produces the OpenAI response objects itself,
e.g. a proxy to another OpenAI-compatible server. The app then passes its
``chat.completion`` (or its chunks, as server-sent events) through under the
requested model name and reports it to ``on_completion`` like its own.
"""

from __future__ import annotations

import inspect
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from trainsvc_lm import _openai_protocol as proto
from trainsvc_lm._errors import TemplateError
from trainsvc_lm._openai_protocol import APIError, ChatRequest
from trainsvc_lm._serving import Delta, Engine, Finished

log = logging.getLogger("trainsvc_lm.serve")

OnCompletion = Callable[
    [dict[str, Any], dict[str, Any], float, dict[str, str]], Awaitable[None] | None
]
"""``(request body, response, latency in seconds, request headers)``; sync or async."""


@runtime_checkable
class ChatBackend(Protocol):
    """Answers chat requests without an `Engine` (e.g. a proxy to another server).

    Both methods raise `APIError` for a request they cannot answer (the app sends
    it as the error object; during a stream, as an ``error`` event).
    """

    async def chat_completion(self, request: ChatRequest) -> dict[str, Any]:
        """The ``chat.completion`` object answering ``request``."""
        ...

    def chat_completion_chunks(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """The ``chat.completion.chunk`` objects answering a ``stream=true`` request,
        with a last usage-only chunk (no choices) when the usage is known; closing the
        iterator early abandons the request."""
        ...


Select = Callable[[ChatRequest, dict[str, str]], Engine | ChatBackend | None]
"""Picks the engine (or backend) for a request (None: the model is unknown)."""

FINGERPRINT = "fp_trainsvc_lm"


def _prompt(engine: Engine, request: ChatRequest) -> tuple[list[int], int]:
    """The rendered prompt's tokens and the number of new tokens to allow."""
    try:
        text = engine.tokenizer.render_chat(
            request.messages, tools=request.tools, add_generation_prompt=True
        )
    except TemplateError as exc:
        raise APIError(
            f"the model's chat template refused the messages: {exc}", param="messages"
        ) from None
    prompt = engine.tokenizer.encode(text)
    room = engine.room(len(prompt))
    if room == 0:
        raise APIError(
            f"the messages take {len(prompt)} tokens; this model's context is "
            f"{engine.max_context} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    wanted = request.max_tokens if request.max_tokens is not None else room
    if wanted > room:
        raise APIError(
            f"{request.max_tokens_param}={wanted} is too large: the messages take {len(prompt)} "
            f"tokens and the context is {engine.max_context}; at most {room}",
            param=request.max_tokens_param,
            code="context_length_exceeded",
        )
    return prompt, wanted


def _reply(
    engine: Engine, request: ChatRequest, finished: Finished
) -> tuple[str | None, list[dict[str, Any]], str]:
    """Content, tool calls and finish reason of a finished generation."""
    if finished.error is not None:
        raise APIError(
            f"generation failed: {finished.error}", status=500, type="server_error", param=None
        )
    calls: list[dict[str, Any]] = []
    content: str | None = finished.text
    if request.tools_enabled and request.tools:
        names = [t["function"]["name"] for t in request.tools]
        choice = request.tool_choice
        if isinstance(choice, dict):
            names = [choice["function"]["name"]]
        parsed, calls = proto.parse_tool_calls(engine.config.family, finished.raw_text, names)
        if calls:
            content = parsed
    reason = "tool_calls" if calls else finished.finish_reason
    return content, calls, reason


def openai_app(
    engines_by_model_name: Mapping[str, Engine],
    *,
    on_completion: OnCompletion | None = None,
    select: Select | None = None,
    expose_headers: Sequence[str] = (),
) -> Starlette:
    """The ASGI app of the OpenAI chat-completions API for these engines.

    Args:
        engines_by_model_name: served model name -> engine; read on every request.
        on_completion: called after every successful completion with the request body,
            the response (a ``chat.completion`` object, also for streamed requests,
            which it assembles), the latency in seconds and the request's headers
            (lower-case names); for recording trajectories. Its failures are logged,
            never sent to the client.
        select: picks the engine of a request from the parsed request and its
            headers (for traffic splits); default: ``engines_by_model_name[model]``.
        expose_headers: names (lower-case) of entries that ``select`` adds to the headers
            dict and that the response carries as headers too (e.g. which version served).
    """

    def pick(request: ChatRequest, headers: dict[str, str]) -> Engine | ChatBackend:
        engine = select(request, headers) if select else engines_by_model_name.get(request.model)
        if engine is None:
            raise proto.model_not_found(request.model)
        return engine

    async def report(
        body: dict[str, Any], response: dict[str, Any], start: float, headers: dict[str, str]
    ) -> None:
        if on_completion is None:
            return
        try:
            result = on_completion(body, response, time.perf_counter() - start, headers)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_completion failed")

    async def chat_completions(http: Request) -> Response:
        headers = {k.lower(): v for k, v in http.headers.items()}
        response = await answer(http, headers)
        for name in expose_headers:
            if name in headers:
                response.headers[name] = headers[name]
        return response

    async def answer(http: Request, headers: dict[str, str]) -> Response:
        start = time.perf_counter()
        try:
            body = json.loads(await http.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(f"the request body is not valid JSON: {exc}") from None
        request = proto.parse_chat_request(body)
        engine = pick(request, headers)
        if isinstance(engine, ChatBackend):
            return await backend_reply(engine, request, body, start, headers)
        prompt, max_new = _prompt(engine, request)
        sampling = request.sampling(max_new)
        ident, created = proto.completion_id(), proto.now()
        events = engine.stream(prompt, sampling, stop=request.stop)

        def response_for(finished: Finished) -> dict[str, Any]:
            content, calls, reason = _reply(engine, request, finished)
            usage = proto.usage_dict(finished.usage.prompt_tokens, finished.usage.completion_tokens)
            return proto.completion_response(
                id=ident,
                model=request.model,
                created=created,
                content=content,
                tool_calls=calls,
                finish_reason=reason,
                usage=usage,
                fingerprint=FINGERPRINT,
            )

        if not request.stream:
            finished = None
            try:
                async for event in events:
                    if isinstance(event, Finished):
                        finished = event
            finally:
                await events.aclose()  # cancels the request if this task was cancelled
            assert finished is not None
            response = response_for(finished)
            await report(body, response, start, headers)
            return JSONResponse(response)

        def piece(**kw: Any) -> bytes:
            return proto.sse(
                proto.chunk(
                    id=ident,
                    model=request.model,
                    created=created,
                    fingerprint=FINGERPRINT,
                    include_usage=request.include_usage,
                    **kw,
                )
            )

        async def chunks() -> AsyncIterator[bytes]:
            # A client that disconnects ends this generator: the request is cancelled.
            try:
                # With tools on, the reply may be a tool call: hold the text until the end.
                hold = request.tools_enabled
                yield piece(delta={"role": "assistant", "content": "", "refusal": None})
                async for event in events:
                    if isinstance(event, Delta):
                        if event.text and not hold:
                            yield piece(delta={"content": event.text})
                        continue
                    try:
                        response = response_for(event)
                    except APIError as exc:
                        yield proto.sse(exc.body())
                        return
                    message = response["choices"][0]["message"]
                    if hold and message["content"]:
                        yield piece(delta={"content": message["content"]})
                    if "tool_calls" in message:
                        yield piece(
                            delta={"tool_calls": proto.tool_call_deltas(message["tool_calls"])}
                        )
                    yield piece(delta={}, finish_reason=response["choices"][0]["finish_reason"])
                    if request.include_usage:
                        yield piece(delta=None, usage=response["usage"])
                    yield proto.DONE
                    await report(body, response, start, headers)
            finally:
                await events.aclose()

        return StreamingResponse(
            chunks(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def backend_reply(
        backend: ChatBackend,
        request: ChatRequest,
        body: dict[str, Any],
        start: float,
        headers: dict[str, str],
    ) -> Response:
        if not request.stream:
            response = {**await backend.chat_completion(request), "model": request.model}
            await report(body, response, start, headers)
            return JSONResponse(response)
        source = backend.chat_completion_chunks(request)
        try:  # the first chunk before the 200: a backend that fails at once gets its status
            first = await anext(source)
        except StopAsyncIteration:
            raise APIError(
                "the backend ended the stream before its first chunk",
                status=502,
                type="server_error",
            ) from None
        except BaseException:
            await _close(source)
            raise

        def shown(piece: dict[str, Any]) -> dict[str, Any] | None:
            """The chunk as the client asked for it (usage only with include_usage)."""
            if request.include_usage:
                return {**piece, "model": request.model}
            if not piece.get("choices"):
                return None
            return {k: v for k, v in piece.items() if k != "usage"} | {"model": request.model}

        async def chunks() -> AsyncIterator[bytes]:
            seen = [first]
            try:
                if (out := shown(first)) is not None:
                    yield proto.sse(out)
                async for piece in source:
                    seen.append(piece)
                    if (out := shown(piece)) is not None:
                        yield proto.sse(out)
            except APIError as exc:
                yield proto.sse(exc.body())
                return
            finally:
                await _close(source)
            yield proto.DONE
            response = proto.completion_from_chunks(seen)
            await report(body, {**response, "model": request.model}, start, headers)

        return StreamingResponse(
            chunks(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def model_card(name: str, engine: Engine) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": engine.created, "owned_by": "trainsvc"}

    async def list_models(http: Request) -> Response:
        data = [model_card(name, engine) for name, engine in engines_by_model_name.items()]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(http: Request) -> Response:
        name = http.path_params["model"]
        engine = engines_by_model_name.get(name)
        if engine is None:
            raise proto.model_not_found(name)
        return JSONResponse(model_card(name, engine))

    async def api_error(http: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(http: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = APIError(
            f"{http.method} {http.url.path}: {exc.detail}",
            status=exc.status_code,
            code="not_found" if exc.status_code == 404 else None,
        )
        return JSONResponse(error.body(), status_code=exc.status_code)

    async def server_error(http: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        error = APIError(f"internal error: {type(exc).__name__}", status=500, type="server_error")
        return JSONResponse(error.body(), status_code=500)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        ],
        exception_handlers={
            APIError: api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )


async def _close(source: AsyncIterator[Any]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


def _server(app: Any) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    return uvicorn.Server(config)


class ServerThread:
    """An app served by uvicorn on ``host:port`` (0: any free port) in a daemon thread.

    Attributes:
        url: ``http://host:port`` of the listening socket (the OpenAI client's
            ``base_url`` is ``url + "/v1"``).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it, a keep-alive response written
        # as headers then body waits for the client's delayed ACK (~40 ms) each time.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        self.host, self.port = host, int(self._socket.getsockname()[1])
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{shown}:{self.port}"
        self._server = _server(app)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join()
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
