"""Deprecated alias: the scorer moved to :mod:`llmi.reward.scoring`, the TRL adapter to
:mod:`llmi.integrations.trl`. Kept so that ``llmi.scoring.reward_function`` (the documented TRL entry point
before the reward package) still works; new code imports from the new places.
"""

from __future__ import annotations

import warnings

from .integrations.trl import impute_group_mean, reward_function
from .reward.scoring import RewardScorer, Sample, ScoringStats, sample_from_row, score_batch

warnings.warn(
    "llmi.scoring moved: use llmi.reward (RewardScorer, Sample, ...) and llmi.integrations.trl.reward_function",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["RewardScorer", "Sample", "ScoringStats", "impute_group_mean", "reward_function", "sample_from_row", "score_batch"]
