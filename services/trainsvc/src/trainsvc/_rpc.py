"""Running one unary RPC: domain errors to statuses, timing into the RPC histogram.

Every servicer's unary methods go through `unary_call`, so a `ServiceError`
becomes its status (`_errors.status_of`, with rich details), anything else an
INTERNAL status that points at the log, and each call's duration lands in
``trainsvc_rpc_seconds{method, code}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from trainsvc._domain import ServiceError
from trainsvc._errors import status_of
from trainsvc._metrics import Metrics

log = logging.getLogger("trainsvc.rpc")
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]


async def unary_call(
    metrics: Metrics,
    method: str,
    context: Context,
    fn: Callable[[float | None], T],
    *,
    inline: bool = False,
    executor: Executor | None = None,
) -> T:
    """Run ``fn(remaining deadline)``: on ``executor`` (default: the loop's), or ``inline``
    on the loop for reads that take microseconds (a thread hop would cost more)."""
    started = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        if inline:
            return fn(context.time_remaining())
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, fn, context.time_remaining())
    except ServiceError as exc:
        status = status_of(exc)
        code = status.code
        await context.abort_with_status(status)
        raise  # unreachable: abort raises
    except Exception:
        code = grpc.StatusCode.INTERNAL
        log.exception("%s failed", method)
        await context.abort(code, f"internal error in {method}; see the service log")
        raise
    finally:
        metrics.rpc_seconds.labels(method, code.name).observe(time.perf_counter() - started)


__all__ = ["Context", "unary_call"]
