"""trainsvc_dashboard: the live dashboard for trainsvc.

A WebSocket bridge (`Bridge`, command `trainsvc-dashboard`) that connects to
the trainsvc gRPC service, serves the built web page at ``/`` and speaks the
dashboard protocol at ``/ws``: JSON text for control and events, compact
binary frames (`encode_frame` / `decode_frame`) at each client's own rate.
"""

from trainsvc_client import ServiceConfig

from trainsvc_dashboard._frames import (
    HEADER_SIZE,
    MAGIC,
    PAYLOAD_EMERGENCE,
    PAYLOAD_LM,
    PAYLOAD_NONE,
    PAYLOAD_OTHELLO,
    DecodedFrame,
    decode_frame,
    encode_frame,
)
from trainsvc_dashboard._hub import DEFAULT_RATE_HZ, MAX_RATE_HZ, PROTOCOL_VERSION
from trainsvc_dashboard._presets import PRESETS, Preset
from trainsvc_dashboard._server import STATIC_DIR, Bridge, LoginRequiredError, is_loopback

__all__ = [
    "DEFAULT_RATE_HZ",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RATE_HZ",
    "PAYLOAD_EMERGENCE",
    "PAYLOAD_LM",
    "PAYLOAD_NONE",
    "PAYLOAD_OTHELLO",
    "PRESETS",
    "PROTOCOL_VERSION",
    "STATIC_DIR",
    "Bridge",
    "DecodedFrame",
    "LoginRequiredError",
    "Preset",
    "ServiceConfig",
    "decode_frame",
    "encode_frame",
    "is_loopback",
]
