"""The binary frame codec: what the bridge sends is what a client decodes."""

from __future__ import annotations

import struct

import pytest
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_dashboard import (
    HEADER_SIZE,
    PAYLOAD_EMERGENCE,
    PAYLOAD_LM,
    PAYLOAD_NONE,
    PAYLOAD_OTHELLO,
    decode_frame,
    encode_frame,
)


def _emergence_frame(h: int = 64, w: int = 64, agents: int = 32) -> pb.Frame:
    positions = b"".join(struct.pack("<HH", i % h, (3 * i) % w) for i in range(agents))
    field = bytes((x * 7 + y) % 256 for y in range(h) for x in range(w))
    frame = pb.Frame(
        run="runs/a",
        step=1234,
        sequence=99,
        metrics={"reward": 0.5, "tracker/emergence": 1e-3},
        emergence=pb.EmergencePayload(
            num_agents=agents,
            positions=positions,
            world_height=h,
            world_width=w,
            field=field,
            field_shape=[h, w],
            field_encoding=pb.FIELD_ENCODING_UINT8,
            field_min=-1.0,
            field_max=2.0,
        ),
    )
    frame.time.FromMilliseconds(1_700_000_000_250)
    return frame


def test_emergence_round_trip_keeps_every_field() -> None:
    frame = _emergence_frame()
    data = encode_frame(frame, feed=7)
    got = decode_frame(data)
    assert got.kind == PAYLOAD_EMERGENCE
    assert (got.feed, got.step, got.sequence) == (7, 1234, 99)
    assert got.time == pytest.approx(1_700_000_000.25)
    assert got.metrics == dict(frame.metrics)
    assert got.num_agents == 32
    assert got.positions == frame.emergence.positions
    assert got.field_shape == (64, 64, 1)
    assert got.field == frame.emergence.field


def test_emergence_frame_is_compact() -> None:
    # 64x64 uint8 field + 32 agents: the bytes themselves plus a small header,
    # far below a JSON array of floats (which would be ~6 bytes per cell).
    data = encode_frame(_emergence_frame(), feed=1)
    payload = 64 * 64 + 32 * 4
    assert payload < len(data) < payload + 200


def test_othello_round_trip() -> None:
    board = bytes([0, 1, 2, 0] * 16)
    frame = pb.Frame(
        run="runs/o",
        step=5,
        sequence=6,
        othello=pb.OthelloPayload(board=board, to_move=2, games=5),
    )
    got = decode_frame(encode_frame(frame, feed=3))
    assert got.kind == PAYLOAD_OTHELLO
    assert got.board == board
    assert got.games == 5


def test_lm_round_trip_keeps_the_sample_text() -> None:
    frame = pb.Frame(
        run="runs/l",
        step=40,
        sequence=8,
        metrics={"train_loss": 2.5, "learning_rate": 1e-4},
        lm=pb.LMPayload(
            sample_prompt="<|user|>Wetter in Zürich?",
            sample_completion="<b>°C</b> ☀",
            sample_step=30,
        ),
    )
    got = decode_frame(encode_frame(frame, feed=2))
    assert got.kind == PAYLOAD_LM
    assert (got.step, got.sample_step) == (40, 30)
    assert got.sample_prompt == "<|user|>Wetter in Zürich?"
    assert got.sample_completion == "<b>°C</b> ☀"
    assert got.metrics == {"train_loss": 2.5, "learning_rate": 1e-4}


def test_lm_sample_text_is_cut_at_a_character_boundary() -> None:
    from trainsvc_dashboard._frames import SAMPLE_TEXT_BYTES

    long_prompt = "ä" * SAMPLE_TEXT_BYTES + "END"  # 2 bytes per ä: over the limit
    frame = pb.Frame(
        lm=pb.LMPayload(sample_prompt=long_prompt, sample_completion="€" * SAMPLE_TEXT_BYTES)
    )
    got = decode_frame(encode_frame(frame, feed=0))
    assert got.sample_prompt.endswith("äEND")  # the prompt keeps its end (the question)
    assert len(got.sample_prompt.encode()) <= SAMPLE_TEXT_BYTES
    assert set(got.sample_completion) == {"€"}
    assert len(got.sample_completion.encode()) > SAMPLE_TEXT_BYTES - 3


def test_frame_without_payload_has_only_header_and_metrics() -> None:
    data = encode_frame(pb.Frame(run="runs/x", step=1), feed=0)
    assert len(data) == HEADER_SIZE
    assert decode_frame(data).kind == PAYLOAD_NONE


def test_positions_are_clipped_to_num_agents() -> None:
    frame = _emergence_frame(agents=4)
    frame.emergence.num_agents = 10  # claims more agents than it carries bytes for
    got = decode_frame(encode_frame(frame, feed=0))
    assert got.num_agents == 4


@pytest.mark.parametrize("data", [b"", b"XXXX" + bytes(60), b"TSF1\x02" + bytes(60)])
def test_malformed_frames_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="frame"):
        decode_frame(data)
