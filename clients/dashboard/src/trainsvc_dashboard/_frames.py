"""The compact binary frame messages the bridge sends to browsers.

Layout (version 1, little-endian; the package README is the reference)::

    offset size  field
    0      4     magic b"TSF1"
    4      1     version (1)
    5      1     payload kind: 0 none, 1 emergence, 2 othello, 3 lm
    6      2     metric count M
    8      4     feed id (which selection of the client the frame belongs to)
    12     4     reserved (0)
    16     8     step (float64)
    24     8     sequence (float64; the worker's frame counter)
    32     8     time (float64, Unix seconds)
    40     ...   M metrics: u8 name length L, L bytes of UTF-8 name, float64 value
    then the payload:
      emergence: u32 num_agents, u16 world_height, u16 world_width,
                 u16 field_height, u16 field_width, u16 field_channels,
                 u8 field_encoding (1 uint8, 2 float16), u8 reserved,
                 f32 field_min, f32 field_max, u32 field byte count,
                 num_agents * (u16 row, u16 col), then the field bytes
      othello:   u8 to_move, 3 reserved bytes, f64 games, 64 board bytes
      lm:        f64 sample_step (0: no sample yet), u32 prompt byte count P,
                 u32 completion byte count C, P bytes of UTF-8 prompt,
                 C bytes of UTF-8 completion (each cut to SAMPLE_TEXT_BYTES,
                 the prompt keeping its end, at a character boundary)

The field and positions are the service's own packed bytes, passed through
untouched: one frame of a 64x64 field with 64 agents is about 4.5 KiB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache

from trainsvc_api.v1 import trainsvc_pb2 as pb

MAGIC = b"TSF1"
VERSION = 1
PAYLOAD_NONE = 0
PAYLOAD_EMERGENCE = 1
PAYLOAD_OTHELLO = 2
PAYLOAD_LM = 3
SAMPLE_TEXT_BYTES = 8192
"""The most bytes of a sample's prompt or completion a frame carries."""

_HEADER = struct.Struct("<4sBBHIIddd")
_METRIC_VALUE = struct.Struct("<d")
_EMERGENCE = struct.Struct("<IHHHHHBxffI")
_OTHELLO = struct.Struct("<B3xd")
_LM = struct.Struct("<dII")
_U16_MAX = 0xFFFF

HEADER_SIZE = _HEADER.size
"""Bytes before the metrics block (40)."""


@lru_cache(maxsize=1024)
def _metric_prefix(name: str) -> bytes:
    raw = name.encode("utf-8")[:255]
    return bytes((len(raw),)) + raw


def _u16(value: int) -> int:
    return max(0, min(_U16_MAX, int(value)))


def _utf8(text: str, *, keep_end: bool = False) -> bytes:
    """`text` as UTF-8, cut to `SAMPLE_TEXT_BYTES` without splitting a character."""
    raw = text.encode("utf-8")
    if len(raw) <= SAMPLE_TEXT_BYTES:
        return raw
    cut = raw[-SAMPLE_TEXT_BYTES:] if keep_end else raw[:SAMPLE_TEXT_BYTES]
    return cut.decode("utf-8", errors="ignore").encode("utf-8")


def encode_frame(frame: pb.Frame, feed: int) -> bytes:
    """Encode a service frame as one binary WebSocket message.

    Args:
        frame: the frame as `StreamFrames` delivered it.
        feed: the feed id the browser matches against its current selection.

    Returns:
        The message bytes (see the module docstring for the layout).
    """
    parts: list[bytes] = []
    metrics = sorted(frame.metrics.items())
    for name, value in metrics:
        parts.append(_metric_prefix(name))
        parts.append(_METRIC_VALUE.pack(value))
    kind = PAYLOAD_NONE
    which = frame.WhichOneof("payload")
    if which == "emergence":
        kind = PAYLOAD_EMERGENCE
        e = frame.emergence
        shape = list(e.field_shape)
        height, width = [*shape, 0, 0][:2]
        channels = shape[2] if len(shape) > 2 else 1
        n = min(e.num_agents, len(e.positions) // 4)
        parts.append(
            _EMERGENCE.pack(
                n,
                _u16(e.world_height),
                _u16(e.world_width),
                _u16(height),
                _u16(width),
                _u16(channels),
                e.field_encoding,
                e.field_min,
                e.field_max,
                len(e.field),
            )
        )
        parts.append(e.positions[: n * 4])
        parts.append(e.field)
    elif which == "othello":
        kind = PAYLOAD_OTHELLO
        o = frame.othello
        parts.append(_OTHELLO.pack(o.to_move & 0xFF, float(o.games)))
        parts.append(o.board[:64].ljust(64, b"\0"))
    elif which == "lm":
        kind = PAYLOAD_LM
        prompt = _utf8(frame.lm.sample_prompt, keep_end=True)
        completion = _utf8(frame.lm.sample_completion)
        parts.append(_LM.pack(float(frame.lm.sample_step), len(prompt), len(completion)))
        parts += [prompt, completion]
    time_s = frame.time.seconds + frame.time.nanos / 1e9
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        kind,
        min(len(metrics), _U16_MAX),
        feed & 0xFFFFFFFF,
        0,
        float(frame.step),
        float(frame.sequence),
        time_s,
    )
    return header + b"".join(parts)


@dataclass
class DecodedFrame:
    """A binary frame message decoded back (for Python clients, tests and benchmarks)."""

    feed: int
    kind: int
    step: int
    sequence: int
    time: float
    metrics: dict[str, float] = field(default_factory=dict)
    num_agents: int = 0
    positions: bytes = b""
    field_shape: tuple[int, int, int] = (0, 0, 0)
    field_encoding: int = 0
    field: bytes = b""
    board: bytes = b""
    games: int = 0
    sample_step: int = 0
    sample_prompt: str = ""
    sample_completion: str = ""


def decode_frame(data: bytes) -> DecodedFrame:
    """Decode one binary frame message.

    Raises:
        ValueError: not a version-1 trainsvc frame, or truncated.
    """
    if len(data) < HEADER_SIZE or data[:4] != MAGIC:
        raise ValueError("frame: not a trainsvc frame (magic b'TSF1' expected)")
    try:
        _, version, kind, count, feed, _, step, seq, time_s = _HEADER.unpack_from(data)
        if version != VERSION:
            raise ValueError(f"frame: unsupported version {version}; allowed: {VERSION}")
        out = DecodedFrame(feed=feed, kind=kind, step=int(step), sequence=int(seq), time=time_s)
        off = HEADER_SIZE
        for _ in range(count):
            length = data[off]
            name = data[off + 1 : off + 1 + length].decode("utf-8")
            (out.metrics[name],) = _METRIC_VALUE.unpack_from(data, off + 1 + length)
            off += 1 + length + 8
        if kind == PAYLOAD_EMERGENCE:
            n, _wh, _ww, fh, fw, fc, enc, _lo, _hi, nbytes = _EMERGENCE.unpack_from(data, off)
            off += _EMERGENCE.size
            out.num_agents = n
            out.positions = data[off : off + 4 * n]
            off += 4 * n
            out.field_shape = (fh, fw, fc)
            out.field_encoding = enc
            out.field = data[off : off + nbytes]
        elif kind == PAYLOAD_OTHELLO:
            _to_move, games = _OTHELLO.unpack_from(data, off)
            out.games = int(games)
            out.board = data[off + _OTHELLO.size : off + _OTHELLO.size + 64]
        elif kind == PAYLOAD_LM:
            step_f, n_prompt, n_completion = _LM.unpack_from(data, off)
            off += _LM.size
            if off + n_prompt + n_completion > len(data):
                raise ValueError(f"frame: truncated ({len(data)} bytes): lm sample text")
            out.sample_step = int(step_f)
            out.sample_prompt = data[off : off + n_prompt].decode("utf-8")
            off += n_prompt
            out.sample_completion = data[off : off + n_completion].decode("utf-8")
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"frame: truncated ({len(data)} bytes): {exc}") from None
    return out
