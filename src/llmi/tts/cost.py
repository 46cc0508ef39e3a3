"""What a stage cost: LLM calls, tokens in and out, tool calls by source, wall time. Pure values.

Every model request counts as one call — a judge retry too, since it is paid for. Tokens are what the
server reported (``usage``); a call whose server reported no usage is counted with an estimate of its
prompt and reply and flagged in ``estimated_calls``, so a table never passes a guess off as a count.

The stage being charged is a context variable (:func:`charging`), so a call made anywhere below a stage
— in a task it spawned too — is charged to it without passing a cost object through every function.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


def estimate_tokens(text: str) -> int:
    """A deliberate over-estimate of the tokens in ``text`` (about 3 characters per token; a CJK
    character counts as one). Used before a call, to keep within a token budget, and for servers that
    report no usage."""
    if not text:
        return 0
    wide = sum(1 for ch in text if ord(ch) > 0x2E7F)
    return wide + (len(text) - wide + 2) // 3


#: What an image is taken to cost in prompt tokens when estimating (vision encoders use ~250-1,600).
IMAGE_TOKENS = 1600


@dataclass
class Cost:
    """Resources used. ``tool_calls`` is per source (``search``, ``code``, ...)."""

    llm_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tool_calls: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    #: Calls whose tokens are estimates (the server reported no usage).
    estimated_calls: int = 0

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    @property
    def n_tool_calls(self) -> int:
        return sum(self.tool_calls.values())

    def add_call(self, usage: Mapping[str, Any] | None, *, est_in: int = 0, est_out: int = 0) -> None:
        """One model request; ``usage`` as the server reported it (``prompt_tokens``/``completion_tokens``)."""
        self.llm_calls += 1
        tin = _int(usage.get("prompt_tokens")) if usage else None
        tout = _int(usage.get("completion_tokens")) if usage else None
        if tin is None and tout is None:
            self.estimated_calls += 1
            self.tokens_in += est_in
            self.tokens_out += est_out
            return
        self.tokens_in += tin or 0
        self.tokens_out += tout or 0

    def add_tool(self, source: str, n: int = 1) -> None:
        self.tool_calls[source] += n

    def absorb(self, other: Cost) -> None:
        """Add ``other``'s calls, tokens and tool calls — not its seconds — to this cost (work done ahead
        for this stage, while an earlier one ran: its wall time was not this stage's)."""
        self.llm_calls += other.llm_calls
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.tool_calls.update(other.tool_calls)
        self.estimated_calls += other.estimated_calls

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            llm_calls=self.llm_calls + other.llm_calls,
            tokens_in=self.tokens_in + other.tokens_in,
            tokens_out=self.tokens_out + other.tokens_out,
            tool_calls=self.tool_calls + other.tool_calls,
            seconds=self.seconds + other.seconds,
            estimated_calls=self.estimated_calls + other.estimated_calls,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "llm_calls": self.llm_calls,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tool_calls": dict(sorted(self.tool_calls.items())),
            "seconds": round(self.seconds, 3),
        }
        if self.estimated_calls:
            d["estimated_calls"] = self.estimated_calls
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cost:
        return cls(
            llm_calls=int(d.get("llm_calls", 0)),
            tokens_in=int(d.get("tokens_in", 0)),
            tokens_out=int(d.get("tokens_out", 0)),
            tool_calls=Counter({str(k): int(v) for k, v in (d.get("tool_calls") or {}).items()}),
            seconds=float(d.get("seconds", 0.0)),
            estimated_calls=int(d.get("estimated_calls", 0)),
        )

    def summary(self) -> str:
        """``3 calls, 1.2k+640 tok, search 2 code 1, 4.1 s`` — for one progress line."""
        parts = [f"{self.llm_calls} call{'s' if self.llm_calls != 1 else ''}"]
        if self.tokens:
            parts.append(f"{_k(self.tokens_in)}+{_k(self.tokens_out)} tok")
        if self.tool_calls:
            parts.append(" ".join(f"{k} {v}" for k, v in sorted(self.tool_calls.items())))
        parts.append(f"{self.seconds:.1f} s")
        return ", ".join(parts)


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


# ------------------------------------------------------------------------------------------------
# The stage being charged
# ------------------------------------------------------------------------------------------------

_CURRENT: contextvars.ContextVar[tuple[Cost, ...]] = contextvars.ContextVar("llmi_tts_cost", default=())


@contextlib.contextmanager
def charging(*costs: Cost) -> Iterator[None]:
    """Charge what happens inside (and in tasks created inside) to ``costs`` as well as to the costs
    already being charged — a candidate's cost and its stage's cost, for instance."""
    now = _CURRENT.get()
    token = _CURRENT.set(now + tuple(c for c in costs if all(c is not x for x in now)))
    try:
        yield
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def charging_only(*costs: Cost) -> Iterator[None]:
    """Charge what happens inside (and in tasks created inside) to ``costs`` alone — for work started
    under one stage on behalf of a later one (a candidate judged while others are still being written,
    an enhancement's model call made while the winner's tools run)."""
    token = _CURRENT.set(tuple(costs))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> tuple[Cost, ...]:
    """The costs being charged now (outermost first)."""
    return _CURRENT.get()


def charge_call(usage: Mapping[str, Any] | None, *, est_in: int = 0, est_out: int = 0) -> None:
    for c in _CURRENT.get():
        c.add_call(usage, est_in=est_in, est_out=est_out)


def charge_tool(source: str, n: int = 1) -> None:
    for c in _CURRENT.get():
        c.add_tool(source, n)
