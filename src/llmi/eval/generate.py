"""The generation step of an evaluation: one function, :func:`generate_item`, for plain runs and for
test-time scaling.

A plain run is :func:`llmi.generation.agenerate` with the run's shared LLM backend and engine (one of each
per run, or per Ray worker). With ``tts=N`` the request goes through :func:`llmi.tts.tts` instead (sample N
candidates, check, select, improve), whose per-stage cost is kept with the document so that ``llmi eval
--tts`` can report the score and the cost of each stage.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..document import Document


@dataclass
class Generated:
    """A finished document plus what it cost."""

    document: "Document"
    response: str = ""
    model: str = ""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    elapsed_s: float = 0.0
    #: Per-stage cost of a test-time-scaling run (``llmi.tts``), else empty.
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: The document after each stage that changed it (``llmi.tts``), judged too: the score after each stage.
    snapshots: dict[str, "Document"] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """What the run folder stores next to the document."""
        return {"response": self.response, "model": self.model, "usage": self.usage,
                "finish_reason": self.finish_reason, "elapsed_s": round(self.elapsed_s, 3), "stages": self.stages}


async def generate_item(request: Any, settings: Any, tts: int | None = None, *, llm: Any = None, engine: Any = None,
                        tts_options: dict[str, Any] | None = None) -> Generated:
    """Write one item's document.

    ``request`` is an :class:`llmi.request.Request`; ``llm`` and ``engine`` are shared by the run. Raises
    :class:`~llmi.errors.LLMError` when the LLM fails (a document cut part-way is an error too: a broken
    stream says nothing about the model's quality).
    """
    if tts:
        return await _generate_tts(request, settings, tts, llm=llm, engine=engine, options=tts_options or {})
    from ..events import Event
    from ..generation import Trace, agenerate

    trace = Trace()
    usage: dict[str, Any] = {}

    def on_event(ev: Event) -> None:
        if getattr(ev, "type", None) == "usage":  # per-stream usage (groundwork event), when emitted
            usage.update(getattr(ev, "usage", None) or {})

    t0 = time.perf_counter()
    doc = await agenerate(request, settings=settings, llm=llm, engine=engine, trace=trace, on_event=on_event)
    return Generated(
        document=doc,
        response=trace.raw_response,
        model=trace.model,
        usage=usage or trace.usage,
        finish_reason=trace.finish_reason,
        elapsed_s=time.perf_counter() - t0,
    )


async def _generate_tts(request: Any, settings: Any, n: int, *, llm: Any, engine: Any,
                        options: dict[str, Any]) -> Generated:
    try:
        from ..tts.pipeline import tts as run_tts  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(f"--tts needs llmi.tts (test-time scaling), which is not available here: {exc}") from None
    params = inspect.signature(run_tts).parameters
    kw: dict[str, Any] = {"n": n, **options}
    for name, value in (("settings", settings), ("llm", llm), ("engine", engine)):
        if name in params and value is not None:
            kw[name] = value
    t0 = time.perf_counter()
    result = await run_tts(request, **kw)
    from .stages import stages_of

    stages = stages_of(result)  # every stage in the order it ran, skipped ones too
    if not stages:
        stages = _stage_costs(getattr(result, "cost", None))
        status = {getattr(r, "name", None): getattr(r, "status", None) for r in getattr(result, "stages", None) or []}
        for s in stages:
            if status.get(s.get("stage")):
                s.setdefault("status", status[s["stage"]])
    trace = getattr(result, "trace", None)
    doc = result.document
    response = getattr(result, "response", "") or (doc.to_response() if hasattr(doc, "to_response") else "")
    return Generated(
        document=doc,
        response=response,
        model=getattr(result, "model", "") or getattr(trace, "model", "") or "",
        usage=_total_usage(stages),
        elapsed_s=time.perf_counter() - t0,
        stages=stages,
        snapshots=dict(getattr(result, "snapshots", None) or {}),
    )


def _stage_costs(cost: Any) -> list[dict[str, Any]]:
    """The per-stage costs of a tts result as plain dicts, whatever shape the tts package reports."""
    if cost is None:
        return []
    if hasattr(cost, "to_dict"):
        cost = cost.to_dict()
    if isinstance(cost, dict):
        stages = cost.get("stages", cost)
        if isinstance(stages, dict):
            return [{"stage": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in stages.items()]
        if isinstance(stages, list):
            return [s if isinstance(s, dict) else {"value": s} for s in stages]
    if isinstance(cost, list):
        return [c.to_dict() if hasattr(c, "to_dict") else dict(c) for c in cost]
    return []


def _total_usage(stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    tin = sum(int(s.get("tokens_in") or 0) for s in stages)
    tout = sum(int(s.get("tokens_out") or 0) for s in stages)
    if not (tin or tout):
        return None
    return {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}
