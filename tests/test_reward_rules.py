"""The pure parts of the hybrid reward: image-count rule, tool score, formula, result assembly."""

from __future__ import annotations

import pytest

from llmi.protocol import parse_response
from llmi.reward import (
    RewardConfig,
    RewardResult,
    assemble,
    combine,
    format_violations,
    image_count_score,
    is_eval_split,
    llm_component,
    mllm_component,
    mllm_rule,
    tool_score,
)

# ------------------------------------------------------------------------------------------------
# S_num
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eval_", [False, True])
def test_no_image_rule(eval_):
    assert image_count_score(-1, 0, eval=eval_) == 1.0
    assert image_count_score(-1, 1, eval=eval_) == 0.0
    assert image_count_score(-1, 5, eval=eval_) == 0.0


@pytest.mark.parametrize("eval_", [False, True])
@pytest.mark.parametrize("v", [0, 1, 3, 11, 50])
def test_any_count_rule(eval_, v):
    assert image_count_score(0, v, eval=eval_) == 1.0


@pytest.mark.parametrize("eval_", [False, True])
def test_at_least_one_rule(eval_):
    assert image_count_score(99, 0, eval=eval_) == 0.0
    assert image_count_score(99, 1, eval=eval_) == 1.0
    assert image_count_score(99, 12, eval=eval_) == 1.0


@pytest.mark.parametrize(
    "n, v, expected",
    [
        (1, 1, 1.0),
        (3, 3, 1.0),
        (1, 0, 0.0),
        (4, 0, 0.0),
        (4, 1, 0.25),
        (4, 3, 0.75),
        (3, 2, 2 / 3),
        (2, 3, 0.7),
        (2, 4, 0.4),
        (2, 5, 0.1),
        (2, 6, 0.0),  # 1 - 1.2 floored at 0
        (1, 10, 0.0),
        (98, 99, 0.7),  # 98 is an ordinary N
        (100, 100, 1.0),
    ],
)
def test_exact_count_training(n, v, expected):
    assert image_count_score(n, v) == pytest.approx(expected)


def test_over_count_boundary_is_exact():
    # 1 - 0.3 is not exactly 0.7 in binary; equal situations must give equal rewards
    assert image_count_score(2, 3) == 0.7
    assert image_count_score(5, 6) == image_count_score(1, 2)


@pytest.mark.parametrize("n, v", [(1, 0), (3, 2), (3, 4), (2, 3), (4, 1)])
def test_exact_count_eval_is_binary(n, v):
    assert image_count_score(n, v, eval=True) == 0.0
    assert image_count_score(n, n, eval=True) == 1.0


def test_over_penalty_configurable():
    assert image_count_score(2, 3, over_penalty=0.5) == 0.5
    assert image_count_score(2, 4, over_penalty=0.0) == 1.0


@pytest.mark.parametrize("bad", [-2, -100, 1.5, "3", None, True])
def test_bad_image_num_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="image_num"):
        image_count_score(bad, 1)


def test_negative_produced_rejected():
    with pytest.raises(ValueError):
        image_count_score(1, -1)


def test_splits():
    assert is_eval_split("train") is False
    assert is_eval_split("") is False  # missing means train
    assert is_eval_split("test") is True
    assert is_eval_split("Test") is True
    with pytest.raises(ValueError, match="split"):
        is_eval_split("holdout")


# ------------------------------------------------------------------------------------------------
# r_tool
# ------------------------------------------------------------------------------------------------


def test_tool_score_no_required_tools_is_zero():
    ts = tool_score([], {"code"}, {"code"})
    assert (ts.r_tool, ts.r_attempt, ts.r_success) == (0.0, 0.0, 0.0)


def test_tool_score_all_attempted_and_succeeded():
    ts = tool_score({"code", "search"}, {"code", "search"}, {"code", "search"})
    assert ts.r_tool == pytest.approx(1.0)


def test_tool_score_attempt_without_success_is_half():
    ts = tool_score({"code"}, {"code"}, set())
    assert (ts.r_attempt, ts.r_success, ts.r_tool) == (1.0, 0.0, 0.5)


def test_tool_score_weights_by_difficulty():
    # required code (0.4) + diffusion (0.1); only diffusion attempted and succeeded
    ts = tool_score({"code", "diffusion"}, {"diffusion"}, {"diffusion"})
    assert ts.r_attempt == pytest.approx(0.1 / 0.5)
    assert ts.r_success == pytest.approx(0.1 / 0.5)
    assert ts.r_tool == pytest.approx(0.2)
    # code attempted and succeeded, diffusion attempted and failed
    ts = tool_score({"code", "diffusion"}, {"code", "diffusion"}, {"code"})
    assert ts.r_tool == pytest.approx(0.5 * 0.8 + 0.5 * 1.0)


def test_tool_score_ignores_tools_not_required():
    ts = tool_score({"search"}, {"search", "code", "edit"}, {"code", "edit"})
    assert ts.r_attempt == 1.0 and ts.r_success == 0.0 and ts.r_tool == 0.5


def test_tool_score_beta_and_custom_weights():
    ts = tool_score({"edit", "search"}, {"edit", "search"}, {"edit"}, beta=1.0)
    assert ts.r_tool == pytest.approx(0.3 / 0.5)
    ts = tool_score({"edit", "search"}, {"edit"}, {"edit"}, weights={"edit": 1.0, "search": 1.0}, beta=0.0)
    assert ts.r_tool == pytest.approx(0.5)


def test_tool_score_zero_weight_required_tools_is_zero():
    ts = tool_score({"code"}, {"code"}, {"code"}, weights={"code": 0.0})
    assert ts.r_tool == 0.0


# ------------------------------------------------------------------------------------------------
# The formula
# ------------------------------------------------------------------------------------------------


def test_llm_component_paper_formula():
    for text in (1, 2, 3, 4, 5):
        for image in (1, 2, 3, 4, 5):
            assert llm_component(text, image) == pytest.approx(((1.4 * text + 0.6 * image) / 2 - 1) / 4)
    assert llm_component(1, 1) == 0.0 and llm_component(5, 5) == 1.0


def test_mllm_component_paper_formula():
    assert mllm_component(5, 5, 5) == 1.0
    assert mllm_component(1, 1, 1) == 0.0
    assert mllm_component(4, 3, 2) == pytest.approx(((4 + 3 + 2) / 3 - 1) / 4)


def test_judge_scores_outside_1_5_rejected():
    with pytest.raises(ValueError):
        llm_component(0, 3)
    with pytest.raises(ValueError):
        mllm_component(3, 6, 3)


def test_combine_paper_formula_and_range():
    for s_num in (0.0, 0.25, 0.7, 1.0):
        for s_llm in (0.0, 0.3, 1.0):
            for s_mllm in (0.0, 0.5, 1.0):
                r = combine(s_num, s_llm, s_mllm, r_tool=0.9)  # r_tool is logged only by default
                assert r == pytest.approx(0.2 * s_num + 0.3 * s_mllm * s_num + 0.5 * s_llm)
                assert 0.0 <= r <= 1.0
    assert combine(1, 1, 1) == 1.0
    assert combine(0, 0, 1) == 0.0  # S_mllm only counts through S_num


def test_combine_with_tool_weight_is_normalised():
    cfg = RewardConfig(w_tool=0.5)
    r = combine(1.0, 1.0, 1.0, 1.0, cfg)
    assert r == pytest.approx(1.0)
    r = combine(1.0, 1.0, 1.0, 0.0, cfg)
    assert r == pytest.approx(1.0 / 1.5)


def test_combine_rejects_out_of_range_components():
    with pytest.raises(ValueError):
        combine(1.2, 0.5, 0.5)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="w_llm"):
        RewardConfig(w_llm=-1)
    with pytest.raises(ValueError, match="tool_beta"):
        RewardConfig(tool_beta=2)
    with pytest.raises(ValueError, match="on_judge_error"):
        RewardConfig(on_judge_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fallback_score"):
        RewardConfig(fallback_score=0)
    with pytest.raises(ValueError, match="at least one"):
        RewardConfig(w_num=0, w_mllm=0, w_llm=0)


def test_mllm_rules():
    assert mllm_rule(0) == ("no_images", (5.0, 5.0, 5.0))
    assert mllm_rule(1) == ("judge", None)
    assert mllm_rule(10) == ("judge", None)
    assert mllm_rule(11) == ("too_many_images", (1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------------------------
# Assembly and failure policy
# ------------------------------------------------------------------------------------------------


def _rules(s_num=1.0, r_tool=0.5) -> RewardResult:
    return RewardResult(s_num=s_num, r_tool=r_tool)


def test_assemble_judged():
    r = assemble(_rules(), llm=(4, 3), llm_error=None, mllm=(5, 4, 3), mllm_error=None, mllm_source="judge", empty_text=False)
    s_llm = ((1.4 * 4 + 0.6 * 3) / 2 - 1) / 4
    s_mllm = ((5 + 4 + 3) / 3 - 1) / 4
    assert r.score == pytest.approx(0.2 + 0.3 * s_mllm + 0.5 * s_llm)
    assert (r.text, r.image, r.quality, r.task_rel, r.text_image_rel) == (4, 3, 5, 4, 3)
    assert r.mllm == "judged" and r.errors == {}


def test_assemble_no_images_counts_as_5_but_reports_none():
    r = assemble(_rules(s_num=1.0), llm=(3, 5), llm_error=None, mllm=(5.0, 5.0, 5.0), mllm_error=None, mllm_source="no_images", empty_text=False)
    assert r.s_mllm == 1.0 and r.quality is None and r.mllm == "no_images"
    assert r.score == pytest.approx(0.2 + 0.3 + 0.5 * (((1.4 * 3 + 0.6 * 5) / 2 - 1) / 4))


def test_assemble_too_many_images_penalty():
    r = assemble(_rules(s_num=0.0), llm=(3, 3), llm_error=None, mllm=(1.0, 1.0, 1.0), mllm_error=None, mllm_source="too_many_images", empty_text=False)
    assert r.s_mllm == 0.0 and r.quality == 1.0 and r.mllm == "too_many_images"


def test_assemble_empty_text_scores_text_one():
    r = assemble(_rules(), llm=(5, 4), llm_error=None, mllm=(4, 4, 4), mllm_error=None, mllm_source="judge", empty_text=True)
    assert r.text == 1.0
    r = assemble(_rules(), llm=(5, 4), llm_error=None, mllm=(4, 4, 4), mllm_error=None, mllm_source="judge", empty_text=True, cfg=RewardConfig(empty_text_is_worst=False))
    assert r.text == 5


def test_judge_failure_drops_the_sample_by_default():
    r = assemble(_rules(), llm=None, llm_error="timeout: no answer", mllm=(4, 4, 4), mllm_error=None, mllm_source="judge", empty_text=False)
    assert r.score is None and r.dropped
    assert r.errors == {"llm_judge": "timeout: no answer"}
    assert r.s_llm is None and r.s_mllm is not None  # what was measured is still reported
    r = assemble(_rules(), llm=(4, 4), llm_error=None, mllm=None, mllm_error="http_error: HTTP 500", mllm_source="judge", empty_text=False)
    assert r.score is None and r.mllm == "error" and "mllm_judge" in r.errors


def test_judge_failure_fallback_policy():
    cfg = RewardConfig(on_judge_error="fallback", fallback_score=3.0)
    r = assemble(_rules(), llm=None, llm_error="timeout", mllm=None, mllm_error="timeout", mllm_source="judge", empty_text=False, cfg=cfg)
    assert r.score == pytest.approx(combine(1.0, llm_component(3, 3), mllm_component(3, 3, 3)))
    assert r.fallback == ["llm_judge", "mllm_judge"] and set(r.errors) == {"llm_judge", "mllm_judge"}
    assert r.text is None  # a fallback is not reported as the judge's score
    assert r.mllm == "fallback"


def test_result_dict_has_the_contract_keys():
    d = RewardResult().to_dict()
    for key in ("score", "s_num", "s_llm", "s_mllm", "r_tool", "text", "image", "quality", "task_rel", "text_image_rel", "errors", "violations"):
        assert key in d


def test_format_violations_reports_fences_fillers_and_invalid_tags():
    response = (
        "Intro.\n```\n<imgen>{\"source\": \"search\", \"description\": \"x\", \"params\": {\"query\": \"x\"}}</imgen>\n```\n"
        "Here is an image:\n<imgen>{\"source\": \"diffusion\", \"description\": \"cat\", \"params\": {\"prompt\": \"a cat\"}}</imgen>\n"
        "<imgen>{\"source\": \"paint\", \"description\": \"d\", \"params\": {}}</imgen>"
    )
    kinds = [v["kind"] for v in format_violations(parse_response(response))]
    assert kinds.count("fenced_tag") == 1
    assert kinds.count("filler_intro") == 1
    assert kinds.count("invalid_tag") == 1


def test_docstring_examples_hold():
    import doctest

    import llmi.integrations.trl
    import llmi.reward.rules

    for module in (llmi.reward.rules, llmi.integrations.trl):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0, module.__name__


# ------------------------------------------------------------------------------------------------
# Review findings
# ------------------------------------------------------------------------------------------------


def test_fallback_keeps_the_empty_text_rule():
    # "tags only → text 1" is a rule about the response, not a judgement: a judge outage under the
    # fallback policy must not lift a tags-only answer to the neutral fallback text score
    cfg = RewardConfig(on_judge_error="fallback", fallback_score=3.0)
    r = assemble(_rules(), llm=None, llm_error="timeout", mllm=(4, 4, 4), mllm_error=None, mllm_source="judge", empty_text=True, cfg=cfg)
    assert r.s_llm == pytest.approx(llm_component(1, 3))
    assert r.fallback == ["llm_judge"] and r.text is None
    r = assemble(_rules(), llm=None, llm_error="timeout", mllm=(4, 4, 4), mllm_error=None, mllm_source="judge", empty_text=False, cfg=cfg)
    assert r.s_llm == pytest.approx(llm_component(3, 3))


def test_judges_off_leaves_score_null_with_rule_parts():
    # --no-judges: score is not a guess at R; the rule parts are there and nothing is an error
    r = _rules(s_num=0.5, r_tool=0.25)
    assert r.score is None and not r.dropped and r.mllm == "off"
    assert r.to_dict()["s_num"] == 0.5 and r.to_dict()["r_tool"] == 0.25


def test_dev_is_an_eval_split():
    assert is_eval_split("dev") is True and is_eval_split("validation") is True


def test_paper_extremes_end_to_end():
    # no image asked, none made, perfect text: 0.2·1 + 0.3·1·1 + 0.5·1
    r = assemble(_rules(s_num=image_count_score(-1, 0)), llm=(5, 5), llm_error=None, mllm=mllm_rule(0)[1], mllm_error=None, mllm_source="no_images", empty_text=False)
    assert r.score == 1.0
    # an image made where none was asked: S_num 0 removes both the count and the MLLM terms
    r = assemble(_rules(s_num=image_count_score(-1, 1)), llm=(5, 5), llm_error=None, mllm=(5, 5, 5), mllm_error=None, mllm_source="judge", empty_text=False)
    assert r.score == pytest.approx(0.5)
