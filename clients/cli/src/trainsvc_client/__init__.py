"""trainsvc_client: a typed Python client for the trainsvc gRPC service.

>>> from trainsvc_client import connect
>>> with connect("127.0.0.1:50051") as client:          # doctest: +SKIP
...     run = client.create_run("emergence", step_budget=2000, seed=0)
...     for frame in client.stream_frames(run.name, max_rate_hz=10):
...         print(frame.step, dict(frame.metrics))

`trainsvc_client.aio` has the same client for asyncio.
"""

from trainsvc_api.v1 import trainsvc_pb2 as pb

from trainsvc_client._channel import DEFAULT_ADDRESS, DEFAULT_TIMEOUT_S, ServiceConfig, run_name
from trainsvc_client._client import Client, Stream, connect, connect_config
from trainsvc_client._config import KINDS, config_message, kind_name, kind_value
from trainsvc_client._errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TrainsvcError,
    UnauthenticatedError,
    UnavailableError,
)
from trainsvc_client._frames import decode_board, decode_field, decode_positions

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT_S",
    "KINDS",
    "AlreadyExistsError",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "ServiceConfig",
    "Stream",
    "TrainsvcError",
    "UnauthenticatedError",
    "UnavailableError",
    "config_message",
    "connect",
    "connect_config",
    "decode_board",
    "decode_field",
    "decode_positions",
    "kind_name",
    "kind_value",
    "pb",
    "run_name",
]
