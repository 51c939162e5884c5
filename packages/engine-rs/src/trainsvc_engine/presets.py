"""Measured training configurations, by name.

Each preset is a set of `TrainingManager` fields (the rest keep their
defaults); `trainsvc-othello train --preset NAME` starts from one, and flags
given beside it override its fields. Where each was measured, and how it
scores, is in docs/othello-engine.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

# `es` with separable CMA-ES over every 2x2 square of the board (`rect2x2`), its
# fitness the League protocol itself plus games against the random player, the
# sample growing as the step relative to the weights shrinks: the bench's `es-rect`,
# 0.968 (0.963-0.972 over 4 seeds) against the League's heuristic after 27.5 M games,
# 890-930 CPU seconds (bench/engine_learners.py; 0.971 at 55 M).
_LEAGUE: dict[str, Any] = {
    "learner": "es",
    "es_strategy": "sep-cma",
    "pattern_set": "rect2x2",
    "n_phases": 1,
    "es_parents": 20,
    "es_offspring": 40,
    "es_sigma": 0.1,
    "es_mean_rate": 0.3,
    "es_fitness_pairs": 50,
    "es_fitness_pairs_max": 1000,
    "es_fitness_step": 0.13,
    "es_fitness_margin": 1.0,
    "es_random_pairs": 12,
}

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({"league": MappingProxyType(_LEAGUE)})
"""Preset name -> `TrainingManager` fields (read-only)."""
