"""``llmi eval --tts`` end to end: the real pipeline (loopback policy and selection judge, the local image
library) inside the real evaluation (loopback benchmark judge). Each stage's document is judged with the
benchmark's own judge, and the summary, the report and the command line give the score after each stage,
its gain and its extra cost, in pipeline order. Plus the table's arithmetic on hand-made rows.
"""

from __future__ import annotations

import json

import pytest

from llmi.eval.runner import EvalConfig, run_eval
from llmi.eval.stages import format_stage_summary, stage_summary, stage_summary_html
from tests.sse_server import SSEServer
from tests.tts_fakes import between, graded_by_marker, policy_script, settings_for, tag, user_text

LIGHTHOUSE = "A red and white lighthouse on a rocky coast"

CANDIDATES = {
    0: "OK-ANSWER A coast.\n" + tag("search", LIGHTHOUSE, query="lighthouse") + "\nEnd.",
    # the best one: its search finds nothing at first, and its text names a lighthouse the photo contradicts
    1: "BEST-ANSWER The coast.\n\nOn the coast stands the old lighthouse.\n" + tag("search", LIGHTHOUSE, query="zzqx")
       + "\n\nEnd.",
}


def polish_reply(body: dict) -> str:
    doc = between(user_text(body), "DOCUMENT")
    line = next(ln for ln in doc.splitlines() if "the old lighthouse" in ln)
    return line.replace("the old lighthouse", "the red and white lighthouse")


HELPERS = {"rewrite": lambda body: "lighthouse rocky coast\nred white lighthouse", "polish": polish_reply}


def bench_reply(body: dict, n: int) -> str:
    """The benchmark judge: one point for a report with its image, one for text that agrees with it."""
    report = user_text(body).split("<<<REPORT", 1)[1]
    points = ("[image missing" not in report) + ("stands the red and white lighthouse" in report)
    return json.dumps({"score": points, "justification": f"{points} point(s)"})


@pytest.mark.slow  # ~5 s, most of it the report's first matplotlib plots
async def test_eval_tts_reports_score_gain_and_cost_per_stage(tmp_path, judge_server, capsys):
    data = tmp_path / "text_only.json"
    data.write_text(json.dumps([{"prompt": f"Topic {i}: the coast", "r1": "shows the lighthouse"} for i in range(2)]))
    out = tmp_path / "run"
    with SSEServer(policy_script(CANDIDATES, HELPERS)) as policy, \
            judge_server(graded_by_marker({"BEST-ANSWER": (5, 5), "OK-ANSWER": (2, 2)})) as (jurl, _), \
            judge_server(bench_reply) as (eurl, bench_judge):
        settings = settings_for(policy.base_url, judge_url=jurl, eval_judge={
            "base_url": eurl, "model": "judge-1", "retries": 0, "timeout_s": 5.0})
        summary = await run_eval(settings, EvalConfig("llmi-bench", out, data=data, tts=2))

    # the final document is the polished one; every stage's document was judged once (the polished one is
    # the final document: its answer is reused)
    assert summary["scores"]["score"]["mean"] == pytest.approx(10.0)
    assert len(bench_judge.requests) == 2 * 3
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["stage_scores"] for r in rows] == [{"execute": 0.0, "enhance": 0.5, "polish": 1.0}] * 2
    assert [s["stage"] for s in rows[0]["stages"]] == ["sample", "check", "select", "execute", "enhance", "polish"]

    table = {s["stage"]: s for s in summary["tts_stages"]}
    assert list(table) == ["sample", "check", "select", "execute", "enhance", "polish"]  # pipeline order
    assert table["sample"]["items"] == 2 and table["sample"]["llm_calls"] == 2.0  # per item: N = 2 samples
    assert table["sample"]["total"]["llm_calls"] == 4 and table["sample"]["tokens_out"] > 0
    assert "score" not in table["sample"] and "score" not in table["select"]  # no document after them
    assert table["select"]["llm_calls"] == 2.0 and table["check"]["llm_calls"] == 0.0
    assert table["execute"]["score"]["mean"] == 0.0 and table["execute"]["tool_calls"] == 1.0
    assert "gain" not in table["execute"]  # the first scored stage
    # enhance: the rewritten queries found the photo (score 0 -> 5 of 10), at one helper call and two searches
    assert table["enhance"]["score"]["mean"] == pytest.approx(5.0) and table["enhance"]["gain"]["mean"] == pytest.approx(5.0)
    assert table["enhance"]["llm_calls"] == 1.0 and table["enhance"]["tool_calls_by_source"] == {"search": 2.0}
    # polish: the text now agrees with the photo (5 -> 10), at one call
    assert table["polish"]["score"]["mean"] == pytest.approx(10.0) and table["polish"]["gain"]["mean"] == pytest.approx(5.0)
    assert table["polish"]["llm_calls"] == 1.0 and table["polish"]["unscored"] == 0
    assert all(s["seconds"] >= 0 and s["cut"] == 0 for s in summary["tts_stages"])
    assert json.loads((out / "summary.json").read_text())["tts_stages"] == summary["tts_stages"]

    page = (out / "report.html").read_text()
    assert "Test-time scaling stages" in page and "score after it" in page and "+5.00" in page
    assert page.index(">execute<") < page.index(">enhance<") < page.index(">polish<")
    text = format_stage_summary(summary["tts_stages"])
    assert text.splitlines()[0].split()[:4] == ["stage", "items", "cut", "score"]
    assert "+5.00" in text.splitlines()[-1]
    from llmi.cli.eval import _print_summary

    _print_summary(summary, out)  # the command line's closing lines
    printed = capsys.readouterr().err  # status lines go to stderr
    assert "test-time scaling, per stage" in printed and text.splitlines()[-1] in printed
    # the stored document carries its cost table too
    stored = json.loads((out / "documents" / "1.json").read_text())
    assert list(stored["document"]["meta"]["tts"]["stages"]) == list(table)
    assert stored["document"]["stats"]["tts"]["total"]["llm_calls"] >= 6


def test_stage_table_arithmetic_skips_unscored_and_skipped():
    def stages(enhance_status="finished", **extra):
        return [{"stage": "sample", "status": "finished", "llm_calls": 4, "tokens_in": 40, "tokens_out": 400,
                 "tool_calls": {}, "seconds": 2.0},
                {"stage": "enhance", "status": enhance_status, "llm_calls": 2 if enhance_status != "skipped" else 0,
                 "tokens_in": 10, "tokens_out": 20, "tool_calls": {"search": 2, "code": 1}, "seconds": 1.0},
                {"stage": "execute", "status": "finished", "llm_calls": 0, "tokens_in": 0, "tokens_out": 0,
                 "tool_calls": {"search": 1}, "seconds": 0.5}, *extra.get("more", [])]

    rows = [
        {"stages": stages(), "stage_scores": {"execute": 0.2, "enhance": 0.6}},
        {"stages": stages(), "stage_scores": {"execute": 0.4, "enhance": None}},  # the judge failed on one
        {"stages": stages("skipped"), "stage_scores": {"execute": 0.5}},
        {"stages": stages("cut", more=[{"stage": "rerank", "status": "finished", "llm_calls": 1}]),
         "stage_scores": {"execute": 0.1, "enhance": 0.3}},
    ]
    table = {r["stage"]: r for r in stage_summary(rows, scale=10.0)}
    assert list(table) == ["sample", "execute", "enhance", "rerank"]  # pipeline order, an unknown stage last
    e = table["enhance"]
    assert (e["items"], e["cut"], e["skipped"], e["unscored"]) == (3, 1, 1, 1)
    assert e["llm_calls"] == 2.0 and e["tool_calls"] == 3.0 and e["tool_calls_by_source"] == {"code": 1.0, "search": 2.0}
    assert e["total"]["llm_calls"] == 6
    assert e["score"]["mean"] == pytest.approx(4.5) and e["score"]["n"] == 2  # (6 + 3) / 2, the None left out
    assert e["gain"]["mean"] == pytest.approx(3.0) and e["gain"]["n"] == 2  # paired: (+4, +2) / 2
    assert table["execute"]["score"]["mean"] == pytest.approx(3.0) and "gain" not in table["execute"]
    assert table["sample"]["llm_calls"] == 4.0 and table["sample"]["tool_calls"] == 0.0
    assert table["rerank"]["items"] == 1
    assert stage_summary([{"score": 1.0}]) == []  # not a tts run: no table
    html = stage_summary_html([{**e, "stage": "<b>x</b>"}])
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x" not in html
