"""score_batch end to end: fake executors built from Document values, real loopback judges."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from llmi.config import JudgeSettings, Settings
from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.images import ImageData
from llmi.reward import RewardConfig, combine, llm_component, mllm_component
from llmi.integrations.trl import impute_group_mean, reward_function
from llmi.reward import RewardScorer, Sample, sample_from_row, score_batch
from tests.helpers import make_png

PNG = ImageData.from_bytes(make_png(6, 6))
LLM_REPLY = "Text: 4\nImage: 3"
MLLM_REPLY = "Image Quality: 5\nTask Relevance: 4\nText-Image Relevance: 3"


def tag(source: str, **params) -> str:
    return "<imgen>" + json.dumps({"source": source, "description": f"a {source} image", "params": params}) + "</imgen>"


def is_mllm(body: dict) -> bool:
    return "Image Quality" in body["messages"][0]["content"]


def standard(body, n):
    return MLLM_REPLY if is_mllm(body) else LLM_REPLY


def settings_for(url: str, **kw) -> Settings:
    judge = dict(base_url=url, model="judge-1", timeout_s=2.0, retries=1, concurrency=4)
    judge.update(kw)
    return Settings(llm_judge=JudgeSettings(**judge), mllm_judge=JudgeSettings(**judge))


def executor_from(outcomes):
    """An executor that answers each tag with the next outcome: True → an image, False → a failure."""

    calls = []

    async def execute(response: str, images: list[ImageData]) -> Document:
        from llmi.protocol import ToolCall, parse_response

        calls.append(response)
        parsed = parse_response(response, len(images))
        blocks = []
        results = iter(outcomes)
        for seg in parsed.segments:
            if isinstance(seg, ToolCall):
                ok = next(results)
                blocks.append(ImageBlock(PNG, seg.source, seg.description) if ok else FailureBlock(seg.source, "failed", "tool_error"))
            elif hasattr(seg, "kind"):  # invalid tag
                blocks.append(FailureBlock(seg.source or "unknown", seg.reason, seg.kind.value))
            elif type(seg).__name__ == "Text":
                blocks.append(TextBlock(seg.text))
        return Document(blocks=blocks, violations=parsed.violations, input_images=list(images))

    execute.calls = calls
    return execute


async def test_full_pipeline_matches_the_formula(judge_server):
    response = "<think>plan</think>Sales rose.\n" + tag("code", code="plt.bar([1],[2])") + "\nA photo.\n" + tag("search", query="eiffel")
    sample = Sample(prompt="Sales report", response=response, image_num=2, tools=["code", "search"])
    with judge_server(standard) as (url, server):
        results = await score_batch([sample], settings_for(url), execute=executor_from([True, True]))
    r = results[0]
    assert r.errors == {} and r.n_images == 2 and r.s_num == 1.0
    assert (r.text, r.image, r.quality, r.task_rel, r.text_image_rel) == (4, 3, 5, 4, 3)
    assert r.score == pytest.approx(combine(1.0, llm_component(4, 3), mllm_component(5, 4, 3)))
    assert r.r_tool == 1.0
    llm_body = next(b for b in server.requests if not is_mllm(b))
    mllm_body = next(b for b in server.requests if is_mllm(b))
    assert "<imgen>" in llm_body["messages"][1]["content"] and "plan" not in llm_body["messages"][1]["content"]
    assert sum(p["type"] == "image_url" for p in mllm_body["messages"][1]["content"]) == 2


async def test_tool_score_uses_the_tag_sources_and_outcomes(judge_server):
    response = "Intro.\n" + tag("code", code="x") + "\nMore.\n" + tag("search", query="y")
    sample = Sample(prompt="Q", response=response, image_num=2, tools=["code", "search"])
    with judge_server(standard) as (url, _):
        (r,) = await score_batch([sample], settings_for(url), execute=executor_from([False, True]))
    # both attempted; only search (0.2 of 0.6) succeeded
    assert r.r_attempt == 1.0 and r.r_success == pytest.approx(0.2 / 0.6)
    assert r.r_tool == pytest.approx(0.5 * (0.2 / 0.6) + 0.5)
    assert r.n_images == 1 and r.s_num == 0.5


async def test_no_images_skips_the_mllm_judge(judge_server):
    sample = Sample(prompt="Q", response="Just prose, no pictures.", image_num=-1)

    async def never(*a):
        raise AssertionError("a response without tags must not be executed")

    with judge_server(standard) as (url, server):
        (r,) = await score_batch([sample], settings_for(url), execute=never)
    assert not any(is_mllm(b) for b in server.requests)
    assert r.mllm == "no_images" and r.s_mllm == 1.0 and r.quality is None
    assert r.score == pytest.approx(0.2 + 0.3 + 0.5 * llm_component(4, 3))


async def test_more_than_ten_images_scores_mllm_one_without_asking(judge_server):
    response = "Many.\n" + "\n".join(tag("diffusion", prompt=f"p{i}") for i in range(11))
    sample = Sample(prompt="Q", response=response, image_num=99)
    with judge_server(standard) as (url, server):
        (r,) = await score_batch([sample], settings_for(url), execute=executor_from([True] * 11))
    assert not any(is_mllm(b) for b in server.requests)
    assert r.mllm == "too_many_images" and r.s_mllm == 0.0 and r.quality == 1.0


async def test_failed_judge_drops_the_sample_and_is_counted(judge_server):
    def reply(body, n):
        return (500, b"boom", {"Content-Type": "text/plain"}) if not is_mllm(body) else MLLM_REPLY

    sample = Sample(prompt="Q", response="Text.\n" + tag("search", query="x"), image_num=1, tools=["search"])
    with judge_server(reply) as (url, _):
        async with RewardScorer(settings_for(url, backoff_s=0.01), execute=executor_from([True])) as scorer:
            (r,) = await scorer.score_batch([sample])
    assert r.score is None and r.dropped
    assert r.errors["llm_judge"].startswith("http_error")
    assert r.s_num == 1.0 and r.s_mllm is not None  # the parts that were measured are kept
    assert scorer.stats.dropped == 1 and scorer.stats.errors["llm_judge"] == 1
    assert scorer.stats.judges["llm_judge"].failed == 1


async def test_failed_judge_fallback_policy(judge_server):
    def reply(body, n):
        return ("sleep", 1.0, MLLM_REPLY) if is_mllm(body) else LLM_REPLY

    sample = Sample(prompt="Q", response="Text.\n" + tag("search", query="x"), image_num=1)
    cfg = RewardConfig(on_judge_error="fallback", fallback_score=2.0)
    with judge_server(reply) as (url, _):
        async with RewardScorer(settings_for(url, timeout_s=0.2, retries=0), config=cfg, execute=executor_from([True])) as scorer:
            (r,) = await scorer.score_batch([sample])
    assert r.errors["mllm_judge"].startswith("timeout") and r.fallback == ["mllm_judge"]
    assert r.score == pytest.approx(combine(1.0, llm_component(4, 3), mllm_component(2, 2, 2)))
    assert scorer.stats.fallbacks["mllm_judge"] == 1 and scorer.stats.scored == 1


async def test_executor_crash_is_an_error_not_a_score(judge_server):
    async def crash(response, images):
        raise RuntimeError("engine fell over")

    sample = Sample(prompt="Q", response="x " + tag("search", query="q"), image_num=1)
    with judge_server(standard) as (url, _):
        (r,) = await score_batch([sample], settings_for(url), execute=crash)
    assert r.score is None and "engine fell over" in r.errors["execute"]


async def test_bad_inputs_are_reported_per_sample(judge_server):
    samples = [
        Sample(prompt="Q", response="x", image_num=-5),
        Sample(prompt="Q", response="x", image_num=1, tools=["teleport"]),
        Sample(prompt="Q", response="x", image_num=1, split="holdout"),
        Sample.invalid("missing key 'response'"),
        Sample(prompt="Q", response="fine", image_num=0),
    ]
    with judge_server(standard) as (url, _):
        results = await score_batch(samples, settings_for(url))
    assert "image_num" in results[0].errors["input"]
    assert "teleport" in results[1].errors["input"]
    assert "split" in results[2].errors["input"]
    assert results[3].errors == {"input": "missing key 'response'"}
    assert results[4].score is not None


async def test_eval_split_uses_the_binary_rule():
    response = "A.\n" + tag("search", query="a") + "\nB.\n" + tag("search", query="b")
    train = Sample(prompt="Q", response=response, image_num=3)
    test = Sample(prompt="Q", response=response, image_num=3, split="test")
    results = await score_batch([train, test], judges=False, execute=executor_from([True, True, True, True]))
    assert results[0].s_num == pytest.approx(2 / 3) and results[1].s_num == 0.0


async def test_rules_only_mode_needs_no_judges():
    response = "Words.\n```\n" + tag("search", query="a") + "\n```\nHere is an image:\n" + tag("code", code="x")
    sample = Sample(prompt="Q", response=response, image_num=1, tools=["code"])
    (r,) = await score_batch([sample], judges=False, execute=executor_from([True]))
    assert r.score is None and r.errors == {} and r.s_num == 1.0 and r.r_tool == 1.0
    assert {v["kind"] for v in r.violations} == {"fenced_tag", "filler_intro"}
    assert r.n_tags == 1  # the fenced tag is text


async def test_edit_of_an_input_image_counts_for_edit():
    response = "Your photo, brighter:\n" + tag("edit", img_index=0, prompt="brighter")
    sample = Sample(prompt="Q", response=response, image_num=1, tools=["edit"], input_images=[PNG])
    (r,) = await score_batch([sample], judges=False, execute=executor_from([True]))
    assert r.n_images == 1 and r.r_success == 1.0


async def test_llm_judge_overlaps_tool_execution(judge_server):
    marks = {}

    async def slow(response, images):
        await asyncio.sleep(0.4)
        marks["executed"] = time.monotonic()
        return await executor_from([True])(response, images)

    def reply(body, n):
        if not is_mllm(body):
            marks["llm_request"] = time.monotonic()
        return standard(body, n)

    sample = Sample(prompt="Q", response="T.\n" + tag("search", query="x"), image_num=1)
    with judge_server(reply) as (url, _):
        (r,) = await score_batch([sample], settings_for(url), execute=slow)
    assert r.score is not None
    assert marks["llm_request"] < marks["executed"]


async def test_in_flight_is_bounded():
    state = {"now": 0, "max": 0}

    async def tracked(response, images):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.01)
        state["now"] -= 1
        return await executor_from([True])(response, images)

    samples = [Sample(prompt="Q", response=f"T{i}.\n" + tag("search", query="x"), image_num=1) for i in range(20)]
    async with RewardScorer(judges=False, execute=tracked, max_in_flight=3) as scorer:
        results = await scorer.score_batch(samples)
    assert state["max"] <= 3 and all(r.s_num == 1.0 for r in results)
    assert scorer.stats.samples == 20 and scorer.stats.unscored == 20


async def test_default_executor_is_the_engine():
    # no backend configured for search: the real engine turns the tag into a failure block
    settings = Settings(tools={"search": {"backends": []}})
    sample = Sample(prompt="Q", response="T.\n" + tag("search", query="x"), image_num=1, tools=["search"])
    async with RewardScorer(settings, judges=False, cache=False) as scorer:
        (r,) = await scorer.score_batch([sample])
    assert r.errors == {} and r.n_images == 0 and r.s_num == 0.0
    assert r.r_attempt == 1.0 and r.r_success == 0.0


def test_sample_from_row(tmp_path):
    (tmp_path / "in.png").write_bytes(make_png(5, 5))
    s = sample_from_row({"prompt": "Q", "response": "R", "image_num": 1, "tools": ["search"], "images": ["in.png"]}, tmp_path)
    assert s.input_error is None and s.input_images[0].width == 5
    import base64

    uri = "data:image/png;base64," + base64.b64encode(make_png(3, 3)).decode()
    assert sample_from_row({"prompt": "Q", "response": "R", "image_num": 1, "images": [uri]}).input_images[0].width == 3
    assert "does not exist" in sample_from_row({"prompt": "Q", "response": "R", "image_num": 1, "images": ["nope.png"]}, tmp_path).input_error
    assert "not a PNG, JPEG" in sample_from_row({"prompt": "Q", "response": "R", "image_num": 1, "images": ["data:image/png;base64,aGVsbG8="]}).input_error
    assert "image_num" in sample_from_row({"prompt": "Q", "response": "R"}).input_error
    assert "tools" in sample_from_row({"prompt": "Q", "response": "R", "image_num": 0, "tools": "code"}).input_error


# ------------------------------------------------------------------------------------------------
# TRL adapter
# ------------------------------------------------------------------------------------------------


async def test_trl_reward_function_contract(judge_server):
    metrics = {}
    prompts = [[{"role": "user", "content": "Draw tides."}]] * 2 + [[{"role": "user", "content": "Other."}]]
    completions = [
        [{"role": "assistant", "content": "Tides.\n" + tag("diffusion", prompt="tide")}],
        [{"role": "assistant", "content": "No image here."}],
        [{"role": "assistant", "content": "Also none."}],
    ]
    with judge_server(standard) as (url, server):
        fn = reward_function(settings_for(url), execute=executor_from([True]))
        rewards = await fn(
            prompts=prompts,
            completions=completions,
            completion_ids=[[1], [2], [3]],
            image_num=[1, 1, 0],
            tools=[["diffusion"], ["diffusion"], []],
            trainer_state=None,
            log_metric=lambda k, v: metrics.__setitem__(k, v),
            log_extra=lambda k, v: None,
        )
        await fn.aclose()
    assert len(rewards) == 3 and all(isinstance(x, float) for x in rewards)
    assert rewards[0] > rewards[1]  # the missing image costs S_num
    llm_bodies = [b for b in server.requests if not is_mllm(b)]
    assert len(llm_bodies) == 3 and any("Draw tides." in b["messages"][1]["content"] for b in llm_bodies)
    assert metrics["llmi/dropped_frac"] == 0.0 and "llmi/s_num" in metrics


async def test_trl_reward_function_drop_and_group_mean(judge_server):
    def reply(body, n):
        content = body["messages"][1]["content"]
        if isinstance(content, str) and "BROKEN" in content:
            return (500, b"down", {"Content-Type": "text/plain"})
        return standard(body, n)

    prompts = ["P", "P", "P"]
    completions = ["Good text.", "BROKEN text.", "Fine text."]
    with judge_server(reply) as (url, _):
        fn = reward_function(settings_for(url, retries=0, backoff_s=0.01))
        raw = await fn(prompts=prompts, completions=completions, image_num=[0, 0, 0], tools=[[], [], []])
        await fn.aclose()
        imputed_fn = reward_function(settings_for(url, retries=0), impute="group_mean")
        imputed = await imputed_fn(prompts=prompts, completions=completions, image_num=[0, 0, 0], tools=[[], [], []])
        await imputed_fn.aclose()
        from_table = settings_for(url, retries=0)
        from_table.reward.impute = "group_mean"  # [reward] impute = "group_mean" in the config file
        table_fn = reward_function(from_table)
        by_table = await table_fn(prompts=prompts, completions=completions, image_num=[0, 0, 0], tools=[[], [], []])
        await table_fn.aclose()
    assert raw[1] is None and raw[0] is not None
    assert imputed[1] == pytest.approx((imputed[0] + imputed[2]) / 2)
    assert by_table == pytest.approx(imputed)


def test_impute_group_mean_keeps_none_for_all_failed_groups():
    assert impute_group_mean([None, None, 1.0], ["a", "a", "b"]) == [None, None, 1.0]


async def test_trl_missing_image_num_column_is_an_error_not_any_count():
    # a dataset without image_num must not silently score every count as right (image_num 0 = any)
    fn = reward_function()
    with pytest.raises(ValueError, match="image_num"):
        await fn(prompts=["P"], completions=["x"], tools=[[]])
    await fn.aclose()


async def test_trl_bad_cells_are_per_row_input_errors(judge_server):
    with judge_server(standard) as (url, server):
        fn = reward_function(settings_for(url))
        rewards = await fn(
            prompts=["P", "P", "P"],
            completions=["Fine.", "Fine.", "Fine."],
            image_num=[None, 0, 0],
            tools=[[], "code", None],
        )
        stats = fn.stats()
        await fn.aclose()
    assert rewards[0] is None and rewards[1] is None and isinstance(rewards[2], float)
    assert stats.errors["input"] == 2


def test_trl_reward_function_refuses_judges_off():
    # every reward would be None: TRL would train on nothing, silently
    with pytest.raises(ValueError, match="judges"):
        reward_function(scorer_kwargs={"judges": False})


def test_old_scoring_path_is_a_deprecated_alias():
    import importlib
    import sys
    import warnings

    import llmi.integrations.trl as trl_adapter

    sys.modules.pop("llmi.scoring", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("llmi.scoring")
    assert old.reward_function is trl_adapter.reward_function
    assert any(issubclass(w.category, DeprecationWarning) and "llmi.integrations.trl" in str(w.message) for w in caught)


async def test_the_reward_path_reads_each_response_once(judge_server, monkeypatch):
    """With the real engine (fake tool backends), one sample is parsed by the protocol exactly once:
    the scorer's reading feeds the tool score, the LLM judge's text and the engine."""
    import llmi.engine
    import llmi.protocol
    import llmi.reward.scoring
    from llmi.config import load_settings
    from tests import fakes

    fakes.register_all()
    calls = []
    real = llmi.protocol.parse_response

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    for module in (llmi.protocol, llmi.reward.scoring, llmi.engine):
        monkeypatch.setattr(module, "parse_response", counting, raising=False)
    strips = []
    monkeypatch.setattr(llmi.protocol, "strip_think", lambda r: strips.append(r) or r)
    tools = {t: {"backends": ["fake"], "retries": 0} for t in ("search", "diffusion", "code", "edit")}
    response = "<think>plan</think>Sales rose.\n" + tag("search", query="eiffel") + "\nDone."
    with judge_server(standard) as (url, server):
        judge = dict(base_url=url, model="judge-1", timeout_s=2.0, retries=1)
        s = load_settings(overrides={"tools": tools, "cache": {"enabled": False}, "llm_judge": judge,
                                     "mllm_judge": judge}, environ={})
        async with RewardScorer(s) as scorer:
            r = await scorer.score(Sample(prompt="Q", response=response, image_num=1, tools=["search"]))
    assert r.errors == {} and r.n_images == 1 and r.r_success == 1.0
    assert calls == [response] and strips == []
    llm_body = next(b for b in server.requests if not is_mllm(b))
    text = llm_body["messages"][1]["content"]
    assert "Sales rose." in text and "<imgen>" in text and "plan" not in text


def test_judged_response_equals_strip_think():
    from llmi.protocol import parse_response, strip_think
    from llmi.reward.scoring import judged_response

    for response in [
        "<think>a</think>x" + tag("code", code="1") + "y",
        "plan</think>Hi <imgen>{bad}</imgen> there",
        "no tags <think>inner</think> after",
        "<imgen>unclosed",
        "",
    ]:
        assert judged_response(parse_response(response)) == strip_think(response), response


def test_a_rows_question_is_what_the_judges_see_else_the_prompts_text():
    from llmi.reward.scoring import sample_from_row

    row = {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "<image>Draw owls"}],
           "response": "x", "image_num": 0, "tools": []}
    assert sample_from_row(row).question == "<image>Draw owls"
    assert sample_from_row({**row, "question": "Draw owls"}).question == "Draw owls"
    assert sample_from_row({**row, "question": 3}).input_error == "question must be a string, got int"
