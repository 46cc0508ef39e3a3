"""The pure parts of ``llmi eval``: intervals, the benchmarks' scoring and aggregation formulas checked on
hand-computed cases, win rates, and the judge-reply parsers (malformed and out-of-range answers)."""

from __future__ import annotations

import pytest

from llmi.eval.base import Judged, Verdict, image_markers, safe_name, split_at_markers
from llmi.eval.compare import battles_of, compare_summary, side, swap, win_rates
from llmi.eval.isg import ISGBench, parse_block, parse_holistic, parse_yes_no
from llmi.eval.judge import ScoreParseError, extract_json, number_in
from llmi.eval.llmi_bench import LLMIBench, parse_grade
from llmi.eval.opening import CRITERIA, OpenING, parse_scores, parse_verdict
from llmi.eval.stats import bootstrap_ci, fmt_ci, mean_ci, mean_of_means_ci, paired_diff_ci


# ------------------------------------------------------------------------------------------------
# Intervals
# ------------------------------------------------------------------------------------------------


def test_mean_ci_is_reproducible_and_brackets_the_mean():
    vals = [0.0, 0.5, 1.0, 1.0, 0.25, 0.75, 0.5, 1.0]
    a, b = mean_ci(vals, seed=3), mean_ci(vals, seed=3)
    assert a == b and a["n"] == 8
    assert a["mean"] == pytest.approx(sum(vals) / 8)
    assert 0.0 <= a["low"] < a["mean"] < a["high"] <= 1.0
    assert mean_ci(vals, scale=10)["mean"] == pytest.approx(10 * a["mean"])


def test_mean_ci_edge_cases():
    assert mean_ci([]) == {"mean": None, "low": None, "high": None, "n": 0}
    assert mean_ci([None, 0.4]) == {"mean": 0.4, "low": None, "high": None, "n": 1}  # nothing to resample
    assert mean_ci([2.0, 2.0, 2.0]) == {"mean": 2.0, "low": 2.0, "high": 2.0, "n": 3}
    assert fmt_ci({"mean": 7.312, "low": 6.9, "high": 7.7, "n": 120}) == "7.31 [6.90, 7.70] (n=120)"
    assert fmt_ci(None) == "–"


def test_interval_narrows_with_more_items():
    small = mean_ci([0.0, 1.0] * 5, seed=1)
    large = mean_ci([0.0, 1.0] * 500, seed=1)
    assert (large["high"] - large["low"]) < (small["high"] - small["low"]) / 5


def test_interval_of_a_statistic_and_of_paired_differences():
    rows = [[1, 2], [3, None], [5, 6]]
    ci = mean_of_means_ci(rows, seed=0)
    assert ci["mean"] == pytest.approx((3 + 4) / 2)  # column means 3 and 4
    generic = bootstrap_ci(rows, lambda s: sum(r[0] for r in s) / len(s), seed=0)
    assert generic["mean"] == 3 and generic["low"] <= 3 <= generic["high"]
    d = paired_diff_ci([1.0, 2.0, 3.0], [0.5, 1.5, 2.0])
    assert d["mean"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


# ------------------------------------------------------------------------------------------------
# LLMI-Bench: points / (2 × judged), benchmark = mean × 10
# ------------------------------------------------------------------------------------------------


def test_llmi_bench_item_score_excludes_failed_criteria():
    v = [Verdict("r1", 2.0), Verdict("r2", 1.0), Verdict("r3", None, error="timeout: ..."), Verdict("r4", 0.0)]
    j = LLMIBench.score(v)
    assert j.score == pytest.approx(3 / 6)  # (2 + 1 + 0) / (2 × 3 judged); r3 counts neither way
    assert j.excluded == 1 and j.extra["judged"] == 3
    assert LLMIBench.score([Verdict("r1", None, error="x")]).score is None


def test_llmi_bench_aggregate_by_hand():
    rows = [
        {"score": 0.5, "category": "text-only", "scores": {"r1": 2.0, "r2": 0.0}, "judged": 2, "excluded": 0},
        {"score": 1.0, "category": "text-only", "scores": {"r1": 2.0, "r2": 2.0}, "judged": 2, "excluded": 0},
        {"score": None, "category": "multimodal", "scores": {"r1": None}, "judged": 0, "excluded": 1},
        {"error": {"kind": "llm", "message": "down"}},
    ]
    agg = LLMIBench().aggregate(rows)
    assert agg["score"]["mean"] == pytest.approx(7.5)  # mean(0.5, 1.0) × 10
    assert agg["items"] == 3 and agg["items_scored"] == 2 and agg["criteria_excluded"] == 1
    assert agg["by_criterion"]["r1"]["mean"] == pytest.approx(10.0)  # 2 points on 0-10
    assert agg["by_criterion"]["r2"]["mean"] == pytest.approx(5.0)
    assert agg["by_category"]["multimodal"]["mean"] is None


@pytest.mark.parametrize("reply, score", [
    ('{"score": 2, "justification": "all there"}', 2),
    ('```json\n{"score": "1", "justification": "half"}\n```', 1),
    ('<think>hmm {"score": 0}</think>{"Score": 0, "Justification": "no"}', 0),
    ('Sure! {"score": 2.0, "justification": "x"} Hope that helps', 2),
])
def test_llmi_bench_grades_parse(reply, score):
    assert parse_grade(reply)["score"] == score


@pytest.mark.parametrize("reply", [
    "", "It meets the criterion.", '{"score": 3}', '{"score": -1}', '{"score": 1.5}', '{"justification": "x"}',
    '{"score": "two"}', '{"score": true}', "[1, 2]",
])
def test_llmi_bench_bad_grades_are_unparseable(reply):
    with pytest.raises(ScoreParseError):
        parse_grade(reply)


# ------------------------------------------------------------------------------------------------
# OpenING: seven criteria 0-10; overall = mean of criterion means
# ------------------------------------------------------------------------------------------------


def _scores_reply(values: dict) -> str:
    import json

    return json.dumps({"scores": {k: {"Score": v, "Justification": f"why {k}"} for k, v in values.items()}})


def test_opening_scores_parse_with_partial_exclusion():
    values = {c: 7 for c in CRITERIA}
    values["Completeness"] = 11  # out of range: excluded, the rest kept
    values.pop("Content Richness")  # missing: excluded
    got = parse_scores(_scores_reply(values))
    assert got["Correctness"]["Score"] == 7.0
    assert got["Completeness"]["Score"] is None and "outside" in got["Completeness"]["error"]
    assert got["Content Richness"]["Score"] is None
    with pytest.raises(ScoreParseError):
        parse_scores(_scores_reply({c: 12 for c in CRITERIA}))  # nothing usable: retried, then excluded
    flat = '{"Correctness": {"Score": 5, "Justification": "ok"}}'  # not nested under "scores"
    assert parse_scores(flat)["Correctness"]["Score"] == 5.0


def test_opening_overall_is_the_mean_of_criterion_means():
    # item 1 judged on all seven (all 6), item 2 only on Correctness (10): Correctness mean 8, others 6
    r1 = {"score": 6.0, "scores": {c: 6.0 for c in CRITERIA}, "category": "t", "subcategory": "s"}
    r2 = {"score": 10.0, "scores": {c: (10.0 if c == "Correctness" else None) for c in CRITERIA},
          "category": "t", "subcategory": "s", "excluded": 6}
    agg = OpenING().aggregate([r1, r2])
    assert agg["criteria"]["Correctness"]["mean"] == pytest.approx(8.0)
    assert agg["criteria"]["Completeness"]["mean"] == pytest.approx(6.0)
    assert agg["overall"]["mean"] == pytest.approx((8 + 6 * 6) / 7, abs=1e-4)  # not the mean of item means (8.0)
    assert agg["criteria_excluded"] == 6
    assert OpenING.score([Verdict(c, 5.0) for c in CRITERIA]).score == 5.0


@pytest.mark.parametrize("reply, verdict", [
    ('{"verdict": "A", "reason": "r"}', "A"),
    ('{"verdict": "Tie(B)"}', "Tie(B)"),
    ('{"winner": "B is better"}', "B"),
    ("Tie(A better)", "Tie(A)"),
    ("A is better", "A"),
    ('{"verdict": "tie (a)"}', "Tie(A)"),
])
def test_pairwise_verdicts_parse(reply, verdict):
    assert parse_verdict(reply)["verdict"] == verdict


@pytest.mark.parametrize("reply", ["", "Both are fine.", '{"verdict": "C"}', '{"verdict": "Tie"}'])
def test_unclear_verdicts_are_unparseable(reply):
    with pytest.raises(ScoreParseError):
        parse_verdict(reply)


# ------------------------------------------------------------------------------------------------
# Win rates (OpenING's four variants) and swapped order
# ------------------------------------------------------------------------------------------------


def _battle(a, b, w):
    return {"model_A": {"name": a}, "model_B": {"name": b}, "winner": w}


def test_win_rates_by_hand():
    # x vs y, positions as shown to the judge: x wins 2 outright (once in each position), y wins 1,
    # one tie leaning to x (x in position B), one tie leaning to y.
    battles = [_battle("x", "y", "A"), _battle("y", "x", "B"), _battle("x", "y", "B"), _battle("y", "x", "Tie(B)"),
               _battle("x", "y", "Tie(B)")]
    r = win_rates(battles, "x", "y")
    assert r["battles"] == {"total": 5, "decided": 3, "ties": 2}
    assert r["fdt"]["x"] == pytest.approx(3 / 5) and r["fdt"]["y"] == pytest.approx(2 / 5)
    assert r["without_tie"]["x"] == pytest.approx(2 / 3) and r["without_tie"]["y"] == pytest.approx(1 / 3)
    assert r["tie_as_0"]["x"] == pytest.approx(2 / 5)
    assert r["tie_as_0.5"]["x"] == pytest.approx((2 + 1) / 5) and r["tie_as_0.5"]["y"] == pytest.approx((1 + 1) / 5)
    assert win_rates([], "x", "y")["fdt"]["x"] is None


def test_swap_and_side():
    assert [swap(v) for v in ("A", "B", "Tie(A)", "Tie(B)")] == ["B", "A", "Tie(B)", "Tie(A)"]
    assert side("Tie(B)") == "B" and side("A") == "A"


def test_a_position_biased_judge_cancels_out():
    from llmi.eval.base import Item

    # the judge always prefers whatever it sees first: with both orders, each run wins half the battles
    items = [Item(id=str(i), prompt="q") for i in range(4)]
    pair_rows = {str(i): {"ab": "A", "ba": "A"} for i in range(4)}
    battles = battles_of(items, pair_rows, "run1", "run2")
    assert len(battles) == 8
    rates = win_rates(battles, "run1", "run2")
    assert rates["fdt"]["run1"] == pytest.approx(0.5) and rates["fdt"]["run2"] == pytest.approx(0.5)
    rows = {str(i): {"score": 0.5} for i in range(4)}
    summary = compare_summary(LLMIBench(), items, rows, rows, pair_rows, "run1", "run2")
    assert summary["pairwise"]["consistency"] == 0.0  # every verdict flipped with the order
    assert summary["difference"]["mean"] == 0.0


# ------------------------------------------------------------------------------------------------
# ISG parsers and levels
# ------------------------------------------------------------------------------------------------


def test_isg_parsers():
    assert parse_block('{"Judge": 8, "Reason": "fits"}')["Judge"] == 8.0
    assert parse_yes_no('{"Judge": "yes.", "Reason": "a dog"}')["Judge"] == "Yes"
    assert parse_holistic('{"overall_score": "6", "final_thoughts": "ok"}')["overall_score"] == 6.0
    for bad, fn in (('{"Judge": 0}', parse_block), ('{"Judge": 11}', parse_block), ('{"Judge": "maybe"}', parse_yes_no),
                    ('{"coherence": {"score": 5}}', parse_holistic), ('{"overall_score": 0}', parse_holistic)):
        with pytest.raises(ScoreParseError):
            fn(bad)


def test_isg_aggregate_by_hand():
    rows = [
        {"category": "VQA", "subcategory": "Historical", "scores": {"structure": 1.0, "block": 8.0, "image": 0.5, "holistic": 7.0}},
        {"category": "VQA", "subcategory": "Historical", "scores": {"structure": 0.0, "block": 1.0, "image": 0.0, "holistic": 3.0}},
        {"category": "3D Scene", "subcategory": "3D_object", "scores": {"structure": 1.0, "block": 6.0, "image": 1.0, "holistic": None}},
    ]
    agg = ISGBench().aggregate(rows)
    vqa = agg["by_category"]["VQA"]
    assert vqa["structure"]["mean"] == 0.5 and vqa["block"]["mean"] == 4.5 and vqa["image"]["mean"] == 0.25
    assert vqa["holistic"]["mean"] == 5.0
    assert agg["by_category"]["3D Scene"]["holistic"]["mean"] is None  # a failed holistic call is excluded
    assert agg["overall"]["structure"]["mean"] == pytest.approx(2 / 3, abs=1e-4)
    assert agg["overall"]["holistic"]["mean"] == pytest.approx(5.0)
    assert agg["overall_by_category_mean"]["block"]["mean"] == pytest.approx((4.5 + 6.0) / 2)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def test_json_extraction_and_numbers():
    assert extract_json('noise {"a": {"b": 1}} trailing {"c": 2}') == {"a": {"b": 1}}
    assert extract_json('```\n{"x": 1}\n```') == {"x": 1}
    with pytest.raises(ScoreParseError):
        extract_json("<think>{\"score\": 2}")  # cut inside the reasoning
    assert number_in("7/10", 0, 10) == 7.0
    with pytest.raises(ScoreParseError):
        number_in("4/5", 0, 10)  # another scale
    with pytest.raises(ScoreParseError):
        number_in(float("nan"), 0, 10)


def test_placeholders_and_names():
    text, k = image_markers("Look <image> and <image>.", 0)
    assert text == "Look [image 0] and [image 1]." and k == 2
    assert split_at_markers("a [image 0] b [image 1]") == ["a ", 0, " b ", 1]
    assert safe_name("1502046") == "1502046"
    weird = safe_name("../../etc/passwd")
    assert "/" not in weird and not weird.startswith(".") and safe_name("../../etc/passwd") == weird
    assert Judged(score=None, verdicts=[Verdict("x", None)]).excluded == 1
