"""One reading of a response, live or whole; and parsing stays linear in the input.

:class:`~llmi.protocol.StreamParser` fed a response in any chunks must give what
:func:`~llmi.protocol.parse_response` gives for the whole response — the same segments (adjacent texts
joined), the same violations, the same slots once the end-of-response amendments are applied — for each
``start_in_think`` (``None`` decides as the whole reading decides).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from llmi.protocol import (
    InvalidTag,
    StreamParser,
    Text,
    Think,
    ToolCall,
    parse_response,
    prompt_opens_think,
    starts_in_think,
    strip_think,
)

from .helpers import cpu_cost, fed_in_chunks

CODE = {"source": "code", "description": "Sales", "params": {"code": "plt.bar([1, 2], [3, 4])"}}
SEARCH = {"source": "search", "description": "Tower", "params": {"query": "Eiffel tower"}}


def stream(chunks, n_input=0, start_in_think=None):
    p = StreamParser(n_input, start_in_think=start_in_think)
    segs = []
    for c in chunks:
        segs.extend(p.feed(c))
    segs.extend(p.close())
    segs = [p.amended.get(s.index, s) if isinstance(s, InvalidTag) else s for s in segs]
    return _normalise(segs), p


def _normalise(segs):
    out = []
    for s in segs:
        if type(s) in (Text, Think) and not s.text:
            continue
        if out and type(s) in (Text, Think) and type(out[-1]) is type(s):
            out[-1] = type(s)(out[-1].text + s.text)
        else:
            out.append(s)
    return out


# ---------------------------------------------------------------- the example


def test_reasoning_without_an_opening_think_reads_the_same_live_and_whole():
    whole = parse_response("plan</think>Hi")
    assert whole.segments == [Think("plan"), Text("Hi")] and whole.start_in_think
    p = StreamParser()  # the default decides as parse_response does
    assert p.feed("plan</think>Hi") == [Think("plan"), Text("Hi")]  # decided on </think>: no wait
    assert p.close() == [] and p.think_start is True
    segs, _ = stream(list("plan</think>Hi"))
    assert segs == whole.segments


def test_auto_decision_waits_for_a_think_marker_or_the_end():
    p = StreamParser(start_in_think=None)
    assert p.feed("Intro <imgen>" + json.dumps(CODE) + "</imgen> more") == []  # could still be reasoning
    assert p.think_start is None
    out = p.close()
    assert p.think_start is False and [type(s).__name__ for s in out] == ["Text", "ToolCall", "Text"]
    p = StreamParser(start_in_think=None)
    assert p.feed("<think>plan") == [Think("plan")]  # an opening <think> decides at once
    assert p.think_start is False


def test_explicit_decisions_read_the_same_live_and_whole():
    text = "draft <imgen>" + json.dumps(CODE) + "</imgen></think>Answer <imgen>" + json.dumps(SEARCH) + "</imgen>"
    for start in (True, False):
        whole = parse_response(text, start_in_think=start)
        assert stream([text[i : i + 3] for i in range(0, len(text), 3)], start_in_think=start)[0] == whole.segments
    assert [c.source for c in parse_response(text, start_in_think=True).calls] == ["search"]
    assert [c.source for c in parse_response(text, start_in_think=False).calls] == ["code", "search"]
    assert parse_response(text).start_in_think is True  # auto: a </think> before any <think>
    assert strip_think(text, start_in_think=False).startswith("draft <imgen>")


@pytest.mark.parametrize(
    "prompt, opens",
    [
        ("<|im_start|>assistant\n<think>\n", True),
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        ("<|im_start|>assistant\n", False),
        ("<think>a</think> user text <think>", True),
    ],
)
def test_prompt_opens_think(prompt, opens):
    assert prompt_opens_think(prompt) is opens


def test_starts_in_think_matches_the_whole_reading():
    assert starts_in_think("a</think>b") and not starts_in_think("<think>a</think>b")
    assert not starts_in_think("no markers") and not starts_in_think("a<think>b</think>")


# ---------------------------------------------------------------- property: every input, every chunking

FRAGMENTS = st.sampled_from(
    [
        "Hello ", "world. ", "\n", "\n\n", "销售额 ", "é", " ",
        "<think>", "</think>", "<imgen>", "</imgen>",
        "<imgen>" + json.dumps(CODE) + "</imgen>",
        "<imgen>" + repr(SEARCH) + "</imgen>",
        "<imgen>{'source': 'code', 'description': 'c', 'params': {'code': 'plot(m='o')\\nx'}}</imgen>",
        "<imgen>```json\n" + json.dumps(CODE) + "\n```</imgen>",
        "<imgen> " + json.dumps(CODE) + "\n</imgen>",
        '<imgen>{"source": "diffusion", "description": "a\nb", "params": {"prompt": "p"}}</imgen>',
        '<imgen>{"source": "edit", "description": "e", "params": {"img_index": 0, "prompt": "p"}}</imgen>',
        '<imgen>{"source": "edit", "description": "e", "params": {"img_index": 3, "prompt": "p"}}</imgen>',
        '<imgen>{"source": "edit", "description": "e", "params": {"img_index": 9, "prompt": "p"}}</imgen>',
        "<imgen>{broken</imgen>", "<imgen>{'source': 'x'}</imgen>", "<imgen>{'a'",
        "```\n", "```python\n", "~~~\n", "````\n",
        "Here is an image:\n", "Here's the chart", "以下是图片：",
        "<im", "<imgen", "</imgen", "</thi", "<thin", "<", ">", "`", "{", "}", "'",
    ]
)
RESPONSES = st.lists(FRAGMENTS, max_size=25).map("".join)


def _chunks(text: str, cuts: list[int]) -> list[str]:
    cuts = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=400, deadline=None)
@given(
    RESPONSES,
    st.lists(st.integers(0, 10_000), max_size=12),
    st.sampled_from([None, True, False]),
    st.integers(0, 2),
)
def test_stream_in_random_chunks_agrees_with_the_whole_reading(response, cuts, start, n_input):
    whole = parse_response(response, n_input, start_in_think=start)
    segs, p = stream(_chunks(response, cuts), n_input, start_in_think=start)
    assert segs == whole.segments
    assert p.violations == whole.violations
    assert [s for s in segs if isinstance(s, (ToolCall, InvalidTag))] == whole.slots
    assert bool(p.think_start) == whole.start_in_think
    if start is None:
        assert whole.start_in_think == starts_in_think(response)


@settings(max_examples=150, deadline=None)
@given(RESPONSES, st.sampled_from([None, False]))
def test_one_character_at_a_time_agrees(response, start):
    whole = parse_response(response, 1, start_in_think=start)
    segs, p = stream(list(response), 1, start_in_think=start)
    assert segs == whole.segments and p.violations == whole.violations


# ---------------------------------------------------------------- linear time


def _ratio(fn, make, n: int) -> tuple[float, float]:
    fn(make(n // 4))  # warm up
    return cpu_cost(fn, make(n)), cpu_cost(fn, make(4 * n))


def _big_tag(n: int) -> str:
    return "<imgen>" + json.dumps({"source": "code", "description": "d", "params": {"code": "x = 1\n" * (n // 6)}}) + "</imgen>"


@pytest.mark.parametrize(
    "what, fn, make",
    [
        ("fence + newlines", parse_response, lambda n: "<imgen>```json" + "\n" * n + "{}</imgen>"),
        ("fence + spaces, closed", parse_response, lambda n: "<imgen>```json" + " " * n + "{}```</imgen>"),
        ("fence + raw newline strings", parse_response, lambda n: "<imgen>```\n{'a': '" + "\n" * n + "'}\n```</imgen>"),
        ("release layout", parse_response, lambda n: "<imgen>{'source': 'code', 'description': 'd', 'params': {'code': '" + "'}} " * (n // 4) + "</imgen>"),
        ("tag in 16-char chunks", fed_in_chunks(16), _big_tag),
        ("unclosed tag in 16-char chunks", fed_in_chunks(16), lambda n: "<imgen>" + "x" * n),
        ("undecided start in 16-char chunks", fed_in_chunks(16, None), lambda n: "y" * n + "</think>done"),
        ("think in 16-char chunks", fed_in_chunks(16, None), lambda n: "<think>" + "z" * n + "</think>done"),
        ("many unclosed tags", parse_response, lambda n: "<imgen>" * (n // 7)),
    ],
)
def test_parsing_grows_linearly(what, fn, make):
    # 4x the input: linear is ~4x the time, quadratic 16x; the bound leaves room for noise
    small, large = _ratio(fn, make, 50_000)
    assert large < max(6 * small, 0.05), f"{what}: 50k {small:.4f}s, 200k {large:.4f}s"


def test_a_long_tag_streamed_in_small_chunks_costs_about_as_much_as_plain_text():
    n = 400_000
    tag_cost = cpu_cost(fed_in_chunks(16), _big_tag(n))
    text_cost = cpu_cost(fed_in_chunks(16), "p" * n)
    assert tag_cost < 3 * text_cost + 0.05, (tag_cost, text_cost)
