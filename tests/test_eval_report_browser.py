"""``report.html`` in a real browser (Debian chromium driven by Playwright): the summary, plots and every
item's document show, images decode, and hostile text — from the data file, the model and the judge — stays
inert. Skipped with the reason when chromium or playwright is missing, like tests/test_browser.py."""

from __future__ import annotations

import json

import pytest

from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.eval.base import Item
from llmi.eval.llmi_bench import LLMIBench
from llmi.eval.report import write_compare_report, write_report
from llmi.eval.runner import build_summary
from llmi.eval.store import RunFolder
from llmi.images import ImageData

from .helpers import Watch, make_png
from .hostile import HOSTILE, PAYLOADS, hostile_document

pytestmark = pytest.mark.browser


def _run(tmp_path, name: str) -> tuple[RunFolder, list[Item], dict]:
    run = RunFolder(tmp_path / name)
    run.root.mkdir()
    items = [Item(id=f"{i}", prompt=f"Task {i}: " + PAYLOADS[i], category=PAYLOADS[i + 1]) for i in range(3)]
    items.append(Item(id="big", prompt="A big image", category="plain"))
    rows: dict[str, dict] = {}
    for n, item in enumerate(items[:3]):
        run.save_document(item.id, hostile_document(), response=HOSTILE)
        rows[item.id] = {
            "category": item.category, "score": 0.5 + 0.1 * n, "scores": {"r1": 2.0, "r2": None}, "judged": 1, "excluded": 1,
            "verdicts": [{"key": "r1", "score": 2.0, "justification": PAYLOADS[n + 3], "label": PAYLOADS[n + 5]},
                         {"key": "r2", "score": None, "error": "unparseable: " + PAYLOADS[n + 7], "label": "r2"}],
            "tools": {"search": {"total": 2, "success": 1}}, "failures": {"search": {"no_result": 1}},
            "images": 4, "image_num": 2, "image_rule": False, "violations": ["filler"],
        }
    big = ImageData.from_bytes(make_png(1800, 900, (20, 90, 200)))
    run.save_document("big", Document(blocks=[TextBlock("Wide."), ImageBlock(big, "diffusion", "wide"),
                                              FailureBlock("code", PAYLOADS[0], "code_error")]))
    rows["big"] = {"category": "plain", "score": 1.0, "scores": {"r1": 2.0}, "verdicts": [], "tools": {}, "images": 1}
    rows["x-failed"] = {"error": {"kind": "llm", "message": PAYLOADS[1]}}
    items.append(Item(id="x-failed", prompt="failed", category="plain"))
    return run, items, rows


def _open(browser, path):
    context = browser.new_context(java_script_enabled=True)
    page = context.new_page()
    watch = Watch(page)
    page.goto(path.as_uri(), wait_until="load")
    page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")
    page.wait_for_timeout(300)
    return context, page, watch


def _inert(page, watch):
    assert page.evaluate("() => window.__pwned") is None
    assert watch.dialogs == [] and watch.errors == []
    assert [u for u in watch.requests if not u.startswith(("file:", "data:"))] == []
    assert page.evaluate("""() => document.querySelectorAll('script, iframe, object, embed, svg, form, base, link, '
                          + 'meta[http-equiv=refresh], [srcdoc]').length""") == 0
    handlers = page.evaluate("""() => Array.from(document.querySelectorAll('*')).flatMap(
                                el => Array.from(el.attributes).map(a => a.name)).filter(n => n.startsWith('on'))""")
    assert handlers == []


def test_run_report_shows_everything_and_runs_nothing(browser, tmp_path):
    run, items, rows = _run(tmp_path, "run")
    bench = LLMIBench()
    summary = build_summary(bench, items, rows)
    path = write_report(run, bench, items, rows, summary)
    context, page, watch = _open(browser, path)
    try:
        _inert(page, watch)
        text = page.inner_text("body")
        assert "LLMI-Bench" in text and "score" in text
        assert "<script>window.__pwned=1" in text  # hostile text is shown as text
        assert "excluded — unparseable" in text and "failed: llm" in text
        images = page.evaluate("() => Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert images and all(ok and w > 0 for ok, w in images)
        assert page.evaluate("() => Promise.all(Array.from(document.images).map(i => i.decode())).then(() => true)")
        widths = page.evaluate("() => Array.from(document.images).map(i => i.naturalWidth)")
        assert max(widths) <= 1000  # the 1800-px image is a thumbnail; plots are 560 px wide
        assert page.locator("img[alt='distribution of item scores']").count() == 1
        assert page.locator(".ev-item").count() == 5
        page.screenshot(path="/tmp/llmi_eval_report.png", full_page=True)
    finally:
        context.close()
    assert json.dumps(summary)  # the summary is JSON


def test_compare_report_is_inert(browser, tmp_path):
    ra, items, rows_a = _run(tmp_path, "a")
    rb, _, rows_b = _run(tmp_path, "b")
    shared = items[:4]
    pair_rows = {i.id: {"ab": "A", "ba": "Tie(B)", "ab_reason": PAYLOADS[2], "ba_reason": PAYLOADS[9]} for i in shared}
    from llmi.eval.compare import compare_summary

    summary = compare_summary(LLMIBench(), shared, rows_a, rows_b, pair_rows, PAYLOADS[4], PAYLOADS[10])
    out = RunFolder(tmp_path / "cmp")
    out.root.mkdir()
    path = write_compare_report(out, LLMIBench(), shared, rows_a, rows_b, pair_rows, summary, ra, rb)
    context, page, watch = _open(browser, path)
    try:
        _inert(page, watch)
        assert "Pairwise" in page.inner_text("body") and "fdt" in page.inner_text("body")
    finally:
        context.close()
