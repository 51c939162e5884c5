"""The one place that maps domain exceptions to gRPC statuses (with their rich details).

The wire encoding (``google.rpc.Status`` with ``BadRequest`` / ``QuotaFailure``
details, and the legacy ``trainsvc-field`` trailer) is the API's own:
`trainsvc_api.v1.errors`. This module only chooses the code and the details.
"""

from __future__ import annotations

import grpc
from trainsvc_api.v1.errors import FieldViolation, QuotaViolation, error_status

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

_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(exc: ServiceError) -> grpc.Status:
    """The status a call that raised ``exc`` ends with (``context.abort_with_status``)."""
    code = grpc.StatusCode.INTERNAL
    for cls in type(exc).__mro__:
        if cls in _CODES:
            code = _CODES[cls]
            break
    fields: tuple[FieldViolation, ...] = ()
    quotas: tuple[QuotaViolation, ...] = ()
    if isinstance(exc, InvalidArgumentError):
        fields = (FieldViolation(exc.field, exc.description),)
    elif isinstance(exc, ResourceExhaustedError):
        quotas = (QuotaViolation(exc.subject, str(exc)),)
    return error_status(code, str(exc), field_violations=fields, quota_violations=quotas)
