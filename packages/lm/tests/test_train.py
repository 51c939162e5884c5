"""LoRATrainer: frozen base, bitwise resume, checkpoints, frames, console lines, early errors."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from trainsvc_lm import ConfigError, DataError, ModelLoadError
from trainsvc_lm._tiny import init_tiny
from trainsvc_lm._train import LMFrame, LoRATrainer, read_checkpoint, run_name
from trainsvc_lm._train_config import LMTrainConfig
from trainsvc_lm._train_log import ConsoleLines, JsonlMetrics
from trainsvc_lm._weights import load_model


def write_chats(path: Path, n: int, offset: int = 0) -> Path:
    with path.open("w") as f:
        for i in range(offset, offset + n):
            messages = [
                {"role": "user", "content": f"what is {i} plus one?"},
                {"role": "assistant", "content": f"{i} plus one is {i + 1}."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chats")
    return write_chats(root / "train.jsonl", 24), write_chats(root / "val.jsonl", 4, 100)


def make_config(
    model: Path, data: tuple[Path, Path], run_dir: Path, **overrides: Any
) -> LMTrainConfig:
    values: dict[str, Any] = {
        "model.dir": str(model),
        "data.train": str(data[0]),
        "data.validation": str(data[1]),
        "data.max_seq_len": 64,
        "data.batch_size": 2,
        "lora.rank": 8,
        "lora.alpha": 16,
        "lora.dropout": 0.1,
        "optim.lr": 1e-2,
        "optim.warmup_steps": 1,
        "optim.grad_accum": 2,
        "train.steps": 6,
        "log.checkpoint_dir": str(run_dir),
        "log.save_interval": 3,
        "log.eval_interval": 0,
        "log.sample_interval": 0,
        "log.frame_interval": 0,
    }
    values.update(overrides)
    return LMTrainConfig().replace(values)


def tree_equal(a: Any, b: Any) -> bool:
    la, sa = jax.tree.flatten(a)
    lb, sb = jax.tree.flatten(b)
    return sa == sb and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True)
    )


def test_resume_is_bitwise_and_the_base_never_changes(
    tiny_model: Callable[[str], Path], data: tuple[Path, Path], tmp_path: Path
) -> None:
    model = tiny_model("llama")
    straight = LoRATrainer(make_config(model, data, tmp_path / "a"))
    base_before = jax.tree.map(np.array, straight.params)
    assert straight.run() == 6
    straight.close()
    _, on_disk = load_model(model)
    assert tree_equal(straight.params, base_before)  # frozen in memory, bit for bit
    assert tree_equal(on_disk, base_before)
    assert any(np.abs(np.asarray(ab["b"])).max() > 0 for ab in straight.lora.values())

    first = LoRATrainer(make_config(model, data, tmp_path / "b"))
    assert first.run(3) == 3
    first.close()
    second = LoRATrainer(make_config(model, data, tmp_path / "b"))
    restored = second.restore()
    assert restored is not None and restored.name == "step_3.safetensors"
    assert second.step_count == 3 and second.position == first.position
    assert second.run() == 3
    second.close()
    assert second.step_count == 6
    assert tree_equal(second.lora, straight.lora)
    assert tree_equal(second.opt_state, straight.opt_state)
    assert second.last_metrics["loss"] == straight.last_metrics["loss"]
    assert second.run_id == first.run_id  # one W&B run across the resume


def test_checkpoints_retention_emergency_and_config_mismatch(
    tiny_model: Callable[[str], Path], data: tuple[Path, Path], tmp_path: Path
) -> None:
    model = tiny_model("llama")
    config = make_config(
        model, data, tmp_path / "run", **{"log.save_interval": 1, "log.keep_last": 2}
    )
    trainer = LoRATrainer(config)
    trainer.run(4)
    emergency = trainer.save_checkpoint(emergency=True)
    trainer.close()
    names = sorted(p.name for p in (tmp_path / "run").glob("*step_*"))
    assert names == ["emergency_step_4.safetensors", "step_3.safetensors", "step_4.safetensors"]
    assert emergency.name == "emergency_step_4.safetensors"

    saved = read_checkpoint(tmp_path / "run")
    assert saved.step == 4 and saved.config == config
    for target, ab in saved.lora.items():
        np.testing.assert_array_equal(ab["a"], np.asarray(trainer.lora[target]["a"]))

    other = LoRATrainer(config.replace({"optim.lr": 5e-3}))
    with pytest.raises(ConfigError) as info:
        other.restore()
    assert info.value.field == "optim.lr"
    assert other.step_count == 0
    longer = LoRATrainer(config.replace({"train.steps": 8}))  # the length may change
    assert longer.restore(tmp_path / "run" / "step_3.safetensors") is not None
    assert longer.step_count == 3


def test_frames_console_lines_validation_and_samples(
    tiny_model: Callable[[str], Path], data: tuple[Path, Path], tmp_path: Path
) -> None:
    frames: list[LMFrame] = []
    out = io.StringIO()
    config = make_config(
        tiny_model("qwen2"),
        data,
        tmp_path / "run",
        **{
            "log.frame_interval": 2,
            "log.eval_interval": 2,
            "log.sample_interval": 4,
            "log.sample_max_tokens": 8,
            "log.log_interval": 2,
            "log.save_interval": 0,
            "log.name": "demo",
            "train.steps": 4,
        },
    )
    trainer = LoRATrainer(
        config,
        frame_callback=frames.append,
        sinks=[ConsoleLines(4, stream=out), JsonlMetrics(tmp_path / "m.jsonl")],
    )
    assert trainer.run_name.startswith("demo-cpu-")
    trainer.run()
    trainer.close()
    assert [f.step for f in frames] == [2, 4]
    for f in frames:
        assert set(f.metrics) == {"train_loss", "val_loss", "learning_rate", "tokens_per_s"}
        assert np.isfinite(f.metrics["val_loss"]) and f.metrics["tokens_per_s"] > 0
    assert frames[0].sample_completion is None
    assert frames[1].sample_prompt == "what is 100 plus one?"  # the first validation prompt
    assert isinstance(frames[1].sample_completion, str)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("step=")]
    assert [line.split()[0] for line in lines] == ["step=2/4", "step=4/4"]
    fields = dict(part.split("=", 1) for part in lines[-1].split())
    assert float(fields["loss"]) == pytest.approx(trainer.last_metrics["loss"], rel=1e-3)
    assert "val_loss" in fields and "lr" in fields and "tok_s" in fields
    assert any(line.startswith("sample step=4 completion=") for line in out.getvalue().splitlines())
    assert any(line.startswith("checkpoint step=4 ") for line in out.getvalue().splitlines())
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]


def test_bad_input_fails_before_any_training(
    tiny_model: Callable[[str], Path], data: tuple[Path, Path], tmp_path: Path
) -> None:
    model = tiny_model("llama")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data[0].read_text() + '{"messages": [{"role": "wizard", "content": "x"}]}\n')
    with pytest.raises(DataError) as info:
        LoRATrainer(make_config(model, (bad, data[1]), tmp_path / "r1"))
    assert info.value.line == 25 and str(bad) in str(info.value)

    sharded = tmp_path / "sharded"
    init_tiny(sharded, "llama", max_shard_bytes=100_000)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(ModelLoadError, match=shards[-1].name):
        LoRATrainer(make_config(sharded, data, tmp_path / "r2"))

    with pytest.raises(ConfigError) as cfg_info:
        make_config(
            model,
            data,
            tmp_path / "r3",
            **{"lora.target_modules": ["q_proj", "k_proj", "v_proj", "c_proj"]},
        )
    assert cfg_info.value.field == "lora.target_modules"
    with pytest.raises(ConfigError) as req:
        LoRATrainer(LMTrainConfig())
    assert req.value.field == "model.dir"
    for run in ("r1", "r2"):
        assert not (tmp_path / run).exists()  # nothing was written, no checkpoint touched


def test_run_name_has_name_platform_and_date() -> None:
    import datetime as dt

    when = dt.datetime(2026, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert run_name("sft", "h100", when) == "sft-h100-20260304-0506"


def test_remat_and_accumulation_change_memory_not_the_update(
    tiny_model: Callable[[str], Path], data: tuple[Path, Path], tmp_path: Path
) -> None:
    model = tiny_model("llama")
    plain = LoRATrainer(make_config(model, data, tmp_path / "a", **{"lora.dropout": 0.0}))
    remat = LoRATrainer(
        make_config(model, data, tmp_path / "b", **{"lora.dropout": 0.0, "train.remat": True})
    )
    assert remat.memory.activations < plain.memory.activations
    plain.step()
    remat.step()
    for target, ab in plain.lora.items():
        for k in ("a", "b"):
            np.testing.assert_allclose(
                np.asarray(remat.lora[target][k]), np.asarray(ab[k]), rtol=1e-5, atol=1e-7
            )
    assert remat.last_metrics["loss"] == pytest.approx(plain.last_metrics["loss"], rel=1e-6)
    # Two micro-batches of 2 rows: the reported loss is the token-weighted mean over both,
    # i.e. the loss of the same 4 rows evaluated at once (before the update).
    accum = LoRATrainer(make_config(model, data, tmp_path / "c", **{"lora.dropout": 0.0}))
    before = jax.tree.map(np.array, accum.lora)
    start = accum.position
    batches = accum._next_batches()
    assert batches["tokens"].shape == (2, 2, 64)
    accum.position = start
    accum.step()
    merged = {k: v.reshape(4, 64) for k, v in batches.items()}
    nll, count = accum._eval_step(before, accum.params, merged)
    assert accum.last_metrics["loss"] == pytest.approx(float(nll) / float(count), rel=1e-5)
    assert accum.last_metrics["tokens"] == float(count)


def test_a_run_over_the_memory_budget_stops_before_loading_weights(
    tiny_model: Callable[[str], Path],
    data: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trainsvc_lm._train as train_module

    monkeypatch.setattr(train_module, "resolve_platform", lambda setting: ("cpu", 10_000))

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights loaded before the memory check")

    monkeypatch.setattr("trainsvc_lm._weights.load_model", no_load)
    with pytest.raises(ConfigError, match="does not fit") as info:
        LoRATrainer(make_config(tiny_model("llama"), data, tmp_path / "run"))
    assert info.value.field == "data.batch_size"
    assert "cpu budget" in str(info.value)


def test_a_checkpoint_of_another_rank_is_refused_by_name(
    tiny_model: Callable[[str], Path], data: tuple[Path, Path], tmp_path: Path
) -> None:
    # The header's config is compared before the state's shapes are matched.
    model = tiny_model("llama")
    first = LoRATrainer(make_config(model, data, tmp_path / "r", **{"train.steps": 1}))
    saved = first.save_checkpoint()
    first.close()
    other = LoRATrainer(
        make_config(model, data, tmp_path / "r", **{"lora.rank": 16, "lora.alpha": 32})
    )
    for source in ("latest", saved):
        with pytest.raises(ConfigError) as err:
            other.restore(source)
        assert err.value.field == "lora.rank"
        assert other.step_count == 0
    # Training many run() chunks keeps the sinks open (the service calls run() in chunks).
    lines = io.StringIO()
    chunked = LoRATrainer(
        make_config(model, data, tmp_path / "c", **{"log.log_interval": 1}),
        sinks=[ConsoleLines(6, lines)],
    )
    assert chunked.run(2) == 2 and chunked.run(2) == 2
    chunked.close()
    steps = [line.split()[0] for line in lines.getvalue().splitlines() if line.startswith("step=")]
    assert steps == [f"step={i}/6" for i in range(1, 5)]
