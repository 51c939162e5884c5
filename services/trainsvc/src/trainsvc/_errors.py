"""The one place that maps domain exceptions to gRPC status codes."""

from __future__ import annotations

import grpc

from trainsvc._domain import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    ServiceError,
    UnavailableError,
)

FIELD_METADATA_KEY = "trainsvc-field"
"""Trailing metadata naming the bad field of an INVALID_ARGUMENT."""

_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(exc: ServiceError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """Return (status code, details, trailing metadata) for a domain error."""
    code = grpc.StatusCode.INTERNAL
    for cls in type(exc).__mro__:
        if cls in _CODES:
            code = _CODES[cls]
            break
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, InvalidArgumentError):
        field = exc.field.encode("ascii", "backslashreplace").decode("ascii")  # metadata: ASCII
        trailing = ((FIELD_METADATA_KEY, _cut(field, MAX_FIELD_CHARS)),)
    return code, _cut(str(exc), MAX_DETAILS_CHARS), trailing


MAX_DETAILS_CHARS = 2000
"""Status details and trailing metadata travel in HTTP/2 headers, which clients cap (8 KiB
by default): a longer message, say one echoing a 1 MB name, would reach the client as
RESOURCE_EXHAUSTED instead of the real error."""
MAX_FIELD_CHARS = 300


def _cut(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (cut; {len(text)} characters)"
