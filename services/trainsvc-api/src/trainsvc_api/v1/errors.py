"""The wire form of trainsvc.v1's errors: ``google.rpc.Status`` with standard details.

A failed call carries, besides its gRPC code and message, a ``google.rpc.Status`` in
the ``grpc-status-details-bin`` trailer (the gRPC convention every language reads,
e.g. ``rpc_status.from_call`` in Python, ``status.FromError`` in Go, grpcurl):

- ``INVALID_ARGUMENT``: a ``google.rpc.BadRequest`` whose ``field_violations`` name
  the request field (``run.step_budget``) and say what was wrong with it;
- ``RESOURCE_EXHAUSTED``: a ``google.rpc.QuotaFailure`` naming the limit hit
  (``subject`` ``streams``: the service's cap on concurrent streams).

For clients older than these details, an ``INVALID_ARGUMENT`` also carries the field
in the ``trainsvc-field`` trailer (:data:`FIELD_METADATA_KEY`). The service builds its
errors with :func:`error_status` and clients read them with :func:`read_details`, so
the encoding is written once, here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2

# googleapis-common-protos ships .pyi files but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

FIELD_METADATA_KEY = "trainsvc-field"
"""Legacy trailer naming the bad field of an ``INVALID_ARGUMENT`` (kept for old clients)."""
DETAILS_METADATA_KEY = "grpc-status-details-bin"
"""The gRPC trailer holding the serialized ``google.rpc.Status``."""
MAX_MESSAGE_CHARS = 2000
"""Status message and trailers travel in HTTP/2 headers, which clients cap (8 KiB by
default): a longer message, say one echoing a 1 MB name, would reach the client as
RESOURCE_EXHAUSTED instead of the real error."""
MAX_FIELD_CHARS = 300


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: its path (``run.step_budget``) and what was wrong."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One limit a call ran into: what is limited (``streams``) and how."""

    subject: str
    description: str


@dataclass(frozen=True)
class ErrorDetails:
    """The standard details of a failed call, and the legacy field trailer."""

    field_violations: tuple[FieldViolation, ...] = ()
    quota_violations: tuple[QuotaViolation, ...] = ()
    legacy_field: str | None = None

    @property
    def field(self) -> str | None:
        """The (first) bad request field, from the details or else the legacy trailer."""
        if self.field_violations:
            return self.field_violations[0].field
        return self.legacy_field


def cut(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (cut; {len(text)} characters)"


def error_status(
    code: grpc.StatusCode,
    message: str,
    *,
    field_violations: Iterable[FieldViolation] = (),
    quota_violations: Iterable[QuotaViolation] = (),
) -> grpc.Status:
    """The status to abort a call with (``context.abort_with_status``).

    Field violations become a ``BadRequest`` detail and the first one's field also
    goes in the legacy ``trainsvc-field`` trailer; quota violations a ``QuotaFailure``.
    Texts are cut so that the trailers stay well under the clients' header limit.
    """
    fields = [
        FieldViolation(cut(_ascii(v.field), MAX_FIELD_CHARS), cut(v.description, MAX_FIELD_CHARS))
        for v in field_violations
    ]
    quotas = [
        QuotaViolation(cut(q.subject, MAX_FIELD_CHARS), cut(q.description, MAX_FIELD_CHARS))
        for q in quota_violations
    ]
    details: list[any_pb2.Any] = []
    if fields:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in fields
            ]
        )
        details.append(_pack(bad))
    if quotas:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=q.subject, description=q.description
                )
                for q in quotas
            ]
        )
        details.append(_pack(quota))
    status = rpc_status.to_status(
        status_pb2.Status(
            code=code.value[0], message=cut(message, MAX_MESSAGE_CHARS), details=details
        )
    )
    if not fields:
        return status
    return _Status(
        code=status.code,
        details=status.details,
        trailing_metadata=((FIELD_METADATA_KEY, fields[0].field), *status.trailing_metadata),
    )


def read_details(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> ErrorDetails:
    """The details of a failed call from its trailing metadata (sync or asyncio call).

    Unknown detail types are skipped, and a malformed status reads as no details: an
    error is always reported, with whatever could be read of it.
    """
    fields: list[FieldViolation] = []
    quotas: list[QuotaViolation] = []
    legacy: str | None = None
    for key, value in trailing_metadata or ():
        if key == FIELD_METADATA_KEY:
            legacy = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        elif key == DETAILS_METADATA_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a malformed trailer: report the error without details
                continue
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                quota = error_details_pb2.QuotaFailure()
                if detail.Unpack(bad):
                    fields += [FieldViolation(v.field, v.description) for v in bad.field_violations]
                elif detail.Unpack(quota):
                    quotas += [QuotaViolation(q.subject, q.description) for q in quota.violations]
    return ErrorDetails(tuple(fields), tuple(quotas), legacy)


def _ascii(field: str) -> str:
    """A field path in ASCII (``env.\\xe9`` for a map key ``env.é``): the legacy trailer is
    ASCII-only metadata, and both forms name the field the same way."""
    return field.encode("ascii", "backslashreplace").decode("ascii")


def _pack(message: error_details_pb2.BadRequest | error_details_pb2.QuotaFailure) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass(frozen=True)
class _Status(grpc.Status):
    """A ``grpc.Status`` (the interface ``abort_with_status`` takes)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]
