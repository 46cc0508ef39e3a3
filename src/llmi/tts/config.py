"""The ``[tts]`` table: defaults for test-time scaling, each field with its help text.

::

    [tts]
    n = 4
    temperatures = [0.7, 0.9, 1.0, 0.6]
    selector = "judge"           # judge | tournament | reward
    judge = "auto"               # auto | llm_judge | policy
    polish_model = "policy"      # policy | llm_judge | mllm_judge
    budget = "calls=40,seconds=120"

    [tts.enhance.code]
    max_fixes = 2

Imported by :mod:`llmi.config` (``Settings.tts``), so this module depends on pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The stages in pipeline order.
STAGE_NAMES = ("sample", "check", "select", "enhance", "polish")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchEnhance(_Section):
    """``search`` slots: rewrite the query, then choose among the images found by how well they match."""

    enabled: bool = Field(True, description="improve search slots")
    rewrites: int = Field(2, ge=0, le=8, description="alternative queries the LLM writes for each search slot")
    min_gain: float = Field(
        0.05, ge=0, le=1,
        description="a new image replaces the first pick only when its match score (0-1) is higher by at least this",
    )


class DiffusionEnhance(_Section):
    """``diffusion`` slots: a richer prompt, best of k by the MLLM judge."""

    enabled: bool = Field(True, description="improve diffusion slots (needs an image judge to choose)")
    k: int = Field(2, ge=1, le=8, description="extra images, each from a richer prompt the LLM writes")


class CodeEnhance(_Section):
    """``code`` slots: a chart that failed goes back to the LLM with its error, and the fix is re-run."""

    enabled: bool = Field(True, description="repair failed charts")
    max_fixes: int = Field(2, ge=0, le=8, description="fix attempts per failed chart (R), each run in the sandbox")


class EditEnhance(_Section):
    """``edit`` slots: the result is checked against the instruction; a weak or failed edit is retried."""

    enabled: bool = Field(True, description="check edits (the image judge compares the result with the instruction)")
    threshold: float = Field(
        3.5, ge=1, le=5, description="an edit the image judge grades below this (1-5) is retried with a clearer instruction"
    )
    retries: int = Field(1, ge=0, le=4, description="rewritten instructions tried per weak or failed edit")


class EnhanceSettings(_Section):
    """Per-tool enhancement."""

    image_judge: Literal["auto", "mllm_judge", "off"] = Field(
        "auto",
        description="who looks at images: 'mllm_judge' ([mllm_judge] endpoint); 'auto' uses it when its "
        "base_url is set; 'off' (or no endpoint) falls back to title/caption matching, and skips what "
        "only eyes can judge",
    )
    concurrency: int = Field(4, ge=1, description="slots improved at once")
    search: SearchEnhance = Field(default_factory=SearchEnhance, description="[tts.enhance.search]")
    diffusion: DiffusionEnhance = Field(default_factory=DiffusionEnhance, description="[tts.enhance.diffusion]")
    code: CodeEnhance = Field(default_factory=CodeEnhance, description="[tts.enhance.code]")
    edit: EditEnhance = Field(default_factory=EditEnhance, description="[tts.enhance.edit]")


class TTSSettings(_Section):
    """Test-time scaling (``llmi generate --tts N``, ``llmi.tts(...)``, ``llmi eval --tts N``)."""

    n: int = Field(4, ge=1, le=64, description="candidates sampled in parallel")
    temperatures: list[float] = Field(
        default_factory=lambda: [0.7, 0.9, 1.0, 0.6],
        description="temperature of candidate i is temperatures[i % len]; empty: the [llm] temperature for all",
    )
    seed: int | None = Field(
        0, description="candidate i is sampled with seed + i (distinct, reproducible); none: no seed is sent"
    )
    speculative: bool = Field(
        False,
        description="run every candidate's tools while it is written (as llmi generate does), so the winner's "
        "document is ready when selection ends; faster, but N times the tool calls",
    )
    stages: list[str] = Field(
        default_factory=lambda: list(STAGE_NAMES),
        description="the stages to run, from sample, check, select, enhance, polish (sample is always run)",
    )
    invalid: Literal["drop", "penalise"] = Field(
        "drop",
        description="candidates whose tags fail the check: 'drop' them (unless all fail: then the least bad is "
        "kept), or 'penalise' them in selection",
    )
    penalty: float = Field(0.25, ge=0, le=1, description="score (0-1) a candidate loses per failed check")
    soft_penalty: float = Field(
        0.05, ge=0, le=1, description="score lost per format slip that does not stop a tag (filler intro, fenced tag)"
    )
    selector: Literal["judge", "tournament", "reward"] = Field(
        "judge",
        description="'judge': the LLM judge's text and tag-plan scores; 'tournament': pairwise matches; "
        "'reward': the full hybrid reward after running every candidate's tools (expensive)",
    )
    judge: Literal["auto", "llm_judge", "policy"] = Field(
        "auto",
        description="which model selects: the [llm_judge] endpoint, or the writing model itself; 'auto' "
        "uses [llm_judge] when its base_url is set",
    )
    tournament_swap: bool = Field(
        True, description="tournament: judge each pair in both orders (a split verdict is a tie, broken by the check)"
    )
    tie_break: Literal["pairwise", "order"] = Field(
        "pairwise",
        description="judge selector: equal top scores are settled by one pairwise match ('pairwise') or by "
        "the check and sampling order ('order')",
    )
    polish_model: Literal["policy", "llm_judge", "mllm_judge"] = Field(
        "policy", description="which model rewrites the text around the final images"
    )
    polish_mode: Literal["paragraphs", "full"] = Field(
        "paragraphs",
        description="'paragraphs': the model returns only the paragraphs it changes (images cannot move); "
        "'full': it writes the whole document again, with a marker per image, verified before use",
    )
    polish_images: bool = Field(
        True, description="send the final images to the polishing model when it can see them"
    )
    judge_max_tokens: int = Field(
        1024, ge=16,
        description="reply cap for grading calls (judge endpoints, or the policy as judge); raise it for a "
        "judge that reasons before it grades",
    )
    helper_max_tokens: int = Field(
        1024, ge=16, description="reply cap for short helper calls (query rewrites, prompt enrichment, chart fixes)"
    )
    budget: str = Field(
        "", description="default budget, e.g. 'calls=40,tool_calls=30,tokens=200k,seconds=120'; empty: none"
    )
    enhance: EnhanceSettings = Field(default_factory=EnhanceSettings, description="[tts.enhance]: per-tool enhancement")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        return normalise_stages(stages)

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, temps: list[float]) -> list[float]:
        bad = [t for t in temps if not 0 <= t <= 2]
        if bad:
            raise ValueError(f"temperatures must be in [0, 2], got {bad}")
        return temps


def normalise_stages(stages: list[str] | tuple[str, ...] | str) -> list[str]:
    """Known stage names in pipeline order (``"sample,select"`` or a list); ``sample`` is always in.
    Raises ValueError for an unknown name."""
    if isinstance(stages, str):
        stages = [s for s in stages.replace(" ", ",").split(",") if s]
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(STAGE_NAMES)}")
    wanted = set(stages) | {"sample"}
    return [s for s in STAGE_NAMES if s in wanted]
