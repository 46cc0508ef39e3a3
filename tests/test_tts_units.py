"""Test-time scaling, the pure parts: budget and its meter, cost accounting, the check, selection's
ranking / tie / verdict / bracket logic, the sampling schedule, the [tts] settings."""

from __future__ import annotations

import asyncio

import pytest

from llmi.errors import ConfigError
from llmi.reward.judges import ScoreParseError
from llmi.tts.budget import Budget, BudgetExhausted, Meter
from llmi.tts.check import Constraints, check_response, screen
from llmi.tts.config import TTSSettings, normalise_stages
from llmi.tts.cost import Cost, charge_call, charge_tool, charging, charging_only, estimate_tokens
from llmi.tts.sample import schedule
from llmi.tts.select import (
    Match,
    decide,
    final_scores,
    pairings,
    parse_verdict,
    rank,
    run_bracket,
    top_ties,
    verdict_for,
)


def tag(source: str, desc: str, **params) -> str:
    import json

    return "<imgen>" + json.dumps({"source": source, "description": desc, "params": params}) + "</imgen>"


# ------------------------------------------------------------------------------------------------
# Budget
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("calls=40,seconds=120", Budget(calls=40, seconds=120.0)),
        ("calls=3, tools=2, tokens=20k, seconds=2m", Budget(calls=3, tool_calls=2, tokens=20000, seconds=120.0)),
        ("tool_calls=0;seconds=1.5s", Budget(tool_calls=0, seconds=1.5)),
        ("", Budget()),
        (None, Budget()),
        ({"calls": 4}, Budget(calls=4)),
    ],
)
def test_budget_parse(spec, expected):
    assert Budget.parse(spec) == expected


@pytest.mark.parametrize("spec", ["calls", "calls=x", "calls=-1", "cals=3", "calls=2.5", "seconds=nan"])
def test_budget_parse_rejects_with_the_bad_part(spec):
    with pytest.raises(ConfigError):
        Budget.parse(spec)


def test_budget_str_round_trips():
    b = Budget(calls=40, tokens=1000, seconds=120)
    assert str(b) == "calls=40,tokens=1000,seconds=120"
    assert Budget.parse(str(b)) == b
    assert str(Budget()) == "unlimited" and Budget().unlimited


def test_meter_refuses_the_call_past_the_limit_and_names_the_resource():
    m = Meter(Budget(calls=2))
    m.reserve_call(10, 100).settle({"prompt_tokens": 10, "completion_tokens": 5})
    m.reserve_call(10, 100).settle(None, est_out=3)
    with pytest.raises(BudgetExhausted) as ei:
        m.reserve_call(10, 100)
    assert ei.value.resource == "calls" and m.exhausted == ["calls"]
    assert m.calls_made == 2 and m.tokens_used == 15 + 13
    assert m.affordable(5) == 0


def test_meter_lowers_max_tokens_to_what_is_left_and_reserves_concurrent_calls():
    m = Meter(Budget(tokens=1000))
    a = m.reserve_call(200, 4096)
    assert a.max_out == 800  # lowered: the prompt takes 200 of 1000
    # a concurrent call sees the reservation, so the two together cannot overrun
    with pytest.raises(BudgetExhausted) as ei:
        m.reserve_call(100, 100)
    assert ei.value.resource == "tokens"
    a.settle({"prompt_tokens": 150, "completion_tokens": 50})
    b = m.reserve_call(100, 4096)
    assert b.max_out == 1000 - 200 - 100
    assert m.tokens_left() == 0


def test_meter_seconds_and_tool_calls():
    now = [0.0]
    m = Meter(Budget(seconds=10, tool_calls=2), clock=lambda: now[0])
    m.reserve_tool("search")
    m.reserve_tool("code")
    with pytest.raises(BudgetExhausted) as ei:
        m.reserve_tool("code")
    assert ei.value.resource == "tool_calls"
    assert m.seconds_left() == 10
    now[0] = 10.5
    assert m.seconds_left() == 0
    with pytest.raises(BudgetExhausted) as ei:
        m.reserve_call(1, 1)
    assert ei.value.resource == "seconds"
    assert m.to_dict()["exhausted"] == ["tool_calls", "seconds"]


def test_reservation_settles_once_and_charges_the_current_costs():
    stage, cand = Cost(), Cost()
    m = Meter()
    with charging(stage):
        with charging(cand):
            r = m.reserve_call(50, None)
            r.settle({"prompt_tokens": 40, "completion_tokens": 7})
            r.settle({"prompt_tokens": 40, "completion_tokens": 7})  # idempotent
            m.reserve_tool("search", 2)
        charge_call(None, est_in=9, est_out=1)
    assert (cand.llm_calls, cand.tokens_in, cand.tokens_out, dict(cand.tool_calls)) == (1, 40, 7, {"search": 2})
    assert (stage.llm_calls, stage.tokens_in, stage.estimated_calls) == (2, 49, 1)
    charge_tool("code")  # outside any stage: charged nowhere, and no error
    assert "code" not in stage.tool_calls


async def test_charging_follows_tasks_created_inside():
    cost = Cost()

    async def work():
        charge_call({"prompt_tokens": 1, "completion_tokens": 1})

    with charging(cost):
        await asyncio.gather(work(), work())
    assert cost.llm_calls == 2


def test_cost_sum_dict_and_summary():
    a = Cost(llm_calls=1, tokens_in=1500, tokens_out=20, seconds=1.0)
    a.add_tool("search")
    b = Cost(llm_calls=2, tokens_in=10, tokens_out=5, seconds=0.5, estimated_calls=1)
    b.add_tool("search")
    b.add_tool("code")
    c = a + b
    assert c.to_dict() == {"llm_calls": 3, "tokens_in": 1510, "tokens_out": 25,
                           "tool_calls": {"code": 1, "search": 2}, "seconds": 1.5, "estimated_calls": 1}
    assert Cost.from_dict(c.to_dict()) == c
    assert c.summary() == "3 calls, 1.5k+25 tok, code 1 search 2, 1.5 s"


def test_estimate_tokens_over_estimates():
    assert estimate_tokens("") == 0
    assert estimate_tokens("a" * 300) == 100
    assert estimate_tokens("销售额") == 3


# ------------------------------------------------------------------------------------------------
# Check
# ------------------------------------------------------------------------------------------------

CODE = tag("code", "Sales 2024", code="plt.bar([1, 2], [3, 4])")
SEARCH = tag("search", "A lighthouse", query="lighthouse rocky coast")


def test_check_clean_candidate():
    r = check_response(0, f"Sales grew.\n{CODE}\nA coast.\n{SEARCH}\n", Constraints(2, ("code", "search")))
    assert r.valid and r.n_valid == 2 and r.sources == ("code", "search") and r.s_num == 1.0
    assert r.penalty(0.25, 0.05) == 0


def test_check_invalid_tag_wrong_count_missing_tool():
    bad = '<imgen>{"source": "code", "description": "x"}</imgen>'
    r = check_response(1, f"Text.\n{bad}\n", Constraints(2, ("search",)))
    assert not r.valid
    kinds = " | ".join(r.hard)
    assert "missing_key" in kinds and "image count: 0 valid tag(s)" in kinds and "required tool(s) not used: search" in kinds
    assert r.penalty(0.25, 0.0) == 0.75


def test_check_edit_of_an_invalid_tag_and_forward_reference():
    bad = '<imgen>{"source": "search", "description": "x", "params": {}}</imgen>'
    edit = tag("edit", "grey", img_index=0, prompt="make it grey")
    r = check_response(0, f"Text {bad} then {edit}")
    assert any("edits image 0, whose tag is invalid" in h for h in r.hard)
    fwd = tag("edit", "grey", img_index=1, prompt="make it grey")
    r2 = check_response(0, f"Text {fwd} and {SEARCH}")
    assert any("forward_reference" in h for h in r2.hard)


def test_check_soft_problems_and_tags_only():
    r = check_response(0, f"Here is an image of the sales:\n{CODE}\nDone.")
    assert r.valid and r.soft and "filler_intro" in r.soft[0]
    assert r.penalty(0.25, 0.05) == pytest.approx(0.05)
    tags_only = check_response(1, CODE)
    assert not tags_only.valid and "tags only" in tags_only.hard[0]


def test_check_image_num_semantics():
    assert not check_response(0, f"x {CODE}", Constraints(-1)).valid  # no image allowed
    assert check_response(0, "just text", Constraints(-1)).valid
    assert not check_response(0, "just text", Constraints(99)).valid
    assert check_response(0, f"x {CODE} {CODE}", Constraints(0)).valid


def test_check_reasoning_is_not_text():
    r = check_response(0, f"<think>plan {CODE}</think>Final text {SEARCH}")
    assert r.n_tags == 1 and r.sources == ("search",)


def test_screen_policies():
    rs = [check_response(0, f"ok {CODE}"), check_response(1, CODE), check_response(2, f"fine {SEARCH}")]
    s = screen(rs, "drop")
    assert s.kept == [0, 2] and s.dropped == [1] and not s.all_failed
    assert screen(rs, "penalise").kept == [0, 1, 2]
    bad = [check_response(0, CODE), check_response(1, '<imgen>{"x": 1}</imgen>' + CODE)]
    s = screen(bad, "drop")
    assert s.all_failed and s.kept == [0]  # the least bad one is kept, flagged
    with pytest.raises(ValueError):
        screen(rs, "ignore")


def test_constraints_of_a_request_and_bad_values():
    from llmi.request import Request

    c = Constraints.of(Request("p", image_num=2, tools=["code"]))
    assert c == Constraints(2, ("code",))
    assert Constraints.of("plain prompt") == Constraints()
    with pytest.raises(ValueError):
        Constraints(tools=("painting",))
    with pytest.raises(ValueError):
        Constraints(image_num=-5)


# ------------------------------------------------------------------------------------------------
# Selection logic
# ------------------------------------------------------------------------------------------------


def test_rank_judged_first_then_unjudged_by_the_check():
    final = final_scores({0: 0.5, 1: None, 2: 0.8, 3: 0.8, 4: None}, {2: 0.1, 4: 0.0, 1: 0.2})
    assert final == {0: 0.5, 1: None, 2: pytest.approx(0.7), 3: 0.8, 4: None}
    assert rank(final, {2: 0.1, 1: 0.2}) == [3, 2, 0, 4, 1]


def test_ties_are_found_and_ordered_by_the_check():
    final = {0: 0.75, 1: 0.75, 2: 0.5, 3: 0.75}
    pen = {0: 0.05, 1: 0.0, 3: 0.0}
    ranking = rank(final, pen)
    assert ranking == [1, 3, 0, 2] or ranking[:2] == [1, 3]
    assert top_ties(final, ranking) == ranking[:3]
    assert top_ties({0: None}, [0]) == []


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("Winner: A", "A"),
        ("<think>B looks longer. Winner: B?</think>\nWinner: A", "A"),
        ("**Winner:** Answer B", "B"),
        ("winner = tie", "tie"),
        ("Verdict: equal", "tie"),
        ("Winner: A\nOn reflection:\nWinner: B", "B"),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", ["", "A is better", "Winner: C", "<think>Winner: A"])
def test_parse_verdict_rejects(reply):
    with pytest.raises(ScoreParseError):
        parse_verdict(reply)


def test_verdict_for_maps_the_shown_order_back():
    assert verdict_for((3, 5), "A", 3) == "a"
    assert verdict_for((5, 3), "A", 3) == "b"
    assert verdict_for((5, 3), "B", 3) == "a"
    assert verdict_for((5, 3), "tie", 3) == "tie"


@pytest.mark.parametrize(
    "verdicts, winner, how",
    [
        (["a", "a"], 4, "judge"),
        (["b", "b"], 2, "judge"),
        (["a", "b"], 2, "split verdict: decided by the check"),  # 2 has the lower penalty
        (["tie", "tie"], 2, "tie: decided by the check"),
        ([None, None], 2, "judge_failed: decided by the check"),
        (["a", None], 4, "judge (one order failed)"),
        (["a", "tie"], 4, "judge (majority)"),
    ],
)
def test_decide(verdicts, winner, how):
    m = decide(Match(4, 2, verdicts=list(verdicts)), {4: 0.25, 2: 0.0})
    assert (m.winner, m.how) == (winner, how)


def test_pairings_and_bye():
    assert pairings([0, 1, 2, 3]) == ([(0, 1), (2, 3)], None)
    assert pairings([0, 1, 2]) == ([(0, 1)], 2)
    assert pairings([7]) == ([], 7)


async def test_bracket_strongest_wins_in_log2_rounds():
    strength = {0: 1, 1: 5, 2: 3, 3: 4, 4: 2}
    rounds: list[tuple[int, int]] = []

    async def play(a, b):
        rounds.append((a, b))
        return Match(a, b, winner=a if strength[a] > strength[b] else b, how="judge")

    winner, matches = await run_bracket([0, 1, 2, 3, 4], play)
    assert winner == 1 and len(matches) == 4  # N - 1 matches
    assert rounds[:2] == [(0, 1), (2, 3)]


def test_schedule():
    assert schedule(3, [0.7, 1.0], 5, 0.2) == [(0.7, 5), (1.0, 6), (0.7, 7)]
    assert schedule(2, [], None, 0.2) == [(0.2, None), (0.2, None)]


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------


def test_settings_defaults_and_help_text():
    s = TTSSettings()
    assert s.n == 4 and s.selector == "judge" and s.stages == ["sample", "check", "select", "enhance", "polish"]
    from pydantic import BaseModel

    def walk(model, where):
        for name, f in model.model_fields.items():
            assert f.description, f"[{where}] {name} has no help text"
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                walk(f.annotation, f"{where}.{name}")

    walk(TTSSettings, "tts")


def test_settings_validate_stages_and_reject_unknown_keys():
    assert normalise_stages("select,sample,polish") == ["sample", "select", "polish"]
    assert normalise_stages(["check"]) == ["sample", "check"]  # sample is always in
    with pytest.raises(ValueError):
        normalise_stages("sample,shine")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="selecter"):
        TTSSettings(selecter="judge")
    with pytest.raises(ValidationError, match=r"\[0, 2\]"):
        TTSSettings(temperatures=[3.0])
    s = TTSSettings.model_validate({"enhance": {"code": {"max_fixes": 3}}, "stages": ["sample", "select"]})
    assert s.enhance.code.max_fixes == 3 and s.stages == ["sample", "select"]


# -- chart code sure to fail (asked to be fixed while it first runs) -------------------------------------


def test_predict_failure_finds_only_what_surely_fails():
    from llmi.tts.codecheck import predict_failure, same_failure

    assert predict_failure("plt.bar(months, sales)") == (
        "NameError: name 'months' is not defined (line 1: plt.bar(months, sales))")
    assert predict_failure("x = [1, 2\nplt.plot(x)").startswith("SyntaxError: ")
    ok = [
        "months = ['a', 'b']\nplt.bar(months, [1, 2])",                  # bound
        "import math\nplt.plot([math.pi])\nnp.zeros(2); pd.DataFrame(); sns.set_theme()",  # imported, provided
        "plt.plot([len(range(3)), max(1, 2)])",                           # builtins
        "plt.plot([v for v in range(3)])",                                # comprehension variable
        "for i in range(2):\n    plt.plot([i])",                          # loop target
        "def f():\n    return undefined\nplt.plot([1])",                  # inside a function: may never run
        "try:\n    plt.plot(maybe)\nexcept NameError:\n    plt.plot([1])",  # inside try
        "if False:\n    plt.plot(never)\nplt.plot([1])",                  # inside if
        "from pylab import *\nplt.plot(linspace(0, 1))",                  # star import: unknowable
        "exec('y = 1')\nplt.plot([y])",                                   # exec: unknowable
        "globals()['z'] = 1\nplt.plot([z])",
        "plt.plot([later])\nlater = 1",                                   # bound somewhere: not judged
        "with open('x') as fh:\n    plt.plot([fh])",
        "match 1:\n    case [*rest]:\n        plt.plot(rest)",
    ]
    for code in ok:
        assert predict_failure(code) is None, code
    assert predict_failure("a = 1\nplt.plot([a, b, c])") == "NameError: name 'b' is not defined (line 2: plt.plot([a, b, c]))"
    assert same_failure("NameError: name 'b' is not defined (line 2: x)", "NameError: name 'b' is not defined (line 2: x)")
    assert not same_failure("NameError: name 'b' is not defined (line 2: x)", "TypeError: bad (line 1: y)")
    assert not same_failure("", "anything")


def test_charging_only_replaces_the_chain_and_absorb_adds_all_but_time():
    outer, ahead = Cost(), Cost()
    with charging(outer), charging_only(ahead):
        charge_call({"prompt_tokens": 3, "completion_tokens": 4})
        charge_tool("search")
    assert (ahead.llm_calls, ahead.tokens, dict(ahead.tool_calls)) == (1, 7, {"search": 1})
    assert outer.llm_calls == 0 and outer.n_tool_calls == 0
    stage = Cost(seconds=2.0)
    ahead.seconds = 9.0
    stage.absorb(ahead)
    assert (stage.llm_calls, stage.tokens_in, stage.tokens_out, stage.seconds) == (1, 3, 4, 2.0)
