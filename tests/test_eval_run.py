"""``llmi eval`` runs against a loopback policy LLM (tests/sse_server.py) and a loopback judge (the
``judge_server`` fixture): end to end, judge failures excluded (not scored), resuming without repeating
anything, judge-only runs on existing outputs, and pairwise comparison with the order swapped."""

from __future__ import annotations

import json
from collections import Counter
import re
from pathlib import Path

import pytest

from llmi.config import load_settings
from llmi.eval.compare import CompareConfig, run_compare
from llmi.eval.runner import EvalConfig, run_eval
from tests import fakes
from tests.conftest import _judge_server
from tests.helpers import make_jpeg, make_png
from tests.sse_server import Script, SSEServer

TAG = '<imgen>{{"source": "search", "description": "{q}", "params": {{"query": "{q}"}}}}</imgen>'


@pytest.fixture(autouse=True)
def _fake_tools():
    fakes.register_all()


def response_for(prompt: str) -> str:
    q = re.sub(r"[^a-z ]", "", prompt.lower())[:30] or "x"
    return f"# Report\nAbout {q}.\n{TAG.format(q=q)}\nThe end."


def policy(n: int, body: dict) -> Script:
    user = body["messages"][-1]["content"]
    text = user if isinstance(user, str) else "".join(p.get("text", "") for p in user if p.get("type") == "text")
    if "FAIL-LLM" in text:
        return Script(status=500, retry_after="0")  # Retry-After 0: the client retries at once
    r = response_for(text.split("\n\n")[-1])
    return Script(content=[r[:15], r[15:]])


def user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content if p["type"] == "text")


def settings_for(llm_url: str, judge_url: str, **judge) -> object:
    return load_settings(None, environ={}, overrides={
        "llm": {"base_url": llm_url, "model": "test-model"},
        "eval_judge": {"base_url": judge_url, "model": "judge-1", "retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.05,
                       "timeout_s": 2.0, **judge},
        "tools": {"search": {"backends": ["fake"]}},
        "cache": {"enabled": False},
    })


def bench_file(tmp_path: Path, n: int = 3, criteria=("is clear", "has a picture")) -> Path:
    rows = [{"prompt": f"Topic number {i}", **{f"r{k + 1}": c for k, c in enumerate(criteria)}} for i in range(n)]
    path = tmp_path / "text_only.json"
    path.write_text(json.dumps(rows))
    return path


def grade(body: dict, n: int) -> str:
    return json.dumps({"score": 2 if "is clear" in user_text(body) else 1, "justification": "judged"})


# ------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------


async def test_llmi_bench_end_to_end(tmp_path):
    data = bench_file(tmp_path)
    out = tmp_path / "run"
    with SSEServer(policy) as llm, _judge_server(grade) as (jurl, judge):
        summary = await run_eval(settings_for(llm.base_url, jurl), EvalConfig("llmi-bench", out, data=data, seed=11))
    assert len(llm.requests) == 3 and len(judge.requests) == 6
    assert llm.requests[0].get("seed") == 11  # --seed reaches the server
    assert summary["scores"]["score"]["mean"] == pytest.approx(7.5)  # (2 + 1) / 4 × 10 on every item
    assert summary["items"] == {"total": 3, "finished": 3, "failed": 0, "pending": 0, "failure_kinds": {}}
    assert summary["tools"]["per_tool"]["search"] == {"calls": 3, "success": 3, "success_rate": 1.0, "failure_reasons": {}}
    assert summary["cost"]["judge_calls"] == 6 and summary["cost"]["tokens_in"] > 0
    assert summary["judge"]["published_judge"] == "gpt-4o"
    body = judge.requests[0]
    assert body["temperature"] == 0.0 and body["response_format"] == {"type": "json_object"}
    assert "points" in summary["score_description"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["verdicts"][0]["justification"] == "judged" and rows[0]["tools"] == {"search": {"total": 1, "success": 1}}
    stored = json.loads((out / "documents" / "1.json").read_text())
    assert stored["response"].startswith("# Report") and (out / "documents" / stored["document"]["blocks"][1]["path"]).is_file()
    page = (out / "report.html").read_text()
    assert "Content-Security-Policy" in page and "<script" not in page and "judged" in page
    assert (out / "plots" / "score_distribution.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "json_results" / "evaluation_results.json").read_text())[0]["scores"] == {"r1": 2, "r2": 1}
    assert json.loads((out / "summary.json").read_text())["scores"]["score"]["mean"] == pytest.approx(7.5)


async def test_judge_failures_are_excluded_not_scored(tmp_path):
    kinds = ["ok", "429", "500", "slow", "garbage", "range", "half"]
    data = bench_file(tmp_path, n=1, criteria=tuple(f"criterion-{k}" for k in kinds))

    def reply(body, n):
        text = user_text(body)
        crit = re.search(r"criterion-(\w+)", text).group(1)
        if crit == "429":
            return (429, b'{"error": {"message": "slow down", "type": "rate_limit"}}', {"Retry-After": "0"})
        if crit == "500":
            return (500, b"Internal Server Error", {"Content-Type": "text/plain"})
        if crit == "slow":
            return ("sleep", 3.0, '{"score": 2}')
        if crit == "garbage":
            return (200, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"})
        if crit == "range":
            return '{"score": 7, "justification": "out of range"}'
        if crit == "half":
            return '{"score": 1.5, "justification": "not a whole point"}'
        return '{"score": 2, "justification": "fine"}'

    with SSEServer(policy) as llm, _judge_server(reply) as (jurl, judge):
        # the timeout leaves a loaded machine time for the quick answers; the slow one is far past it
        summary = await run_eval(settings_for(llm.base_url, jurl, timeout_s=1.0),
                                 EvalConfig("llmi-bench", tmp_path / "run", data=data))
    row = json.loads((tmp_path / "run" / "results.jsonl").read_text())
    assert row["score"] == 1.0  # only the usable criterion counts: 2 / (2 × 1)
    assert row["excluded"] == 6 and row["judged"] == 1
    errors = {v["key"]: v["error"].split(":")[0] for v in row["verdicts"] if v.get("error")}
    assert errors == {"r2": "rate_limited", "r3": "http_error", "r4": "timeout", "r5": "bad_response",
                      "r6": "unparseable", "r7": "unparseable"}
    assert summary["scores"]["criteria_excluded"] == 6
    # every failing call tried 1 + retries times, no more (the slow one: a loaded machine may cut its
    # second attempt before the server has read it, so that one is counted at most twice)
    asked = Counter(re.search(r"criterion-(\w+)", user_text(b)).group(1) for b in judge.requests)
    assert {k: n for k, n in asked.items() if k != "slow"} == {"ok": 1, "429": 2, "500": 2, "garbage": 2,
                                                               "range": 2, "half": 2}
    assert 1 <= asked["slow"] <= 2
    page = (tmp_path / "run" / "report.html").read_text()
    assert "excluded — rate_limited" in page


# ------------------------------------------------------------------------------------------------
# Resuming
# ------------------------------------------------------------------------------------------------


async def test_resume_repeats_no_generation_and_no_judge_call(tmp_path):
    data = bench_file(tmp_path, n=4)
    out = tmp_path / "run"
    with SSEServer(policy) as llm, _judge_server(grade) as (jurl, judge):
        s = settings_for(llm.base_url, jurl)
        await run_eval(s, EvalConfig("llmi-bench", out, data=data, limit=2))
        assert (len(llm.requests), len(judge.requests)) == (2, 4)
        summary = await run_eval(s, EvalConfig("llmi-bench", out, data=data))
        assert (len(llm.requests), len(judge.requests)) == (4, 8)  # only the two new items
        again = await run_eval(s, EvalConfig("llmi-bench", out, data=data))
        assert (len(llm.requests), len(judge.requests)) == (4, 8)
    assert summary["items"]["finished"] == 4 and again["scores"] == summary["scores"]
    prompts = [user_text(b) for b in llm.requests]
    assert len(set(prompts)) == 4


async def test_a_failed_judge_call_is_redone_alone_with_retry_errors(tmp_path):
    data = bench_file(tmp_path, n=2)
    out = tmp_path / "run"
    healthy = {"on": False}

    def reply(body, n):
        if "has a picture" in user_text(body) and "Topic number 1" in user_text(body) and not healthy["on"]:
            return (503, b"down", {"Content-Type": "text/plain"})
        return grade(body, n)

    with SSEServer(policy) as llm, _judge_server(reply) as (jurl, judge):
        s = settings_for(llm.base_url, jurl, retries=0)
        first = await run_eval(s, EvalConfig("llmi-bench", out, data=data))
        assert first["scores"]["criteria_excluded"] == 1 and len(judge.requests) == 4
        await run_eval(s, EvalConfig("llmi-bench", out, data=data))  # without --retry-errors: nothing redone
        assert len(judge.requests) == 4
        healthy["on"] = True
        fixed = await run_eval(s, EvalConfig("llmi-bench", out, data=data, retry_errors=True))
    assert len(judge.requests) == 5 and len(llm.requests) == 2  # the one failed call; no regeneration
    assert fixed["scores"]["criteria_excluded"] == 0 and fixed["cost"]["judge_answers_reused"] >= 1


async def test_generation_failure_is_an_error_row_redone_with_retry_errors(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps([{"prompt": "Fine topic", "r1": "is clear"}, {"prompt": "FAIL-LLM topic", "r1": "is clear"}]))
    out = tmp_path / "run"
    with SSEServer(policy) as llm, _judge_server(grade) as (jurl, judge):
        s = settings_for(llm.base_url, jurl)
        summary = await run_eval(s, EvalConfig("llmi-bench", out, data=path))
        assert summary["items"]["failed"] == 1 and summary["scores"]["items"] == 1
        rows = {json.loads(line)["id"]: json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()}
        assert rows["2"]["error"]["kind"] and "score" not in rows["2"]
        n = len(llm.requests)
        await run_eval(s, EvalConfig("llmi-bench", out, data=path))
        assert len(llm.requests) == n  # an error row is done until asked to retry
        await run_eval(s, EvalConfig("llmi-bench", out, data=path, retry_errors=True))
        assert len(llm.requests) > n


async def test_another_benchmark_in_the_same_folder_is_refused(tmp_path):
    from llmi.errors import InputError

    data = bench_file(tmp_path, n=1)
    with SSEServer(policy) as llm, _judge_server(grade) as (jurl, _):
        s = settings_for(llm.base_url, jurl)
        await run_eval(s, EvalConfig("llmi-bench", tmp_path / "run", data=data))
        other = tmp_path / "other.json"
        other.write_text(data.read_text())
        with pytest.raises(InputError, match="holds a run of data"):
            await run_eval(s, EvalConfig("llmi-bench", tmp_path / "run", data=other))


async def test_no_judge_then_judge_into_the_same_folder(tmp_path):
    data = bench_file(tmp_path, n=2)
    out = tmp_path / "run"
    with SSEServer(policy) as llm, _judge_server(grade) as (jurl, judge):
        s = settings_for(llm.base_url, jurl)
        gen = await run_eval(s, EvalConfig("llmi-bench", out, data=data, judge=False))
        assert len(judge.requests) == 0 and gen["scores"]["score"]["mean"] is None
        judged = await run_eval(s, EvalConfig("llmi-bench", out, data=data))
    assert len(llm.requests) == 2 and len(judge.requests) == 4
    assert judged["scores"]["score"]["mean"] == pytest.approx(7.5)


# ------------------------------------------------------------------------------------------------
# Judge-only on existing outputs, and compare
# ------------------------------------------------------------------------------------------------


def opening_outputs(root: Path, model: str, texts: list[str]) -> Path:
    folder = root / "gen_outputs" / f"{model}_output"
    folder.mkdir(parents=True)
    for i, text in enumerate(texts):
        uid = f"03010{i:02d}"
        row = {"total_uid": uid, "meta_task_id": "3", "meta_task_name": "Multimodal Content Completion",
               "subtask_id": "1", "subtask_name": "Storybook Completion", "data_id": str(i),
               "conversations": [{"input": [{"image": None, "text": f"<BEGIN> Continue story {i}."}]},
                                 {"output": [{"text": text, "image": f"{uid}-o-0.jpg"}]}]}
        (folder / f"{uid}.json").write_text(json.dumps(row, indent=4))
        (folder / f"{uid}-o-0.jpg").write_bytes(make_jpeg(16, 16))
    return folder


def opening_grade(body, n):
    text = user_text(body)
    good = "GOOD" in text.split("<<<OUTPUT", 1)[-1]
    v = 9 if good else 4
    return json.dumps({"scores": {c: {"Score": v, "Justification": "j"} for c in (
        "Correctness", "Image-Text Coherency", "Multi-step Consistency", "Content Quality",
        "Human Preference Alignment", "Completeness", "Content Richness")}})


async def test_judge_only_on_opening_outputs_and_compare_with_swapped_order(tmp_path):
    good = opening_outputs(tmp_path / "a", "Good", ["A GOOD story.", "Another GOOD one.", "GOOD again."])
    bad = opening_outputs(tmp_path / "b", "Plain", ["A story.", "Another.", "Again."])
    pair_calls = []

    def reply(body, n):
        text = user_text(body)
        if "OUTPUT_A" in text:
            pair_calls.append(text)
            a = text.split("<<<OUTPUT_A", 1)[1].split("<<<OUTPUT_B", 1)[0]
            return json.dumps({"verdict": "A" if "GOOD" in a else "B", "reason": "the better story"})
        return opening_grade(body, n)

    with SSEServer(policy) as llm, _judge_server(reply) as (jurl, judge):
        s = settings_for(llm.base_url, jurl)
        sa = await run_eval(s, EvalConfig("opening", tmp_path / "run_a", outputs=good))
        sb = await run_eval(s, EvalConfig("opening", tmp_path / "run_b", outputs=bad))
        assert len(llm.requests) == 0  # judge only: nothing generated
        assert sa["scores"]["overall"]["mean"] == 9.0 and sb["scores"]["overall"]["mean"] == 4.0
        assert (tmp_path / "run_a" / "gen_outputs" / "Good_output" / "0301000.json").is_file()
        cmp = await run_compare(s, CompareConfig(tmp_path / "run_a", tmp_path / "run_b", tmp_path / "cmp"))
        assert len(pair_calls) == 6  # 3 pairs × both orders
        first_a = [t.split("<<<OUTPUT_A", 1)[1].split("<<<OUTPUT_B", 1)[0] for t in pair_calls]
        assert sum("GOOD" in a for a in first_a) == 3  # run A's answer shown first in half the calls
        again = await run_compare(s, CompareConfig(tmp_path / "run_a", tmp_path / "run_b", tmp_path / "cmp"))
        assert len(pair_calls) == 6  # resumed: nothing asked twice
    pw = cmp["pairwise"]
    assert pw["win_rates"]["fdt"] == {"A": 1.0, "B": 0.0} and pw["consistency"] == 1.0
    assert pw["battles"] == {"total": 6, "decided": 6, "ties": 0}
    assert cmp["difference"]["mean"] == pytest.approx(5.0) and again["pairwise"] == pw
    battles = json.loads((tmp_path / "cmp" / "Interleaved_Arena" / "judge_modelAB_results.json").read_text())
    assert len(battles) == 6 and set(battles[0]) == {"data_id", "model_A", "model_B", "winner"}
    assert {b["model_A"]["name"] for b in battles} == {"run_a (Good)", "run_b (Plain)"}
    assert "Pairwise" in (tmp_path / "cmp" / "report.html").read_text()


async def test_position_biased_judge_is_cancelled_by_the_swap(tmp_path):
    good = opening_outputs(tmp_path / "a", "X", ["One.", "Two."])
    other = opening_outputs(tmp_path / "b", "Y", ["Uno.", "Dos."])

    def reply(body, n):
        if "OUTPUT_A" in user_text(body):
            return '{"verdict": "Tie(A)", "reason": "first looks better"}'
        return opening_grade(body, n)

    with SSEServer(policy) as llm, _judge_server(reply) as (jurl, _):
        s = settings_for(llm.base_url, jurl)
        await run_eval(s, EvalConfig("opening", tmp_path / "ra", outputs=good))
        await run_eval(s, EvalConfig("opening", tmp_path / "rb", outputs=other))
        cmp = await run_compare(s, CompareConfig(tmp_path / "ra", tmp_path / "rb", tmp_path / "cmp"))
    rates = cmp["pairwise"]["win_rates"]
    assert rates["fdt"] == {"A": 0.5, "B": 0.5} and rates["tie_as_0.5"] == {"A": 0.5, "B": 0.5}
    assert rates["without_tie"] == {"A": None, "B": None} and rates["tie_as_0"] == {"A": 0.0, "B": 0.0}
    assert cmp["pairwise"]["consistency"] == 0.0


# ------------------------------------------------------------------------------------------------
# ISG and the in-domain test set through the runner
# ------------------------------------------------------------------------------------------------


async def test_isg_run_writes_both_isg_files(tmp_path):
    root = tmp_path / "ISG_eval"
    (root / "images").mkdir(parents=True)
    (root / "images" / "q.png").write_bytes(make_png(8, 8))
    row = {"id": "0007", "Category": "HowTo",
           "Query": [{"type": "text", "content": "Explain tying a knot with one image after a sentence."}],
           "Golden": [{"type": "text", "content": "Loop it."}, {"type": "image", "content": "images/q.png"}],
           "predict": {"block_qa": {"questions": [{"subject": "<gen_text1>", "object": "<gen_img1>", "Question": "Does <gen_text1> fit <gen_img1>?"}]},
                       "image_qa": {"questions": [{"image": "<gen_img1>", "Question": "Is there a knot?", "id": 0, "Preliminary": []}]}}}
    data = root / "ISG-Bench.jsonl"
    data.write_text(json.dumps(row) + "\n")

    def isg_policy(n, body):
        return Script(content=["Loop the rope. ", TAG.format(q="knot")])

    def reply(body, n):
        text = user_text(body)
        if "overall score" in text:
            return '{"overall_score": 8, "final_thoughts": "ok"}'
        if "Yes or No" in text:
            return '{"Judge": "Yes", "Reason": "a knot"}'
        return '{"Judge": 6, "Reason": "fits"}'

    with SSEServer(isg_policy) as llm, _judge_server(reply) as (jurl, judge):
        summary = await run_eval(settings_for(llm.base_url, jurl), EvalConfig("isg", tmp_path / "run", data=data))
    assert len(judge.requests) == 3
    overall = summary["scores"]["overall"]
    assert overall["structure"]["mean"] == 1.0 and overall["block"]["mean"] == 6.0
    assert overall["image"]["mean"] == 1.0 and overall["holistic"]["mean"] == 8.0
    assert "Image-Text Complementation" in summary["scores"]["by_category"]
    judged = json.loads((tmp_path / "run" / "isg_judged.jsonl").read_text())
    assert judged["result"]["block"][0]["VQA_judge_Score"]["Judge"] == 6.0
    assert summary["tools"]["image_rule"] == {"items": 1, "compliant": 1, "rate": 1.0}


async def test_llmi_test_run_reports_reward_components(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": [{"role": "user", "content": f"Find a photo of topic {i}"}],
                                          "extra_info": {"image_num": 1 if i else 2, "tools": ["search"], "split": "test",
                                                         "index": i}, "data_source": "interleaved"}) for i in range(2)))

    def reply(body, n):
        if "Image Quality" in body["messages"][0]["content"]:
            return "Image Quality: 4\nTask Relevance: 4\nText-Image Relevance: 4"
        return "Text: 5\nImage: 3"

    with SSEServer(policy) as llm, _judge_server(reply) as (jurl, judge):
        summary = await run_eval(settings_for(llm.base_url, jurl), EvalConfig("llmi-test", tmp_path / "run", data=data))
        assert len(judge.requests) == 4
        # JSON mode is on by default: every request also asks for JSON in words (OpenAI refuses it otherwise)
        assert all(b["response_format"] == {"type": "json_object"} and "JSON" in user_text(b) for b in judge.requests)
        again = await run_eval(settings_for(llm.base_url, jurl), EvalConfig("llmi-test", tmp_path / "run", data=data))
        assert len(judge.requests) == 4 and again["scores"] == summary["scores"]
    comp = summary["scores"]["components"]
    assert comp["s_num"]["mean"] == 0.5  # item 0 wanted exactly 2 images and got 1: the binary rule of evaluation
    assert comp["r_tool"]["mean"] == 1.0 and comp["quality"]["mean"] == 4.0
    assert summary["tools"]["image_rule"]["compliant"] == 1
    # item 1: R = 0.2·1 + 0.3·0.75·1 + 0.5·((1.4·5 + 0.6·3)/2 − 1)/4
    s_llm = ((1.4 * 5 + 0.6 * 3) / 2 - 1) / 4
    rows = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()}
    assert rows["1"]["score"] == pytest.approx(0.2 + 0.3 * 0.75 + 0.5 * s_llm, abs=1e-5)


# ------------------------------------------------------------------------------------------------
# --tts: generation through llmi.tts, the score after each stage
# ------------------------------------------------------------------------------------------------


async def test_tts_hook_judges_each_stage(tmp_path, monkeypatch):
    import llmi.tts.pipeline as pipeline
    from llmi.document import Document, TextBlock

    calls = []

    class Result:
        def __init__(self, prompt):
            self.document = Document(blocks=[TextBlock(f"polished {prompt} is clear")])
            self.snapshots = {"execute": Document(blocks=[TextBlock(f"raw {prompt}")]), "polish": self.document}
            self.cost = {"sample": {"llm_calls": 4, "tokens_in": 100, "tokens_out": 400, "seconds": 1.5},
                         "polish": {"llm_calls": 1, "tokens_in": 50, "tokens_out": 60, "seconds": 0.5}}
            self.stages = []
            self.model = "policy"

    async def fake_tts(request, *, n=None, settings=None, llm=None, engine=None, **kw):
        calls.append((request.prompt, n, llm is not None, engine is not None))
        return Result(request.prompt)

    monkeypatch.setattr(pipeline, "tts", fake_tts)
    data = bench_file(tmp_path, n=2, criteria=("is clear",))

    def reply(body, n):
        doc = user_text(body).split("<<<REPORT", 1)[1]
        return json.dumps({"score": 2 if "polished" in doc else 0, "justification": "j"})

    with SSEServer(policy) as llm, _judge_server(reply) as (jurl, judge):
        summary = await run_eval(settings_for(llm.base_url, jurl), EvalConfig("llmi-bench", tmp_path / "run", data=data, tts=4))
        assert len(llm.requests) == 0  # generation went through llmi.tts
    assert [c[1] for c in calls] == [4, 4] and all(c[2] and c[3] for c in calls)  # the run's LLM and engine reused
    stages = {s["stage"]: s for s in summary["tts_stages"]}
    assert stages["sample"]["llm_calls"] == 4 and stages["sample"]["tokens_out"] == 400  # per item
    assert stages["sample"]["total"]["llm_calls"] == 8 and stages["sample"]["total"]["tokens_out"] == 800
    assert stages["execute"]["score"]["mean"] == 0.0 and stages["polish"]["score"]["mean"] == 10.0  # the gain per stage
    assert summary["scores"]["score"]["mean"] == 10.0 and summary["cost"]["tokens_in"] == 300
    assert len(judge.requests) == 2 + 2  # the execute snapshot is judged; the polished one is the final document
    assert "Test-time scaling stages" in (tmp_path / "run" / "report.html").read_text()


async def test_judge_only_on_release_format_answers_runs_their_tags(tmp_path):
    data = bench_file(tmp_path, n=2)
    answers = tmp_path / "evaluation_results.json"  # the LLM-I release's own result file
    answers.write_text(json.dumps([
        {"sample_index": 1, "prompt": "Topic number 0", "answer": response_for("moon"), "scores": {}, "justifications": {}},
        {"sample_index": 2, "prompt": "Topic number 1", "answer": "No pictures here.", "scores": {}, "justifications": {}},
    ]))
    with SSEServer(policy) as llm, _judge_server(grade) as (jurl, judge):
        summary = await run_eval(settings_for(llm.base_url, jurl), EvalConfig("llmi-bench", tmp_path / "run", data=data,
                                                                             outputs=answers))
    assert len(llm.requests) == 0 and len(judge.requests) == 4
    assert summary["tools"]["per_tool"]["search"]["success"] == 1  # the answer's tag was run with the tools
    rows = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()}
    assert rows["1"]["source"] == "imported" and rows["1"]["images"] == 1 and rows["2"]["images"] == 0


async def test_compare_side_by_side_without_pairwise_and_generic_pairwise(tmp_path):
    from typer.testing import CliRunner

    from llmi.cli import app

    data = bench_file(tmp_path, n=2)

    def grade_b(body, n):
        return json.dumps({"score": 0, "justification": "weak"})

    with SSEServer(policy) as llm:
        with _judge_server(grade) as (jurl, _):
            await run_eval(settings_for(llm.base_url, jurl), EvalConfig("llmi-bench", tmp_path / "ra", data=data))
        with _judge_server(grade_b) as (jurl, _):
            await run_eval(settings_for(llm.base_url, jurl), EvalConfig("llmi-bench", tmp_path / "rb", data=data))
    import asyncio

    result = await asyncio.to_thread(CliRunner().invoke, app, ["eval", "compare", str(tmp_path / "ra"),
                                                              str(tmp_path / "rb"), "--no-progress"], env={"LLMI_CONFIG": ""})
    assert result.exit_code == 0, result.output
    assert "A - B 7.50 [7.50, 7.50] (n=2)" in result.output and "pairwise" not in result.output
    cmp = json.loads((tmp_path / "compare_ra_vs_rb" / "compare.json").read_text())
    assert cmp["a_better_items"] == 2 and "pairwise" not in cmp

    def verdict(body, n):
        return '{"verdict": "B", "reason": "second is better"}'

    with _judge_server(verdict) as (jurl, judge):
        s = settings_for("http://127.0.0.1:9/v1", jurl)
        cmp = await run_compare(s, CompareConfig(tmp_path / "ra", tmp_path / "rb", tmp_path / "cmp2", pairwise=True))
    assert len(judge.requests) == 4 and "OUTPUT_A" in user_text(judge.requests[0])
    assert cmp["pairwise"]["win_rates"]["fdt"] == {"A": 0.5, "B": 0.5} and cmp["pairwise"]["consistency"] == 0.0
