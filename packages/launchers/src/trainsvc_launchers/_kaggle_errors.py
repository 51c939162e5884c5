"""Classify a failed Kaggle session from its log, with the suggested next step."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = ["ErrorClass", "classify_log", "log_text"]


@dataclass(frozen=True)
class ErrorClass:
    """One kind of failure: a stable ``kind`` for automation and the next step for people."""

    kind: str
    next_step: str
    evidence: str = ""


# Checked in order: the first kind whose pattern matches wins. Order matters:
# an out-of-memory error inside a pip install is still out of memory.
_RULES: tuple[tuple[str, str, str], ...] = (
    (
        "cancelled",
        r"the session was cancelled on Kaggle",
        "it was stopped on Kaggle (by you or Kaggle); `trainsvc-launch kaggle submit --resubmit` "
        "runs it again",
    ),
    (
        "out_of_memory",
        r"out of memory|RESOURCE_EXHAUSTED|CUDA_ERROR_OUT_OF_MEMORY|OutOfMemoryError|\bOOM\b|"
        r"Your notebook tried to allocate more memory|MemoryError",
        "reduce the batch (env.n_envs, train.rollout_length) or the model (policy.hidden), then resubmit",
    ),
    (
        "session_or_quota_limit",
        r"quota|exceeded (the )?(maximum|max) (run|execution) time|Maximum run time|session (timed out|timeout)|"
        r"12 hours? limit|Kernel run time limit",
        "wait for the weekly quota to refresh (`trainsvc-launch kaggle status`), or lower kaggle.session_hours; "
        "the next session resumes from the last checkpoint",
    ),
    (
        "missing_dataset",
        r"(FileNotFoundError|No such file or directory).*?/kaggle/input|Dataset not found|"
        r"invalid dataset sources?|Could not find (the )?dataset",
        "check kaggle.dataset_sources / kaggle.wheels_dataset and that the previous session's output exists",
    ),
    (
        "missing_dependency",
        r"ModuleNotFoundError|No module named|ImportError|No matching distribution found|"
        r"Could not find a version that satisfies",
        "turn kaggle.enable_internet on, or upload wheels with `trainsvc-launch kaggle datasets` "
        "and set kaggle.wheels_dataset",
    ),
    (
        "network_timeout",
        r"ReadTimeout|ConnectTimeout|ConnectionError|timed out|Temporary failure in name resolution|"
        r"Connection (reset|refused|aborted)|Max retries exceeded",
        "resubmit (network trouble is usually transient); with internet off, use the wheels dataset",
    ),
)


def log_text(log: str) -> str:
    """A session log as plain text: Kaggle's JSON-array logs
    (``[{"stream_name": "stderr", "time": 1.2, "data": "..."}, ...]``) become their
    ``data`` fields, one after the other; any other log is returned as it is."""
    stripped = log.lstrip()
    if not stripped.startswith("["):
        return log
    try:
        entries = json.loads(stripped)
    except ValueError:
        return log
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "data" in e for e in entries
    ):
        return log
    parts = [str(e["data"]) for e in entries]
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def classify_log(log: str, failure_message: str | None = None) -> ErrorClass:
    """The first matching failure kind in ``failure_message`` and ``log``, else ``unknown``.

    The evidence is the matching line of the log (of its text, for a JSON-array log).
    """
    text = "\n".join(part for part in (failure_message, log_text(log)) if part)
    for kind, pattern, next_step in _RULES:
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            start = text.rfind("\n", 0, match.start()) + 1
            end = text.find("\n", match.end())
            line = text[start : end if end != -1 else len(text)].strip()
            return ErrorClass(kind, next_step, line[:300])
    return ErrorClass(
        "unknown",
        "read the session log (`trainsvc-launch kaggle output`), fix the cause and resubmit",
    )
