"""Client-side exceptions: one class per gRPC status the service uses.

The details (bad fields, the limit hit) are read from the call's
``google.rpc.Status`` by the API's own `trainsvc_api.v1.errors`, which the
service writes with; the sync and asyncio clients both raise through
:func:`from_rpc_error`.
"""

from __future__ import annotations

import grpc
from trainsvc_api.v1.errors import FieldViolation, QuotaViolation, read_details


class TrainsvcError(Exception):
    """A call to trainsvc failed.

    Attributes:
        code: the gRPC status code.
        details: the service's message.
        field: for INVALID_ARGUMENT, the request field that was wrong (e.g.
            ``run.step_budget``), else ``None``.
        field_violations: every bad field with what was wrong with it (the
            status's ``google.rpc.BadRequest``); empty for other errors.
        quota_violations: the limits hit (``google.rpc.QuotaFailure``), for
            RESOURCE_EXHAUSTED.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        field: str | None = None,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        quota_violations: tuple[QuotaViolation, ...] = (),
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field = field
        self.field_violations = field_violations
        self.quota_violations = quota_violations


class InvalidArgumentError(TrainsvcError):
    """The request was malformed; ``field`` names what was wrong."""


class NotFoundError(TrainsvcError):
    """The run or checkpoint does not exist."""


class AlreadyExistsError(TrainsvcError):
    """A run with the requested id exists already."""


class FailedPreconditionError(TrainsvcError):
    """The run's state forbids the transition (e.g. pausing a completed run)."""


class ResourceExhaustedError(TrainsvcError):
    """A limit of the service was reached (e.g. its cap on concurrent streams); retry later.

    ``quota_violations`` names the limit (``subject`` ``streams``).
    """


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
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def from_rpc_error(err: grpc.RpcError) -> TrainsvcError:
    """Convert a failed call (a sync ``grpc.RpcError`` or an ``grpc.aio.AioRpcError``)."""
    code_fn = getattr(err, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(err, "details", None)
    details = (details_fn() if callable(details_fn) else None) or str(err)
    trailing_fn = getattr(err, "trailing_metadata", None)
    rich = read_details(trailing_fn() if callable(trailing_fn) else None)
    return _BY_CODE.get(code, TrainsvcError)(
        code,
        details,
        rich.field,
        field_violations=rich.field_violations,
        quota_violations=rich.quota_violations,
    )
