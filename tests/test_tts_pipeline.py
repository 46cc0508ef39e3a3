"""Test-time scaling end to end: a loopback policy whose candidates differ (invalid tags, the wrong image
count, one clearly best), loopback judges, the real sandbox chart tool and the local image library.

What is shown here: the check drops the invalid candidates; the judge picks the best one; its failing
chart is repaired by the fix loop; its search's first pick is replaced by a better match; the polish
keeps every image in place; each stage reports its cost; a budget that runs out cuts the stages it has
to and returns the best document so far; judge failures are reported, never scored.
"""

from __future__ import annotations

import json
import time

import pytest

from llmi.document import FailureBlock, ImageBlock
from llmi.events import Stage
from llmi.request import Request
from llmi.tts import tts
from llmi.tts.budget import BudgetExhausted
from tests.sse_server import SSEServer
from tests.tts_fakes import between, graded_by_marker, policy_script, settings_for, tag, user_text

pytest.importorskip("matplotlib")
from llmi.tools.code import sandbox as sb

_missing = sb.plan_layers(sb.detect())[1]
needs_sandbox = pytest.mark.skipif(bool(_missing), reason=f"host lacks sandbox layers: {', '.join(_missing)}")

GOOD_CODE = "months = ['Jan', 'Feb', 'Mar']\nsales = [3, 5, 4]\nplt.bar(months, sales)\nplt.title('Sales')"
BROKEN_CODE = "plt.bar(months, sales)\nplt.title('Sales')"  # NameError: months
LIGHTHOUSE = "A red and white lighthouse on a rocky coast"

CANDIDATES = {
    # seed 0: an invalid tag (no params) -> dropped by the check
    0: "OK-ANSWER Sales went up.\n" + '<imgen>{"source": "code", "description": "sales"}</imgen>\n'
       + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\nThe coast.",
    # seed 1: one image where the request asks for two -> dropped
    1: "OK-ANSWER Sales went up.\n" + tag("code", "Monthly sales", code=GOOD_CODE) + "\nThat is all.",
    # seed 2: clearly best — but its chart fails and its search's first pick is the wrong photo
    2: "BEST-ANSWER Sales rose in February.\n" + tag("code", "Monthly sales", code=BROKEN_CODE)
       + "\nOn the coast stands the old lighthouse.\n" + tag("search", LIGHTHOUSE, query="red") + "\nEnd.",
    # seed 3: valid, mediocre
    3: "OK-ANSWER Sales.\n" + tag("code", "Monthly sales", code=GOOD_CODE) + "\n"
       + tag("search", LIGHTHOUSE, query="lighthouse") + "\nEnd.",
}

REQUEST = Request("Write a short sales report with a chart and a photo of the coast.", image_num=2,
                  tools=("code", "search"))


def fix_chart(body: dict) -> str:
    assert "NameError" in user_text(body)  # the error goes back to the model with the code
    return "Here is the fix:\n```python\n" + GOOD_CODE + "\n```"


def rewrite_query(body: dict) -> str:
    return "lighthouse rocky coast\nred white lighthouse"


def polish_reply(body: dict) -> str:
    """Paragraph mode: only the paragraph that contradicts the photo comes back."""
    doc = between(user_text(body), "DOCUMENT")
    line = next(ln for ln in doc.splitlines() if "the old lighthouse" in ln)
    return line.replace("the old lighthouse", "the red and white lighthouse")


def judge_reply():
    return graded_by_marker({"BEST-ANSWER": (5, 5), "OK-ANSWER": (3, 3)})


@needs_sandbox
async def test_sample_check_select_enhance_polish(judge_server):
    helpers = {"fix": fix_chart, "rewrite": rewrite_query, "polish": polish_reply}
    events: list = []
    with SSEServer(policy_script(CANDIDATES, helpers)) as policy, judge_server(lambda b, n: judge_reply()(b, n)) as (jurl, judge):
        settings = settings_for(policy.base_url, judge_url=jurl)
        result = await tts(REQUEST, n=4, settings=settings, on_event=events.append)

    # sample: four candidates, distinct seeds and the temperature schedule
    seeds = sorted(r["seed"] for r in policy.requests if r.get("seed") is not None)
    assert seeds == [0, 1, 2, 3]
    temps = {r["seed"]: r.get("temperature") for r in policy.requests if r.get("seed") is not None}
    assert temps == {0: 0.7, 1: 0.9, 2: 1.0, 3: 0.6}
    # check: the invalid tag and the wrong image count are dropped
    check = result.stage("check")
    assert check.detail["kept"] == [2, 3] and check.detail["dropped"] == [0, 1]
    assert any("missing_key" in p for p in result.checks[0].hard)
    assert any("image count" in p for p in result.checks[1].hard)
    # select: the judge graded the two kept ones and chose the best
    assert result.winner == 2
    sel = result.selection
    assert sel.decided_by == "judge" and sel.parts[2] == {"text": 5.0, "image": 5.0}
    assert len(judge.requests) == 2  # only the kept candidates were judged
    # execute: the chart failed, the search found the bicycle (first match for "red")
    first = result.snapshots["execute"]
    assert isinstance(first.slots[0], FailureBlock) and "NameError" in first.slots[0].reason
    assert isinstance(first.slots[1], ImageBlock) and "bicycle" in first.slots[1].provenance["path"]
    # enhance: the fix loop repaired the chart; the rewritten query's lighthouse replaced the bicycle
    enh = {w["slot"]: w for w in result.stage("enhance").detail["work"]}
    # (the NameError was foreseen from the code, so the fix was asked for while the chart first ran)
    assert enh[0]["action"] == "replaced" and enh[0]["attempts"] == [{"ok": True, "asked_ahead": True}]
    assert result.stage("enhance").detail["asked_ahead"] == [{"slot": 0, "tool": "code", "ask": "chart fix"},
                                                             {"slot": 1, "tool": "search", "ask": "query rewrites"}]
    assert enh[1]["action"] == "replaced" and enh[1]["scored_by"] == "caption match"
    after = result.snapshots["enhance"]
    assert isinstance(after.slots[0], ImageBlock) and after.slots[0].params["code"] == GOOD_CODE
    assert "lighthouse" in after.slots[1].provenance["path"]
    # polish: the text now agrees with the picture; every image kept, in place and in order
    doc = result.document
    assert "the red and white lighthouse" in doc.text and "the old lighthouse" not in doc.text
    assert [b.image.sha256 for b in doc.slots] == [b.image.sha256 for b in after.slots]
    assert [b.type for b in doc.blocks] == [b.type for b in after.blocks]
    assert result.stage("polish").detail["result"] == "rewritten"
    assert result.stage("polish").detail["paragraphs"] == [2]  # only the one that needed it
    # the document stands for a valid tagged response again
    assert doc.to_response().count("<imgen>") == 2

    # cost per stage
    cost = result.costs
    assert cost["sample"].llm_calls == 4 and cost["sample"].tokens_in == 4 * 9
    assert cost["select"].llm_calls == 2 and cost["select"].tokens_in == 2 * 12  # the judge fake's usage
    assert cost["check"].llm_calls == 0 and cost["check"].n_tool_calls == 0
    assert dict(cost["execute"].tool_calls) == {"code": 1, "search": 1}
    assert cost["enhance"].llm_calls == 2  # one query rewrite, one chart fix
    assert dict(cost["enhance"].tool_calls) == {"code": 1, "search": 2}
    assert cost["polish"].llm_calls == 1
    assert result.total.llm_calls == 9 and result.cut == []
    assert result.statistics["total"]["llm_calls"] == 9
    # ... and on the document itself: its meta and its JSON stats, stage by stage in pipeline order
    assert doc.meta["tts"] == result.statistics
    stats = json.loads(json.dumps(doc.to_dict()))["stats"]
    assert list(stats["tts"]["stages"]) == ["sample", "check", "select", "execute", "enhance", "polish"]
    assert stats["tts"]["stages"]["enhance"]["tool_calls"] == {"code": 1, "search": 2}
    assert stats["code"] == {"total": 1, "success": 1}  # the tool counts stay

    # events: one started/finished pair per stage, one line per candidate and per slot, tool events
    stage_events = [e for e in events if isinstance(e, Stage)]
    assert all(e.run_id == REQUEST.run_id for e in stage_events)
    ends = [(e.name, e.status) for e in stage_events
            if "candidate" not in e.detail and "slot" not in e.detail and e.status != "started"]
    assert [n for n, _ in ends] == ["sample", "check", "select", "execute", "enhance", "polish"]
    per_candidate = [e for e in stage_events if e.name == "sample" and "candidate" in e.detail and e.status == "finished"]
    assert sorted(e.detail["candidate"] for e in per_candidate) == [0, 1, 2, 3]
    assert any(e.type == "tool_finished" for e in events)
    finished = {e.name: e for e in stage_events if e.status == "finished" and "candidate" not in e.detail and "slot" not in e.detail}
    assert finished["sample"].cost["llm_calls"] == 4
    assert result.trace["statistics"]["stages"]["enhance"]["tool_calls"] == {"code": 1, "search": 2}


async def test_budget_runs_out_mid_way_and_the_best_so_far_comes_back(judge_server):
    """calls=5 with N=4: the samples take four, the judge gets one of the two it needs: select is cut and
    the check decides; the winner's tools run (no tool budget); enhance and polish find no call left."""
    cands = {0: "OK-ANSWER fine.\n" + tag("search", LIGHTHOUSE, query="lighthouse") + "\nEnd.",
             1: "BEST-ANSWER better.\n" + tag("search", LIGHTHOUSE, query="red") + "\nEnd.",
             2: "broken " + '<imgen>{"source": "search"}</imgen>',
             3: "OK-ANSWER also.\n" + tag("search", LIGHTHOUSE, query="coast") + "\nEnd."}
    with SSEServer(policy_script(cands, {"rewrite": rewrite_query})) as policy, \
            judge_server(lambda b, n: judge_reply()(b, n)) as (jurl, judge):
        settings = settings_for(policy.base_url, judge_url=jurl, tts={"stages": ["sample", "check", "select", "enhance", "polish"]})
        result = await tts("A coast report", n=4, budget="calls=5", settings=settings)
    assert result.budget["used"]["calls"] <= 5 and len(policy.requests) + len(judge.requests) <= 5
    assert result.cut == ["select", "enhance", "polish"]
    assert result.stage("select").detail["resource"] == "calls"
    assert "not judged" in " ".join(result.selection.failures.values())
    assert result.winner == 0  # three candidates judged none to the end: the check's order decides
    assert isinstance(result.document.slots[0], ImageBlock)
    assert result.budget["exhausted"] == ["calls"]


async def test_seconds_budget_cuts_sampling_and_keeps_the_candidates_that_finished():
    cands = {0: "Quick answer with no picture.", 1: "Slow answer.", 2: "Slower answer."}
    with SSEServer(policy_script(cands, first_token_s={0: 0.0, 1: 5.0, 2: 5.0})) as policy:
        settings = settings_for(policy.base_url)
        t0 = time.perf_counter()
        result = await tts("Say something", n=3, budget="seconds=1", settings=settings,
                           stages="sample,check,select")
        elapsed = time.perf_counter() - t0
    assert elapsed < 2.5
    assert result.stage("sample").status == "cut" and result.stage("sample").detail["resource"] == "seconds"
    assert [c.index for c in result.candidates] == [0]
    assert result.document.text == "Quick answer with no picture."
    assert "seconds" in result.budget["exhausted"]
    assert result.stage("check").status == "finished"  # free: the clock does not cut it


async def test_a_budget_without_a_single_call_is_an_error():
    with SSEServer(policy_script({0: "x"})) as policy:
        with pytest.raises(BudgetExhausted):
            await tts("p", n=2, budget="calls=0", settings=settings_for(policy.base_url))
        assert policy.requests == []


async def test_judge_failures_are_reported_never_scored(judge_server):
    cands = {0: "OK-ANSWER a. " + tag("search", LIGHTHOUSE, query="lighthouse"),
             1: "FAIL-500 b. " + tag("search", LIGHTHOUSE, query="lighthouse"),
             2: "GARBAGE c. " + tag("search", LIGHTHOUSE, query="lighthouse")}

    def reply(body, n):
        answer = between(user_text(body), "ANSWER")
        if "FAIL-500" in answer:
            return (503, b"<html>busy</html>", {"Content-Type": "text/html"})
        if "GARBAGE" in answer:
            return "I like it a lot."  # no grades
        return "Text: 3\nImage: 4"

    with SSEServer(policy_script(cands)) as policy, judge_server(reply) as (jurl, judge):
        settings = settings_for(policy.base_url, judge_url=jurl)
        result = await tts("Coast", n=3, settings=settings, stages="sample,check,select")
    sel = result.selection
    assert result.winner == 0
    assert sel.final[1] is None and sel.final[2] is None  # no stand-in score
    assert "http_error" in sel.failures[1] and "unparseable" in sel.failures[2]
    assert sel.decided_by == "judge (2 unjudged)"
    assert result.stage("select").status == "finished"
    assert len(judge.requests) == 1 + 2 * 2  # the failing ones were retried once each (retries=1)


async def test_every_judge_failing_leaves_the_choice_to_the_check(judge_server):
    cands = {0: "Answer one, tags only next: " + '<imgen>{"bad": 1}</imgen>',
             1: "Answer two. " + tag("search", LIGHTHOUSE, query="lighthouse")}
    with SSEServer(policy_script(cands)) as policy, judge_server(lambda b, n: (500, b"{}", {})) as (jurl, _):
        settings = settings_for(policy.base_url, judge_url=jurl, tts={"invalid": "penalise"})
        result = await tts("Coast", n=2, settings=settings, stages="sample,check,select")
    assert result.winner == 1  # fewer check problems
    assert result.selection.decided_by == "check (no candidate could be judged)"
    assert set(result.selection.failures) == {0, 1}


async def test_tie_settled_by_a_pairwise_match(judge_server):
    cands = {0: "ALPHA answer. " + tag("search", LIGHTHOUSE, query="lighthouse"),
             1: "BRAVO answer. " + tag("search", LIGHTHOUSE, query="lighthouse")}

    def reply(body, n):
        if "You compare two answers" in body["messages"][0]["content"]:
            text = user_text(body)
            first = between(text, "ANSWER A")
            return "Winner: A" if "BRAVO" in first else "Winner: B"
        return "Text: 4\nImage: 4"  # the same grades for both

    with SSEServer(policy_script(cands)) as policy, judge_server(reply) as (jurl, _):
        settings = settings_for(policy.base_url, judge_url=jurl)
        result = await tts("Coast", n=2, settings=settings, stages="sample,check,select")
    sel = result.selection
    assert sel.ties == [0, 1] and result.winner == 1
    assert "tie settled by pairwise match" in sel.decided_by
    assert [m.how for m in sel.matches] == ["judge"] and sel.matches[0].verdicts == ["b", "b"]


async def test_tournament_with_the_policy_as_judge():
    strength = {"ALPHA": 1, "BRAVO": 4, "CHARLIE": 2, "DELTA": 3}
    cands = {i: f"{name} answer. " + tag("search", LIGHTHOUSE, query="lighthouse")
             for i, name in enumerate(strength)}

    def pairwise(body):
        text = user_text(body)
        a, b = between(text, "ANSWER A"), between(text, "ANSWER B")
        sa = next(v for k, v in strength.items() if k in a)
        sb_ = next(v for k, v in strength.items() if k in b)
        return "Winner: A" if sa > sb_ else "Winner: B"

    with SSEServer(policy_script(cands, {"pairwise": pairwise})) as policy:
        settings = settings_for(policy.base_url, tts={"selector": "tournament", "judge": "policy"})
        result = await tts("Coast", n=4, settings=settings, stages="sample,check,select")
    sel = result.selection
    assert result.winner == 1 and sel.decided_by == "tournament"
    assert len(sel.matches) == 3 and all(m.how == "judge" for m in sel.matches)
    assert result.costs["select"].llm_calls == 6  # N - 1 matches, both orders
    assert sel.ranking[0] == 1 and sel.ranking[1] == 3  # the final's loser second


async def test_generation_style_defaults_n1_is_one_plain_sample():
    with SSEServer(policy_script({0: "Plain text."})) as policy:
        result = await tts("p", n=1, settings=settings_for(policy.base_url), stages="sample,check,select,enhance")
    assert result.winner == 0 and result.document.text == "Plain text."
    assert result.selection.decided_by == "only candidate"
    assert [s.status for s in result.stages] == ["finished", "finished", "finished", "finished", "finished", "skipped"]


async def test_eval_generation_step_and_the_stage_table():
    """``llmi eval --tts`` calls :func:`llmi.tts.tts` through eval's generation step; the per-stage cost
    comes back as JSON, and :func:`stage_table` turns many runs (with scores of their snapshots) into the
    stage-wise gain table."""
    import json

    from llmi.eval.generate import generate_item
    from llmi.tts import stage_table
    from llmi.tts.pipeline import format_stage_table

    cands = {0: "OK-ANSWER a.", 1: "BEST-ANSWER b."}
    helpers = {"grade": lambda b: graded_by_marker({"BEST-ANSWER": (5, 5)})(b, 0), "polish": lambda b: "NO CHANGES"}
    with SSEServer(policy_script(cands, helpers)) as policy:
        settings = settings_for(policy.base_url)
        gen = await generate_item(Request("Say it"), settings, 2)
        results = [await tts(Request("Say it"), n=2, settings=settings) for _ in range(2)]
    assert gen.document.text == "BEST-ANSWER b." and gen.response == "BEST-ANSWER b."
    json.dumps(gen.info())  # JSON-able for the run folder
    assert [s["stage"] for s in gen.stages] == ["sample", "check", "select", "execute", "enhance", "polish"]
    assert next(s for s in gen.stages if s["stage"] == "sample")["llm_calls"] == 2

    scores = [{"execute": 0.5, "enhance": 0.5, "polish": 0.6}, {"execute": 0.7, "enhance": None, "polish": 0.8}]
    rows = {r["stage"]: r for r in stage_table(results, scores)}
    assert rows["sample"]["llm_calls"] == 2 and rows["select"]["llm_calls"] == 2 and rows["check"]["llm_calls"] == 0
    assert rows["execute"]["score"] == pytest.approx(0.6) and rows["execute"]["gain"] is None
    assert rows["enhance"]["score"] == 0.5 and rows["enhance"]["unscored"] == 1 and rows["enhance"]["runs"] == 2
    assert rows["polish"]["gain"] == pytest.approx(0.2)
    table = format_stage_table(list(rows.values()))
    assert table.splitlines()[0].split() == ["stage", "runs", "cut", "score", "gain", "calls", "tok", "in",
                                             "tok", "out", "tools", "seconds"]
    assert len(table.splitlines()) == 2 + 6
    assert stage_table([r.trace for r in results]) == stage_table(results)  # traces work as well


async def test_fewer_samples_when_the_budget_allows_fewer_calls():
    cands = {0: "First.", 1: "Second."}
    with SSEServer(policy_script(cands)) as policy:
        result = await tts("p", n=4, budget="calls=2", settings=settings_for(policy.base_url), stages="sample,check,select")
    rec = result.stage("sample")
    assert rec.status == "cut" and rec.detail["reduced_by_budget"] == 2 and rec.detail["sampled"] == 2
    assert len(policy.requests) == 2
    assert result.stage("select").status == "cut"  # no call left for the judge (the policy): the check decides
    assert result.selection.decided_by == "check (the budget ran out before a candidate was judged)"
    assert result.budget["exhausted"] == ["calls"]


async def test_tool_call_budget_leaves_the_refused_slots_in_place():
    cand = ("One.\n" + tag("search", LIGHTHOUSE, query="lighthouse") + "\nTwo.\n"
            + tag("search", "A red bicycle", query="red bicycle") + "\nEnd.")
    with SSEServer(policy_script({0: cand})) as policy:
        result = await tts("p", n=1, budget="tool_calls=1", settings=settings_for(policy.base_url),
                           stages="sample,enhance")
    doc = result.document
    assert isinstance(doc.slots[0], ImageBlock)
    assert isinstance(doc.slots[1], FailureBlock) and doc.slots[1].kind == "budget"
    assert "budget exhausted (tool_calls)" in doc.slots[1].reason
    assert result.stage("execute").status == "cut" and result.stage("execute").detail["resource"] == "tool_calls"
    assert result.budget["used"]["tool_calls"] == 1
    assert doc.to_response().count("<imgen>") == 2  # the refused tag is still there, ready to run later


async def test_a_token_budget_is_never_exceeded():
    cands = {0: "First answer, short.", 1: "Second answer.", 2: "Third."}
    helpers = {"grade": lambda b: "Text: 4\nImage: 4", "pairwise": lambda b: "Winner: A"}
    with SSEServer(policy_script(cands, helpers)) as policy:
        settings = settings_for(policy.base_url)
        settings.llm.max_tokens = 600
        result = await tts("p", n=3, budget="tokens=4000", settings=settings, stages="sample,check,select")
    used = result.budget["used"]["tokens"]
    assert 0 < used <= 4000
    assert "tokens" in result.budget["exhausted"]
    # every request that was sent asked for no more reply tokens than the budget had left
    assert all(r.get("max_tokens", 10**9) <= 4000 for r in policy.requests)
    assert result.cut  # something had to give


async def test_a_judge_that_is_not_configured_is_refused_before_sampling():
    from llmi.errors import ConfigError

    with SSEServer(policy_script({0: "x"})) as policy:
        settings = settings_for(policy.base_url, tts={"judge": "llm_judge"})
        with pytest.raises(ConfigError, match=r"\[tts\] judge asks for \[llm_judge\]"):
            await tts("p", n=2, settings=settings)
        settings = settings_for(policy.base_url, tts={"selector": "reward"})
        with pytest.raises(ConfigError, match=r"selector = \"reward\" asks for \[mllm_judge\]"):
            await tts("p", n=2, settings=settings)
        assert policy.requests == []


async def test_llmi_tts_is_callable_from_the_package():
    import llmi

    with SSEServer(policy_script({0: "Plain."})) as policy:
        result = await llmi.tts("p", n=1, settings=settings_for(policy.base_url), stages="sample")
    assert result.document.text == "Plain." and llmi.tts.Budget.parse("calls=1").calls == 1


async def test_speculative_runs_tools_while_candidates_are_written(judge_server):
    """[tts] speculative: every candidate's tools run as it streams; the winner's document is reused,
    and the tool calls of all candidates are on the sample stage's bill."""
    cands = {0: "OK-ANSWER one.\n" + tag("search", LIGHTHOUSE, query="lighthouse") + "\nEnd.",
             1: "BEST-ANSWER two.\n" + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\nEnd."}
    events: list = []
    with SSEServer(policy_script(cands)) as policy, judge_server(lambda b, n: judge_reply()(b, n)) as (jurl, _):
        settings = settings_for(policy.base_url, judge_url=jurl, tts={"speculative": True})
        result = await tts("Coast", n=2, settings=settings, stages="sample,check,select", on_event=events.append)
    assert result.winner == 1
    assert result.stage("execute").detail["reused"] == "its tools ran while it was written"
    assert dict(result.costs["sample"].tool_calls) == {"search": 2} and result.costs["execute"].n_tool_calls == 0
    assert isinstance(result.document.slots[0], ImageBlock)
    assert result.snapshots["execute"] is result.candidates[1].document  # reused, not run again
    assert result.document.blocks == result.candidates[1].document.blocks and "tts" in result.document.meta


async def test_the_policy_as_judge_grades_with_the_grading_cap():
    cands = {0: "OK-ANSWER a.", 1: "BEST-ANSWER b."}
    helpers = {"grade": lambda b: graded_by_marker({"BEST-ANSWER": (5, 5)})(b, 0)}
    with SSEServer(policy_script(cands, helpers)) as policy:
        settings = settings_for(policy.base_url, tts={"judge_max_tokens": 300})
        result = await tts("p", n=2, settings=settings, stages="sample,check,select")
    caps = {("seed" in r): r["max_tokens"] for r in policy.requests}
    assert caps == {True: 2048, False: 300} and result.winner == 1


async def test_candidates_are_judged_as_soon_as_they_are_written(judge_server):
    """The default selector judges each candidate when it finishes: the two quick ones are judged while
    the slow one is still being written; the judge calls are on select's bill, not sample's."""
    cands = {0: "OK-ANSWER quick.", 1: "BEST-ANSWER quick.", 2: "OK-ANSWER slow.",
             3: "broken " + '<imgen>{"source": "search"}</imgen>'}  # dropped by the check: never judged
    judged_at: dict[str, float] = {}
    finished_at: dict[int, float] = {}

    def reply(body, n):
        answer = between(user_text(body), "ANSWER")
        judged_at[answer.split()[1]] = time.perf_counter()
        return judge_reply()(body, n)

    def on_event(ev):
        if isinstance(ev, Stage) and ev.name == "sample" and ev.status == "finished" and "candidate" in ev.detail:
            finished_at[ev.detail["candidate"]] = time.perf_counter()

    with SSEServer(policy_script(cands, first_token_s={2: 1.0})) as policy, judge_server(reply) as (jurl, judge):
        settings = settings_for(policy.base_url, judge_url=jurl)
        result = await tts("p", n=4, settings=settings, stages="sample,check,select", on_event=on_event)
    assert result.winner == 1 and len(judge.requests) == 3
    assert judged_at["quick."] < finished_at[2] <= judged_at["slow."]  # the quick ones did not wait for it
    assert result.costs["sample"].llm_calls == 4 and result.costs["select"].llm_calls == 3
    assert result.costs["select"].seconds < 0.9  # selection took the last judge call, not all of sampling


async def test_nothing_is_judged_early_when_the_budget_could_not_judge_every_candidate(judge_server):
    cands = {0: "OK-ANSWER a.", 1: "BEST-ANSWER b.", 2: "OK-ANSWER c."}
    with SSEServer(policy_script(cands, first_token_s={2: 0.5})) as policy, \
            judge_server(lambda b, n: judge_reply()(b, n)) as (jurl, judge):
        settings = settings_for(policy.base_url, judge_url=jurl)
        result = await tts("p", n=3, budget="calls=4", settings=settings, stages="sample,check,select")
    # one judge call was left after the three samples: selection spent it on the first candidate in
    # the check's order, not on whichever finished first
    assert len(judge.requests) == 1 and "OK-ANSWER a." in user_text(judge.requests[0])
    assert result.cut == ["select"] and result.winner == 0
