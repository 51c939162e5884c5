"""The lora kind's config mapping: typed fields and overrides onto LMTrainConfig, errors named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from trainsvc._domain import CheckpointPolicy, InvalidArgumentError, RunSpec
from trainsvc._paths import InputRoots

lm = pytest.importorskip("trainsvc_lm")
from trainsvc.kinds.lora import KIND  # noqa: E402  (needs trainsvc_lm)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory without weights (CreateRun does not read them) and chat data."""
    root = tmp_path_factory.mktemp("lora-kind")
    lm.init_tiny(root / "model", "qwen2", weights=False)
    turn = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    )
    (root / "train.jsonl").write_text(turn + "\n", encoding="utf-8")
    return root


def _resolve(root: Path, config: dict[str, Any], **spec: Any) -> dict[str, Any]:
    base = {"model": str(root / "model"), "train_file": str(root / "train.jsonl")}
    run = RunSpec(
        kind="lora", step_budget=spec.pop("step_budget", 50), config={**base, **config}, **spec
    )
    result: dict[str, Any] = KIND.resolve_config(run, InputRoots.of([root]))
    return result


def test_typed_fields_and_the_service_keys_land_in_the_trainer_config(inputs: Path) -> None:
    got = _resolve(
        inputs,
        {
            "rank": 8,
            "alpha": 16,
            "dropout": 0.1,
            "max_seq_len": 128,
            "batch_size": 3,
            "learning_rate": 1e-3,
            "sample_interval": 7,
            "eval_interval": 9,
            "optim.warmup_steps": 4,
        },
        seed=11,
        step_budget=77,
        policy=CheckpointPolicy(keep_last=2),
    )
    assert got["model"]["dir"] == str((inputs / "model").resolve())
    assert got["data"]["train"] == str((inputs / "train.jsonl").resolve())
    assert got["data"]["validation"] is None
    assert (got["lora"]["rank"], got["lora"]["alpha"], got["lora"]["dropout"]) == (8, 16, 0.1)
    assert (got["data"]["max_seq_len"], got["data"]["batch_size"]) == (128, 3)
    assert got["optim"]["lr"] == 1e-3 and got["optim"]["warmup_steps"] == 4
    assert (got["log"]["sample_interval"], got["log"]["eval_interval"]) == (7, 9)
    assert (got["train"]["seed"], got["train"]["steps"]) == (11, 77)
    assert (got["log"]["save_interval"], got["log"]["keep_last"]) == (100, 2)
    assert got["log"]["frame_interval"] == 1 and got["log"]["wandb"] is False
    assert lm.LMTrainConfig.from_dict(got).to_dict() == got  # what the worker rebuilds


@pytest.mark.parametrize(
    ("config", "spec", "field", "words"),
    [
        ({}, {"seed": 2**40}, "run.seed", "train.seed"),
        ({}, {"step_budget": 10**10}, "run.step_budget", "train.steps"),
        ({"optim.nope": 1}, {}, "run.lora.overrides[optim.nope]", "unknown field"),
        ({"dropout": 0.5}, {}, "run.lora.dropout", "lora.dropout"),
        ({"log.checkpoint_dir": "/tmp/x"}, {}, "run.lora.overrides[log.checkpoint_dir]", "service"),
        (
            {"data.train": "/etc/passwd"},
            {},
            "run.lora.overrides[data.train]",
            "run.lora.train_file",
        ),
    ],
)
def test_bad_values_name_the_request_field(
    inputs: Path, config: dict[str, Any], spec: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=words.replace("[", r"\[")) as info:
        _resolve(inputs, config, **spec)
    assert info.value.field == field


def test_an_invalid_message_names_the_data_file_and_line(inputs: Path) -> None:
    odd = inputs / "odd.jsonl"
    odd.write_text('{"messages": [{"role": "user", "content": 5}]}\n', encoding="utf-8")
    with pytest.raises(InvalidArgumentError) as info:
        _resolve(inputs, {"train_file": str(odd)})
    assert info.value.field == "run.lora.train_file" and "odd.jsonl:1" in str(info.value)


def test_a_chat_template_that_raises_is_refused_at_create(inputs: Path) -> None:
    import json
    import shutil

    model = inputs / "strict-model"
    if not model.exists():
        shutil.copytree(inputs / "model", model)
        config_path = model / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["chat_template"] = "{{ raise_exception('this model takes no user turns') }}"
        config_path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="no user turns") as info:
        _resolve(inputs, {"model": str(model)})
    assert info.value.field == "run.lora.train_file"
