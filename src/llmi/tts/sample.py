"""Stage 1, sample: N candidate responses from the policy, in parallel, each with its own seed and
temperature. No tool runs here: a candidate is the raw tagged response.

Candidate ``i`` is sampled at ``temperatures[i % len(temperatures)]`` (the ``[llm]`` temperature when the
schedule is empty) with seed ``seed + i`` (none when ``seed`` is ``None``), so a run is reproducible on a
server that honours seeds and the candidates differ even where the temperatures repeat. Candidate 0
uses the first temperature of the schedule — with ``n = 1`` and the default schedule it is what a single
``llmi generate`` writes.

The N calls share one backend instance (each call returns its own result); the budget may allow fewer
than N, in which case fewer are sampled and the stage says so. A candidate whose call fails is recorded
with its error and left out; only when every call fails does the stage fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..document import Document
from ..errors import LLMError
from ..images import ImageData
from ..protocol import StreamParser, ToolCall, parse_response
from .budget import BudgetExhausted, Meter
from .calls import PolicyChat
from .cost import Cost, charging

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One sampled response. ``response`` is the raw text as streamed (reasoning in ``<think>``)."""

    index: int
    temperature: float | None
    seed: int | None
    response: str = ""
    finish_reason: str | None = None
    error: str | None = None
    cost: Cost = field(default_factory=Cost)
    #: Its executed document when its tools ran while it was written (``[tts] speculative``).
    document: Document | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"candidate": self.index, "temperature": self.temperature, "seed": self.seed,
                             "finish_reason": self.finish_reason, "cost": self.cost.to_dict(),
                             "response": self.response}
        if self.error:
            d["error"] = self.error
        return d


def schedule(n: int, temperatures: Sequence[float], seed: int | None, default_temperature: float | None
             ) -> list[tuple[float | None, int | None]]:
    """``(temperature, seed)`` for each of ``n`` candidates. Pure.

    >>> schedule(3, [0.7, 1.0], 5, 0.2)
    [(0.7, 5), (1.0, 6), (0.7, 7)]
    >>> schedule(2, [], None, 0.2)
    [(0.2, None), (0.2, None)]
    """
    out = []
    for i in range(n):
        t = temperatures[i % len(temperatures)] if temperatures else default_temperature
        out.append((t, None if seed is None else seed + i))
    return out


async def sample(
    chat: PolicyChat,
    messages: list[dict[str, Any]],
    *,
    images: Sequence[ImageData] = (),
    plan: Sequence[tuple[float | None, int | None]],
    meter: Meter,
    out: list[Candidate],
    on_candidate: Callable[[Candidate, str], None] | None = None,
    max_tokens: int | None = None,
    top_p: float | None = None,
    extra_body: dict[str, Any] | None = None,
    runner: Any = None,
) -> dict[str, Any]:
    """Sample one candidate per ``plan`` entry (as many as the budget grants) into ``out`` as each
    finishes — ``out`` keeps the finished ones if the stage is cut. ``on_candidate(c, "started" |
    "finished")`` reports progress. Returns the stage detail; raises LLMError if no call succeeded."""
    granted = meter.affordable(len(plan))
    if granted == 0:
        raise BudgetExhausted(meter.exhausted[-1] if meter.exhausted else "calls",
                              "budget exhausted: no LLM call left to sample a candidate")
    cands = [Candidate(i, t, s) for i, (t, s) in enumerate(plan[:granted])]
    refused: list[str] = []

    async def one(c: Candidate) -> None:
        t0 = time.perf_counter()
        if on_candidate:
            on_candidate(c, "started")
        with charging(c.cost):
            spec = _Speculation(runner, c.seed, getattr(chat.llm, "starts_in_think", None)) if runner else None
            try:
                reply = await chat.complete(messages, images=images, temperature=c.temperature, seed=c.seed,
                                            max_tokens=max_tokens, top_p=top_p, extra_body=extra_body,
                                            on_delta=spec.feed if spec else None)
                c.response, c.finish_reason = reply.raw, reply.finish_reason
                if spec is not None:
                    c.document = await spec.finish(c.response)
                    spec = None
            except BudgetExhausted as exc:
                c.error = str(exc)
                refused.append(exc.resource)
            except LLMError as exc:
                c.error = f"{type(exc).__name__}: {exc}"
            finally:
                if spec is not None:
                    await spec.cancel()
                c.cost.seconds = time.perf_counter() - t0
        out.append(c)
        if on_candidate:
            on_candidate(c, "finished")

    await asyncio.gather(*(one(c) for c in cands))
    out.sort(key=lambda c: c.index)
    ok = [c for c in out if c.ok]
    detail: dict[str, Any] = {"asked": len(plan), "sampled": len(cands), "ok": len(ok),
                              "failed": {c.index: c.error for c in out if not c.ok}}
    if granted < len(plan):
        detail["reduced_by_budget"] = len(plan) - granted
        detail["_cut"] = meter.note("seconds" if meter.seconds_left() == 0 else "calls")
    if refused:  # some calls were refused (a token budget): the stage is cut, the finished ones stay
        detail["_cut"] = refused[0]
    if not ok and refused:
        raise BudgetExhausted(refused[0], f"budget exhausted ({refused[0]}): no candidate could be sampled")
    if not ok:
        first = next((c.error for c in out if c.error), "no candidate")
        raise LLMError(f"every candidate failed; the first: {first}")
    return detail


class _Speculation:
    """A candidate's tools run while it streams (``[tts] speculative``): the parser's segments go to an
    engine session as they arrive, as in ``llmi generate``."""

    def __init__(self, runner: Any, seed: int | None, starts_in_think: bool | None):
        self.runner = runner
        self.session = runner.session(seed=seed)
        self.parser = StreamParser(runner.n_inputs, start_in_think=bool(starts_in_think))

    def feed(self, delta: str) -> None:
        for seg in self.parser.feed(delta):
            self.session.add(seg)

    async def finish(self, response: str) -> Document | None:
        """The executed document — or ``None`` when the streamed reading of the tags differs from the
        whole-response reading the check and the selection use (then the winner is run again)."""
        for seg in self.parser.close():
            self.session.add(seg)
        doc = await self.session.finish(self.parser.violations, self.parser.amended)
        whole = [(s.source, s.params) if isinstance(s, ToolCall) else None
                 for s in parse_response(response, self.runner.n_inputs).slots]
        streamed = [((b.call or {}).get("source"), (b.call or {}).get("params")) if getattr(b, "call", None) else None
                    for b in doc.slots]
        if whole != streamed:
            log.info("speculative run discarded: the streamed tags differ from the whole response's")
            return None
        return doc

    async def cancel(self) -> None:
        await self.session.cancel()
