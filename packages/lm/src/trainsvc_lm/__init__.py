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
from trainsvc_lm._lora import (
    TARGETS,
    LoraAlphaWarning,
    LoraConfig,
    MemoryEstimate,
    estimate_memory,
    init_lora,
    merge_lora,
)
from trainsvc_lm._train_config import LMTrainConfig

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
    from trainsvc_lm._grpo import GRPOTrainer, OfflineSample, groups_from_art
    from trainsvc_lm._grpo_config import GRPOConfig
    from trainsvc_lm._model import (
        KVCache,
        Params,
        decode_step,
        forward,
        hidden_states,
        init_cache,
        init_params,
        logits_from_hidden,
        prefill,
    )
    from trainsvc_lm._openai_app import ServerThread, openai_app
    from trainsvc_lm._openai_protocol import (
        APIError,
        ChatRequest,
        model_not_found,
        parse_chat_request,
    )
    from trainsvc_lm._peft import export_merged, export_peft, load_peft
    from trainsvc_lm._pretrain import cached_tiny_model, pretrain_tiny
    from trainsvc_lm._sampler import Completion, SamplingConfig, generate, sample
    from trainsvc_lm._serving import Delta, Engine, Finished, Usage
    from trainsvc_lm._tasks import TASKS, DigitVocab, Task, write_digit_tokenizer
    from trainsvc_lm._tiny import corpus_text, init_tiny
    from trainsvc_lm._tokenizer import Tokenizer
    from trainsvc_lm._train import LMFrame, LoRATrainer, read_checkpoint
    from trainsvc_lm._weights import (
        check_model_dir,
        hf_to_params,
        load_model,
        params_to_hf,
        save_model,
    )

# Imported on first use (JAX, numpy, tokenizers, jinja2), so that `import trainsvc_lm`,
# the CLI's --help and its argument errors stay fast.
_LAZY = {
    "APIError": "_openai_protocol",
    "ChatRequest": "_openai_protocol",
    "Delta": "_serving",
    "Engine": "_serving",
    "Finished": "_serving",
    "ServerThread": "_openai_app",
    "Usage": "_serving",
    "openai_app": "_openai_app",
    "parse_chat_request": "_openai_protocol",
    "model_not_found": "_openai_protocol",
    "Batch": "_data",
    "BatchLoader": "_data",
    "ChatExample": "_data",
    "ChatTemplate": "_chat",
    "Completion": "_sampler",
    "DataPosition": "_data",
    "DataReport": "_data",
    "DigitVocab": "_tasks",
    "GRPOConfig": "_grpo_config",
    "GRPOTrainer": "_grpo",
    "KVCache": "_model",
    "LMFrame": "_train",
    "LoRATrainer": "_train",
    "OfflineSample": "_grpo",
    "Params": "_model",
    "SamplingConfig": "_sampler",
    "TASKS": "_tasks",
    "Task": "_tasks",
    "TokenizedData": "_data",
    "TokenizedExample": "_data",
    "Tokenizer": "_tokenizer",
    "cached_tiny_model": "_pretrain",
    "corpus_text": "_tiny",
    "data_report": "_data",
    "decode_step": "_model",
    "write_digit_tokenizer": "_tasks",
    "export_merged": "_peft",
    "export_peft": "_peft",
    "forward": "_model",
    "generate": "_sampler",
    "groups_from_art": "_grpo",
    "hf_to_params": "_weights",
    "hidden_states": "_model",
    "init_cache": "_model",
    "init_params": "_model",
    "init_tiny": "_tiny",
    "load_chat_data": "_data",
    "check_model_dir": "_weights",
    "load_model": "_weights",
    "load_peft": "_peft",
    "logits_from_hidden": "_model",
    "params_to_hf": "_weights",
    "prefill": "_model",
    "pretrain_tiny": "_pretrain",
    "read_chat_jsonl": "_data",
    "read_checkpoint": "_train",
    "sample": "_sampler",
    "save_model": "_weights",
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
    "TARGETS",
    "TASKS",
    "APIError",
    "Batch",
    "BatchLoader",
    "ChatExample",
    "ChatRequest",
    "ChatTemplate",
    "Completion",
    "ConfigError",
    "DataError",
    "DataPosition",
    "DataReport",
    "Delta",
    "DigitVocab",
    "Engine",
    "Finished",
    "GRPOConfig",
    "GRPOTrainer",
    "KVCache",
    "LMError",
    "LMFrame",
    "LMTrainConfig",
    "LoRATrainer",
    "LoraAlphaWarning",
    "LoraConfig",
    "MemoryEstimate",
    "ModelConfig",
    "ModelLoadError",
    "OfflineSample",
    "Params",
    "RopeScaling",
    "SamplingConfig",
    "ServerThread",
    "Task",
    "TemplateError",
    "TokenizedData",
    "TokenizedExample",
    "Tokenizer",
    "UnsupportedArchitectureError",
    "Usage",
    "cached_tiny_model",
    "check_model_dir",
    "corpus_text",
    "data_report",
    "decode_step",
    "estimate_memory",
    "export_merged",
    "export_peft",
    "forward",
    "generate",
    "groups_from_art",
    "hf_to_params",
    "hidden_states",
    "init_cache",
    "init_lora",
    "init_params",
    "init_tiny",
    "load_chat_data",
    "load_model",
    "load_peft",
    "logits_from_hidden",
    "merge_lora",
    "model_not_found",
    "openai_app",
    "params_to_hf",
    "parse_chat_request",
    "prefill",
    "pretrain_tiny",
    "read_chat_jsonl",
    "read_checkpoint",
    "sample",
    "save_model",
    "tokenize_examples",
    "validate_example",
    "write_digit_tokenizer",
]
