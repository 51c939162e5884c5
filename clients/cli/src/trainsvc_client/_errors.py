"""Client-side exceptions: one class per gRPC status the service uses."""

from __future__ import annotations

import grpc


class TrainsvcError(Exception):
    """A call to trainsvc failed.

    Attributes:
        code: the gRPC status code.
        details: the service's message.
        field: for INVALID_ARGUMENT, the request field that was wrong (e.g.
            ``run.step_budget``), else ``None``.
    """

    def __init__(self, code: grpc.StatusCode, details: str, field: str | None = None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field = field


class InvalidArgumentError(TrainsvcError):
    """The request was malformed; ``field`` names what was wrong."""


class NotFoundError(TrainsvcError):
    """The run or checkpoint does not exist."""


class AlreadyExistsError(TrainsvcError):
    """A run with the requested id exists already."""


class FailedPreconditionError(TrainsvcError):
    """The run's state forbids the transition (e.g. pausing a completed run)."""


class UnauthenticatedError(TrainsvcError):
    """No bearer token, or a wrong one."""


class UnavailableError(TrainsvcError):
    """The service could not be reached (after retries)."""


class DeadlineExceededError(TrainsvcError):
    """The call did not finish within its deadline."""


_BY_CODE: dict[grpc.StatusCode, type[TrainsvcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}

FIELD_METADATA_KEY = "trainsvc-field"


def from_rpc_error(err: grpc.RpcError) -> TrainsvcError:
    """Convert a grpc.RpcError (which is also a grpc.Call) to a TrainsvcError."""
    code_fn = getattr(err, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(err, "details", None)
    details = (details_fn() if callable(details_fn) else None) or str(err)
    field = None
    trailing_fn = getattr(err, "trailing_metadata", None)
    for key, value in (trailing_fn() if callable(trailing_fn) else None) or ():
        if key == FIELD_METADATA_KEY:
            field = str(value)
    return _BY_CODE.get(code, TrainsvcError)(code, details, field)
