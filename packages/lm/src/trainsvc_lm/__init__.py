"""trainsvc-lm: language models in JAX, loaded from Hugging Face layout on disk.

Public API (filled in module by module): `ModelConfig` and the errors here;
the model, loader, tokenizer, chat data, LoRA, sampler, trainer and PEFT export
modules are listed in ``__all__`` as they land.
"""

from typing import TYPE_CHECKING, Any

from trainsvc_lm._config import ARCHITECTURES, FAMILIES, ModelConfig, RopeScaling
from trainsvc_lm._errors import (
    ConfigError,
    DataError,
    LMError,
    ModelLoadError,
    TemplateError,
    UnsupportedArchitectureError,
)

if TYPE_CHECKING:
    from trainsvc_lm._chat import ChatTemplate
    from trainsvc_lm._data import (
        Batch,
        BatchLoader,
        ChatExample,
        DataPosition,
        DataReport,
        TokenizedData,
        TokenizedExample,
        data_report,
        load_chat_data,
        read_chat_jsonl,
        tokenize_examples,
        validate_example,
    )
    from trainsvc_lm._tokenizer import Tokenizer

# Imported on first use (JAX, numpy, tokenizers, jinja2), so that `import trainsvc_lm`,
# the CLI's --help and its argument errors stay fast.
_LAZY = {
    "Batch": "_data",
    "BatchLoader": "_data",
    "ChatExample": "_data",
    "ChatTemplate": "_chat",
    "DataPosition": "_data",
    "DataReport": "_data",
    "TokenizedData": "_data",
    "TokenizedExample": "_data",
    "Tokenizer": "_tokenizer",
    "data_report": "_data",
    "load_chat_data": "_data",
    "read_chat_jsonl": "_data",
    "tokenize_examples": "_data",
    "validate_example": "_data",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainsvc_lm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"trainsvc_lm.{module}"), name)


__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "Batch",
    "BatchLoader",
    "ChatExample",
    "ChatTemplate",
    "ConfigError",
    "DataError",
    "DataPosition",
    "DataReport",
    "LMError",
    "ModelConfig",
    "ModelLoadError",
    "RopeScaling",
    "TemplateError",
    "TokenizedData",
    "TokenizedExample",
    "Tokenizer",
    "UnsupportedArchitectureError",
    "data_report",
    "load_chat_data",
    "read_chat_jsonl",
    "tokenize_examples",
    "validate_example",
]
