"""Stage 2, check: validate each candidate's tags with the protocol's own rules. Pure; no model call.

A candidate fails the check (a *hard* problem) when one of its tags is invalid or never closed, when an
``edit`` refers to a tag that cannot produce an image, when the number of valid tags differs from the
image count the request states (``image_num``, with the reward's meaning: -1 none, 0 any, 99 at least
one, N exactly N), when a tool the request requires is never used, or when it has no prose at all.
Format slips that still render — filler such as "Here is an image:" before a tag, a tag inside a code
fence (shown as text), a tag that could only be read leniently — are *soft* problems: they cost a little in selection but never drop a candidate.

The image count is judged on valid tags, since no tool has run yet: a valid tag is the image the
candidate plans. Whether the tool then succeeds is the enhance stage's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol import SOURCES, InvalidTag, ParsedResponse, ToolCall, parse_response
from ..reward.rules import check_image_num, image_count_score

#: Violations already counted as hard problems through their invalid tag.
_HARD_VIOLATIONS = ("invalid_tag", "unclosed_tag")


@dataclass(frozen=True)
class Constraints:
    """What the request states about the answer's images (``None``: nothing stated)."""

    image_num: int | None = None
    tools: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.image_num is not None:
            check_image_num(self.image_num)
        if self.tools is not None:
            unknown = [t for t in self.tools if t not in SOURCES]
            if unknown:
                raise ValueError(f"unknown tool(s) {unknown}; the tools are {', '.join(SOURCES)}")

    @classmethod
    def of(cls, request: Any) -> Constraints:
        """The constraints a request value states (its ``image_num`` and ``tools`` attributes, if any)."""
        n = getattr(request, "image_num", None)
        tools = getattr(request, "tools", None)
        return cls(n, tuple(tools) if tools is not None else None)


@dataclass(frozen=True)
class CheckResult:
    """The check of one candidate. ``hard`` problems make it invalid; ``soft`` ones only cost."""

    index: int
    hard: tuple[str, ...] = ()
    soft: tuple[str, ...] = ()
    n_tags: int = 0
    n_valid: int = 0
    sources: tuple[str, ...] = ()
    s_num: float = 1.0
    text_chars: int = 0

    @property
    def valid(self) -> bool:
        return not self.hard

    def penalty(self, per_hard: float, per_soft: float) -> float:
        return per_hard * len(self.hard) + per_soft * len(self.soft)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.index,
            "valid": self.valid,
            "hard": list(self.hard),
            "soft": list(self.soft),
            "tags": self.n_tags,
            "valid_tags": self.n_valid,
            "sources": list(self.sources),
            "s_num": round(self.s_num, 4),
        }


def check_parsed(index: int, parsed: ParsedResponse, constraints: Constraints = Constraints(),
                 n_input_images: int = 0) -> CheckResult:
    """Check one parsed candidate against the protocol and the request's ``constraints``."""
    hard: list[str] = []
    soft: list[str] = []
    slots = parsed.slots
    bad_slots = {s.index for s in slots if isinstance(s, InvalidTag)}
    for s in slots:
        if isinstance(s, InvalidTag):
            hard.append(f"tag {s.index}: {s.reason}")
    for v in parsed.violations:
        if v.kind not in _HARD_VIOLATIONS:
            soft.append(f"{v.kind}: {v.detail}")
    # an edit of a tag that cannot produce an image will fail too (its chain, transitively)
    for s in slots:
        if isinstance(s, ToolCall) and s.source == "edit":
            dep = s.depends_on
            if dep is not None and dep >= n_input_images and (dep - n_input_images) in bad_slots:
                hard.append(f"tag {s.index}: edits image {dep}, whose tag is invalid")
                bad_slots.add(s.index)
    calls = [s for s in slots if isinstance(s, ToolCall) and s.index not in bad_slots]
    sources = tuple(dict.fromkeys(c.source for c in calls))
    s_num = 1.0
    if constraints.image_num is not None:
        s_num = image_count_score(constraints.image_num, len(calls))
        if s_num < 1.0:
            hard.append(f"image count: {len(calls)} valid tag(s), the request asks for {_asked(constraints.image_num)}")
    if constraints.tools:
        missing = [t for t in constraints.tools if t not in sources]
        if missing:
            hard.append(f"required tool(s) not used: {', '.join(missing)}")
    text = parsed.text.strip()
    if not text:
        hard.append("no prose: the answer is tags only" if slots else "empty answer")
    return CheckResult(
        index=index,
        hard=tuple(hard),
        soft=tuple(soft),
        n_tags=len(slots),
        n_valid=len(calls),
        sources=sources,
        s_num=s_num,
        text_chars=len(text),
    )


def check_response(index: int, response: str, constraints: Constraints = Constraints(),
                   n_input_images: int = 0) -> CheckResult:
    """:func:`check_parsed` on a raw response (reasoning dropped by the parser)."""
    return check_parsed(index, parse_response(response, n_input_images), constraints, n_input_images)


def _asked(image_num: int) -> str:
    return {-1: "none", 0: "any number", 99: "at least one"}.get(image_num, f"exactly {image_num}")


@dataclass
class Screen:
    """Which candidates go on to selection, and why the others did not."""

    kept: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    #: True when every candidate failed and the least bad ones were kept anyway.
    all_failed: bool = False


def screen(results: Sequence[CheckResult], policy: str = "drop") -> Screen:
    """Apply the ``invalid`` policy: ``drop`` keeps the valid candidates — or, when none is valid, those
    with the fewest hard problems (so there is always something to return); ``penalise`` keeps all."""
    if not results:
        return Screen()
    if policy == "penalise":
        return Screen(kept=[r.index for r in results], all_failed=not any(r.valid for r in results))
    if policy != "drop":
        raise ValueError(f"invalid policy must be 'drop' or 'penalise', got {policy!r}")
    valid = [r.index for r in results if r.valid]
    if valid:
        return Screen(kept=valid, dropped=[r.index for r in results if not r.valid])
    fewest = min(len(r.hard) for r in results)
    kept = [r.index for r in results if len(r.hard) == fewest]
    return Screen(kept=kept, dropped=[r.index for r in results if r.index not in kept], all_failed=True)
