"""``llmi eval --tts``: what each test-time-scaling stage bought, and what it cost.

Each item's row holds its run's stages (``stages``: name, status and that stage's own cost — LLM calls,
tokens in/out, tool calls by source, seconds) and the benchmark's score of the document after each
stage that made or changed one (``stage_scores``: ``execute`` — the selected candidate with its tools
run —, ``enhance``, ``polish``), judged by the benchmark's own judge like the final document.
:func:`stage_summary` turns the rows into one table, in pipeline order:

    stage    items cut  score                        gain                          calls  tok in  ...
    sample       2   0                                                               2.0      18  ...
    ...
    execute      2   0  0.00 [0.00, 0.00] (n=2)                                      0.0       0  ...
    enhance      2   0  5.00 [5.00, 5.00] (n=2)      +5.00 [5.00, 5.00] (n=2)        1.0       9  ...
    polish       2   0  10.00 [10.00, 10.00] (n=2)   +5.00 [5.00, 5.00] (n=2)        1.0       9  ...

``score`` is the mean score after the stage (on the benchmark's scale, with its 95 % bootstrap
interval); ``gain`` is the mean paired difference from the previous scored stage, over the items scored
after both (with its interval); the cost columns are the stage's extra cost, as a mean per item that ran
it (skipped items are counted in ``skipped``, not in the means), and ``total`` holds the sums. A score
that could not be judged is left out and counted in ``unscored``. Pure functions.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .stats import fmt_ci, mean_ci, rounded

#: Cost fields of a stage, summed per item (``tool_calls`` may be per source: its values are summed).
COST_KEYS = ("llm_calls", "tokens_in", "tokens_out", "tool_calls", "seconds")


def pipeline_order() -> tuple[str, ...]:
    """The stages in the order the pipeline runs them (``llmi.tts.pipeline.STAGES``)."""
    try:
        from ..tts.pipeline import STAGES
    except ImportError:  # pragma: no cover - llmi.tts ships with llmi
        return ()
    return tuple(STAGES)


def stages_of(result: Any) -> list[dict[str, Any]]:
    """A :class:`llmi.tts.TTSResult`'s stages as row entries ``{"stage", "status", **cost}``, in the order
    they ran, skipped ones included (with no cost); ``[]`` when ``result`` has no stage records."""
    out = []
    for rec in getattr(result, "stages", None) or []:
        name, status, cost = getattr(rec, "name", None), getattr(rec, "status", None), getattr(rec, "cost", None)
        if name is None or cost is None or not hasattr(cost, "to_dict"):
            return []
        out.append({"stage": str(name), "status": status, **cost.to_dict()})
    return out


def _count(value: Any) -> float:
    if isinstance(value, Mapping):  # tool calls by source
        return float(sum(v for v in value.values() if isinstance(v, (int, float)) and not isinstance(v, bool)))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return 0.0


def stage_summary(rows: Sequence[Mapping[str, Any]], scale: float = 1.0) -> list[dict[str, Any]]:
    """The per-stage table of an evaluation's finished rows (see the module doc); ``[]`` when no row comes
    from a test-time-scaling run. ``scale`` is the benchmark's item scale (scores × ``scale``)."""
    known = pipeline_order()
    seen: list[str] = []
    for r in rows:
        for s in r.get("stages") or []:
            name = str(s.get("stage") or s.get("name") or "?")
            if name not in seen:
                seen.append(name)
        for name in r.get("stage_scores") or {}:
            if name not in seen:
                seen.append(name)
    if not seen:
        return []
    order = [n for n in known if n in seen] + [n for n in seen if n not in known]

    table: list[dict[str, Any]] = []
    prev: str | None = None  # the previous stage with a score, for the gain
    for name in order:
        ran, cut, skipped = 0, 0, 0
        total: Counter = Counter()
        by_source: Counter = Counter()
        for r in rows:
            rec = next((s for s in r.get("stages") or [] if str(s.get("stage") or s.get("name")) == name), None)
            if rec is None:
                continue
            if rec.get("status") == "skipped":
                skipped += 1
                continue
            ran += 1
            cut += rec.get("status") == "cut"
            for k in COST_KEYS:
                total[k] += _count(rec.get(k))
            if isinstance(rec.get("tool_calls"), Mapping):
                by_source.update({str(k): int(v) for k, v in rec["tool_calls"].items()})
        scored = [r for r in rows if name in (r.get("stage_scores") or {})]
        ran = ran or len(scored)  # a stage that changed the document but reported no cost of its own
        entry: dict[str, Any] = {"stage": name, "items": ran, "cut": cut, "skipped": skipped}
        if scored:
            vals = [r["stage_scores"][name] for r in scored]
            entry["score"] = rounded(mean_ci(vals, scale=scale))
            entry["unscored"] = sum(v is None for v in vals)
            if prev is not None:
                diffs = [r["stage_scores"][name] - r["stage_scores"][prev] for r in scored
                         if r["stage_scores"][name] is not None and (r.get("stage_scores") or {}).get(prev) is not None]
                entry["gain"] = rounded(mean_ci(diffs, scale=scale))
            prev = name
        k = max(1, ran)
        entry.update({key: round(total[key] / k, 4) for key in COST_KEYS})
        if by_source:
            entry["tool_calls_by_source"] = {s: round(v / k, 4) for s, v in sorted(by_source.items())}
        entry["total"] = {key: round(total[key], 4) for key in COST_KEYS}
        table.append(entry)
    return table


def _signed(ci: Mapping[str, Any] | None) -> str:
    text = fmt_ci(ci)  # type: ignore[arg-type]
    return text if text == "–" or text.startswith("-") else "+" + text


def format_stage_summary(table: Sequence[Mapping[str, Any]]) -> str:
    """:func:`stage_summary` as a fixed-width text table (the command line's)."""
    head = (f"{'stage':<8} {'items':>5} {'cut':>3}  {'score':<28} {'gain':<28} {'calls':>6} {'tok in':>8} "
            f"{'tok out':>8} {'tools':>6} {'seconds':>8}")
    lines = [head]
    for r in table:
        score = fmt_ci(r["score"]) if "score" in r else ""
        gain = _signed(r["gain"]) if "gain" in r else ""
        lines.append(f"{r['stage']:<8} {r['items']:>5} {r['cut']:>3}  {score:<28} {gain:<28} {r['llm_calls']:>6.1f} "
                     f"{r['tokens_in']:>8.0f} {r['tokens_out']:>8.0f} {r['tool_calls']:>6.1f} {r['seconds']:>8.2f}")
    return "\n".join(lines)


def stage_summary_html(table: Sequence[Mapping[str, Any]]) -> str:
    """:func:`stage_summary` as the report's table (every value escaped)."""
    if not table:
        return ""

    def esc(v: Any) -> str:
        return html.escape("" if v is None else str(v), quote=True)

    heads = ["stage", "items", "cut", "skipped", "score after it", "gain", "LLM calls / item", "tokens in / item",
             "tokens out / item", "tool calls / item", "seconds / item"]
    out = [('<h2>Test-time scaling stages</h2><p class="ev-meta">In pipeline order: the score after each stage that '
            "made or changed the document (judged like the final one) and its gain over the previous scored stage "
            "(paired, 95 % interval); each stage's extra cost as a mean per item that ran it.</p>"),
           '<table class="ev-table"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>"]
    for r in table:
        cells = [esc(r["stage"]), esc(r["items"]), esc(r["cut"]), esc(r["skipped"]),
                 esc(fmt_ci(r["score"])) if "score" in r else "", esc(_signed(r["gain"])) if "gain" in r else "",
                 f"{r['llm_calls']:.2f}", f"{r['tokens_in']:.0f}", f"{r['tokens_out']:.0f}",
                 esc(f"{r['tool_calls']:.2f}" + (" (" + ", ".join(f"{s} {v:g}" for s, v in r["tool_calls_by_source"].items())
                                                 + ")" if r.get("tool_calls_by_source") else "")),
                 f"{r['seconds']:.2f}"]
        out.append("<tr><td>" + cells[0] + "</td>" + "".join(f'<td class="num">{c}</td>' for c in cells[1:]) + "</tr>")
    out.append("</table>")
    return "".join(out)


__all__ = ["format_stage_summary", "stage_summary", "stage_summary_html", "stages_of"]
