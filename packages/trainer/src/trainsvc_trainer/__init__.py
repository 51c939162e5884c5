"""JAX multi-agent emergence trainer: environment, REINFORCE learner, checkpoints, frames.

The public API is what the CLI (``trainsvc-train``) and the trainsvc service use:
:class:`Config` (validated, frozen), :class:`Trainer` (``step``, ``run``,
``state_dict``/``load_state_dict``, ``save_checkpoint``/``restore``) and the
:class:`Frame` objects its callback receives.
"""

from typing import TYPE_CHECKING, Any

from trainsvc_trainer._config import (
    Config,
    ConfigError,
    EnvConfig,
    LogConfig,
    PolicyConfig,
    TrainConfig,
    field_specs,
)

if TYPE_CHECKING:
    from trainsvc_trainer._cache import default_cache_dir, enable_compilation_cache
    from trainsvc_trainer._frames import Frame, FramePublisher, downsample_field
    from trainsvc_trainer._logging import (
        ConsoleLogger,
        JsonlLogger,
        MetricsLogger,
        MultiLogger,
        NullLogger,
        WandbLogger,
        WandbUnavailableError,
    )
    from trainsvc_trainer._trainer import STATE_FORMAT, Trainer, find_checkpoint

# JAX is imported on first use of these names, so that the config, the CLI's
# --help and its argument errors stay fast.
_LAZY = {
    "default_cache_dir": "_cache",
    "enable_compilation_cache": "_cache",
    "Frame": "_frames",
    "FramePublisher": "_frames",
    "downsample_field": "_frames",
    "ConsoleLogger": "_logging",
    "JsonlLogger": "_logging",
    "MetricsLogger": "_logging",
    "MultiLogger": "_logging",
    "NullLogger": "_logging",
    "WandbLogger": "_logging",
    "WandbUnavailableError": "_logging",
    "STATE_FORMAT": "_trainer",
    "Trainer": "_trainer",
    "find_checkpoint": "_trainer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainsvc_trainer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"trainsvc_trainer.{module}"), name)


__all__ = [
    "STATE_FORMAT",
    "Config",
    "ConfigError",
    "ConsoleLogger",
    "EnvConfig",
    "Frame",
    "FramePublisher",
    "JsonlLogger",
    "LogConfig",
    "MetricsLogger",
    "MultiLogger",
    "NullLogger",
    "PolicyConfig",
    "TrainConfig",
    "Trainer",
    "WandbLogger",
    "WandbUnavailableError",
    "default_cache_dir",
    "downsample_field",
    "enable_compilation_cache",
    "field_specs",
    "find_checkpoint",
]
