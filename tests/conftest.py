"""Fixtures shared by the cross-package tests: a tiny language model and chat data for lora runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CITIES = ("Paris", "Rome", "Oslo", "Bern", "Lima", "Kyiv", "Quito", "Hanoi")


@dataclass(frozen=True)
class LMInputs:
    """A tiny random-weight model in Hugging Face layout and chat JSONL beside it."""

    root: Path
    model: Path
    train: Path
    validation: Path

    def config(self, **extra: Any) -> dict[str, Any]:
        """A lora run's config for these inputs: small batches, samples and evaluations often."""
        return {
            "model": str(self.model),
            "train_file": str(self.train),
            "validation_file": str(self.validation),
            "rank": 8,
            "alpha": 16,
            "max_seq_len": 64,
            "batch_size": 2,
            "sample_interval": 5,
            "eval_interval": 5,
            "log.sample_max_tokens": 8,
            "optim.warmup_steps": 2,
            **extra,
        }


def _example(city: str, unit: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"weather in {city} in {unit}"},
            {"role": "assistant", "content": f'{{"city": "{city}", "unit": "{unit}"}}'},
        ]
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def lm_inputs(tmp_path_factory: pytest.TempPathFactory) -> LMInputs:
    """`init_tiny`'s llama (hidden 64, 2 layers, vocab 512) and 8 + 2 chat examples."""
    lm = pytest.importorskip("trainsvc_lm")
    root = tmp_path_factory.mktemp("lm-inputs")
    lm.init_tiny(root / "model", "llama", seed=0)
    train = _write_jsonl(root / "train.jsonl", [_example(c, "celsius") for c in CITIES])
    validation = _write_jsonl(
        root / "validation.jsonl", [_example("Riga", "fahrenheit"), _example("Oslo", "kelvin")]
    )
    return LMInputs(root=root, model=root / "model", train=train, validation=validation)
