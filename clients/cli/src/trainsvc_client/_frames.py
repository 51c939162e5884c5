"""Decode the packed per-kind payloads of `Frame` messages (pure Python)."""

from __future__ import annotations

import struct
import sys
from array import array

from trainsvc_api.v1 import trainsvc_pb2 as pb


def decode_positions(payload: pb.EmergencePayload) -> list[tuple[int, int]]:
    """Return the agents' (row, col) cells from the packed little-endian uint16 pairs."""
    values = array("H")
    values.frombytes(payload.positions)
    if sys.byteorder != "little":
        values.byteswap()
    return [(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]


def decode_field(payload: pb.EmergencePayload) -> list[float]:
    """Return the field's values, row-major (shape ``payload.field_shape``)."""
    if payload.field_encoding == pb.FIELD_ENCODING_FLOAT16:
        count = len(payload.field) // 2
        return list(struct.unpack(f"<{count}e", payload.field[: 2 * count]))
    lo, hi = payload.field_min, payload.field_max
    scale = (hi - lo) / 255.0
    return [lo + b * scale for b in payload.field]


def decode_board(payload: pb.OthelloPayload) -> list[int]:
    """Return the 64 squares (0 empty, 1 black, 2 white), a1..h8 row-major."""
    return list(payload.board)
