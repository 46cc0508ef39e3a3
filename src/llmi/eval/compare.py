"""Comparing two runs of one benchmark: side by side, and pairwise by the judge with the order swapped.

``llmi eval compare A B`` reads two run folders of the same benchmark and writes a comparison folder:

* per item and overall: both runs' scores, their difference with a paired 95 % bootstrap interval;
* pairwise (on by default for OpenING, ``--pairwise`` for the others): for every item both runs answered,
  the judge sees the two answers and says which is better — ``A``, ``B``, ``Tie(A)`` or ``Tie(B)`` (a tie
  that leans one way). Each pair is judged twice, with the answers in both orders, so a judge that favours
  the first (or second) position cancels out; both verdicts count as one battle each, as OpenING's
  ``calculate_model_winrate.py`` counts battles. The four win rates of OpenING:

  - **FDT** (force-divided ties): a tie leaning to X counts as a win for X; wins / battles;
  - **without ties**: only decided battles count; wins / decided battles;
  - **ties as 0**: wins / battles (a tie is nobody's win);
  - **ties as 0.5**: (wins + ½ ties) / battles.

  ``consistency`` is the share of pairs whose two verdicts name the same side (FDT sense) — how much
  the judge's answer depended on the order.

Files: ``compare.json`` (the summary), ``pairs.jsonl`` (one row per pair, resumable like a run),
``judge_calls.jsonl`` (stored judge answers), ``Interleaved_Arena/judge_modelAB_results.json`` (the battles in
OpenING's format: ``data_id``, ``model_A``/``model_B`` as shown to the judge, ``winner``), ``report.html``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import InputError
from . import registry
from .base import Item, JudgeCalls
from .runner import EvalConfig, Progress, eval_judge_settings, load_items
from .stats import fmt_ci, mean_ci, paired_diff_ci, rounded
from .store import RunFolder, write_json

WINNERS = ("A", "B", "Tie(A)", "Tie(B)")
_SWAP = {"A": "B", "B": "A", "Tie(A)": "Tie(B)", "Tie(B)": "Tie(A)"}


@dataclass
class CompareConfig:
    run_a: Path
    run_b: Path
    out: Path
    #: None: on for benchmarks that define pairwise judging (OpenING), off for the others.
    pairwise: bool | None = None
    limit: int | None = None
    retry_errors: bool = False
    report: bool = True


def swap(verdict: str) -> str:
    """The same verdict seen from the other position."""
    return _SWAP[verdict]


def win_rates(battles: Iterable[dict[str, Any]], a: str = "A", b: str = "B") -> dict[str, dict[str, float | None]]:
    """OpenING's four win rates of ``a`` and ``b`` over ``battles`` (``{"model_A": {"name"}, "model_B":
    {"name"}, "winner"}`` records, winner in the positions shown to the judge). Pure.

    >>> bs = [{"model_A": {"name": "x"}, "model_B": {"name": "y"}, "winner": w} for w in ("A", "Tie(A)", "B", "A")]
    >>> r = win_rates(bs, "x", "y")
    >>> r["fdt"]["x"], r["without_tie"]["x"], r["tie_as_0"]["x"], r["tie_as_0.5"]["x"]
    (0.75, 0.6666666666666666, 0.5, 0.625)
    """
    wins = {a: 0, b: 0}
    fdt = {a: 0, b: 0}
    ties = decided = total = 0
    for bt in battles:
        pos = {"A": bt["model_A"]["name"], "B": bt["model_B"]["name"]}
        w = bt["winner"]
        if set(pos.values()) != {a, b} or w not in WINNERS:
            continue
        total += 1
        if w in ("A", "B"):
            decided += 1
            wins[pos[w]] += 1
            fdt[pos[w]] += 1
        else:
            ties += 1
            fdt[pos[w[4]]] += 1

    def rate(x: float, n: int) -> float | None:
        return x / n if n else None

    return {
        "fdt": {a: rate(fdt[a], total), b: rate(fdt[b], total)},
        "without_tie": {a: rate(wins[a], decided), b: rate(wins[b], decided)},
        "tie_as_0": {a: rate(wins[a], total), b: rate(wins[b], total)},
        "tie_as_0.5": {a: rate(wins[a] + 0.5 * ties, total), b: rate(wins[b] + 0.5 * ties, total)},
        "battles": {"total": total, "decided": decided, "ties": ties},
    }


def side(verdict: str) -> str:
    """``A`` or ``B``: the side a verdict favours when ties are force-divided."""
    return verdict if verdict in ("A", "B") else verdict[4]


# ------------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------------


def pair_messages(bench: Any, item: Item, doc_a: Any, doc_b: Any) -> list[dict[str, Any]]:
    """The benchmark's own pairwise prompt (OpenING), else a generic one with OpenING's criteria."""
    own = getattr(bench, "pair_messages", None)
    if own is not None:
        return own(item, doc_a, doc_b)
    from .judge import Parts, marker_code
    from .llmi_bench import add_document, add_prompt
    from .opening import PAIR_SYSTEM

    code = marker_code([item.prompt, doc_a.text, doc_b.text])
    parts = Parts(max_side=1024)
    parts.text(f"<<<INPUT {code}>>>\n")
    add_prompt(parts, item.prompt, item.input_images(missing_ok=True))
    parts.text(f"\n<<<END INPUT {code}>>>\n\n<<<OUTPUT_A {code}>>>\n")
    add_document(parts, doc_a)
    parts.text(f"\n<<<END OUTPUT_A {code}>>>\n\n<<<OUTPUT_B {code}>>>\n")
    add_document(parts, doc_b)
    parts.text(f"\n<<<END OUTPUT_B {code}>>>\n\nWhich answer is better? Reply with the JSON object only.")
    return parts.messages(PAIR_SYSTEM)


# ------------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------------


def _label(run: RunFolder, summary: dict[str, Any] | None) -> str:
    meta = run.meta() or {}
    model = (summary or {}).get("model") or (meta.get("options") or {}).get("model_name") or ""
    return f"{run.root.name}" + (f" ({model})" if model and model != run.root.name else "")


def _read_summary(run: RunFolder) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(run.summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


async def run_compare(settings: Any, cfg: CompareConfig, *, on_progress: Callable[[Progress], Any] | None = None,
                      judge: Any = None) -> dict[str, Any]:
    """Compare two runs (resumable); returns the summary (also written to ``compare.json``)."""
    from ..batch import read_output, run_batch

    started = time.perf_counter()
    ra, rb = RunFolder(cfg.run_a), RunFolder(cfg.run_b)
    ma, mb = ra.meta(), rb.meta()
    if ma is None or mb is None:
        raise InputError(f"{cfg.run_a if ma is None else cfg.run_b} is not an llmi eval run folder (no run.json)")
    if ma["benchmark"] != mb["benchmark"]:
        raise InputError(f"the runs are of different benchmarks ({ma['benchmark']} and {mb['benchmark']})")
    name = ma["benchmark"]
    bench = registry.get(name)(Path(ma["data"]) if ma.get("data") else None, options=ma.get("options") or {},
                               settings=settings)
    items = _items(bench, ma, mb)
    rows_a = {str(k): v for k, v in read_output(ra.results).items()}
    rows_b = {str(k): v for k, v in read_output(rb.results).items()}
    shared = [i for i in items if "error" not in rows_a.get(i.id, {"error": 1}) and "error" not in rows_b.get(i.id, {"error": 1})]
    if cfg.limit is not None:
        shared = shared[: cfg.limit]
    if not shared:
        raise InputError("the two runs have no finished item in common")
    sum_a, sum_b = _read_summary(ra), _read_summary(rb)
    label_a, label_b = _label(ra, sum_a), _label(rb, sum_b)
    if label_a == label_b:
        label_a, label_b = label_a + " [A]", label_b + " [B]"

    out = RunFolder(cfg.out)
    out.start({"benchmark": name, "data": ma.get("data"), "outputs": None, "compare": [str(ra.root.resolve()), str(rb.root.resolve())]})
    pairwise = cfg.pairwise if cfg.pairwise is not None else hasattr(bench, "pair_messages")
    pair_rows: dict[str, dict[str, Any]] = {}
    batch_info = None
    if pairwise:
        pairs_path = out.root / "pairs.jsonl"
        done_w = {"n": 0}

        async def work(item_id: Any, item: Item) -> dict[str, Any]:
            da, db = ra.load_document(item.id), rb.load_document(item.id)
            if da is None or db is None:
                raise InputError(f"item {item.id}: a run has no stored document")
            calls = JudgeCalls(item.id, the_judge, out.judge_log, retry_errors=cfg.retry_errors)
            from .opening import parse_verdict

            ab, ba = await asyncio.gather(
                calls.ask("pair/AB", pair_messages(bench, item, da[0], db[0]), parse_verdict),
                calls.ask("pair/BA", pair_messages(bench, item, db[0], da[0]), parse_verdict),
            )
            row: dict[str, Any] = {"category": item.category}
            for key, got in (("ab", ab), ("ba", ba)):
                if isinstance(got, dict):
                    row[key] = got["verdict"]
                    row[f"{key}_reason"] = got.get("reason", "")
                else:
                    row[key] = None
                    row[f"{key}_error"] = got.error
            done_w["n"] += 1
            return row

        async def progress(ev: Any) -> None:
            if on_progress is not None:
                on_progress(Progress(ev.done, ev.total or 0, ev.failed, ev.skipped, None))

        from .judge import EvalJudge

        async with (EvalJudge(eval_judge_settings(settings)) if judge is None else _Borrowed(judge)) as the_judge:
            cap = the_judge.client.settings.concurrency
            try:
                batch = await run_batch(((i.id, i) for i in shared), work, pairs_path, concurrency=max(2, cap),
                                        retry_errors=cfg.retry_errors, on_event=progress, total=len(shared),
                                        redo=lambda r: cfg.retry_errors and (r.get("ab") is None or r.get("ba") is None))
            finally:
                out.close()
            batch_info = batch.to_dict()
        pair_rows = {str(k): v for k, v in read_output(pairs_path).items() if str(k) in {i.id for i in shared}}

    summary = compare_summary(bench, shared, rows_a, rows_b, pair_rows if pairwise else None, label_a, label_b)
    summary["runs"] = {"a": str(ra.root), "b": str(rb.root)}
    summary["this_run"] = {"wall_s": round(time.perf_counter() - started, 3), "batch": batch_info}
    if pairwise:
        battles = battles_of(shared, pair_rows, label_a, label_b)
        write_json(out.root / "Interleaved_Arena" / "judge_modelAB_results.json", battles)
    write_json(out.root / "compare.json", summary)
    if cfg.report:
        from .report import write_compare_report

        write_compare_report(out, bench, shared, rows_a, rows_b, pair_rows, summary, ra, rb)
    return summary


class _Borrowed:
    """An injected judge used as a context manager without closing it."""

    def __init__(self, judge: Any):
        self.judge = judge

    async def __aenter__(self) -> Any:
        return self.judge

    async def __aexit__(self, *exc: Any) -> None:
        return None


def _items(bench: Any, ma: dict[str, Any], mb: dict[str, Any]) -> list[Item]:
    last: Exception | None = None
    for meta in (ma, mb):
        cfg = EvalConfig(benchmark=meta["benchmark"], out=Path("."), data=Path(meta["data"]) if meta.get("data") else None,
                         outputs=Path(meta["outputs"]) if meta.get("outputs") else None)
        try:
            return load_items(bench, cfg)[0]
        except InputError as exc:
            last = exc
    raise InputError(f"cannot read the runs' items again: {last}")


def battles_of(items: list[Item], pair_rows: dict[str, dict[str, Any]], a: str, b: str) -> list[dict[str, Any]]:
    """Both orders of every judged pair as OpenING battle records (positions as the judge saw them)."""
    out = []
    for item in items:
        row = pair_rows.get(item.id)
        if not row or "error" in row:
            continue
        if row.get("ab") in WINNERS:
            out.append({"data_id": item.id, "model_A": {"id": "1", "name": a}, "model_B": {"id": "2", "name": b},
                        "winner": row["ab"]})
        if row.get("ba") in WINNERS:
            out.append({"data_id": item.id, "model_A": {"id": "2", "name": b}, "model_B": {"id": "1", "name": a},
                        "winner": row["ba"]})
    return out


def _headline(agg: dict[str, Any]) -> dict[str, Any] | None:
    score = agg.get("score")
    return score if isinstance(score, dict) and "mean" in score else None


def compare_summary(bench: Any, shared: list[Item], rows_a: dict, rows_b: dict, pair_rows: dict | None,
                    label_a: str, label_b: str) -> dict[str, Any]:
    sa = [rows_a[i.id].get("score") for i in shared]
    sb = [rows_b[i.id].get("score") for i in shared]
    both = [(x, y) for x, y in zip(sa, sb) if x is not None and y is not None]
    agg_a = bench.aggregate([rows_a[i.id] for i in shared])
    agg_b = bench.aggregate([rows_b[i.id] for i in shared])
    summary: dict[str, Any] = {
        "benchmark": bench.name,
        "title": bench.title,
        "shared_items": len(shared),
        "a": {"label": label_a, "score": _headline(agg_a) or rounded(mean_ci(sa, scale=bench.item_scale)), "scores": agg_a},
        "b": {"label": label_b, "score": _headline(agg_b) or rounded(mean_ci(sb, scale=bench.item_scale)), "scores": agg_b},
        "difference": rounded(paired_diff_ci([x for x, _ in both], [y for _, y in both], scale=bench.item_scale))
        if both else None,
        "a_better_items": sum(1 for x, y in both if x > y),
        "b_better_items": sum(1 for x, y in both if y > x),
        "equal_items": sum(1 for x, y in both if x == y),
    }
    if pair_rows is not None:
        battles = battles_of(shared, pair_rows, label_a, label_b)
        rates = win_rates(battles, label_a, label_b)
        consistent = judged = 0
        failed = 0
        for i in shared:
            r = pair_rows.get(i.id) or {}
            if r.get("ab") in WINNERS and r.get("ba") in WINNERS:
                judged += 1
                consistent += side(r["ab"]) == ("A" if side(r["ba"]) == "B" else "B")
            elif r:
                failed += 1
        summary["pairwise"] = {
            "win_rates": {k: {"A": v.get(label_a), "B": v.get(label_b)} for k, v in rates.items() if k != "battles"},
            "battles": rates["battles"],
            "pairs_judged_both_orders": judged,
            "pairs_with_a_failed_verdict": failed,
            "consistency": consistent / judged if judged else None,
        }
    return summary


__all__ = ["CompareConfig", "battles_of", "compare_summary", "fmt_ci", "run_compare", "side", "swap", "win_rates"]
