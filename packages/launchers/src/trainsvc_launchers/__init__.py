"""trainsvc-launchers: one-command training on Kaggle, rented GPU boxes and Apple Silicon.

The command is ``trainsvc-launch`` (see ``trainsvc-launch --help``). The
library surface below is what the command is built from: the agent-readable
output layer, launch configs, crash-loop detection, preflight checks, Kaggle
kernel folders and the notebook generator. Library code never imports grpc:
the service is driven through ``trainsvc serve`` and ``trainsvc-cli``.
"""

from trainsvc_launchers._cli import main
from trainsvc_launchers._config import ConfigError, FieldError, LaunchConfig, load_launch_config
from trainsvc_launchers._crashloop import CrashLoopError, ResumeMetadata, record_resume
from trainsvc_launchers._kaggle_errors import ErrorClass, classify_log
from trainsvc_launchers._kaggle_kernel import (
    KaggleSpec,
    bootstrap_source,
    build_kernel_folder,
    kernel_id,
)
from trainsvc_launchers._notebook import build_notebook, write_notebook
from trainsvc_launchers._output import ExitCode, Level, Reporter
from trainsvc_launchers._preflight import TARGETS, run_preflight

__all__ = [
    "TARGETS",
    "ConfigError",
    "CrashLoopError",
    "ErrorClass",
    "ExitCode",
    "FieldError",
    "KaggleSpec",
    "LaunchConfig",
    "Level",
    "Reporter",
    "ResumeMetadata",
    "bootstrap_source",
    "build_kernel_folder",
    "build_notebook",
    "classify_log",
    "kernel_id",
    "load_launch_config",
    "main",
    "record_resume",
    "run_preflight",
    "write_notebook",
]
