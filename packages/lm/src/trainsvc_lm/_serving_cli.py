"""``trainsvc-lm serve``: a model directory behind the OpenAI-compatible endpoint.

Kept apart from ``_openai_app`` so that ``trainsvc-lm --help`` imports neither
Starlette nor JAX.
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from trainsvc_lm._errors import ConfigError


class _Say(Protocol):
    def say(self, text: str) -> None: ...

    def done(self, summary: dict[str, Any], text: str) -> None: ...


def add_serve_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``trainsvc-lm``'s subparsers."""
    serve: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve a model on an OpenAI-compatible endpoint",
        description="Serve MODEL_DIR (and optionally a PEFT adapter) at /v1/chat/completions "
        "and /v1/models, with continuous batching of concurrent requests. Needs the "
        "'serve' extra: pip install 'trainsvc-lm[serve]'.",
    )
    serve.add_argument("model_dir", metavar="MODEL_DIR")
    serve.add_argument("--adapter", metavar="DIR", help="a PEFT LoRA adapter directory")
    serve.add_argument(
        "--merge-adapter",
        action="store_true",
        help="fold the adapter into the weights once (faster steps) instead of applying it",
    )
    serve.add_argument("--name", help="the served model name (default: the directory's name)")
    serve.add_argument("--listen", default="127.0.0.1:8000", metavar="HOST:PORT")
    serve.add_argument(
        "--slots", type=int, default=8, metavar="N", help="requests generating at once (8)"
    )
    serve.add_argument(
        "--max-context",
        type=int,
        default=None,
        metavar="N",
        help="tokens per request: prompt bucket + new tokens (default: the model's, at most 4096)",
    )
    serve.add_argument("--json", action="store_true", help="print one JSON line when ready")
    return serve


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6) -> (host, port).

    Raises:
        ConfigError: (field ``listen``) not ``HOST:PORT`` with a port in 0..65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("listen", f"must be HOST:PORT (e.g. 127.0.0.1:8000), got {text!r}")
    return host.strip("[]"), int(port)


def run_serve(args: argparse.Namespace, out: _Say) -> int:
    """Load the model, then serve until SIGINT/SIGTERM; the exit code."""
    host, port = parse_listen(args.listen)
    try:
        from trainsvc_lm._openai_app import ServerThread, openai_app
    except ImportError as exc:
        raise ConfigError(
            "serve", f"needs the 'serve' extra: pip install 'trainsvc-lm[serve]' ({exc})"
        ) from None
    import signal
    import threading

    from trainsvc_lm._serving import Engine

    engine = Engine.from_dir(
        args.model_dir,
        adapter=args.adapter,
        merge_adapter=args.merge_adapter,
        name=args.name,
        slots=args.slots,
        max_context=args.max_context,
    )
    engine.warmup()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = ServerThread(openai_app({engine.name: engine}), host, port)
    try:
        out.done(
            {"status": "serving", "model": engine.name, "base_url": f"{server.url}/v1"},
            f"serving model {engine.name!r} at {server.url}/v1 (Ctrl-C stops)",
        )
        stop.wait()
    finally:
        server.close()
        engine.close()
    out.say("stopped")
    return 0
