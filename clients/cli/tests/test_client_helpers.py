"""Unit tests of the client's pure helpers (the service round trips are in tests/service)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from trainsvc_client import (
    config_message,
    decode_board,
    decode_field,
    decode_positions,
    kind_value,
    pb,
    run_name,
)


def test_config_message_types_known_fields_and_overrides_the_rest() -> None:
    msg = config_message("emergence", {"num_agents": 16, "env": {"evaporation": 0.1}})
    assert isinstance(msg, pb.EmergenceConfig)
    assert msg.num_agents == 16 and msg.HasField("num_agents")
    assert not msg.HasField("field_height")
    assert json.loads(msg.overrides["env.evaporation"]) == 0.1


def test_config_message_rejects_wrong_types_and_kinds() -> None:
    with pytest.raises(ValueError, match="num_agents"):
        config_message("emergence", {"num_agents": "many"})
    with pytest.raises(ValueError, match="kind"):
        kind_value("chess")


def test_decoders() -> None:
    payload = pb.EmergencePayload(
        num_agents=2,
        positions=struct.pack("<4H", 1, 2, 300, 4),
        field=bytes([0, 255]),
        field_shape=[1, 2],
        field_encoding=pb.FIELD_ENCODING_UINT8,
        field_min=0.0,
        field_max=2.0,
    )
    assert decode_positions(payload) == [(1, 2), (300, 4)]
    assert decode_field(payload) == [0.0, 2.0]
    f16 = pb.EmergencePayload(
        field=struct.pack("<2e", 0.5, -1.0), field_encoding=pb.FIELD_ENCODING_FLOAT16
    )
    assert decode_field(f16) == [0.5, -1.0]
    assert decode_board(pb.OthelloPayload(board=bytes(64))) == [0] * 64
    assert run_name("abc") == "runs/abc" and run_name("runs/abc") == "runs/abc"


def test_lora_config_message_types_paths_and_lora_fields() -> None:
    msg = config_message(
        "lora", {"model": "/m", "train_file": "/t.jsonl", "rank": 16, "optim": {"warmup_steps": 5}}
    )
    assert isinstance(msg, pb.LoraConfig)
    assert (msg.model, msg.train_file, msg.rank) == ("/m", "/t.jsonl", 16)
    assert not msg.validation_file and not msg.HasField("alpha")
    assert dict(msg.overrides) == {"optim.warmup_steps": "5"}


def test_cli_set_values_are_json_else_text_and_lora_paths_need_kind_lora(tmp_path: Path) -> None:
    import typer
    from trainsvc_client._cli import _lora_paths, _parse_sets

    assert _parse_sets(
        ["rank=16", "log.sample_prompt=hi there", 'lora.target_modules=["q_proj"]']
    ) == {
        "rank": 16,
        "log.sample_prompt": "hi there",
        "lora.target_modules": ["q_proj"],
    }
    with pytest.raises(typer.Exit):
        _parse_sets(["no-equals-sign"])
    paths = _lora_paths("lora", {"--model": Path("rel/model"), "--train": None})
    assert paths == {"model": str(Path.cwd() / "rel" / "model")}
    with pytest.raises(typer.Exit):
        _lora_paths("emergence", {"--model": tmp_path})
