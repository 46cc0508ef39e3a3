"""Running tags for the pipeline: every tool call is granted by the budget and charged to the stage.

:class:`Runner` wraps an open :class:`~llmi.engine.Engine`. The engine does what it always does
(concurrency caps, retries, fallbacks, cache, edits waiting for their image); the runner only stands
between it and each backend call: the call asks the :class:`~.budget.Meter` for a tool call first, and
one that the budget refuses becomes a failure block of kind ``budget`` — the document keeps its slot,
and the stage learns that it was cut. Cached results count as tool calls too (whether a call will be
served from the cache is not known before it is made).

:meth:`Runner.replace` puts a better block into one slot and re-runs the edits that depend on it
(directly or through other edits) — through :meth:`Engine.replace_slot` when the engine has it, else
with the same rule implemented here on :meth:`Document.with_slot`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from ..document import Document, FailureBlock, ImageBlock
from ..images import ImageData
from ..protocol import ToolCall, parse_response
from ..tools.spec import SOURCES
from .budget import BudgetExhausted, Meter

log = logging.getLogger(__name__)


def budget_failure(call: ToolCall, exc: BudgetExhausted) -> FailureBlock:
    return FailureBlock(call.source, f"not run: {exc}", "budget", call.description, dict(call.params))


def call_dict(call: ToolCall) -> dict[str, Any]:
    return {"source": call.source, "description": call.description, "params": dict(call.params)}


def call_of(block: ImageBlock | FailureBlock) -> dict[str, Any] | None:
    """The tool call that made ``block`` (``None`` for a tag that was no valid call)."""
    call = getattr(block, "call", None)
    if call is not None:
        return call
    if getattr(block, "raw", ""):
        return None
    if block.tool in SOURCES and block.params:
        return {"source": block.tool, "description": block.description, "params": dict(block.params)}
    return None


def with_origin(block: ImageBlock | FailureBlock, slot: int, call: ToolCall) -> ImageBlock | FailureBlock:
    """``block`` with its slot and call recorded (where the document model has those fields)."""
    names = {f.name for f in dataclasses.fields(block)}
    changes: dict[str, Any] = {}
    if "slot" in names:
        changes["slot"] = slot
    if "call" in names and getattr(block, "call", None) is None:
        changes["call"] = call_dict(call)
    return dataclasses.replace(block, **changes) if changes else block


class _Gate:
    """The engine as a run session sees it, with every ``execute`` granted by the meter first."""

    def __init__(self, runner: Runner):
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner.engine, name)

    async def execute(self, call: ToolCall, input_image: ImageData | None = None, *args: Any, **kw: Any):
        try:
            self._runner.meter.reserve_tool(call.source)
        except BudgetExhausted as exc:
            self._runner.refused.append(exc)
            return budget_failure(call, exc)
        return await self._runner.engine.execute(call, input_image, *args, **kw)


class Runner:
    """Tool execution for one pipeline run (see the module doc)."""

    def __init__(self, engine: Any, meter: Meter, input_images: Sequence[ImageData] = (), *, run_id: str = ""):
        self.engine = engine
        self.meter = meter
        self.input_images = list(input_images)
        self.run_id = run_id
        #: Tool calls the budget refused, in order.
        self.refused: list[BudgetExhausted] = []
        self._gate = _Gate(self)

    @property
    def n_inputs(self) -> int:
        return len(self.input_images)

    async def run_response(self, response: str, *, on_event: Any = None, seed: int | None = None) -> Document:
        """Execute a candidate's tags (the engine's session, with the budget in front of each call).
        ``seed``: the candidate's sampling seed, handed to its generative tools."""
        parsed = parse_response(response, self.n_inputs)
        session = self.session(seed=seed, on_event=on_event)
        try:
            for seg in parsed.segments:
                session.add(seg)
            return await session.finish(parsed.violations)
        except BaseException:
            await session.cancel()
            raise

    def session(self, *, seed: int | None = None, on_event: Any = None) -> Any:
        """An engine run session (segments added as a response streams) with the budget in front of
        each call."""
        session = self.engine.session(self.input_images, on_event, run_id=self.run_id or None, seed=seed)
        session.engine = self._gate
        return session

    async def call(self, call: ToolCall, input_image: ImageData | None = None) -> ImageBlock | FailureBlock:
        """One tool call outside a response (enhancement's alternatives). Refused by the budget: raises
        :class:`BudgetExhausted` (the caller decides whether that cuts its stage)."""
        self.meter.reserve_tool(call.source)
        block = await self.engine.execute(call, input_image)
        return with_origin(block, call.index, call)

    def input_of(self, doc: Document, img_index: int) -> ImageData | None:
        """The image ``img_index`` refers to in ``doc`` (a user image, or an earlier slot's image)."""
        if img_index < self.n_inputs:
            return self.input_images[img_index]
        slots = doc.slots
        k = img_index - self.n_inputs
        if 0 <= k < len(slots) and isinstance(slots[k], ImageBlock):
            return slots[k].image
        return None

    def dependents(self, doc: Document, slot: int) -> list[int]:
        """Slots whose edits depend on ``slot``, directly or through other edits, in order."""
        affected = {slot}
        out = []
        for k, b in enumerate(doc.slots):
            if k <= slot:
                continue
            call = call_of(b)
            if call and call.get("source") == "edit":
                i = call.get("params", {}).get("img_index")
                if isinstance(i, int) and i >= self.n_inputs and (i - self.n_inputs) in affected:
                    affected.add(k)
                    out.append(k)
        return out

    async def replace(self, doc: Document, slot: int, block: ImageBlock | FailureBlock) -> Document:
        """``doc`` with ``block`` in ``slot`` and every dependent edit re-run. The re-runs are granted
        by the budget up front; when it cannot grant them all, :class:`BudgetExhausted` is raised and
        ``doc`` is left as it was (a half-updated edit chain would be worse than none)."""
        deps = self.dependents(doc, slot)
        if deps:
            self.meter.reserve_tool("edit", len(deps))
        replace_slot = getattr(self.engine, "replace_slot", None)
        if replace_slot is not None:
            return await replace_slot(doc, slot, block)
        new = doc.with_slot(slot, block)
        for k in deps:
            call = call_of(new.slots[k])
            assert call is not None
            tc = ToolCall(k, "edit", call.get("description", ""), dict(call["params"]))
            src = tc.params["img_index"]
            image = self.input_of(new, src)
            if image is None:
                prior = new.slots[src - self.n_inputs]
                reason = getattr(prior, "reason", "it failed")
                fresh: ImageBlock | FailureBlock = FailureBlock(
                    "edit", f"the image it edits (index {src}) failed: {reason}", "dependency_failed",
                    tc.description, dict(tc.params))
            else:
                fresh = await self.engine.execute(tc, image)
            new = new.with_slot(k, with_origin(fresh, k, tc))
        return new
