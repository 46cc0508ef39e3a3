"""The LLM-I hybrid reward as pure functions on values: rules, tool score, and how the parts combine.

No I/O here. :mod:`llmi.reward.judges` asks the judges, :mod:`llmi.reward.scoring` runs the tools and the judges and
feeds their numbers to :func:`combine`. Keeping the arithmetic pure means every boundary of the rules
can be tested exhaustively and the formula can be audited in one screen.

The reward (defaults reproduce the LLM-I paper, arXiv 2509.13642)::

    S_num  = image_count_score(image_num, V)          rule-based, in [0, 1]
    S_llm  = ((1.4·text + 0.6·image) / 2 − 1) / 4      LLM judge on the raw response with its tags
    S_mllm = (mean(quality, task_rel, text_image_rel) − 1) / 4   MLLM judge on the executed document
    R      = 0.2·S_num + 0.3·S_mllm·S_num + 0.5·S_llm

``S_mllm`` is multiplied by ``S_num`` so that nice pictures cannot make up for the wrong number of
them. ``r_tool`` is computed and reported; the paper only logs it, and so do we unless
:attr:`RewardConfig.w_tool` is set above 0. The weighted sum is divided by the sum of the weights,
which is 1 for the paper's defaults, so ``R`` stays in [0, 1] whatever weights are configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

from ..protocol import InvalidTag, ParsedResponse, TagErrorKind, ToolCall
from ..tools.spec import TOOLS

#: ``image_num`` values with a special meaning (anything ``> 0`` asks for exactly that many images).
NO_IMAGES = -1  # the answer must contain no image
ANY_IMAGES = 0  # no constraint
SOME_IMAGES = 99  # at least one image, any number

#: The paper's tool difficulty weights (code 0.4, edit 0.3, search 0.2, diffusion 0.1), from the tool table.
DEFAULT_TOOL_WEIGHTS: dict[str, float] = {name: spec.reward_weight for name, spec in TOOLS.items()}

TRAIN_SPLITS = frozenset({"train"})
EVAL_SPLITS = frozenset({"test", "eval", "validation", "val", "dev"})


@dataclass(frozen=True)
class RewardConfig:
    """Every knob of the hybrid reward. The defaults are the paper's; change one only on purpose.

    Field groups:

    * ``w_num``, ``w_mllm``, ``w_llm``, ``w_tool`` — weights of the terms of ``R``. ``w_tool`` is 0 in
      the paper (``r_tool`` is logged only). ``R`` is divided by the sum of the weights.
    * ``text_weight``, ``image_weight`` — how the two LLM-judge scores mix into ``S_llm``.
    * ``quality_weight``, ``task_weight``, ``text_image_weight`` — the same for the three MLLM scores.
    * ``over_penalty`` — per extra image, what ``S_num`` loses when more images than asked are made.
    * ``tool_weights``, ``tool_beta`` — ``r_tool = β·r_success + (1−β)·r_attempt`` with weighted tools.
    * ``no_image_mllm`` — the MLLM scores used when no image was produced (nothing to judge; the paper
      counts it as 5, 5, 5). ``max_images`` / ``too_many_mllm`` — above this many images the MLLM judge
      is not asked and these scores are used (paper: 10 and 1, 1, 1).
    * ``empty_text_is_worst`` — a response with tags and no prose gets text score 1, as in the paper.
    * ``on_judge_error`` — what a judge that still fails after its retries does to the sample:
      ``"drop"`` (score ``None``; the sample carries no reward) or ``"fallback"`` (the failed scores are
      replaced by ``fallback_score``, except that a tags-only response keeps text 1 under
      ``empty_text_is_worst``; the error is still reported). The reference implementation
      silently used 1 — the worst score — which teaches the policy that a judge outage was its fault.
    * ``lenient_tags`` — whether a tag that llmi reads only leniently (a fence inside the tag, a raw newline
      in a quoted string, text around the object; see :mod:`llmi.protocol`) counts as valid. Default
      ``False``: it counts as invalid — no attempt, no image — as the LLM-I release's parser rejects it,
      so a policy trained with llmi learns the format the paper's policy learned (:func:`reward_reading`).
    """

    w_num: float = 0.2
    w_mllm: float = 0.3
    w_llm: float = 0.5
    w_tool: float = 0.0
    text_weight: float = 1.4
    image_weight: float = 0.6
    quality_weight: float = 1.0
    task_weight: float = 1.0
    text_image_weight: float = 1.0
    over_penalty: float = 0.3
    tool_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TOOL_WEIGHTS))
    tool_beta: float = 0.5
    no_image_mllm: tuple[float, float, float] = (5.0, 5.0, 5.0)
    max_images: int = 10
    too_many_mllm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    empty_text_is_worst: bool = True
    on_judge_error: Literal["drop", "fallback"] = "drop"
    fallback_score: float = 3.0
    lenient_tags: bool = False

    def __post_init__(self) -> None:
        weights = {"w_num": self.w_num, "w_mllm": self.w_mllm, "w_llm": self.w_llm, "w_tool": self.w_tool}
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"RewardConfig.{name} must be >= 0, got {value}")
        if sum(weights.values()) <= 0:
            raise ValueError("RewardConfig: at least one of w_num, w_mllm, w_llm, w_tool must be > 0")
        if self.text_weight < 0 or self.image_weight < 0 or self.text_weight + self.image_weight <= 0:
            raise ValueError("RewardConfig: text_weight and image_weight must be >= 0 and not both 0")
        mllm = (self.quality_weight, self.task_weight, self.text_image_weight)
        if min(mllm) < 0 or sum(mllm) <= 0:
            raise ValueError("RewardConfig: the three MLLM weights must be >= 0 and not all 0")
        if not 0.0 <= self.tool_beta <= 1.0:
            raise ValueError(f"RewardConfig.tool_beta must be in [0, 1], got {self.tool_beta}")
        if self.over_penalty < 0:
            raise ValueError(f"RewardConfig.over_penalty must be >= 0, got {self.over_penalty}")
        if self.on_judge_error not in ("drop", "fallback"):
            raise ValueError(f"RewardConfig.on_judge_error must be 'drop' or 'fallback', got {self.on_judge_error!r}")
        _check_judge_score(self.fallback_score, "RewardConfig.fallback_score")
        for name in ("no_image_mllm", "too_many_mllm"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"RewardConfig.{name} needs three scores, got {value!r}")
            for v in value:
                _check_judge_score(v, f"RewardConfig.{name}")
        if any(w < 0 for w in self.tool_weights.values()):
            raise ValueError("RewardConfig.tool_weights must be >= 0")

    @property
    def weight_sum(self) -> float:
        return self.w_num + self.w_mllm + self.w_llm + self.w_tool


def _check_judge_score(value: float, what: str) -> None:
    if not 1.0 <= value <= 5.0:
        raise ValueError(f"{what} must be a judge score in [1, 5], got {value}")


# ------------------------------------------------------------------------------------------------
# Rules
# ------------------------------------------------------------------------------------------------


def is_eval_split(split: str) -> bool:
    """True for evaluation splits (binary image-count rule). Raises ValueError for unknown names."""
    s = (split or "train").strip().lower()
    if s in TRAIN_SPLITS:
        return False
    if s in EVAL_SPLITS:
        return True
    raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")


def check_image_num(image_num: Any) -> int:
    """Validate an ``image_num`` value from data: an integer, ``-1`` or more."""
    if isinstance(image_num, bool) or not isinstance(image_num, int):
        raise ValueError(f"image_num must be an integer (-1, 0, 99 or N > 0), got {image_num!r}")
    if image_num < NO_IMAGES:
        raise ValueError(f"image_num must be -1 (no image), 0 (any), 99 (at least one) or N > 0; got {image_num}")
    return image_num


def image_count_score(image_num: int, produced: int, *, eval: bool = False, over_penalty: float = 0.3) -> float:
    """``S_num``: how well the number of produced images ``V`` matches what the sample asked for.

    >>> image_count_score(-1, 0), image_count_score(0, 7), image_count_score(99, 0)
    (1.0, 1.0, 0.0)
    >>> image_count_score(4, 2), image_count_score(2, 3), image_count_score(2, 3, eval=True)
    (0.5, 0.7, 0.0)

    Training gives partial credit (``V/N`` when short, ``1 − 0.3·(V−N)`` floored at 0 when over);
    evaluation is binary for ``N > 0``: only the exact count scores.
    """
    n = check_image_num(image_num)
    if produced < 0:
        raise ValueError(f"the number of produced images cannot be negative ({produced})")
    if n == NO_IMAGES:
        return 1.0 if produced == 0 else 0.0
    if n == ANY_IMAGES:
        return 1.0
    if n == SOME_IMAGES:
        return 1.0 if produced > 0 else 0.0
    if produced == n:
        return 1.0
    if eval:
        return 0.0
    if produced < n:
        return produced / n
    # round away binary noise (1 - 0.3*1 = 0.7000000000000001) so equal counts give equal rewards
    return round(max(0.0, 1.0 - over_penalty * (produced - n)), 12)


@dataclass(frozen=True)
class ToolScore:
    """``r_tool`` and the two rates it mixes (see :func:`tool_score`)."""

    r_tool: float
    r_attempt: float
    r_success: float


def tool_score(
    required: Iterable[str],
    attempted: Iterable[str],
    succeeded: Iterable[str],
    *,
    weights: Mapping[str, float] | None = None,
    beta: float = 0.5,
) -> ToolScore:
    """``r_tool = β·r_success + (1−β)·r_attempt`` over the tools the sample requires.

    For each required tool ``t`` with weight ``w_t``: ``attempt_t`` is 1 when the response has at least
    one *valid* tag with source ``t``; ``success_t`` is 1 when at least one such tag produced an image.
    ``r_attempt = Σ w_t·attempt_t / Σ w_t`` and likewise ``r_success``, both over the required tools
    only (using a tool that was not asked for neither helps nor hurts). This is how the reference
    implementation computes it. No required tools (or only zero-weight ones) gives 0, as in the paper.

    >>> tool_score({"code", "search"}, {"code", "search"}, {"search"}).r_tool  # doctest: +ELLIPSIS
    0.66...
    """
    w = DEFAULT_TOOL_WEIGHTS if weights is None else weights
    req = set(required)
    denominator = sum(w.get(t, 0.0) for t in req)
    if denominator <= 0:
        return ToolScore(0.0, 0.0, 0.0)
    att = req & set(attempted)
    suc = req & set(succeeded)  # a success implies an attempt; callers derive both from the same tags
    r_attempt = sum(w.get(t, 0.0) for t in att) / denominator
    r_success = sum(w.get(t, 0.0) for t in suc) / denominator
    return ToolScore(beta * r_success + (1 - beta) * r_attempt, r_attempt, r_success)


# ------------------------------------------------------------------------------------------------
# Combination
# ------------------------------------------------------------------------------------------------


def llm_component(text: float, image: float, cfg: RewardConfig = RewardConfig()) -> float:
    """``S_llm`` in [0, 1] from the two 1–5 LLM-judge scores."""
    _check_judge_score(text, "text score")
    _check_judge_score(image, "image score")
    mean = (cfg.text_weight * text + cfg.image_weight * image) / (cfg.text_weight + cfg.image_weight)
    return (mean - 1.0) / 4.0


def mllm_component(quality: float, task_rel: float, text_image_rel: float, cfg: RewardConfig = RewardConfig()) -> float:
    """``S_mllm`` in [0, 1] from the three 1–5 MLLM-judge scores."""
    for value, what in ((quality, "quality"), (task_rel, "task relevance"), (text_image_rel, "text-image relevance")):
        _check_judge_score(value, f"{what} score")
    weights = (cfg.quality_weight, cfg.task_weight, cfg.text_image_weight)
    mean = (weights[0] * quality + weights[1] * task_rel + weights[2] * text_image_rel) / sum(weights)
    return (mean - 1.0) / 4.0


def combine(s_num: float, s_llm: float, s_mllm: float, r_tool: float = 0.0, cfg: RewardConfig = RewardConfig()) -> float:
    """``R = (w_num·S_num + w_mllm·S_mllm·S_num + w_llm·S_llm + w_tool·r_tool) / Σw``, in [0, 1].

    With the default weights (sum 1) this is the paper's ``0.2·S_num + 0.3·S_mllm·S_num + 0.5·S_llm``.
    """
    for value, what in ((s_num, "S_num"), (s_llm, "S_llm"), (s_mllm, "S_mllm"), (r_tool, "r_tool")):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{what} must be in [0, 1], got {value}")
    total = cfg.w_num * s_num + cfg.w_mllm * s_mllm * s_num + cfg.w_llm * s_llm + cfg.w_tool * r_tool
    return min(1.0, max(0.0, total / cfg.weight_sum))


def mllm_rule(produced: int, cfg: RewardConfig = RewardConfig()) -> tuple[str, tuple[float, float, float] | None]:
    """Whether the MLLM judge is asked: ``("judge", None)``, or a rule and the scores it fixes.

    ``("no_images", no_image_mllm)`` when nothing was produced, ``("too_many_images", too_many_mllm)``
    above ``max_images``.
    """
    if produced == 0:
        return "no_images", cfg.no_image_mllm
    if produced > cfg.max_images:
        return "too_many_images", cfg.too_many_mllm
    return "judge", None


# ------------------------------------------------------------------------------------------------
# Format checks and the per-sample result
# ------------------------------------------------------------------------------------------------


def reward_reading(parsed: ParsedResponse, cfg: RewardConfig = RewardConfig()) -> ParsedResponse:
    """The tags as the reward counts them: a lenient reading is an invalid tag unless ``cfg.lenient_tags``.

    The document still shows such a tag's picture (render and generate run it); only the reward follows
    the LLM-I release, whose parser rejects it (:meth:`~llmi.protocol.ParsedResponse.release_reading`).
    """
    return parsed if cfg.lenient_tags else parsed.release_reading()


def unrewarded_slots(parsed: ParsedResponse, n_input_images: int = 0) -> frozenset[int]:
    """Slots of a reward reading whose image, if a document has one, the reward does not count.

    A tag the reading made invalid for its leniency, and every edit that builds on such an image (in
    the release that image never existed, so the edit had nothing to edit). Needed for documents made
    elsewhere (a row's ``document``, an injected executor); the engine run on the reward reading
    already leaves those slots without an image.
    """
    out: set[int] = set()
    for s in parsed.slots:
        if isinstance(s, InvalidTag) and s.kind is TagErrorKind.LENIENT:
            out.add(s.index)
        elif isinstance(s, ToolCall) and s.depends_on is not None and s.depends_on - n_input_images in out:
            out.add(s.index)
    return frozenset(out)


def format_violations(parsed: Any) -> list[dict[str, Any]]:
    """The protocol's format problems of one parsed response as plain dicts (for logs and JSONL).

    ``parsed`` is a :class:`llmi.protocol.ParsedResponse`; its violations already cover invalid and
    unclosed tags, tags inside code fences and filler introductions ("Here is an image:").
    """
    return [
        {"kind": v.kind, "detail": v.detail, "tag_index": v.tag_index, "offset": v.offset}
        for v in parsed.violations
    ]


@dataclass
class RewardResult:
    """Every component of one sample's reward, and what went wrong.

    ``score`` is ``None`` when the sample must not be trained on (a judge failed under the ``drop``
    policy, the tools could not be run, the input was unusable) or when judges were switched off
    (``llmi reward --no-judges``, ``RewardScorer(judges=False)``): ``R`` needs both judges, so without
    them only the rule parts (``s_num``, ``r_tool``, ``r_attempt``, ``r_success``, ``n_images``,
    ``violations``) are filled, ``mllm`` is ``"off"`` and ``errors`` stays empty — nothing failed,
    nothing was guessed.
    ``errors`` maps a component (``llm_judge``, ``mllm_judge``, ``execute``, ``input``) to the reason.
    ``mllm`` says where the MLLM scores came from: ``judged``, ``no_images`` (nothing to judge; the
    configured scores are used in ``s_mllm`` but the reported scores stay ``None``),
    ``too_many_images``, ``error``, ``fallback`` or ``off``.
    """

    score: float | None = None
    s_num: float | None = None
    s_llm: float | None = None
    s_mllm: float | None = None
    r_tool: float | None = None
    r_attempt: float | None = None
    r_success: float | None = None
    text: float | None = None
    image: float | None = None
    quality: float | None = None
    task_rel: float | None = None
    text_image_rel: float | None = None
    mllm: str = "off"
    n_images: int | None = None
    n_tags: int = 0
    n_valid_tags: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return self.score is None and bool(self.errors)

    def to_dict(self) -> dict[str, Any]:
        """The ``"reward"`` object of ``llmi reward`` output rows (key names are a public contract)."""

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        return {
            "score": r(self.score),
            "s_num": r(self.s_num),
            "s_llm": r(self.s_llm),
            "s_mllm": r(self.s_mllm),
            "r_tool": r(self.r_tool),
            "text": self.text,
            "image": self.image,
            "quality": self.quality,
            "task_rel": self.task_rel,
            "text_image_rel": self.text_image_rel,
            "errors": dict(self.errors),
            "violations": list(self.violations),
            "r_attempt": r(self.r_attempt),
            "r_success": r(self.r_success),
            "mllm": self.mllm,
            "n_images": self.n_images,
            "n_tags": self.n_tags,
            "n_valid_tags": self.n_valid_tags,
            "fallback": list(self.fallback),
        }


def assemble(
    result: RewardResult,
    *,
    llm: tuple[float, float] | None,
    llm_error: str | None,
    mllm: tuple[float, float, float] | None,
    mllm_error: str | None,
    mllm_source: str,
    empty_text: bool,
    cfg: RewardConfig = RewardConfig(),
) -> RewardResult:
    """Fill the judge parts of ``result`` (whose rule parts are set) and compute the final score.

    ``mllm_source`` is ``judge``, ``no_images`` or ``too_many_images`` (see :func:`mllm_rule`); for the
    rules, ``mllm`` holds the fixed scores. A judge that failed (``*_error`` set) is recorded in
    ``errors`` and handled by ``cfg.on_judge_error``.
    """
    if result.s_num is None or result.r_tool is None:
        raise ValueError("assemble() needs the rule parts (s_num, r_tool) first")
    if llm_error is not None:
        result.errors["llm_judge"] = llm_error
    if mllm_error is not None:
        result.errors["mllm_judge"] = mllm_error

    # LLM judge. "Tags only → text 1" is a rule about the response, so it holds for a fallback too.
    worst_text = empty_text and cfg.empty_text_is_worst
    if llm is not None:
        text, image = llm
        if worst_text:
            text = 1.0
        result.text, result.image = text, image
        llm_scores: tuple[float, float] | None = (text, image)
    elif cfg.on_judge_error == "fallback":
        result.fallback.append("llm_judge")
        llm_scores = (1.0 if worst_text else cfg.fallback_score, cfg.fallback_score)
    else:
        llm_scores = None

    # MLLM judge or its rules
    mllm_scores: tuple[float, float, float] | None
    if mllm_source == "judge":
        if mllm is not None:
            result.quality, result.task_rel, result.text_image_rel = mllm
            result.mllm = "judged"
            mllm_scores = mllm
        elif cfg.on_judge_error == "fallback":
            result.fallback.append("mllm_judge")
            result.mllm = "fallback"
            mllm_scores = (cfg.fallback_score,) * 3
        else:
            result.mllm = "error"
            mllm_scores = None
    else:
        if mllm is None:
            raise ValueError(f"the {mllm_source} rule needs its fixed MLLM scores")
        result.mllm = mllm_source
        mllm_scores = mllm
        if mllm_source == "too_many_images":  # a penalty, so it is shown; "no_images" is not a judgement
            result.quality, result.task_rel, result.text_image_rel = mllm

    if llm_scores is not None:
        result.s_llm = llm_component(*llm_scores, cfg)
    if mllm_scores is not None:
        result.s_mllm = mllm_component(*mllm_scores, cfg)
    if result.s_llm is None or result.s_mllm is None:
        result.score = None  # drop: a failed judge is not a score
    else:
        result.score = combine(result.s_num, result.s_llm, result.s_mllm, result.r_tool, cfg)
    return result
