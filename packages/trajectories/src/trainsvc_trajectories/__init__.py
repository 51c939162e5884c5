"""trainsvc-trajectories: record what agents did, group it, judge it, export it for training.

Recording (:class:`TrajectoryRecorder`, :func:`wrap_openai`), the store (SQLite by
default, PostgreSQL by URL; archiving to any fsspec URL), time windows and the
data-quality report, OpenPipe ART's Parquet v2 and legacy JSONL formats, and
RULER-style judges (rule-based offline, or an LLM on any OpenAI-compatible endpoint).
"""

from ._art import (
    PARQUET_FORMAT_VERSION,
    ArtHistory,
    ArtTrajectory,
    ArtTrajectoryGroup,
    parquet_schema,
    read_jsonl,
    read_parquet,
    write_jsonl,
    write_parquet,
)
from ._db import DEFAULT_URL
from ._errors import (
    ArchiveVerificationError,
    FormatError,
    InvalidRecordError,
    NoCompleteGroupsError,
    RecorderClosedError,
    StepStateError,
    StoreError,
    TrajectoryError,
    UnknownTrajectoryError,
)
from ._export import to_art_trajectory, window_groups
from ._judges import (
    CallStat,
    GroupScore,
    Judge,
    JudgeError,
    JudgeReport,
    JudgeResult,
    JudgeSkip,
    LLMJudge,
    RuleJudge,
    apply_scores,
    is_judged,
    judge_groups,
    parse_scores,
)
from ._openai import RecordingClient, wrap_openai
from ._quality import QualityReport, QualityThresholds, quality_report
from ._recorder import (
    AsyncTrajectoryRecorder,
    TrajectoryHandle,
    TrajectoryRecorder,
    current_trajectory,
)
from ._schema import SCHEMA_VERSION
from ._store import (
    ArchiveResult,
    Store,
    StoredLLMCall,
    StoredProviderAccess,
    StoredStep,
    StoredTrajectory,
    WindowSummary,
    read_archive,
)
from ._windows import Windowing, window_bounds

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "PARQUET_FORMAT_VERSION",
    "SCHEMA_VERSION",
    "ArchiveResult",
    "ArchiveVerificationError",
    "ArtHistory",
    "ArtTrajectory",
    "ArtTrajectoryGroup",
    "AsyncTrajectoryRecorder",
    "CallStat",
    "FormatError",
    "GroupScore",
    "InvalidRecordError",
    "Judge",
    "JudgeError",
    "JudgeReport",
    "JudgeResult",
    "JudgeSkip",
    "LLMJudge",
    "NoCompleteGroupsError",
    "QualityReport",
    "QualityThresholds",
    "RecorderClosedError",
    "RecordingClient",
    "RuleJudge",
    "StepStateError",
    "Store",
    "StoreError",
    "StoredLLMCall",
    "StoredProviderAccess",
    "StoredStep",
    "StoredTrajectory",
    "TrajectoryError",
    "TrajectoryHandle",
    "TrajectoryRecorder",
    "UnknownTrajectoryError",
    "WindowSummary",
    "Windowing",
    "apply_scores",
    "current_trajectory",
    "is_judged",
    "judge_groups",
    "parquet_schema",
    "parse_scores",
    "quality_report",
    "read_archive",
    "read_jsonl",
    "read_parquet",
    "to_art_trajectory",
    "window_bounds",
    "window_groups",
    "wrap_openai",
    "write_jsonl",
    "write_parquet",
]
