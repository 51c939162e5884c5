"""Config validation: every bad value names its dotted field and the allowed range."""

from __future__ import annotations

import pytest
from trainsvc_trainer import Config, ConfigError, field_specs


def test_defaults_round_trip() -> None:
    cfg = Config.from_dict({})
    assert cfg == Config()
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.log.checkpoint_dir == "./checkpoints" and cfg.log.keep_last == 5
    assert cfg.log.frame_interval == 10


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"train": {"total_steps": 0}}, "train.total_steps", "in [1, 1000000000]"),
        ({"train": {"learning_rate": 2.0}}, "train.learning_rate", "in [1e-07, 1]"),
        ({"train": {"gamma": float("nan")}}, "train.gamma", "finite"),
        ({"env": {"n_agents": 1}}, "env.n_agents", "in [2, 1024]"),
        ({"env": {"height": "big"}}, "env.height", "integer"),
        ({"env": {"height": 8.5}}, "env.height", "integer"),
        ({"env": {"n_envs": True}}, "env.n_envs", "integer"),
        ({"log": {"save_interval": -1}}, "log.save_interval", "in [0, 1000000000]"),
        ({"log": {"frame_dtype": "int8"}}, "log.frame_dtype", "'float32', 'uint8'"),
        ({"log": {"progress": "yes"}}, "log.progress", "true or false"),
        ({"log": {"checkpoint_dir": None}}, "log.checkpoint_dir", "null"),
        ({"log": {"keep_every": 0}}, "log.keep_every", "in [1, 1000000000] or null"),
        ({"log": {"keep_every": "5"}}, "log.keep_every", "integer"),
        ({"log": {"compression": "gzip"}}, "log.compression", "one of 'zstd' or null"),
        ({"log": {"compression": True}}, "log.compression", "string"),
        ({"train": {"totl_steps": 5}}, "train.totl_steps", "unknown field"),
        ({"trian": {}}, "trian", "unknown section"),
        ({"train": 5}, "train", "table"),
    ],
)
def test_bad_values_name_the_field(data: dict, field: str, words: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert info.value.field == field
    assert field in str(info.value) and words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_keep_every_and_compression_are_optional_log_fields() -> None:
    cfg = Config()
    assert cfg.log.keep_every is None and cfg.log.compression is None
    set_ = cfg.replace({"log.keep_every": 10.0, "log.compression": "zstd"})
    assert set_.log.keep_every == 10 and type(set_.log.keep_every) is int
    assert set_.log.compression == "zstd"
    assert Config.from_dict(set_.to_dict()) == set_
    assert set_.replace({"log.keep_every": None, "log.compression": None}) == cfg
    assert cfg.trajectory_mismatch(set_) is None  # log fields: a resume may change them


def test_replace_and_trajectory_mismatch() -> None:
    cfg = Config()
    longer = cfg.replace({"train.total_steps": 5000, "log.save_interval": 7})
    assert longer.train.total_steps == 5000 and longer.log.save_interval == 7
    assert cfg.trajectory_mismatch(longer) is None
    assert cfg.trajectory_mismatch(cfg.replace({"env.n_agents": 4})) == "env.n_agents"
    with pytest.raises(ConfigError) as info:
        cfg.replace({"train.seed": -1})
    assert info.value.field == "train.seed"
    with pytest.raises(ConfigError, match="nope"):
        cfg.replace({"nope": 1})


def test_every_field_has_a_spec_and_frozen() -> None:
    specs = field_specs()
    assert "train.total_steps" in specs and "log.wandb" in specs
    assert all(spec.describe() for _, _, spec in specs.values())
    with pytest.raises(AttributeError):
        Config().train.total_steps = 3  # type: ignore[misc]
