"""``report.html``: one self-contained, script-free page per run (and per comparison).

The page holds the summary table (headline score with its 95 % interval, sub-scores, per-category rows),
plots (score distribution, per-category bars with intervals, tool success per source; PNG files in
``plots/`` embedded as ``data:`` URIs), tool and cost statistics, and every item's document — rendered by
llmi's own sanitising HTML renderer — with its scores and the judge's justifications beside it.

Everything from a model, a data file or a judge is untrusted: documents go through
:func:`llmi.render.html.render_html_fragment` (Markdown without raw HTML, then an allow-list sanitiser) and
every other value through :func:`html.escape`; the page carries the same no-script, no-network
Content-Security-Policy as rendered documents. Images in item documents are shrunk to thumbnails (at most
``THUMB_SIDE`` pixels) so that a report of thousands of items stays openable; documents are embedded for
the first ``MAX_DOCUMENTS`` items (the full ones are in ``documents/``), every item keeps its score row.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import logging
from pathlib import Path
from typing import Any

from .stats import fmt_ci

log = logging.getLogger(__name__)

THUMB_SIDE = 512
MAX_DOCUMENTS = 200
#: Images larger than this (bytes) are re-encoded as JPEG thumbnails even when small in pixels.
THUMB_BYTES = 150_000

_CSS = """
.ev-page { max-width: 72rem; margin: 0 auto; padding: 1.5rem 1.25rem 4rem; }
.ev-page h1 { margin-top: 0.2em; }
.ev-meta { color: var(--llmi-muted); font-size: 0.92em; }
.ev-grid { display: flex; flex-wrap: wrap; gap: 1rem; }
.ev-grid figure { margin: 0; flex: 1 1 22rem; }
.ev-grid img { max-width: 100%; height: auto; border: 1px solid var(--llmi-border); border-radius: 6px; }
table.ev-table { display: table; font-size: 0.92em; }
table.ev-table th { white-space: nowrap; }
table.ev-table td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ev-item { border: 1px solid var(--llmi-border); border-radius: 8px; margin: 0.8rem 0; padding: 0.3rem 0.9rem; }
.ev-item > summary { cursor: pointer; font-weight: 600; padding: 0.4rem 0; }
.ev-item-body { display: flex; flex-wrap: wrap; gap: 1.2rem; }
.ev-doc { flex: 2 1 30rem; min-width: 0; }
.ev-doc .llmi-figure img { max-width: 100%; height: auto; }
.ev-scores { flex: 1 1 20rem; min-width: 0; font-size: 0.9em; }
.ev-bad { color: var(--llmi-warn-fg); }
.ev-pair { display: flex; flex-wrap: wrap; gap: 1rem; }
.ev-pair > div { flex: 1 1 24rem; min-width: 0; }
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True).replace("\0", "\ufffd")


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return "–" if value is None else _esc(value)


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------


def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(5.6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..files import atomic_write

    atomic_write(path, data)
    return data


def plot_distribution(scores: list[float], scale: tuple[float, float], path: Path, title: str) -> bytes | None:
    fig = _figure()
    if fig is None or not scores:
        return None
    ax = fig.add_subplot(111)
    lo, hi = scale
    ax.hist(scores, bins=min(20, max(5, len(set(scores)))), range=(lo, hi), color="#4c78a8", edgecolor="white")
    ax.set_xlabel("item score")
    ax.set_ylabel("items")
    ax.set_title(title)
    return _png(fig, path)


def plot_bars(groups: dict[str, dict[str, Any]], path: Path, title: str, scale: tuple[float, float] | None = None) -> bytes | None:
    """Horizontal bars of group means with their intervals."""
    fig = _figure()
    rows = [(k, v) for k, v in groups.items() if isinstance(v, dict) and v.get("mean") is not None]
    if fig is None or not rows:
        return None
    rows = rows[:40]
    fig.set_size_inches(6.4, max(2.4, 0.32 * len(rows) + 1.2))
    ax = fig.add_subplot(111)
    labels = [(k or "(none)")[:40] for k, _ in rows]
    means = [v["mean"] for _, v in rows]
    err_lo = [max(0.0, v["mean"] - v["low"]) if v.get("low") is not None else 0.0 for _, v in rows]
    err_hi = [max(0.0, v["high"] - v["mean"]) if v.get("high") is not None else 0.0 for _, v in rows]
    ax.barh(range(len(rows)), means, xerr=[err_lo, err_hi], color="#72b7b2", ecolor="#333333", capsize=2)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    if scale:
        ax.set_xlim(*scale)
    ax.set_title(title)
    return _png(fig, path)


def plot_tools(per_tool: dict[str, dict[str, Any]], path: Path) -> bytes | None:
    fig = _figure()
    rows = [(t, s) for t, s in per_tool.items() if s.get("calls")]
    if fig is None or not rows:
        return None
    ax = fig.add_subplot(111)
    names = [t for t, _ in rows]
    ok = [s["success"] for _, s in rows]
    bad = [s["calls"] - s["success"] for _, s in rows]
    ax.bar(names, ok, color="#54a24b", label="image")
    ax.bar(names, bad, bottom=ok, color="#e45756", label="failed")
    ax.set_ylabel("tool calls")
    ax.set_title("tool calls per source")
    ax.legend()
    return _png(fig, path)


def _img(data: bytes | None, alt: str) -> str:
    if not data:
        return ""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{_esc(alt)}"></figure>'


# ------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------


def _thumbnail(image: Any, side: int) -> Any:
    """``image`` shrunk to at most ``side`` pixels (large files re-encoded as JPEG), or itself."""
    from ..images import ImageData

    if max(image.width, image.height) <= side and len(image.data) <= THUMB_BYTES:
        return image
    try:
        im = image.to_pil()
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=80)
        return ImageData(data=buf.getvalue(), mime="image/jpeg", width=im.width, height=im.height)
    except Exception as exc:  # noqa: BLE001 - a thumbnail that fails leaves the image as it is
        log.debug("thumbnail failed: %s", exc)
        return image


def thumbnail_document(doc: Any, side: int = THUMB_SIDE, *, input_images: Any = None) -> Any:
    """``doc`` with every image shrunk to at most ``side`` pixels, large files re-encoded (pure: a new document).
    The user's images are kept (thumbnailed too); ``input_images`` stands in when the document has none (a
    document read from another tool's output files does not carry the item's input images)."""
    from ..document import Document, ImageBlock

    blocks = []
    for b in doc.blocks:
        if isinstance(b, ImageBlock):
            small = _thumbnail(b.image, side)
            if small is not b.image:
                b = dataclasses.replace(b, image=small, provenance={**b.provenance, "dpi": None})
        blocks.append(b)
    inputs = list(getattr(doc, "input_images", None) or input_images or [])
    return Document(blocks=blocks, violations=list(doc.violations), input_images=[_thumbnail(i, side) for i in inputs])


def _kv_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td class=\"num\">{v}</td></tr>" for k, v in rows)
    return f'<table class="ev-table">{body}</table>'


def _ci_table(groups: dict[str, Any], head: str) -> str:
    rows = []
    for k, v in groups.items():
        if isinstance(v, dict) and "mean" in v:
            rows.append(f"<tr><td>{_esc(k or '(none)')}</td><td class=\"num\">{_esc(fmt_ci(v))}</td></tr>")
        elif isinstance(v, dict):  # ISG: levels per group
            cells = "".join(f"<td class=\"num\">{_esc(fmt_ci(x))}</td>" for x in v.values() if isinstance(x, dict))
            rows.append(f"<tr><td>{_esc(k or '(none)')}</td>{cells}</tr>")
    if not rows:
        return ""
    sample = next(iter(groups.values()))
    if isinstance(sample, dict) and "mean" not in sample:
        header = "<tr><th>" + _esc(head) + "</th>" + "".join(f"<th>{_esc(c)}</th>" for c in sample) + "</tr>"
    else:
        header = f"<tr><th>{_esc(head)}</th><th>score [95% CI] (n)</th></tr>"
    return f'<table class="ev-table">{header}{"".join(rows)}</table>'


def scores_section(scores: dict[str, Any]) -> str:
    """The benchmark's score summary as tables (whatever keys its aggregate produced)."""
    parts = []
    scalars = [(k, _esc(fmt_ci(v)) if isinstance(v, dict) and "mean" in v else _num(v))
               for k, v in scores.items() if not (isinstance(v, dict) and "mean" not in v)]
    parts.append(_kv_table(scalars))
    for k, v in scores.items():
        if isinstance(v, dict) and "mean" not in v and v:
            parts.append(f"<h3>{_esc(k.replace('_', ' '))}</h3>" + _ci_table(v, k.replace("by_", "")))
    return "\n".join(parts)


def _scaled(value: Any, k: float) -> Any:
    return value * k if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _verdicts_html(row: dict[str, Any], k: float = 1.0) -> str:
    if "error" in row:
        err = row["error"]
        return f'<p class="ev-bad">failed: {_esc(err.get("kind"))}: {_esc(err.get("message"))}</p>'
    lines = [f"<p><strong>score {_num(_scaled(row.get('score'), k))}</strong>"
             + (f" · {row.get('excluded')} excluded" if row.get("excluded") else "") + "</p>"]
    scores = row.get("scores") or {}
    verdicts = row.get("verdicts") or []
    by_key = {v.get("key"): v.get("score") for v in verdicts}
    if scores and not all(k in by_key and by_key[k] == v for k, v in scores.items()):  # else the verdicts say it
        lines.append(_kv_table([(k, _num(v)) for k, v in scores.items()]))
    if row.get("structure_expected") is not None:  # ISG: why block and image were not judged
        lines.append(f'<p class="ev-bad">structure differs from the golden answer: expected '
                     f'<code>{_esc(row.get("structure_expected"))}</code>, got <code>{_esc(row.get("structure_got"))}</code>'
                     " (block and image not judged, as ISG does)</p>")
    if verdicts:
        body = []
        for v in verdicts:
            text = v.get("justification") or ""
            if v.get("error"):
                text = f'<span class="ev-bad">excluded — {_esc(v["error"])}</span>'
            else:
                text = _esc(text)
            label = v.get("label") or v.get("key")
            body.append(f"<tr><td>{_esc(label)}</td><td class=\"num\">{_num(v.get('score'))}</td><td>{text}</td></tr>")
        lines.append('<table class="ev-table"><tr><th>criterion</th><th>score</th><th>judge</th></tr>'
                     + "".join(body) + "</table>")
    tools = row.get("tools") or {}
    if tools:
        lines.append("<p>tools: " + ", ".join(f"{_esc(t)} {s.get('success')}/{s.get('total')}" for t, s in tools.items())
                     + (f" · image rule {'met' if row.get('image_rule') else 'not met'}"
                        if row.get("image_rule") is not None else "") + "</p>")
    return "\n".join(lines)


def _document_html(run: Any, item: Any, embed: bool) -> str:
    from ..render.html import render_html_fragment

    if not embed:
        return '<p class="ev-meta">document not embedded (see documents/ in the run folder)</p>'
    stored = run.load_document(item.id)
    if stored is None:
        return '<p class="ev-meta">no document</p>'
    inputs = None
    if not stored[0].input_images and getattr(item, "images", None):
        try:
            inputs = item.input_images(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - the report shows what it can
            log.debug("input images of %s: %s", item.id, exc)
    doc = thumbnail_document(stored[0], input_images=inputs)
    return render_html_fragment(doc, prompt=item.prompt)


def _battles_text(battles: Any) -> str:
    if isinstance(battles, dict):
        return ", ".join(f"{v} {k}" for k, v in battles.items())
    return str(battles)


def _page(title: str, body: str) -> str:
    from ..render.html import CONTENT_SECURITY_POLICY, stylesheet

    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(CONTENT_SECURITY_POLICY)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="llmi eval">\n'
        f"<title>{_esc(title)}</title>\n<style>\n{stylesheet()}{_CSS}</style>\n</head>\n<body>\n"
        f'<main class="ev-page">\n{body}\n</main>\n</body>\n</html>\n'
    )


def _atomic(path: Path, text: str) -> None:
    from ..files import atomic_write

    atomic_write(path, text)


# ------------------------------------------------------------------------------------------------
# A run
# ------------------------------------------------------------------------------------------------


def write_report(run: Any, bench: Any, items: list[Any], rows: dict[str, dict[str, Any]], summary: dict[str, Any]) -> Path:
    """Write ``report.html`` (and ``plots/*.png``) for one run; returns the page's path."""
    scores = summary.get("scores") or {}
    scale = tuple(summary.get("scale") or (0, 1))
    finished = [rows[i.id] for i in items if i.id in rows and "error" not in rows[i.id]]
    k = float(summary.get("item_scale") or 1.0)
    item_scores = [float(r["score"]) * k for r in finished if isinstance(r.get("score"), (int, float))]
    plots = [
        _img(plot_distribution(item_scores, scale, run.plots / "score_distribution.png", "item scores"),
             "distribution of item scores"),
    ]
    for key in ("by_category", "criteria", "components", "by_criterion"):
        groups = scores.get(key)
        if isinstance(groups, dict) and groups and all(isinstance(v, dict) and "mean" in v for v in groups.values()):
            rng = scale if key != "components" else (0, max(5.0, 1.0))
            plots.append(_img(plot_bars(groups, run.plots / f"{key}.png", key.replace("_", " "),
                                        rng if key != "components" else None), key))
    if isinstance(scores.get("by_category"), dict) and scores["by_category"] and \
            not all("mean" in v for v in scores["by_category"].values()):  # ISG: one plot per level
        for lv in ("holistic", "block", "image", "structure"):
            groups = {g: v.get(lv) for g, v in scores["by_category"].items() if isinstance(v.get(lv), dict)}
            plots.append(_img(plot_bars(groups, run.plots / f"by_category_{lv}.png", f"{lv} by category"), lv))
    tools = summary.get("tools") or {}
    plots.append(_img(plot_tools(tools.get("per_tool") or {}, run.plots / "tools.png"), "tool calls per source"))

    head = summary.get("title") or summary.get("benchmark")
    judge = summary.get("judge") or {}
    meta = (f'<p class="ev-meta">run <code>{_esc(run.root.name)}</code> · model {_esc(summary.get("model") or "–")} · '
            f'judge {_esc(judge.get("model") or "(server default)")} (published numbers: '
            f'{_esc(judge.get("published_judge") or "–")}; scores are comparable only under the same judge) · '
            f'{_esc(summary.get("created"))}</p>')
    it = summary.get("items") or {}
    cost = summary.get("cost") or {}
    headline = scores.get("score")
    top = _kv_table([
        ("score", _esc(fmt_ci(headline)) if isinstance(headline, dict) else _num(headline)),
        ("what the score is", _esc(summary.get("score_description"))),
        ("items", f"{it.get('finished', 0)} of {it.get('total', 0)} finished, {it.get('failed', 0)} failed, "
                  f"{it.get('pending', 0)} pending"),
        ("failure kinds", _esc(", ".join(f"{k} {v}" for k, v in (it.get("failure_kinds") or {}).items()) or "–")),
    ])
    tool_rows = [(t, f"{s['success']}/{s['calls']} ({_num(s.get('success_rate'))}) · "
                     + _esc(", ".join(f"{k} {v}" for k, v in (s.get("failure_reasons") or {}).items()) or "no failures"))
                 for t, s in (tools.get("per_tool") or {}).items()]
    rule = tools.get("image_rule") or {}
    tool_rows.append(("image-count rule", f"{rule.get('compliant', 0)}/{rule.get('items', 0)} items ({_num(rule.get('rate'))})"))
    tool_rows.append(("images per item", _num(tools.get("images_per_item"))))
    if tools.get("violations"):
        tool_rows.append(("format violations", _esc(", ".join(f"{k} {v}" for k, v in tools["violations"].items()))))
    cost_rows = [
        ("tokens in / out", f"{cost.get('tokens_in', 0)} / {cost.get('tokens_out', 0)}"),
        ("judge calls", f"{cost.get('judge_calls', 0)} ({cost.get('judge_answers_reused', 0)} answers reused)"),
        ("generation time (sum)", f"{cost.get('generation_s', 0):.1f} s"),
        ("judging time (sum)", f"{cost.get('judge_s', 0):.1f} s"),
        ("this run's wall time", f"{(cost.get('this_run') or {}).get('wall_s', 0):.1f} s"),
    ]
    from .stages import stage_summary_html

    stage_html = stage_summary_html(summary.get("tts_stages") or [])

    item_html = []
    table_rows = []
    for n, item in enumerate(items):
        row = rows.get(item.id)
        if row is None:
            continue
        status = "failed" if "error" in row else _num(_scaled(row.get("score"), k))
        table_rows.append(f'<tr><td><a href="#item-{n}">{_esc(item.id)}</a></td><td>{_esc(item.category)}</td>'
                          f'<td class="num">{status}</td><td class="num">{_num(row.get("excluded", 0))}</td></tr>')
        doc_html = _document_html(run, item, n < MAX_DOCUMENTS)
        item_html.append(
            # the id sits inside the <details>, so following the table's link opens the item (browsers reveal
            # a closed <details> that holds the link's target)
            f'<details class="ev-item"><summary>{_esc(item.id)} · {_esc(item.category)} · score {status}</summary>'
            f'<div class="ev-item-body" id="item-{n}"><div class="ev-doc">{doc_html}</div>'
            f'<div class="ev-scores">{_verdicts_html(row, k)}</div></div></details>'
        )
    body = "\n".join([
        f"<h1>{_esc(head)}</h1>", meta, top,
        "<h2>Scores</h2>", scores_section(scores),
        # no heading over nothing (no scored item yet, or no matplotlib)
        f'<h2>Plots</h2><div class="ev-grid">{"".join(p for p in plots if p)}</div>' if any(plots) else "",
        "<h2>Tools</h2>", _kv_table(tool_rows),
        "<h2>Cost</h2>", _kv_table(cost_rows), stage_html,
        "<h2>Items</h2>",
        '<table class="ev-table"><tr><th>id</th><th>category</th><th>score</th><th>excluded</th></tr>'
        + "".join(table_rows) + "</table>",
        "\n".join(item_html),
    ])
    _atomic(run.report, _page(f"{head} — llmi eval", body))
    return run.report


# ------------------------------------------------------------------------------------------------
# A comparison
# ------------------------------------------------------------------------------------------------


def write_compare_report(out: Any, bench: Any, items: list[Any], rows_a: dict, rows_b: dict, pair_rows: dict,
                         summary: dict[str, Any], run_a: Any, run_b: Any) -> Path:
    """``report.html`` of a comparison: both runs side by side, the pairwise verdicts, each item's two documents."""
    a, b = summary["a"], summary["b"]
    k = float(getattr(bench, "item_scale", 1.0) or 1.0)
    top = _kv_table([
        (f"A: {a['label']}", _esc(fmt_ci(a["score"]))),
        (f"B: {b['label']}", _esc(fmt_ci(b["score"]))),
        ("A − B (paired)", _esc(fmt_ci(summary.get("difference")))),
        ("items A better / B better / equal",
         f"{summary['a_better_items']} / {summary['b_better_items']} / {summary['equal_items']}"),
    ])
    pw = summary.get("pairwise")
    pw_html = ""
    if pw:
        rates = pw["win_rates"]
        pw_html = ('<h2>Pairwise (both orders)</h2><table class="ev-table"><tr><th>win rate</th><th>A</th><th>B</th></tr>'
                   + "".join(f'<tr><td>{_esc(k)}</td><td class="num">{_num(v.get("A"))}</td><td class="num">{_num(v.get("B"))}</td></tr>'
                             for k, v in rates.items()) + "</table>"
                   + _kv_table([("battles", _esc(_battles_text(pw["battles"]))), ("position consistency", _num(pw.get("consistency"))),
                                ("pairs with a failed verdict", _num(pw.get("pairs_with_a_failed_verdict")))]))
    sa = a.get("scores", {}).get("by_category") or {}
    sb = b.get("scores", {}).get("by_category") or {}
    cats = sorted(set(sa) | set(sb))
    cat_html = ""
    if cats and all(isinstance(sa.get(c, {}), dict) and "mean" in sa.get(c, {"mean": 0}) for c in cats):
        cat_html = ('<h2>By category</h2><table class="ev-table"><tr><th>category</th><th>A</th><th>B</th></tr>'
                    + "".join(f'<tr><td>{_esc(c)}</td><td class="num">{_esc(fmt_ci(sa.get(c)))}</td>'
                              f'<td class="num">{_esc(fmt_ci(sb.get(c)))}</td></tr>' for c in cats) + "</table>")
    items_html = []
    for n, item in enumerate(items):
        ra, rb = rows_a.get(item.id, {}), rows_b.get(item.id, {})
        pr = pair_rows.get(item.id) or {}
        verdict = ""
        if pr:
            verdict = (f"<p>judge, A first: <strong>{_esc(pr.get('ab') or 'failed')}</strong> — {_esc(pr.get('ab_reason') or pr.get('ab_error'))}<br>"
                       f"judge, B first (positions swapped): <strong>{_esc(pr.get('ba') or 'failed')}</strong> — "
                       f"{_esc(pr.get('ba_reason') or pr.get('ba_error'))}</p>")
        embed = n < MAX_DOCUMENTS // 2
        items_html.append(
            # item scores on the headline's scale, as in a run's report (LLMI-Bench: 0-10, not 0-1)
            f'<details class="ev-item"><summary>{_esc(item.id)} · A {_num(_scaled(ra.get("score"), k))} · '
            f'B {_num(_scaled(rb.get("score"), k))}'
            f'{" · " + _esc(pr.get("ab")) + "/" + _esc(pr.get("ba")) if pr else ""}</summary>{verdict}'
            f'<div class="ev-pair"><div><h4>A</h4>{_document_html(run_a, item, embed)}{_verdicts_html(ra, k)}</div>'
            f'<div><h4>B</h4>{_document_html(run_b, item, embed)}{_verdicts_html(rb, k)}</div></div></details>'
        )
    body = "\n".join([f"<h1>{_esc(summary.get('title'))}: A vs B</h1>", top, pw_html, cat_html, "<h2>Items</h2>",
                      "\n".join(items_html)])
    path = out.root / "report.html"
    _atomic(path, _page(f"{summary.get('title')} comparison — llmi eval", body))
    return path
