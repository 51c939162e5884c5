"""Bounded-memory training metric trackers that travel inside checkpoints.

Every tracker has ``update(...)``, ``summary()`` (a flat dict of floats for
logging), ``to_dict()`` (JSON-safe) and ``from_dict()`` (an exact round trip).
The metrics' formulas are defined in the package README.
"""

from trainsvc_trackers._convergence import ConvergenceMonitor, DivergenceDetector, DivergenceEvent
from trainsvc_trackers._emergence import (
    EmergenceTracker,
    action_coordination,
    field_entropy,
    nn_ratio,
)
from trainsvc_trackers._history import History
from trainsvc_trackers._specialization import (
    SpecializationTracker,
    count_roles,
    js_divergence_matrix,
)

__all__ = [
    "ConvergenceMonitor",
    "DivergenceDetector",
    "DivergenceEvent",
    "EmergenceTracker",
    "History",
    "SpecializationTracker",
    "action_coordination",
    "count_roles",
    "field_entropy",
    "js_divergence_matrix",
    "nn_ratio",
]
