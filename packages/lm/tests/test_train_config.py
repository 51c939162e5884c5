"""LMTrainConfig: validation by dotted field, TOML files, overrides, resume compatibility; log sinks."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from trainsvc_lm import ConfigError, LMTrainConfig, LoraConfig
from trainsvc_lm._train_config import field_rules
from trainsvc_lm._train_log import ConsoleLines, JsonlMetrics, WandbSink, format_value


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"optim.lr": 0.0}, "optim.lr"),
        ({"optim.lr": "fast"}, "optim.lr"),
        ({"optim.grad_accum": 0}, "optim.grad_accum"),
        ({"optim.grad_accum": 2.5}, "optim.grad_accum"),
        ({"data.batch_size": True}, "data.batch_size"),
        ({"data.truncation": "cut"}, "data.truncation"),
        ({"data.max_seq_len": 8}, "data.max_seq_len"),
        ({"train.compute_dtype": "int8"}, "train.compute_dtype"),
        ({"train.platform": "tpu"}, "train.platform"),
        ({"train.remat": "yes"}, "train.remat"),
        ({"log.checkpoint_dir": ""}, "log.checkpoint_dir"),
        ({"log.keep_last": 0}, "log.keep_last"),
        ({"log.wandb_mode": "cloud"}, "log.wandb_mode"),
        ({"lora.rank": 128}, "lora.rank"),
        ({"lora.target_modules": ["q_proj"]}, "lora.target_modules"),
        ({"optim.nesterov": True}, "optim.nesterov"),
        ({"model": 3}, "model"),
    ],
)
def test_bad_values_are_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        LMTrainConfig().replace(overrides)
    assert info.value.field == field


def test_unknown_section_and_nested_tables() -> None:
    with pytest.raises(ConfigError) as info:
        LMTrainConfig.from_dict({"optimizer": {}})
    assert info.value.field == "optimizer"
    config = LMTrainConfig.from_dict(
        {"optim": {"lr": 1, "grad_accum": 4.0}, "lora": {"rank": 8, "alpha": 16}}
    )
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.grad_accum == 4 and isinstance(config.optim.grad_accum, int)
    assert config.lora == LoraConfig(rank=8, alpha=16)


def test_toml_round_trip_and_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[model]\ndir = "models/base"\n[data]\ntrain = "t.jsonl"\nmax_seq_len = 256\n'
        '[lora]\nrank = 32\nalpha = 64\ntarget_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]\n'
        "[train]\nremat = true\n"
    )
    config = LMTrainConfig.from_toml(path)
    assert config.model.dir == "models/base" and config.data.max_seq_len == 256
    assert config.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert config.train.remat is True
    assert LMTrainConfig.from_dict(config.to_dict()) == config
    changed = config.replace({"optim.lr": 1e-4, "data.validation": "v.jsonl"})
    assert changed.optim.lr == 1e-4 and changed.data.validation == "v.jsonl"
    assert config.optim.lr == 2e-4  # frozen: the original is unchanged
    with pytest.raises(ConfigError) as info:
        config.replace({"lr": 1.0})
    assert info.value.field == "lr"
    (tmp_path / "bad.toml").write_text("[optim\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML") as bad:
        LMTrainConfig.from_toml(tmp_path / "bad.toml")
    assert bad.value.field == "config"


def test_mismatch_ignores_resumable_fields_and_log() -> None:
    base = LMTrainConfig()
    assert base.mismatch(base.replace({"train.steps": 5, "log.log_interval": 3})) is None
    assert base.mismatch(base.replace({"data.validation": "v.jsonl"})) is None
    assert base.mismatch(base.replace({"optim.warmup_steps": 3})) == "optim.warmup_steps"
    assert base.mismatch(base.replace({"lora.rank": 8, "lora.alpha": 16})) == "lora.rank"
    with pytest.raises(ConfigError) as info:
        base.require_inputs()
    assert info.value.field == "model.dir"


def test_every_plain_field_has_a_rule_and_a_default_it_accepts() -> None:
    rules = field_rules()
    assert "optim.lr" in rules and "log.sample_prompt" in rules
    for dotted, (default, rule) in rules.items():
        assert rule.convert(dotted, default) == default, dotted


def test_console_lines_are_key_value_with_eta() -> None:
    out = io.StringIO()
    console = ConsoleLines(100, stream=out, keys=("loss", "lr"))
    console.log(10, {"loss": 1.23456, "lr": 2e-4, "other": 1.0})
    console.log(20, {"loss": float("nan"), "lr": 1e-4})
    first, second = out.getvalue().splitlines()
    fields = dict(kv.split("=") for kv in first.split())
    assert fields["step"] == "10/100" and fields["loss"] == "1.2346" and fields["lr"] == "2.00e-04"
    assert "other" not in fields and "eta_s" in fields
    assert "loss=nan" in second
    assert format_value(3.0) == "3" and format_value(12345.678) == "12345.7"


def test_jsonl_appends_and_writes_non_finite_as_text(tmp_path: Path) -> None:
    import json

    sink = JsonlMetrics(tmp_path / "m.jsonl")
    sink.log(1, {"loss": float("inf")})
    sink.close()
    sink.log(2, {"loss": 0.5})
    sink.close()
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["metrics"]["loss"] == "inf" and records[1]["metrics"]["loss"] == 0.5


def test_wandb_sink_is_offline_resumable_and_passes_the_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: dict[str, Any] = {"logs": []}

    class Run:
        def log(self, values: dict[str, float], step: int) -> None:
            calls["logs"].append((step, values))

        def finish(self) -> None:
            calls["finished"] = True

    fake = types.ModuleType("wandb")
    fake.Settings = lambda **kw: kw  # type: ignore[attr-defined]
    fake.init = lambda **kw: calls.update(init=kw) or Run()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sink = WandbSink(
        "proj", "sft-cpu-20260101-0000", "abc123", directory=tmp_path / "wb", config={"a": 1}
    )
    sink.log(7, {"loss": 1.0, "bad": float("nan")})
    sink.close()
    init = calls["init"]
    assert init["mode"] == "offline" and init["id"] == "abc123" and init["resume"] == "allow"
    assert init["name"] == "sft-cpu-20260101-0000" and (tmp_path / "wb").is_dir()
    assert calls["logs"] == [(7, {"loss": 1.0})] and calls["finished"]
