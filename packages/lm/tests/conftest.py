"""Shared fixtures: tiny models in Hugging Face layout, built once per test session.

``tiny_model("qwen2")`` is the directory of a random-weight model written by
``init_tiny`` (every family; default sizes: hidden 64, 2 layers, vocab 512);
``tiny_tokenizer("llama")`` is the `Tokenizer` of a directory holding only the
tokenizer files and config.json (no weights, no JAX import).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from trainsvc_lm._tiny import init_tiny
from trainsvc_lm._tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A factory: family -> directory of a tiny random-weight model (built on first use)."""
    built: dict[str, Path] = {}

    def get(family: str = "llama") -> Path:
        if family not in built:
            path = tmp_path_factory.mktemp(f"tiny-{family}")
            init_tiny(path, family, seed=0)
            built[family] = path
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A factory: family -> directory with a tiny model's tokenizer files only."""
    built: dict[str, Path] = {}

    def get(family: str = "llama") -> Path:
        if family not in built:
            path = tmp_path_factory.mktemp(f"tiny-tokenizer-{family}")
            init_tiny(path, family, weights=False)
            built[family] = path
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Callable[[str], Path]) -> Callable[[str], Tokenizer]:
    """A factory: family -> the `Tokenizer` of a tiny model."""
    loaded: dict[str, Tokenizer] = {}

    def get(family: str = "llama") -> Tokenizer:
        if family not in loaded:
            loaded[family] = Tokenizer.from_dir(tiny_tokenizer_dir(family))
        return loaded[family]

    return get


@pytest.fixture(scope="session")
def taught_model(
    tiny_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny qwen2 model trained to answer a weather question with a tool call and a
    greeting with a fixed sentence (see ``_serving_helpers.teach_replies``); built once."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _serving_helpers import teach_replies

    return teach_replies(tiny_model("qwen2"), tmp_path_factory.mktemp("taught") / "model")
