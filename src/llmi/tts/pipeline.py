"""The test-time scaling pipeline: ``await llmi.tts(request, n=4, stages=..., budget=...)``.

::

    request ──► sample ──► check ──► select ──► execute ──► enhance ──► polish ──► document
                N drafts   tags,     judge /    winner's    per-tool    text agrees
                (parallel) counts    tournament tools run   fixes       with images
                           (free)    / reward

``execute`` is not optional — it turns the chosen draft into a document — and is reported as a stage
of its own so its tool calls are on the bill; the other stages after ``sample`` can each be switched off
(``stages=``, ``--tts-stages``, ``[tts] stages``).

Each stage runs under the run's :class:`~.budget.Meter`: with the seconds that are left as its deadline,
and every model or tool call granted by the meter. A stage that the budget stops is ``cut``: the
pipeline keeps the best it has — the candidates sampled so far, the check's ranking when selection
could not finish, the tags marked "not run" when the winner's tools could not run, the slots improved
so far — and the result names every cut stage and the resource that ran out.

Every stage reports a :class:`~llmi.events.Stage` event when it starts and when it ends (with its
:class:`~.cost.Cost`), and per candidate / per slot while it works; the winner's tool events
(``tool_started`` / ``tool_finished``) go to the same handler. :class:`TTSResult` holds the document,
the trace (everything decided and why), the cost of each stage and the document after each stage
(``snapshots``) so that evaluation can score what each stage bought: :func:`stage_table`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..document import Document, FailureBlock, ImageBlock, TextBlock
from ..errors import ConfigError, LLMError
from ..events import Stage
from ..protocol import InvalidTag, Text, ToolCall, parse_response
from .budget import Budget, BudgetExhausted, Meter
from .calls import Chat, JudgeChat, PolicyChat
from .check import CheckResult, Constraints, check_response, screen
from .config import TTSSettings, normalise_stages
from .cost import Cost, charging, charging_only
from .enhance import Enhancer, EnhanceState, SlotWork
from .execute import Runner
from .polish import polish
from .sample import Candidate, sample, schedule
from .select import (
    Pool,
    Selection,
    by_check,
    judge_candidate,
    select_by_judge,
    select_by_reward,
    select_by_tournament,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..engine import Engine
    from ..llm import LLMBackend
    from ..request import Request

log = logging.getLogger(__name__)

#: Every stage in the order it runs, ``execute`` included (the rows of :func:`stage_table`).
STAGES = ("sample", "check", "select", "execute", "enhance", "polish")


@dataclass
class StageRecord:
    """One stage as it ran: ``status`` finished | skipped | cut."""

    name: str
    status: str
    detail: dict[str, Any] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "cost": self.cost.to_dict()}


@dataclass
class TTSResult:
    """What :func:`tts` returns."""

    document: Document
    stages: list[StageRecord]
    candidates: list[Candidate]
    checks: dict[int, CheckResult]
    selection: Selection | None
    winner: int
    #: The document after each stage that changed or made it (``execute``, ``enhance``, ``polish``).
    snapshots: dict[str, Document]
    budget: dict[str, Any]
    run_id: str = ""
    #: The policy model that wrote the candidates.
    model: str = ""

    @property
    def costs(self) -> dict[str, Cost]:
        """Cost per stage as :class:`~.cost.Cost` values (skipped stages cost nothing and are left out)."""
        return {s.name: s.cost for s in self.stages if s.status != "skipped"}

    @property
    def cost(self) -> dict[str, dict[str, Any]]:
        """Cost per stage in JSON form (``llm_calls``, ``tokens_in``, ``tokens_out``, ``tool_calls`` by
        source, ``seconds``), for evaluation's per-stage table."""
        return {name: c.to_dict() for name, c in self.costs.items()}

    @property
    def response(self) -> str:
        """The winning candidate's raw response (what was selected, before enhancement and polish)."""
        return next((c.response for c in self.candidates if c.index == self.winner), "")

    @property
    def total(self) -> Cost:
        total = Cost()
        for s in self.stages:
            total = total + s.cost
        return total

    @property
    def cut(self) -> list[str]:
        """The stages the budget stopped."""
        return [s.name for s in self.stages if s.status == "cut"]

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def statistics(self) -> dict[str, Any]:
        """Cost per stage and in total, the budget and what was cut — for a document's stats / a trace."""
        return {
            "stages": {s.name: {"status": s.status, **s.cost.to_dict()} for s in self.stages},
            "total": self.total.to_dict(),
            "budget": self.budget,
            "cut": self.cut,
            "winner": self.winner,
        }

    @property
    def trace(self) -> dict[str, Any]:
        """Everything decided and why (JSON-able; the documents themselves are not in it)."""
        return {
            "run_id": self.run_id,
            "model": self.model,
            "winner": self.winner,
            "stages": [s.to_dict() for s in self.stages],
            "candidates": [c.to_dict() for c in self.candidates],
            "checks": {str(k): v.to_dict() for k, v in self.checks.items()},
            "selection": self.selection.to_dict() if self.selection else None,
            "statistics": self.statistics,
        }


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


class _Run:
    def __init__(self, req: Request, cfg: TTSSettings, settings: Settings, meter: Meter, stages: list[str],
                 n: int, on_event: Callable[[Any], None] | None):
        self.req = req
        self.cfg = cfg
        self.settings = settings
        self.meter = meter
        self.enabled = set(stages)
        self.n = n
        self.on_event = on_event
        self.records: list[StageRecord] = []
        self.candidates: list[Candidate] = []
        self.checks: dict[int, CheckResult] = {}
        self.kept: list[int] = []
        self.penalties: dict[int, float] = {}
        self.selection: Selection | None = None
        self.document: Document | None = None
        self.snapshots: dict[str, Document] = {}
        self.chats: dict[str, Chat] = {}

    # -- events -------------------------------------------------------------------------------------
    def emit(self, name: str, status: str, detail: Mapping[str, Any] | None = None, cost: Cost | None = None) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(Stage(name, status, dict(detail or {}), cost.to_dict() if cost else {}, run_id=self.req.run_id))
        except Exception:  # a broken display must not break the run
            log.exception("stage event handler failed")

    def forward(self, ev: Any) -> None:
        """Tool events of the winner's run go to the same handler (the CLI's tool lines)."""
        if self.on_event is not None and getattr(ev, "type", "") in ("tool_started", "tool_finished"):
            try:
                self.on_event(ev)
            except Exception:
                log.exception("event handler failed")

    # -- stage runner ---------------------------------------------------------------------------------
    async def stage(self, name: str, work: Callable[[], Any], *, enabled: bool = True,
                    skip_why: str = "switched off", deadline: bool = True, ahead: Cost | None = None) -> StageRecord:
        """Run one stage. ``ahead``: the cost of work done for this stage while an earlier one ran (its
        calls and tokens are this stage's; its time is not)."""
        rec = StageRecord(name, "finished")
        if not enabled:
            rec.status, rec.detail = "skipped", {"why": skip_why}
            self.records.append(rec)
            self.emit(name, "skipped", rec.detail)
            return rec
        self.emit(name, "started")
        t0 = time.perf_counter()
        left = self.meter.seconds_left() if deadline else None
        try:
            with charging(rec.cost):
                if left is None:
                    detail = await work()
                else:
                    detail = await _within(work(), left)
            rec.detail = dict(detail or {})
            cut = rec.detail.pop("_cut", None)
            if cut:
                rec.status = "cut"
                rec.detail["resource"] = cut
        except BudgetExhausted as exc:
            rec.status, rec.detail = "cut", {"resource": exc.resource, "why": str(exc)}
        except _Expired:
            if "seconds" not in self.meter.exhausted:
                self.meter.exhausted.append("seconds")
            rec.status = "cut"
            rec.detail = {"resource": "seconds", "why": f"budget exhausted (seconds): {self.meter.budget.seconds:g} s have passed"}
        finally:
            rec.cost.seconds = time.perf_counter() - t0
            if ahead is not None:
                rec.cost.absorb(ahead)
        self.records.append(rec)
        self.emit(name, rec.status, rec.detail, rec.cost)
        return rec

    # -- chats -----------------------------------------------------------------------------------------
    def chat(self, which: str, policy: PolicyChat, stack: AsyncExitStack) -> Chat:
        """``policy``, ``llm_judge`` or ``mllm_judge`` (opened on first use, closed with the run)."""
        if which == "policy":
            return policy
        if which not in self.chats:
            js = getattr(self.settings, which)
            if not js.base_url:
                raise ConfigError(f"test-time scaling wants [{which}] but it has no base_url; set it, or choose "
                                  f"another model in [tts]")
            chat = JudgeChat(js, which, self.meter, max_tokens=self.cfg.judge_max_tokens)
            stack.push_async_callback(chat.aclose)
            self.chats[which] = chat
        return self.chats[which]


class _Expired(Exception):
    """A stage ran past the seconds budget."""


async def _within(aw: Any, seconds: float) -> Any:
    """``await aw`` with a deadline; :class:`_Expired` when it passes (not an inner timeout's error)."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, seconds))
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise _Expired()


def _unrun(response: str, n_inputs: int, why: str) -> Document:
    """A candidate as a document whose tags did not run (the budget stopped them): text kept, each slot a
    failure of kind ``budget`` so the document still has every slot in place."""
    parsed = parse_response(response, n_inputs)
    blocks: list[Any] = []
    for seg in parsed.segments:
        if isinstance(seg, Text) and seg.text:
            blocks.append(TextBlock(seg.text))
        elif isinstance(seg, ToolCall):
            call = {"source": seg.source, "description": seg.description, "params": dict(seg.params)}
            blocks.append(FailureBlock(seg.source, f"not run: {why}", "budget", seg.description, dict(seg.params),
                                       slot=seg.index, call=call))
        elif isinstance(seg, InvalidTag):
            blocks.append(FailureBlock(seg.source or "unknown", seg.reason, seg.kind.value, seg.description,
                                       slot=seg.index, raw=seg.raw))
    return Document(blocks=blocks, violations=list(parsed.violations))


def _messages(req: Request, engine: Any, llm: Any, settings: Settings) -> list[dict[str, Any]]:
    """The policy's chat for ``req`` — the same one ``llmi generate`` sends."""
    from ..prompting import build_messages, build_system_prompt

    tools = engine.usable_tools()
    if req.tools is not None:
        tools = [t for t in tools if t in req.tools]
    if req.system_prompt is not None:
        from ..prompting import SystemPrompt

        system = SystemPrompt(req.system_prompt, "request")
    else:
        configured = settings.resolve_path(settings.llm.system_prompt_file) if settings.llm.system_prompt_file else None
        system = build_system_prompt(tools, path=configured)
    msgs = build_messages(req.prompt, system, n_images=len(req.images), can_see=llm.supports_images,
                          edit_usable="edit" in tools)
    return msgs[:1] + [dict(m) for m in req.history] + msgs[1:]


async def tts(
    request: Request | str,
    *,
    n: int | None = None,
    stages: Sequence[str] | str | None = None,
    budget: Budget | str | Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    llm: LLMBackend | None = None,
    engine: Engine | None = None,
    on_event: Callable[[Any], None] | None = None,
    cache: Any = None,
) -> TTSResult:
    """Run test-time scaling for ``request`` (a :class:`~llmi.request.Request` or a prompt).

    ``n``, ``stages``, ``budget`` default to ``[tts]`` in ``settings`` (which default to
    :func:`llmi.config.load_settings`). ``llm`` / ``engine`` are reused when given (else created from
    the settings and closed at the end). ``on_event`` receives :class:`~llmi.events.Stage` events and the
    winner's tool events. Raises :class:`~llmi.errors.LLMError` when no candidate could be sampled,
    :class:`~.budget.BudgetExhausted` when the budget allows not even one, and
    :class:`~llmi.errors.ConfigError` for an unusable setup (a judge asked for but not configured).
    """
    from ..config import load_settings
    from ..engine import Engine
    from ..generation import load_images
    from ..llm import create_llm
    from ..request import Request

    req = Request.of(request)
    if settings is None:
        settings = engine.settings if engine is not None else load_settings()
    cfg: TTSSettings = getattr(settings, "tts", None) or TTSSettings()
    n = cfg.n if n is None else n
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"--tts / n must be a whole number >= 1, got {n!r}")
    try:
        wanted = normalise_stages(cfg.stages if stages is None else stages)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    meter = Meter(Budget.parse(cfg.budget if budget is None else budget))
    _check_setup(cfg, settings, wanted)
    images = load_images(list(req.images), max_pixels=settings.images.max_pixels)
    constraints = Constraints.of(req)
    question = req.prompt
    run = _Run(req, cfg, settings, meter, wanted, n, on_event)

    async with AsyncExitStack() as stack:
        if engine is None:
            engine = await stack.enter_async_context(Engine(settings, cache=cache))
        if llm is None:
            llm = create_llm(settings.llm)
            stack.push_async_callback(llm.aclose)
        await llm.prepare()
        policy = PolicyChat(llm, meter, default_max_tokens=req.sampling.max_tokens or settings.llm.max_tokens)
        runner = Runner(engine, meter, images, run_id=req.run_id)
        messages = _messages(req, engine, llm, settings)

        # 1. sample -------------------------------------------------------------------------------
        temps = cfg.temperatures
        default_t = req.sampling.temperature if req.sampling.temperature is not None else settings.llm.temperature
        base_seed = req.sampling.seed if req.sampling.seed is not None else cfg.seed
        plan = schedule(n, temps if req.sampling.temperature is None else [], base_seed, default_t)

        # a candidate is judged as soon as it is written (the default selector), so that selection runs
        # under the slowest sample instead of after it; charged to select, never started for one that the
        # check will drop, nor before a second candidate could be judged (one alone needs no judge), nor
        # when the calls budget could not judge every candidate (then selection spends what is left)
        early: dict[int, asyncio.Future] = {}
        ahead_select = Cost()
        judgeable: list[Candidate] = []
        judge_early = "select" in run.enabled and cfg.selector == "judge" and len(plan) > 1

        def judge_chat() -> Chat:
            which = cfg.judge
            if which == "auto":
                which = "llm_judge" if settings.llm_judge.base_url else "policy"
            # the policy as a judge grades with the grading cap, as a judge endpoint does
            return run.chat(which, PolicyChat(llm, meter, default_max_tokens=cfg.judge_max_tokens), stack)

        def judge_soon(c: Candidate) -> None:
            nonlocal judge_early
            if ("check" in run.enabled and cfg.invalid == "drop"
                    and not check_response(c.index, c.response, constraints, len(images)).valid):
                return  # dropped by the check, unless none is valid: then it is judged after sampling
            judgeable.append(c)
            if len(judgeable) < 2:
                return
            if not early and meter.affordable(len(plan)) < len(plan):
                judge_early = False
                return
            if not early:
                stack.push_async_callback(_cancel_all, early)  # runs before the judge's client closes
            chat = judge_chat()
            for j in judgeable:
                if j.index not in early:
                    with charging_only(ahead_select):
                        early[j.index] = asyncio.ensure_future(judge_candidate(chat, question, j.response))

        def on_candidate(c: Candidate, status: str) -> None:
            if status == "finished" and c.ok and judge_early:
                try:
                    judge_soon(c)
                except Exception:  # judging early is an optimisation: selection judges what is left
                    log.exception("could not judge candidate %d early", c.index)
            detail: dict[str, Any] = {"candidate": c.index, "temperature": c.temperature, "seed": c.seed}
            if status == "finished":
                if c.ok:
                    parsed = parse_response(c.response, len(images))
                    detail.update(tags=len(parsed.slots), chars=len(parsed.text), finish_reason=c.finish_reason)
                else:
                    detail["error"] = c.error
            run.emit("sample", "started" if status == "started" else "finished", detail, c.cost)

        async def do_sample() -> dict[str, Any]:
            return await sample(policy, messages, images=images, plan=plan, meter=meter, out=run.candidates,
                                on_candidate=on_candidate, top_p=req.sampling.top_p,
                                extra_body=dict(req.sampling.extra_body) or None,
                                runner=runner if cfg.speculative else None)

        rec = await run.stage("sample", do_sample)
        ok = [c for c in run.candidates if c.ok]
        if not ok:
            if rec.status == "cut":
                raise BudgetExhausted(rec.detail.get("resource", "calls"),
                                      f"the budget ({meter.budget}) ran out before any candidate was sampled")
            raise LLMError("no candidate could be sampled")  # pragma: no cover - sample raises first

        # 2. check --------------------------------------------------------------------------------
        async def do_check() -> dict[str, Any]:
            for c in ok:
                run.checks[c.index] = check_response(c.index, c.response, constraints, len(images))
            sc = screen([run.checks[c.index] for c in ok], cfg.invalid)
            run.kept = sc.kept
            run.penalties = {i: r.penalty(cfg.penalty, cfg.soft_penalty) for i, r in run.checks.items()}
            for c in ok:
                r = run.checks[c.index]
                run.emit("check", "finished", {"candidate": c.index, "valid": r.valid,
                                               "problems": list(r.hard) + list(r.soft),
                                               "kept": c.index in sc.kept})
            d = {"policy": cfg.invalid, "kept": sc.kept, "dropped": sc.dropped,
                 "valid": [i for i, r in run.checks.items() if r.valid]}
            if sc.all_failed:
                d["all_failed"] = True
            return d

        await run.stage("check", do_check, enabled="check" in run.enabled, deadline=False)  # free: never cut
        if "check" not in run.enabled:
            run.kept = [c.index for c in ok]
            run.penalties = {}

        # 3. select -------------------------------------------------------------------------------
        pool = Pool({i: run.candidates[_pos(run.candidates, i)].response for i in run.kept}, run.penalties, question)

        async def do_select() -> dict[str, Any]:
            if len(pool.indices) == 1:
                run.selection = by_check(pool.indices, run.penalties, "only candidate")
                return run.selection.to_dict()
            chat = judge_chat()
            if cfg.selector == "tournament":
                sel = await select_by_tournament(chat, pool, swap=cfg.tournament_swap)
            elif cfg.selector == "reward":
                mllm = run.chat("mllm_judge", policy, stack) if settings.mllm_judge.base_url else None
                valid_tags = sum(run.checks[i].n_valid if i in run.checks else len(parse_response(pool.responses[i]).calls)
                                 for i in pool.indices)
                left = meter.tool_calls_left()
                if left is not None and valid_tags > left:
                    raise BudgetExhausted("tool_calls", f"the reward selector needs {valid_tags} tool calls, "
                                                        f"{left} are left")

                async def run_one(i: int) -> Document:
                    c = run.candidates[_pos(run.candidates, i)]
                    if c.document is not None:  # its tools ran while it was written
                        return c.document
                    return await runner.run_response(pool.responses[i], seed=c.seed)

                sel = await select_by_reward(chat, mllm, pool, run_one, image_num=constraints.image_num,
                                             tools=constraints.tools)
            else:
                sel = await select_by_judge(chat, pool, tie_break=cfg.tie_break, swap=cfg.tournament_swap,
                                            early={i: f for i, f in early.items() if i in pool.responses})
            run.selection = sel
            d = {"selector": cfg.selector, "judge": chat.name, **sel.to_dict()}
            if sel.cut:
                d["_cut"] = sel.cut
            return d

        await run.stage("select", do_select, enabled="select" in run.enabled, ahead=ahead_select)
        await _cancel_all(early)  # judged early but not needed (or the stage was cut)
        if run.selection is None:
            why = "check (select was cut)" if "select" in run.enabled else "check (select switched off)"
            run.selection = by_check(pool.indices, run.penalties, why)
        winner = run.selection.winner
        wc = run.candidates[_pos(run.candidates, winner)]

        # 5. enhance, asked ahead: the model calls it makes whatever the tools return start now, while
        # the winner's tools run (the calls are charged to enhance)
        def on_slot(w: SlotWork, status: str) -> None:
            run.emit("enhance", "started" if status == "started" else "finished", w.to_dict(), w.cost)

        enhancer: Enhancer | None = None
        asked_ahead: list[dict[str, Any]] = []
        if "enhance" in run.enabled:
            image_judge = None
            if cfg.enhance.image_judge == "mllm_judge" or (cfg.enhance.image_judge == "auto" and settings.mllm_judge.base_url):
                image_judge = run.chat("mllm_judge", policy, stack)
            enhancer = Enhancer(runner, policy, image_judge, cfg.enhance, helper_max_tokens=cfg.helper_max_tokens,
                                on_slot=on_slot)
            stack.callback(enhancer.discard)
            runs_tools = (run.selection.documents.get(winner) if run.selection else None) is None and wc.document is None
            if runs_tools:
                asked_ahead = enhancer.prefetch(parse_response(wc.response, len(images)).calls)

        # 4. execute ------------------------------------------------------------------------------
        async def do_execute() -> dict[str, Any]:
            reused = run.selection.documents.get(winner) if run.selection else None
            d: dict[str, Any] = {"winner": winner}
            if reused is not None:
                run.document, d["reused"] = reused, "the reward selector ran its tools"
            elif wc.document is not None:
                run.document, d["reused"] = wc.document, "its tools ran while it was written"
            else:
                run.document = await runner.run_response(wc.response, on_event=run.forward, seed=wc.seed)
            d.update(_doc_detail(run.document))
            refused = [b for b in run.document.slots if isinstance(b, FailureBlock) and b.kind == "budget"]
            if refused:
                d["_cut"] = runner.refused[0].resource if runner.refused else "tool_calls"
            return d

        await run.stage("execute", do_execute)
        if run.document is None:
            run.document = _unrun(wc.response, len(images), "the budget ran out")
            run.document = Document(run.document.blocks, run.document.violations, list(images))
        run.snapshots["execute"] = run.document

        # 5. enhance ------------------------------------------------------------------------------
        state = EnhanceState(run.document)

        async def do_enhance() -> dict[str, Any]:
            assert enhancer is not None
            d = await enhancer.run(state)
            if asked_ahead:
                d["asked_ahead"] = asked_ahead
            d["work"] = [w.to_dict() for w in state.work]
            if state.cut:
                d["_cut"] = state.cut
            return d

        await run.stage("enhance", do_enhance, enabled="enhance" in run.enabled,
                        ahead=enhancer.prefetch_cost if enhancer is not None else None)
        if enhancer is not None:
            enhancer.discard()
        if "enhance" in run.enabled:
            run.document = state.document
            run.snapshots["enhance"] = run.document

        # 6. polish -------------------------------------------------------------------------------
        async def do_polish() -> dict[str, Any]:
            chat = run.chat(cfg.polish_model, policy, stack)
            new, d = await polish(run.document, chat, question, send_images=cfg.polish_images,
                                  max_tokens=req.sampling.max_tokens or settings.llm.max_tokens,
                                  mode=cfg.polish_mode)
            run.document = new
            return d

        await run.stage("polish", do_polish, enabled="polish" in run.enabled)
        if "polish" in run.enabled:
            run.snapshots["polish"] = run.document

    result = TTSResult(document=run.document, stages=run.records, candidates=run.candidates, checks=run.checks,
                       selection=run.selection, winner=winner, snapshots=run.snapshots, budget=meter.to_dict(),
                       run_id=req.run_id, model=getattr(llm, "model", "") or "")
    # the document says what it cost: the per-stage table in its meta (and so in its JSON stats)
    result.document = dataclasses.replace(result.document, meta={**result.document.meta, "tts": result.statistics})
    return result


async def _cancel_all(tasks: Mapping[int, asyncio.Future]) -> None:
    """Cancel the judge calls started early that are still running, and read the errors of those that
    ended (so none is reported as never retrieved)."""
    pending = [t for t in tasks.values() if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for t in tasks.values():
        if t.done() and not t.cancelled():
            t.exception()


def _check_setup(cfg: TTSSettings, settings: Settings, stages: Sequence[str]) -> None:
    """Refuse, before anything is paid for, a setup that names a model which is not configured."""
    wanted: list[tuple[str, str]] = []
    if "select" in stages and cfg.judge == "llm_judge":
        wanted.append(("llm_judge", "[tts] judge"))
    if "select" in stages and cfg.selector == "reward":
        wanted.append(("mllm_judge", "[tts] selector = \"reward\""))
    if "polish" in stages and cfg.polish_model != "policy":
        wanted.append((cfg.polish_model, "[tts] polish_model"))
    if "enhance" in stages and cfg.enhance.image_judge == "mllm_judge":
        wanted.append(("mllm_judge", "[tts.enhance] image_judge"))
    for section, field_ in wanted:
        if not getattr(settings, section).base_url:
            raise ConfigError(f"{field_} asks for [{section}], which has no base_url; set [{section}] base_url "
                              f"or choose another model for it")


def _pos(cands: Sequence[Candidate], index: int) -> int:
    for p, c in enumerate(cands):
        if c.index == index:
            return p
    raise KeyError(index)


def _doc_detail(doc: Document) -> dict[str, Any]:
    slots = doc.slots
    return {"slots": len(slots), "images": sum(isinstance(b, ImageBlock) for b in slots),
            "failures": {str(k): b.kind for k, b in enumerate(slots) if isinstance(b, FailureBlock)}}


# ------------------------------------------------------------------------------------------------
# Stage-wise gains
# ------------------------------------------------------------------------------------------------


def stage_table(results: Sequence[TTSResult | Mapping[str, Any]],
                scores: Sequence[Mapping[str, float | None]] | None = None) -> list[dict[str, Any]]:
    """One row per stage over many runs: how often it ran / was cut / skipped, its mean extra cost, and —
    when ``scores`` gives each run's score after each stage (e.g. of ``result.snapshots[stage]``) — the
    mean score after it and its gain over the previous scored stage. ``results`` are :class:`TTSResult`
    values or their ``trace`` dicts. Pure.

    Means are over the runs where the stage ran (not skipped). A ``None`` score (a judge failed) is left
    out of that stage's mean and counted in ``unscored``.
    """
    rows: list[dict[str, Any]] = []
    traces = [r.trace if isinstance(r, TTSResult) else r for r in results]
    prev_score: float | None = None
    for name in STAGES:
        recs = []
        for t in traces:
            rec = next((s for s in t.get("stages", []) if s["name"] == name), None)
            if rec is not None:
                recs.append(rec)
        ran = [r for r in recs if r["status"] != "skipped"]
        row: dict[str, Any] = {
            "stage": name,
            "runs": len(ran),
            "cut": sum(r["status"] == "cut" for r in recs),
            "skipped": sum(r["status"] == "skipped" for r in recs),
        }
        costs = [Cost.from_dict(r["cost"]) for r in ran]
        k = max(1, len(costs))
        row.update(
            llm_calls=sum(c.llm_calls for c in costs) / k,
            tokens_in=sum(c.tokens_in for c in costs) / k,
            tokens_out=sum(c.tokens_out for c in costs) / k,
            tool_calls=sum(c.n_tool_calls for c in costs) / k,
            seconds=sum(c.seconds for c in costs) / k,
        )
        if scores is not None:
            vals = [s.get(name) for s in scores if name in s]
            got = [v for v in vals if v is not None]
            row["score"] = sum(got) / len(got) if got else None
            row["unscored"] = len(vals) - len(got)
            row["gain"] = (row["score"] - prev_score) if (row["score"] is not None and prev_score is not None) else None
            if row["score"] is not None:
                prev_score = row["score"]
        rows.append(row)
    return rows


def format_stage_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`stage_table` rows as a fixed-width text table."""
    scored = any("score" in r for r in rows)
    head = f"{'stage':<8} {'runs':>4} {'cut':>3}" + (f" {'score':>6} {'gain':>7}" if scored else "") + \
        f" {'calls':>6} {'tok in':>8} {'tok out':>8} {'tools':>6} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['stage']:<8} {r['runs']:>4} {r['cut']:>3}"
        if scored:
            s, g = r.get("score"), r.get("gain")
            line += f" {'' if s is None else f'{s:.3f}':>6} {'' if g is None else f'{g:+.3f}':>7}"
        line += (f" {r['llm_calls']:>6.1f} {r['tokens_in']:>8.0f} {r['tokens_out']:>8.0f} {r['tool_calls']:>6.1f}"
                 f" {r['seconds']:>8.2f}")
        lines.append(line)
    return "\n".join(lines)


__all__ = ["STAGES", "StageRecord", "TTSResult", "format_stage_table", "stage_table", "tts"]
