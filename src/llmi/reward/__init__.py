"""The LLM-I hybrid reward, by concept:

* :mod:`llmi.reward.rules` — pure: :class:`RewardConfig`, the image-count rule, the tool score, how the
  parts combine into ``R``, :class:`RewardResult`. No I/O.
* :mod:`llmi.reward.judges` — the LLM and MLLM judges: prompts, message building, score parsing, and the
  HTTP client with its retries.
* :mod:`llmi.reward.scoring` — rows and samples (:class:`Sample`, :func:`sample_from_row`), the
  orchestrating :class:`RewardScorer`, :func:`score_batch` and :class:`ScoringStats`.

Framework adapters live in :mod:`llmi.integrations` (``llmi.integrations.trl.reward_function``).

The rule names load with this package (they are pure and cheap); the scorer and judge names load their
modules on first use, so ``from llmi.reward import RewardConfig`` does not import the HTTP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .rules import (
    ANY_IMAGES,
    DEFAULT_TOOL_WEIGHTS,
    EVAL_SPLITS,
    NO_IMAGES,
    SOME_IMAGES,
    TRAIN_SPLITS,
    RewardConfig,
    RewardResult,
    ToolScore,
    assemble,
    check_image_num,
    combine,
    format_violations,
    image_count_score,
    is_eval_split,
    llm_component,
    mllm_component,
    mllm_rule,
    tool_score,
)

_LAZY = {
    "Sample": "llmi.reward.scoring",
    "sample_from_row": "llmi.reward.scoring",
    "load_image": "llmi.reward.scoring",
    "question_text": "llmi.reward.scoring",
    "completion_text": "llmi.reward.scoring",
    "RewardScorer": "llmi.reward.scoring",
    "ScoringStats": "llmi.reward.scoring",
    "score_batch": "llmi.reward.scoring",
    "Executor": "llmi.reward.scoring",
    "JudgeClient": "llmi.reward.judges",
    "JudgeFailure": "llmi.reward.judges",
    "JudgeStats": "llmi.reward.judges",
    "LLMJudge": "llmi.reward.judges",
    "MLLMJudge": "llmi.reward.judges",
    "ScoreParseError": "llmi.reward.judges",
}

__all__ = sorted(
    [
        "ANY_IMAGES",
        "DEFAULT_TOOL_WEIGHTS",
        "EVAL_SPLITS",
        "NO_IMAGES",
        "SOME_IMAGES",
        "TRAIN_SPLITS",
        "RewardConfig",
        "RewardResult",
        "ToolScore",
        "assemble",
        "check_image_num",
        "combine",
        "format_violations",
        "image_count_score",
        "is_eval_split",
        "llm_component",
        "mllm_component",
        "mllm_rule",
        "tool_score",
        *_LAZY,
    ]
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmi.reward' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from .judges import JudgeClient, JudgeFailure, JudgeStats, LLMJudge, MLLMJudge, ScoreParseError
    from .scoring import (
        Executor,
        RewardScorer,
        Sample,
        ScoringStats,
        completion_text,
        load_image,
        question_text,
        sample_from_row,
        score_batch,
    )
