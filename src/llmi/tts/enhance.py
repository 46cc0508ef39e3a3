"""Stage 4, enhance: improve each tool call of the selected document by its tool's own means.

The selected candidate's tools have run (the pipeline's ``execute`` step); each slot is then worked on
by its tool's improver, the independent ones at once (``[tts.enhance] concurrency``):

* ``search`` — the policy rewrites the query (``rewrites`` alternatives); each alternative is searched,
  and the images found (the first pick included) are compared by how well they match the tag's
  description: graded by the image judge when one is configured, else by the share of the
  description's words found in the image's title and caption. A new image replaces the first pick
  only when it matches better by ``min_gain``; a failed search is replaced by any match.
* ``diffusion`` — the policy writes ``k`` richer prompts; their images and the first one are graded by
  the image judge (best of k + 1). Without an image judge nothing can choose, so the slot is skipped.
* ``code`` — a chart that failed goes back to the policy with its code and error; the fix runs in the
  sandbox; up to ``max_fixes`` rounds, each with the latest error.
* ``edit`` — the image judge compares the result with the instruction (before and after images);
  a failed edit, or one graded below ``threshold``, is retried with an instruction the policy rewrote.
  Without an image judge a successful edit is kept unchecked; a failed one is still retried.

Only a slot that improved is replaced (:meth:`~.execute.Runner.replace`), and the edits that depend on
it are re-run on the new image. The edit slots are examined after the others, so they judge the images
they will finally edit. A grade that could not be obtained (judge failure) never counts: the slot then
falls back to the caption match (search), or is left as it was.

Everything is best-effort within the budget: a refused call stops that slot's work (the stage reports
``cut``), and what was improved before stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..document import Document, FailureBlock, ImageBlock
from ..images import ImageData
from ..protocol import ToolCall
from ..reward.judges import ScoreParseError, load_prompt
from ..tools.search.candidates import overlap, tokens
from .budget import BudgetExhausted
from .calls import Chat, ChatFailure, gather_settled
from .config import EnhanceSettings
from .cost import Cost, charging, charging_only
from .execute import Runner, call_of

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Pure helpers
# ------------------------------------------------------------------------------------------------


def parse_lines(reply: str, *, limit: int, exclude: Sequence[str] = ()) -> list[str]:
    """Non-empty lines of a reply, list markers and quotes removed, duplicates and ``exclude`` dropped."""
    from ..reward.judges import strip_reasoning

    seen = {" ".join(e.lower().split()) for e in exclude}
    out = []
    for line in strip_reasoning(reply).splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip("\"'`").strip()
        key = " ".join(line.lower().split())
        if not line or key in seen or line.endswith(":"):
            continue
        seen.add(key)
        out.append(line)
        if len(out) >= limit:
            break
    if not out:
        raise ValueError("the reply holds no usable line")
    return out


_GRADE = re.compile(r"^\W*(match|edit)\W*\s*[:：=]\s*(\d+(?:\.\d+)?)\s*(?:/\s*5)?\s*$", re.IGNORECASE | re.MULTILINE)


def parse_grade(label: str) -> Callable[[str], float]:
    """A parser for ``Match: 4`` / ``Edit: 2`` replies (1-5), giving a score in [0, 1]."""
    from ..reward.judges import strip_reasoning

    def parse(reply: str) -> float:
        text = re.sub(r"[*_`#]+", "", strip_reasoning(reply or ""))
        found = [float(v) for k, v in _GRADE.findall(text) if k.lower() == label]
        if not found:
            raise ScoreParseError(f"no '{label.title()}: <1-5>' line in the reply: {' '.join(text.split())[:100]!r}")
        v = found[-1]
        if not 1 <= v <= 5:
            raise ScoreParseError(f"{label} grade {v:g} is outside 1-5")
        return (v - 1) / 4

    return parse


def caption_match(description: str, block: ImageBlock) -> float:
    """How much of ``description`` an image's own title and caption say (0-1); what is known about a
    search result without looking at it."""
    p = block.provenance
    text = " ".join(str(p.get(k) or "") for k in ("title", "caption", "alt", "path"))
    return overlap(tokens(description), tokens(text))


def extract_code(reply: str) -> str:
    """The code of a chart-fix reply: the (last) fenced block, else the whole reply."""
    from ..reward.judges import strip_reasoning

    text = strip_reasoning(reply)
    blocks = re.findall(r"```[\w+-]*\s*\n(.*?)```", text, re.DOTALL)
    code = (blocks[-1] if blocks else text).strip()
    if not code:
        raise ValueError("the reply holds no code")
    return code


def _drop(task: asyncio.Task) -> None:
    """Cancel a call asked ahead that is not used; an error it ended with is read (and so not logged as
    never retrieved)."""
    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()


def _noted(block: ImageBlock | FailureBlock, work: SlotWork) -> ImageBlock | FailureBlock:
    """The replacement with a ``tts`` note in its provenance: what enhancement did to this slot (so the
    document itself says which images test-time scaling changed)."""
    if not isinstance(block, ImageBlock):
        return block
    how = {"search": "query rewrite", "diffusion": "best of k", "code": "chart fix", "edit": "instruction rewrite"}
    note: dict[str, Any] = {"enhanced": how.get(work.tool, work.tool)}
    for key in ("chosen", "scored_by"):
        if key in work.detail:
            note[key] = work.detail[key]
    if work.tool == "code":
        note["fixes"] = len(work.detail.get("attempts", []))
    return dataclasses.replace(block, provenance={**block.provenance, "tts": note})


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------


@dataclass
class SlotWork:
    """What happened to one slot."""

    slot: int
    tool: str
    action: str = "kept"  # kept | replaced | skipped | cut
    detail: dict[str, Any] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    replacement: ImageBlock | FailureBlock | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "tool": self.tool, "action": self.action, **self.detail,
                "cost": self.cost.to_dict()}


@dataclass
class EnhanceState:
    """The document as it stands (best so far) and the work done; survives a cut."""

    document: Document
    work: list[SlotWork] = field(default_factory=list)
    cut: str | None = None


class Enhancer:
    """Improves the slots of one document (see the module doc)."""

    def __init__(self, runner: Runner, policy: Chat, image_judge: Chat | None, settings: EnhanceSettings,
                 *, helper_max_tokens: int = 1024, on_slot: Callable[[SlotWork, str], None] | None = None):
        self.runner = runner
        self.policy = policy
        self.judge = image_judge
        self.cfg = settings
        self.max_tokens = helper_max_tokens
        self.on_slot = on_slot
        self._lock = asyncio.Lock()
        #: Model calls asked ahead (:meth:`prefetch`): ``(kind, slot) -> (prompt, task)``.
        self._ahead: dict[tuple[str, int], tuple[str, asyncio.Task]] = {}
        #: Per slot, the cost of what was asked ahead for it (it becomes the slot's cost).
        self._ahead_cost: dict[int, Cost] = {}
        #: Everything asked ahead, for the stage's bill (no seconds: it ran under the execute stage).
        self.prefetch_cost = Cost()

    # -- asking ahead ----------------------------------------------------------------------------------
    def prefetch(self, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
        """Start, while the winner's tools first run, the model calls this stage will make whatever they
        return: the query rewrites of each search, the richer prompts of each diffusion (with an image
        judge), and the fix of each chart whose code is sure to fail (:mod:`.codecheck`). Each is
        charged to this stage and to its slot. Returns what was started (for the trace)."""
        from ..tools.code.backend import clean_code
        from .codecheck import predict_failure

        started: list[dict[str, Any]] = []
        for tc in calls:
            sub = getattr(self.cfg, tc.source, None)
            if sub is None or not sub.enabled:
                continue
            if tc.source == "search" and self.cfg.search.rewrites:
                user = self._rewrite_prompt(tc)
                self._start("rewrite", tc.index, user,
                            self._ask_lines("tts_query_rewrite", user, self.cfg.search.rewrites,
                                            [str(tc.params.get("query", ""))]))
            elif tc.source == "diffusion" and self.judge is not None:
                user = self._enrich_prompt(tc)
                self._start("enrich", tc.index, user,
                            self._ask_lines("tts_prompt_enrich", user, self.cfg.diffusion.k,
                                            [str(tc.params.get("prompt", ""))]))
            elif tc.source == "code" and self.cfg.code.max_fixes:
                code = clean_code(str(tc.params.get("code", "")))
                predicted = predict_failure(code)
                if predicted is None:
                    continue
                msgs = self._fix_messages(tc, str(tc.params.get("code", "")), predicted)
                self._start("fix", tc.index, predicted,
                            self.policy.ask(msgs, extract_code, max_tokens=max(self.max_tokens, 2048)))
            else:
                continue
            started.append({"slot": tc.index, "tool": tc.source,
                            "ask": {"search": "query rewrites", "diffusion": "richer prompts",
                                    "code": "chart fix"}[tc.source]})
        return started

    def _start(self, kind: str, slot: int, prompt: str, coro: Any) -> None:
        cost = self._ahead_cost.setdefault(slot, Cost())
        with charging_only(self.prefetch_cost, cost):
            task = asyncio.ensure_future(coro)
        self._ahead[(kind, slot)] = (prompt, task)

    def _take(self, kind: str, slot: int, prompt: str | None = None) -> asyncio.Task | None:
        """The call asked ahead for ``slot`` — when it was asked with ``prompt`` (any, with ``None``);
        one asked otherwise is cancelled."""
        entry = self._ahead.pop((kind, slot), None)
        if entry is None:
            return None
        if prompt is not None and entry[0] != prompt:
            _drop(entry[1])
            return None
        return entry[1]

    def discard(self) -> None:
        """Cancel whatever was asked ahead and not used (its calls, once sent, stay on the bill)."""
        for _, task in self._ahead.values():
            _drop(task)
        self._ahead.clear()

    # -- the stage ----------------------------------------------------------------------------------
    async def run(self, state: EnhanceState) -> dict[str, Any]:
        try:
            return await self._run(state)
        finally:
            self.discard()

    async def _run(self, state: EnhanceState) -> dict[str, Any]:
        slots = list(enumerate(state.document.slots))
        first = [(k, b) for k, b in slots if self._tool(b) in ("search", "diffusion", "code")]
        edits = [k for k, b in slots if self._tool(b) == "edit"]
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def guarded(k: int) -> None:
            async with sem:
                await self._slot(state, k)

        await gather_settled(*(guarded(k) for k, _ in first))
        for k in edits:  # in order: an edit of an edit sees the latest image
            await self._slot(state, k)
        counts: dict[str, int] = {}
        for w in state.work:
            counts[w.action] = counts.get(w.action, 0) + 1
        return {"slots": len(slots), **counts, "image_judge": self.judge.name if self.judge else None}

    @staticmethod
    def _tool(block: ImageBlock | FailureBlock) -> str | None:
        call = call_of(block)
        return call.get("source") if call else None

    async def _slot(self, state: EnhanceState, k: int) -> None:
        block = state.document.slots[k]
        call = call_of(block)
        if call is None:
            return
        tool = call["source"]
        sub = getattr(self.cfg, tool)
        work = SlotWork(k, tool, cost=self._ahead_cost.pop(k, None) or Cost())
        if not sub.enabled:
            work.action, work.detail = "skipped", {"why": f"[tts.enhance.{tool}] enabled = false"}
            state.work.append(work)
            return
        if self.on_slot:
            self.on_slot(work, "started")
        t0 = time.perf_counter()
        tc = ToolCall(k, tool, call.get("description", ""), dict(call.get("params", {})))
        with charging(work.cost):
            try:
                improve = getattr(self, f"_{tool}")
                await improve(state, work, tc, block)
                if work.replacement is not None:
                    work.replacement = _noted(work.replacement, work)
                    async with self._lock:
                        state.document = await self.runner.replace(state.document, k, work.replacement)
                    work.action = "replaced"
            except BudgetExhausted as exc:
                work.action, state.cut = "cut", state.cut or exc.resource
                work.detail["why"] = str(exc)
            finally:
                work.cost.seconds = time.perf_counter() - t0
        state.work.append(work)
        if self.on_slot:
            self.on_slot(work, "finished")

    # -- helpers ----------------------------------------------------------------------------------
    def _rewrite_prompt(self, tc: ToolCall) -> str:
        return (f"Description of the picture: {tc.description}\nQuery used: {tc.params.get('query', '')}\n"
                f"Write {self.cfg.search.rewrites} better queries.")

    def _enrich_prompt(self, tc: ToolCall) -> str:
        return (f"Description of the picture: {tc.description}\nPrompt used: {tc.params.get('prompt', '')}\n"
                f"Write {self.cfg.diffusion.k} richer prompts.")

    @staticmethod
    def _fix_messages(tc: ToolCall, code: str, error: str) -> list[dict[str, Any]]:
        user = (f"Description of the chart: {tc.description}\n\nThe code:\n```python\n{code}\n```\n\n"
                f"The error:\n{error}")
        return [{"role": "system", "content": load_prompt("tts_chart_fix")}, {"role": "user", "content": user}]

    async def _ask_lines(self, system: str, user: str, limit: int, exclude: Sequence[str]) -> list[str]:
        msgs = [{"role": "system", "content": load_prompt(system)}, {"role": "user", "content": user}]
        return await self.policy.ask(msgs, lambda r: parse_lines(r, limit=limit, exclude=exclude),
                                     max_tokens=self.max_tokens)

    async def _grade(self, label: str, prompt: str, text: str, images: Sequence[ImageData]) -> float | None:
        """The image judge's grade (0-1), or ``None`` when it failed (never a stand-in)."""
        assert self.judge is not None
        msgs = [{"role": "system", "content": load_prompt(prompt)}, {"role": "user", "content": text}]
        try:
            return await self.judge.ask(msgs, parse_grade(label), images=images)
        except ChatFailure as exc:
            log.info("image judge failed: %s", exc)
            return None

    # -- search -----------------------------------------------------------------------------------
    async def _search(self, state: EnhanceState, work: SlotWork, tc: ToolCall, block) -> None:
        cfg = self.cfg.search
        query = str(tc.params.get("query", ""))
        alts: list[str] = []
        if cfg.rewrites:
            user = self._rewrite_prompt(tc)
            ahead = self._take("rewrite", tc.index, user)
            try:
                alts = await (ahead if ahead is not None else
                              self._ask_lines("tts_query_rewrite", user, cfg.rewrites, [query]))
            except ChatFailure as exc:
                work.detail["rewrite_error"] = exc.reason
        work.detail["queries"] = alts
        results = await gather_settled(*(self.runner.call(ToolCall(tc.index, "search", tc.description, {"query": q}))
                                         for q in alts))
        pool: list[ImageBlock] = [block] if isinstance(block, ImageBlock) else []
        seen = {b.image.sha256 for b in pool}
        refused = None
        for r in results:
            if isinstance(r, BudgetExhausted):
                refused = r
            elif isinstance(r, ImageBlock) and r.image.sha256 not in seen:
                seen.add(r.image.sha256)
                pool.append(r)
        work.detail["candidates"] = len(pool)
        if pool:
            scores, by = await self._match_scores(tc.description, pool)
            work.detail["scores"] = [round(s, 3) for s in scores]
            work.detail["scored_by"] = by
            best = max(range(len(pool)), key=lambda i: (scores[i], -i))
            if isinstance(block, FailureBlock) or best != 0 and scores[best] >= scores[0] + cfg.min_gain:
                work.replacement = pool[best]
            if work.replacement is not None:
                work.detail["chosen"] = work.replacement.provenance.get("query") or work.replacement.params.get("query")
        if refused is not None and work.replacement is None:
            raise refused

    async def _match_scores(self, description: str, pool: Sequence[ImageBlock]) -> tuple[list[float], str]:
        """Match grades of ``pool`` against ``description``: all by the image judge, or — when there is
        none or any of its grades failed — all by caption match, so that every grade is of one kind."""
        if self.judge is not None:
            text = f"Description of the picture that was asked for: {description}"
            grades = await gather_settled(*(self._grade("match", "tts_image_match", text, [b.image]) for b in pool))
            if all(isinstance(g, float) for g in grades):
                return list(grades), "image judge"  # type: ignore[arg-type]
            for g in grades:
                if isinstance(g, BudgetExhausted):
                    raise g
            by = "caption match (image judge failed)"
        else:
            by = "caption match"
        return [caption_match(description, b) for b in pool], by

    # -- diffusion --------------------------------------------------------------------------------
    async def _diffusion(self, state: EnhanceState, work: SlotWork, tc: ToolCall, block) -> None:
        if self.judge is None:
            work.action, work.detail["why"] = "skipped", "no image judge to choose the best of k"
            return
        k = self.cfg.diffusion.k
        prompt = str(tc.params.get("prompt", ""))
        user = self._enrich_prompt(tc)
        ahead = self._take("enrich", tc.index, user)
        try:
            prompts = await (ahead if ahead is not None else self._ask_lines("tts_prompt_enrich", user, k, [prompt]))
        except ChatFailure as exc:
            work.detail["why"] = f"no richer prompt: {exc.reason}"
            return
        work.detail["prompts"] = prompts
        results = await gather_settled(*(self.runner.call(ToolCall(tc.index, "diffusion", tc.description, {"prompt": p}))
                                         for p in prompts))
        pool: list[ImageBlock] = [block] if isinstance(block, ImageBlock) else []
        refused = None
        for r in results:
            if isinstance(r, BudgetExhausted):
                refused = r
            elif isinstance(r, ImageBlock):
                pool.append(r)
        if not pool:
            if refused:
                raise refused
            work.detail["why"] = "no image was made"
            return
        text = f"Description of the picture that was asked for: {tc.description}"
        grades = await gather_settled(*(self._grade("match", "tts_image_match", text, [b.image]) for b in pool))
        for g in grades:
            if isinstance(g, BudgetExhausted):
                raise g
        work.detail["scores"] = [None if g is None else round(g, 3) for g in grades]
        has_orig = isinstance(block, ImageBlock)
        if has_orig and grades[0] is None:
            work.detail["why"] = "the first image could not be graded, so nothing can be shown to be better"
            return
        graded = [(g, i) for i, g in enumerate(grades) if isinstance(g, float)]
        if not graded:
            work.detail["why"] = "no image could be graded"
            return
        g, i = max(graded, key=lambda t: (t[0], -t[1]))
        if not has_orig or (i != 0 and g > grades[0] + 1e-9):  # type: ignore[operator]
            work.replacement = pool[i]
            work.detail["chosen"] = pool[i].params.get("prompt")

    # -- code ---------------------------------------------------------------------------------------
    async def _code(self, state: EnhanceState, work: SlotWork, tc: ToolCall, block) -> None:
        from .codecheck import same_failure

        entry = self._ahead.get(("fix", tc.index))
        predicted = entry[0] if entry is not None else None
        ahead = self._take("fix", tc.index)
        if isinstance(block, ImageBlock) or block.kind in ("budget", "cancelled"):
            if ahead is not None:  # the failure foreseen did not happen: the early fix is not used
                _drop(ahead)
                work.detail["fix_asked_ahead"] = "not used: " + ("the chart rendered" if isinstance(block, ImageBlock)
                                                                 else f"the chart did not run ({block.kind})")
            if isinstance(block, ImageBlock):
                work.detail["why"] = "the chart rendered"
            else:
                work.action, work.detail["why"] = "skipped", f"not a chart error ({block.kind})"
            return
        if ahead is not None and not same_failure(predicted or "", block.reason):
            _drop(ahead)
            work.detail["fix_asked_ahead"] = "not used: the chart failed otherwise than foreseen"
            ahead = None
        code, error = str(tc.params.get("code", "")), block.reason
        attempts: list[dict[str, Any]] = []
        work.detail["attempts"] = attempts
        for n in range(self.cfg.code.max_fixes):
            asked = ahead if n == 0 else None
            try:
                fixed = await (asked if asked is not None else
                               self.policy.ask(self._fix_messages(tc, code, error), extract_code,
                                               max_tokens=max(self.max_tokens, 2048)))
            except ChatFailure as exc:
                attempts.append({"error": exc.reason})
                return
            result = await self.runner.call(ToolCall(tc.index, "code", tc.description, {"code": fixed}))
            note = {"asked_ahead": True} if asked is not None else {}
            if isinstance(result, ImageBlock):
                attempts.append({"ok": True, **note})
                work.replacement = result
                return
            attempts.append({"ok": False, "kind": result.kind, "reason": result.reason[:300], **note})
            code, error = fixed, result.reason

    # -- edit ---------------------------------------------------------------------------------------
    async def _edit(self, state: EnhanceState, work: SlotWork, tc: ToolCall, _block) -> None:
        block = state.document.slots[tc.index]  # the latest: an earlier replacement may have re-run it
        if isinstance(block, FailureBlock) and block.kind in ("dependency_failed", "budget", "cancelled"):
            work.action, work.detail["why"] = "skipped", f"not an edit failure ({block.kind})"
            return
        src = tc.params.get("img_index")
        before = self.runner.input_of(state.document, src) if isinstance(src, int) else None
        if before is None:
            work.action, work.detail["why"] = "skipped", "the image it edits is missing"
            return
        cfg = self.cfg.edit
        instruction = str(tc.params.get("prompt", ""))

        async def grade(b: ImageBlock, instr: str) -> float | None:
            if self.judge is None:
                return None
            return await self._grade("edit", "tts_edit_check", f"The instruction: {instr}\nFirst image: before; second: after.",
                                     [before, b.image])

        best: ImageBlock | None = block if isinstance(block, ImageBlock) else None
        best_grade = await grade(best, instruction) if best is not None else None
        work.detail["grades"] = [None if best_grade is None else round(best_grade, 3)]
        threshold = (cfg.threshold - 1) / 4
        if best is not None and (self.judge is None or best_grade is None or best_grade >= threshold):
            work.detail["why"] = ("unchecked: no image judge" if self.judge is None else
                                  "the image judge failed; kept as it is" if best_grade is None else "good enough")
            return
        why = block.reason if isinstance(block, FailureBlock) else f"graded {best_grade:.2f} (threshold {threshold:.2f})"
        for _ in range(cfg.retries):
            try:
                lines = await self._ask_lines(
                    "tts_edit_rewrite",
                    f"Description of the result: {tc.description}\nInstruction used: {instruction}\nWhy it fell short: {why}",
                    1, [instruction])
            except ChatFailure as exc:
                work.detail["rewrite_error"] = exc.reason
                break
            params = {"img_index": src, "prompt": lines[0]}
            cand = await self.runner.call(ToolCall(tc.index, "edit", tc.description, params), before)
            if not isinstance(cand, ImageBlock):
                why = cand.reason
                work.detail["grades"].append(None)
                continue
            g = await grade(cand, lines[0])
            work.detail["grades"].append(None if g is None else round(g, 3))
            if best is None or (g is not None and best_grade is not None and g > best_grade + 1e-9):
                best, best_grade = cand, g
                work.replacement, work.detail["chosen"] = cand, lines[0]
            if g is not None and g >= threshold:
                break
            why = f"graded {g:.2f}" if g is not None else why
