"""The ``[reward]`` table of the config file: every knob of :class:`~llmi.reward.rules.RewardConfig`, settable
in TOML, plus how the TRL adapter treats a dropped sample.

The defaults are read from ``RewardConfig()`` itself, so the paper's numbers live in one place. Example::

    [reward]
    w_tool = 0.1                    # count r_tool in R (the paper only logs it)
    on_judge_error = "fallback"     # a judge outage scores 3 instead of dropping the sample
    tool_weights = {code = 0.5, edit = 0.3, search = 0.1, diffusion = 0.1}
    impute = "group_mean"           # TRL: a dropped rollout gets its group's mean

``llmi reward`` starts from these settings; its flags (``--tool-weight``, ``--on-judge-error``,
``--fallback-score``) override them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .rules import RewardConfig

_D = RewardConfig()


def _has(name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(RewardConfig))


class RewardSettings(BaseModel):
    """The hybrid reward's knobs (``R = (w_num·S_num + w_mllm·S_mllm·S_num + w_llm·S_llm + w_tool·r_tool) / Σw``).
    Defaults: the LLM-I paper's."""

    model_config = ConfigDict(extra="forbid")

    w_num: float = Field(_D.w_num, ge=0, description="weight of S_num, the image-count rule")
    w_mllm: float = Field(_D.w_mllm, ge=0, description="weight of S_mllm·S_num, the image judge")
    w_llm: float = Field(_D.w_llm, ge=0, description="weight of S_llm, the text judge")
    w_tool: float = Field(_D.w_tool, ge=0, description="weight of r_tool (paper: 0, logged only)")
    text_weight: float = Field(_D.text_weight, ge=0, description="weight of the text score in S_llm")
    image_weight: float = Field(_D.image_weight, ge=0, description="weight of the image-tag score in S_llm")
    quality_weight: float = Field(_D.quality_weight, ge=0, description="weight of image quality in S_mllm")
    task_weight: float = Field(_D.task_weight, ge=0, description="weight of task relevance in S_mllm")
    text_image_weight: float = Field(_D.text_image_weight, ge=0, description="weight of text-image relevance in S_mllm")
    over_penalty: float = Field(_D.over_penalty, ge=0, description="S_num lost per image beyond the number asked for (training split)")
    tool_weights: dict[str, float] = Field(
        default_factory=lambda: dict(_D.tool_weights),
        description="difficulty weight per tool in r_tool (paper: code 0.4, edit 0.3, search 0.2, diffusion 0.1)",
    )
    tool_beta: float = Field(_D.tool_beta, ge=0, le=1, description="r_tool = β·r_success + (1−β)·r_attempt")
    no_image_mllm: tuple[float, float, float] = Field(
        _D.no_image_mllm, description="image-judge scores used when no image was made (nothing to judge)")
    max_images: int = Field(_D.max_images, ge=0, description="above this many images the image judge is not asked")
    too_many_mllm: tuple[float, float, float] = Field(
        _D.too_many_mllm, description="image-judge scores used above max_images")
    empty_text_is_worst: bool = Field(_D.empty_text_is_worst, description="a tags-only response gets text score 1")
    on_judge_error: Literal["drop", "fallback"] = Field(
        _D.on_judge_error, description="a judge that still fails: 'drop' (score null) or 'fallback' (fallback_score)")
    fallback_score: float = Field(_D.fallback_score, ge=1, le=5, description="judge score used under 'fallback'")
    lenient_tags: bool = Field(
        getattr(_D, "lenient_tags", False),
        description="count tags that only a lenient reading accepts as valid (default: as the LLM-I release does, invalid)",
    )
    impute: Literal["none", "group_mean"] = Field(
        "none", description="TRL adapter: what a dropped rollout gets ('group_mean': its group's mean, advantage 0)")

    @field_validator("tool_weights")
    @classmethod
    def _known_tools(cls, value: dict[str, float]) -> dict[str, float]:
        from ..tools.spec import SOURCES

        unknown = sorted(set(value) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown tool(s) {', '.join(unknown)} in tool_weights; the tools are {', '.join(SOURCES)}")
        return value

    @model_validator(mode="after")
    def _usable(self) -> "RewardSettings":
        self.to_config()  # RewardConfig's own checks (e.g. not every weight 0), reported at load time
        return self

    def to_config(self, **overrides: Any) -> RewardConfig:
        """The :class:`RewardConfig` these settings describe (``overrides`` win). Raises ``ValueError`` with
        the reason when the combination is unusable (e.g. every weight 0)."""
        values = self.model_dump(exclude={"impute"})
        values.update(overrides)
        if not _has("lenient_tags"):
            values.pop("lenient_tags", None)
        return RewardConfig(**values)
