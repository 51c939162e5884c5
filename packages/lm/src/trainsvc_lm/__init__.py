"""trainsvc-lm: language models in JAX, loaded from Hugging Face layout on disk.

Public API (filled in module by module): `ModelConfig` and the errors here;
the model, loader, tokenizer, chat data, LoRA, sampler, trainer and PEFT export
modules are listed in ``__all__`` as they land.
"""

from trainsvc_lm._config import ARCHITECTURES, FAMILIES, ModelConfig, RopeScaling
from trainsvc_lm._errors import (
    ConfigError,
    DataError,
    LMError,
    ModelLoadError,
    TemplateError,
    UnsupportedArchitectureError,
)

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "ConfigError",
    "DataError",
    "LMError",
    "ModelConfig",
    "ModelLoadError",
    "RopeScaling",
    "TemplateError",
    "UnsupportedArchitectureError",
]
