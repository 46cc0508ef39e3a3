"""``llmi train``: GRPO training of the orchestrator with llmi's hybrid reward.

One machine: TRL's ``GRPOTrainer`` (:mod:`llmi.train.runner`). A cluster: verl on Ray, with the reward
manager in :mod:`llmi.integrations.verl` and a launch script written by :mod:`llmi.train.verl_launch`.

Modules, by concept: :mod:`~llmi.train.recipes` (the release's presets, option resolution, the verl
mapping), :mod:`~llmi.train.settings` (the ``[train]`` section), :mod:`~llmi.train.data` (the LLM-I
schema, llmi reward rows, verl parquet; checks and summary), :mod:`~llmi.train.prepare` (system prompt,
prompt length, the TRL dataset), :mod:`~llmi.train.reward` (the reward function that records rollouts),
:mod:`~llmi.train.metrics`, :mod:`~llmi.train.samples`, :mod:`~llmi.train.callbacks` (the run's
outputs), :mod:`~llmi.train.preflight` (judges and tools, before the model loads).

Nothing heavy is imported here: TRL, transformers and datasets load inside the functions that need them.
"""

from __future__ import annotations

from .errors import JudgeUnreachable, RecipeError, TrainDataError
from .settings import TrainSettings

__all__ = ["JudgeUnreachable", "RecipeError", "TrainDataError", "TrainSettings"]
