"""Running a benchmark: items in, a run folder out, resumable at any moment.

:func:`run_eval` loads the benchmark's items, starts (or resumes) the run folder (:mod:`llmi.eval.store`)
and hands every item not yet in ``results.jsonl`` to the batch runner (:func:`llmi.batch.run_batch`),
which appends one row per finished item. Per item, an :class:`ItemWorker`:

1. takes the document stored in the run folder, or the one given by ``--outputs`` (judge-only), or writes it
   with the configured LLM and tools (:func:`~llmi.eval.generate.generate_item`, under the generation cap)
   and stores it — images as files — before anything else happens to it;
2. writes the benchmark's own output files for it;
3. judges it through :class:`~llmi.eval.base.JudgeCalls`, which stores each judge answer as it comes, so a
   kill between two judge calls of one item loses neither;
4. returns the result row (scores, justifications, tool statistics, usage, timings).

Killing the run at any point and running the same command again repeats no generation and no judge call
that had finished. Concurrency: at most ``concurrency`` generations and ``[eval_judge] concurrency`` judge
requests at once; enough items are in flight to keep both busy. With ``ray`` the items are spread over Ray
actors, each with its own engine, LLM and judge client, all writing into the same run folder.

When the batch ends, the summary (``summary.json``), the benchmark's own aggregate files and the report
(``report.html``) are written from everything in the run folder, so they are complete after any resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, InputError
from . import registry
from .base import Benchmark, Item, JudgeCalls, Output
from .store import RunFolder, write_json

log = logging.getLogger(__name__)

ProgressFn = Callable[["Progress"], Any]


@dataclass
class EvalConfig:
    """What one ``llmi eval`` run does (the command line, as a value)."""

    benchmark: str
    out: Path
    data: Path | None = None
    #: Judge-only: documents produced elsewhere (the benchmark's own format, or another run folder).
    outputs: Path | None = None
    limit: int | None = None
    ids: Sequence[str] | None = None
    seed: int | None = None
    #: Generations in flight at once.
    concurrency: int = 4
    retry_errors: bool = False
    tts: int | None = None
    tts_options: dict[str, Any] = field(default_factory=dict)
    #: A Ray address (``auto``, ``ray://host:10001``, ``local``) to spread the items over Ray actors.
    ray: str | None = None
    ray_workers: int | None = None
    #: Benchmark options (``model_name`` for OpenING's folder name, ``steps_hint``, ...).
    options: dict[str, Any] = field(default_factory=dict)
    report: bool = True
    judge: bool = True


@dataclass
class Progress:
    """What a progress display shows after each finished item."""

    done: int
    total: int
    failed: int
    skipped: int
    score: float | None  # running mean of the headline score over all finished items


# ------------------------------------------------------------------------------------------------
# Selecting items
# ------------------------------------------------------------------------------------------------


def select_items(items: list[Item], *, ids: Sequence[str] | None = None, limit: int | None = None) -> list[Item]:
    """``ids`` (in the order given; unknown ones are an error) or the first ``limit`` items."""
    if ids:
        by_id = {i.id: i for i in items}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise InputError(f"unknown item id(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        items = [by_id[i] for i in dict.fromkeys(ids)]
    if limit is not None:
        if limit < 0:
            raise InputError("--limit must be >= 0")
        items = items[:limit]
    seen: set[str] = set()
    out = []
    for i in items:
        if i.id in seen:
            log.warning("item id %r comes twice; it is evaluated once", i.id)
            continue
        seen.add(i.id)
        out.append(i)
    return out


def load_items(bench: Benchmark, cfg: EvalConfig) -> tuple[list[Item], dict[str, Output]]:
    """The items to evaluate and, for a judge-only run, the documents given for them."""
    items = bench.load() if cfg.data is not None else []
    imported: dict[str, Output] = {}
    if cfg.outputs is not None:
        outputs = Path(cfg.outputs)
        if not outputs.exists():
            raise InputError(f"{outputs} does not exist")
        if (outputs / "run.json").is_file():
            imported = _from_run_folder(outputs, items)
        else:
            imported = {o.item.id: o for o in bench.read_outputs(outputs, items or None)}
        if not imported:
            raise InputError(f"found no outputs for {bench.name} in {outputs}")
        items = [i for i in items if i.id in imported] if items else [o.item for o in imported.values()]
    if not items:
        raise InputError(f"{cfg.data or cfg.outputs} holds no {bench.name} items")
    return select_items(items, ids=cfg.ids, limit=cfg.limit), imported


def _from_run_folder(path: Path, items: list[Item]) -> dict[str, Output]:
    if not items:
        raise InputError(f"judging another run's documents ({path}) needs --data for the items")
    other = RunFolder(path)
    out = {}
    for item in items:
        stored = other.load_document(item.id)
        if stored is not None and not stored[1].get("partial"):
            out[item.id] = Output(item=item, document=stored[0], response=stored[1].get("response", ""),
                                  model=stored[1].get("model", ""))
    return out


# ------------------------------------------------------------------------------------------------
# One item
# ------------------------------------------------------------------------------------------------


class ItemWorker:
    """Everything one process needs to finish items: the benchmark, the run folder, and — opened when first
    needed — the engine, the LLM and the judge. An async context manager."""

    def __init__(self, settings: Any, cfg: EvalConfig, bench: Benchmark, run: RunFolder, imported: dict[str, Output],
                 *, judge: Any = None, llm: Any = None, engine: Any = None):
        self.settings = settings
        self.cfg = cfg
        self.bench = bench
        self.run = run
        self.imported = imported
        self._judge = judge
        self._llm = llm
        self._engine = engine
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._gen_sem = asyncio.Semaphore(max(1, cfg.concurrency))
        self.generated = 0
        self.judge_reused = 0

    async def __aenter__(self) -> "ItemWorker":
        if self.judging and self._judge is None:
            from .judge import EvalJudge

            self._judge = await self._stack.enter_async_context(EvalJudge(eval_judge_settings(self.settings)))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stack.aclose()

    @property
    def judging(self) -> bool:
        return self.cfg.judge and self.bench.needs_judge

    @property
    def judge(self) -> Any:
        return self._judge

    async def engine(self) -> Any:
        async with self._lock:
            if self._engine is None:
                from ..engine import Engine

                self._engine = await self._stack.enter_async_context(Engine(self.settings))
            return self._engine

    async def llm(self) -> Any:
        async with self._lock:
            if self._llm is None:
                from ..llm import create_llm

                self._llm = create_llm(self.settings.llm)
                self._stack.push_async_callback(self._llm.aclose)
            return self._llm

    # -- the steps ----------------------------------------------------------------------------------
    async def document(self, item: Item) -> tuple[Any, dict[str, Any], str]:
        """``(document, record, where_from)``: stored, imported, or generated now (and stored)."""
        stored = self.run.load_document(item.id)
        if stored is not None and not stored[1].get("partial"):
            return stored[0], stored[1], "stored"
        out = self.imported.get(item.id)
        if out is not None:
            doc = out.document
            if doc is None:  # a raw response: run its tags with the configured tools
                engine = await self.engine()
                doc = await engine.run_response(out.response, input_images=item.input_images())
            info = {"response": out.response, "model": out.model, "source": "imported"}
            self.run.save_document(item.id, doc, **info)
            return doc, info, "imported"
        from ..generation import GenerationError
        from .generate import generate_item

        request = self.bench.request(item, sampling=self.sampling())
        llm, engine = await self.llm(), await self.engine()
        async with self._gen_sem:
            try:
                gen = await generate_item(request, self.settings, self.cfg.tts, llm=llm, engine=engine,
                                          tts_options=self.cfg.tts_options)
            except GenerationError as exc:  # keep what was written, for the report; the row is an error
                self.run.save_document(item.id, exc.document, partial=True, error=str(exc),
                                       response=exc.trace.raw_response, source="generated")
                raise
        self.generated += 1
        info = {**gen.info(), "source": "generated"}
        if gen.snapshots:  # test-time scaling: the document after each stage, stored (and judged) too
            for stage, snap in gen.snapshots.items():
                self.run.save_document(stage_id(item.id, stage), snap, stage=stage)
            info["snapshots"] = list(gen.snapshots)
        self.run.save_document(item.id, gen.document, **info)
        return gen.document, info, "generated"

    def sampling(self) -> Any:
        if self.cfg.seed is None:
            return None
        return {"seed": self.cfg.seed}

    async def judge_stages(self, item: Item, info: dict[str, Any], calls: JudgeCalls) -> dict[str, Any]:
        """The headline score of each test-time-scaling stage's document (stored beside the final one)."""
        out: dict[str, Any] = {}
        for stage in info.get("snapshots") or []:
            stored = self.run.load_document(stage_id(item.id, stage))
            if stored is None:
                continue
            judged = await self.bench.judge(item, stored[0], calls)
            out[stage] = judged.score
        return out

    async def process(self, item: Item) -> dict[str, Any]:
        t0 = time.perf_counter()
        doc, info, where = await self.document(item)
        gen_s = float(info.get("elapsed_s") or 0.0) if where == "generated" else 0.0
        self.bench.write_item(self.run, item, doc)
        row: dict[str, Any] = {"category": item.category, "subcategory": item.subcategory, "source": where}
        t1 = time.perf_counter()
        if self.judging:
            calls = JudgeCalls(item.id, self._judge, self.run.judge_log, retry_errors=self.cfg.retry_errors,
                               response=str(info.get("response") or ""))
            judged = await self.bench.judge(item, doc, calls)
            stage_scores = await self.judge_stages(item, info, calls)
            self.judge_reused += calls.reused
            row.update(judged.to_dict())
            if stage_scores:
                row["stage_scores"] = stage_scores
            row.update({"judge_calls": calls.asked, "judge_reused": calls.reused, "judged_by": "judge"})
        else:
            row.update({"score": None, "scores": {}, "verdicts": [], "excluded": 0, "judged_by": None})
        row.update(document_stats(doc, item))
        row.update({"usage": info.get("usage"), "model": info.get("model", ""), "gen_s": round(gen_s, 3),
                    "judge_s": round(time.perf_counter() - t1, 3), "item_s": round(time.perf_counter() - t0, 3)})
        if info.get("stages"):
            row["stages"] = info["stages"]
        row["worker"] = _WORKER
        return row


def stage_id(item_id: str, stage: str) -> str:
    """The run-folder id of an item's document after one test-time-scaling stage."""
    return f"{item_id}.stage-{stage}"


#: Which process finished an item (``host:pid``): one value locally, one per actor with ``--ray``.
_WORKER = f"{__import__('socket').gethostname()}:{__import__('os').getpid()}"


def eval_judge_settings(settings: Any) -> Any:
    from .settings import EvalJudgeSettings

    s = getattr(settings, "eval_judge", None)
    s = s if isinstance(s, EvalJudgeSettings) else EvalJudgeSettings()
    if not s.base_url:
        raise ConfigError("eval_judge: no base_url; pass --judge-url or set [eval_judge] base_url in the config "
                          "(any OpenAI-compatible chat endpoint; the published numbers used gpt-4o / gpt-4.1)")
    return s


def document_stats(doc: Any, item: Item) -> dict[str, Any]:
    """Tool calls per source with success, failure reasons, image count and the image-count rule."""
    from ..document import FailureBlock

    failures: dict[str, Counter] = {}
    for b in doc.blocks:
        if isinstance(b, FailureBlock):
            failures.setdefault(b.tool, Counter())[b.kind] += 1
    produced = sum(1 for b in doc.images if b.tool != "input")
    out: dict[str, Any] = {
        "tools": doc.stats,
        "failures": {t: dict(c) for t, c in failures.items()},
        "images": produced,
        "image_num": item.image_num,
        "violations": [v.kind for v in doc.violations],
    }
    if item.image_num is not None:
        from ..reward.rules import image_count_score

        try:
            out["image_rule"] = image_count_score(int(item.image_num), produced, eval=True) == 1.0
        except ValueError:
            out["image_rule"] = None
    return out


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


async def run_eval(settings: Any, cfg: EvalConfig, *, on_progress: ProgressFn | None = None, judge: Any = None,
                   llm: Any = None, engine: Any = None) -> dict[str, Any]:
    """Run (or resume) one evaluation; returns the summary (also written to ``summary.json``).

    ``judge``, ``llm`` and ``engine`` may be injected (tests, embedding code); otherwise they are created from
    ``settings`` when first needed and closed at the end.
    """
    from ..batch import read_output, run_batch

    started = time.perf_counter()
    bench = registry.get(cfg.benchmark)(cfg.data, options=cfg.options, settings=settings)
    if cfg.judge and bench.needs_judge and judge is None:
        eval_judge_settings(settings)  # a missing judge fails before anything is written
    items, imported = load_items(bench, cfg)
    run = RunFolder(cfg.out)
    run.start({
        "benchmark": bench.name,
        "data": str(Path(cfg.data).resolve()) if cfg.data else None,
        "outputs": str(Path(cfg.outputs).resolve()) if cfg.outputs else None,
        "options": cfg.options,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "llm": {"backend": settings.llm.backend, "model": settings.llm.model or settings.llm.model_path,
                "base_url": settings.llm.base_url if settings.llm.backend == "openai" else None},
        "tts": cfg.tts,
        "seed": cfg.seed,
    })
    by_id = {i.id: i for i in items}

    def redo(row: dict[str, Any]) -> bool:
        if cfg.judge and bench.needs_judge and row.get("judged_by") is None and "error" not in row:
            return True  # left by a generate-only run: judge it now
        return cfg.retry_errors and bool(row.get("excluded"))

    before = read_output(run.results)
    # the running score starts from the items already finished that this run keeps as they are
    scores = _RunningScore([r.get("score") for k, r in before.items() if str(k) in by_id and "error" not in r
                            and not redo(r)])

    async def report_progress(ev: Any) -> None:
        if on_progress is not None:
            mean = None if scores.mean is None else scores.mean * bench.item_scale
            res = on_progress(Progress(ev.done, ev.total or 0, ev.failed, ev.skipped, mean))
            if asyncio.iscoroutine(res):
                await res

    judge_stats = None
    try:
        if cfg.ray:
            from .distributed import RayItems

            async with RayItems(settings, cfg, workers=cfg.ray_workers, imported=imported) as pool:
                async def work(item_id: Any, item: Item) -> dict[str, Any]:
                    row = await pool.process(item)
                    scores.add(row.get("score"))
                    return row

                batch = await run_batch(((i.id, i) for i in items), work, run.results, concurrency=pool.in_flight,
                                        retry_errors=cfg.retry_errors, on_event=report_progress, total=len(items),
                                        redo=redo)
            cost_run = pool.cost()
        else:
            async with ItemWorker(settings, cfg, bench, run, imported, judge=judge, llm=llm, engine=engine) as worker:
                judge_cap = eval_judge_settings(settings).concurrency if worker.judging and judge is None else 4

                async def work(item_id: Any, item: Item) -> dict[str, Any]:
                    row = await worker.process(item)
                    scores.add(row.get("score"))
                    return row

                batch = await run_batch(((i.id, i) for i in items), work, run.results,
                                        concurrency=max(1, cfg.concurrency) + judge_cap, retry_errors=cfg.retry_errors,
                                        on_event=report_progress, total=len(items), redo=redo)
                judge_stats = worker.judge.stats.as_dict() if worker.judge is not None else None
                cost_run = {"generated": worker.generated, "judge": judge_stats, "judge_reused": worker.judge_reused}
    finally:
        run.close()
    rows = read_output(run.results)
    rows = {str(k): v for k, v in rows.items() if str(k) in by_id}
    summary = build_summary(bench, items, rows, cfg=cfg, settings=settings, batch=batch.to_dict(), cost_run=cost_run,
                            wall_s=time.perf_counter() - started)
    summary["files"] = [str(p.relative_to(run.root)) for p in bench.finalize(run, items, rows) if _inside(p, run.root)]
    write_json(run.summary, summary)
    if cfg.report:
        from .report import write_report

        write_report(run, bench, items, rows, summary)
    return summary


def _inside(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


class _RunningScore:
    def __init__(self, values: list[Any]):
        vals = [float(v) for v in values if isinstance(v, (int, float))]
        self.sum, self.n = sum(vals), len(vals)

    def add(self, value: Any) -> None:
        if isinstance(value, (int, float)):
            self.sum += float(value)
            self.n += 1

    @property
    def mean(self) -> float | None:
        return self.sum / self.n if self.n else None


# ------------------------------------------------------------------------------------------------
# The summary
# ------------------------------------------------------------------------------------------------


def tool_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Calls and success per tool, failure reasons, image-count rule compliance, format violations."""
    per: dict[str, dict[str, Any]] = {}
    for r in rows:
        for tool, s in (r.get("tools") or {}).items():
            t = per.setdefault(tool, {"calls": 0, "success": 0, "failures": Counter()})
            t["calls"] += int(s.get("total", 0))
            t["success"] += int(s.get("success", 0))
        for tool, kinds in (r.get("failures") or {}).items():
            t = per.setdefault(tool, {"calls": 0, "success": 0, "failures": Counter()})
            t["failures"].update(kinds)
    tools = {tool: {"calls": t["calls"], "success": t["success"],
                    "success_rate": round(t["success"] / t["calls"], 4) if t["calls"] else None,
                    "failure_reasons": dict(t["failures"].most_common())} for tool, t in sorted(per.items())}
    ruled = [r for r in rows if r.get("image_rule") is not None]
    compliant = sum(1 for r in ruled if r.get("image_rule"))
    violations = Counter(v for r in rows for v in r.get("violations") or [])
    images = [r.get("images", 0) for r in rows]
    return {
        "per_tool": tools,
        "calls": sum(t["calls"] for t in tools.values()),
        "success": sum(t["success"] for t in tools.values()),
        "image_rule": {"items": len(ruled), "compliant": compliant,
                       "rate": round(compliant / len(ruled), 4) if ruled else None},
        "images_per_item": round(sum(images) / len(images), 3) if images else None,
        "violations": dict(violations.most_common()),
    }


def build_summary(bench: Benchmark, items: list[Item], rows: dict[str, dict[str, Any]], *, cfg: EvalConfig | None = None,
                  settings: Any = None, batch: dict[str, Any] | None = None, cost_run: dict[str, Any] | None = None,
                  wall_s: float = 0.0) -> dict[str, Any]:
    ordered = [rows[i.id] for i in items if i.id in rows]
    ok = [r for r in ordered if "error" not in r]
    errors = Counter((r.get("error") or {}).get("kind", "error") for r in ordered if "error" in r)
    tokens_in = sum(int((r.get("usage") or {}).get("prompt_tokens") or 0) for r in ok)
    tokens_out = sum(int((r.get("usage") or {}).get("completion_tokens") or 0) for r in ok)
    judge_model = ""
    if settings is not None and getattr(settings, "eval_judge", None) is not None:
        judge_model = settings.eval_judge.model
    models = Counter(r.get("model") for r in ok if r.get("model"))
    summary = {
        "benchmark": bench.name,
        "title": bench.title,
        "score_description": bench.describe_score(),
        "scale": list(bench.scale),
        "item_scale": bench.item_scale,
        "data": str(cfg.data) if cfg and cfg.data else None,
        "outputs": str(cfg.outputs) if cfg and cfg.outputs else None,
        "model": models.most_common(1)[0][0] if models else "",
        "judge": {"model": judge_model, "published_judge": bench.published_judge,
                  "note": "scores are comparable only under the same judge"},
        "items": {"total": len(items), "finished": len(ordered), "failed": len(ordered) - len(ok),
                  "pending": len(items) - len(ordered), "failure_kinds": dict(errors)},
        "scores": bench.aggregate(ordered),
        "tools": tool_summary(ok),
        "cost": {
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "judge_calls": sum(int(r.get("judge_calls") or 0) for r in ok),
            "judge_answers_reused": sum(int(r.get("judge_reused") or 0) for r in ok),
            "generation_s": round(sum(float(r.get("gen_s") or 0) for r in ok), 3),
            "judge_s": round(sum(float(r.get("judge_s") or 0) for r in ok), 3),
            "this_run": {**(cost_run or {}), "wall_s": round(wall_s, 3), "batch": batch},
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    from .stages import stage_summary

    stages = stage_summary(ok, bench.item_scale)
    if stages:
        summary["tts_stages"] = stages
    return summary

