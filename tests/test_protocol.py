"""The tag protocol: decoding, every validation rule, format violations, and the streaming parser."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from llmi.protocol import (
    InvalidTag,
    StreamParser,
    TagErrorKind,
    Text,
    Think,
    ToolCall,
    decode_payload,
    is_filler,
    parse_response,
    strip_think,
    validate,
)


def tag(obj) -> str:
    return "<imgen>" + (obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)) + "</imgen>"


CODE = {"source": "code", "description": "Sales", "params": {"code": "plt.bar([1, 2], [3, 4])"}}
SEARCH = {"source": "search", "description": "Eiffel tower", "params": {"query": "Eiffel tower at night"}}
DIFF = {"source": "diffusion", "description": "A fox", "params": {"prompt": "a red fox in snow"}}


def edit(i: int) -> dict:
    return {"source": "edit", "description": "Make it blue", "params": {"img_index": i, "prompt": "make it blue"}}


# ---------------------------------------------------------------- decoding


def test_python_dict_literal_with_single_quotes_and_inner_quotes():
    payload = """{'source': 'code', 'description': "Bob's chart", 'params': {'code': 'plt.title("It\\'s")\\nplt.plot([1])'}}"""
    call = validate(payload, 0)
    assert isinstance(call, ToolCall)
    assert call.description == "Bob's chart"
    assert call.params["code"] == "plt.title(\"It's\")\nplt.plot([1])"


def test_json_escaped_newlines_become_real_newlines_once():
    payload = json.dumps({"source": "code", "description": "d", "params": {"code": "x = 1\nprint('a\\nb')"}})
    call = validate(payload, 0)
    # \n separating statements is a newline; the escaped \\n inside the string literal stays an escape
    assert call.params["code"] == "x = 1\nprint('a\\nb')"


def test_real_newlines_inside_single_quoted_python_strings():
    payload = "{'source': 'code', 'description': 'd', 'params': {'code': 'import math\nplt.plot([1, 2])\n'}}"
    call = validate(payload, 0)
    assert call.params["code"] == "import math\nplt.plot([1, 2])\n"


def test_non_ascii_survives_both_formats():
    code = "plt.title('月度销售额 — été')\nplt.xlabel('月份')"
    for payload in (
        json.dumps({"source": "code", "description": "销售", "params": {"code": code}}, ensure_ascii=False),
        json.dumps({"source": "code", "description": "销售", "params": {"code": code}}),  # \\uXXXX escapes
        repr({"source": "code", "description": "销售", "params": {"code": code}}),
    ):
        call = validate(payload, 0)
        assert isinstance(call, ToolCall), call
        assert call.params["code"] == code
        assert call.description == "销售"


def test_python_literals_true_none_and_json_true_null():
    assert decode_payload("{'a': True, 'b': None}") == {"a": True, "b": None}
    assert decode_payload('{"a": true, "b": null}') == {"a": True, "b": None}


def test_fenced_payload_inside_tag_is_accepted():
    assert validate("```json\n" + json.dumps(CODE) + "\n```", 0).params == CODE["params"]


# ---------------------------------------------------------------- validation rules


@pytest.mark.parametrize(
    "payload, kind",
    [
        ("{not json", TagErrorKind.UNPARSEABLE),
        ("", TagErrorKind.UNPARSEABLE),
        ("__import__('os').system('id')", TagErrorKind.UNPARSEABLE),
        ("[1, 2]", TagErrorKind.NOT_AN_OBJECT),
        ('"a string"', TagErrorKind.NOT_AN_OBJECT),
        ({"source": "code", "params": {"code": "x"}}, TagErrorKind.MISSING_KEY),
        ({"description": "d", "params": {"code": "x"}}, TagErrorKind.MISSING_KEY),
        ({"source": "code", "description": "d"}, TagErrorKind.MISSING_KEY),
        ({**CODE, "extra": 1}, TagErrorKind.EXTRA_KEY),
        ({**CODE, "source": "video"}, TagErrorKind.UNKNOWN_SOURCE),
        ({**CODE, "source": 3}, TagErrorKind.WRONG_TYPE),
        ({**CODE, "description": ["x"]}, TagErrorKind.WRONG_TYPE),
        ({**CODE, "description": "  "}, TagErrorKind.EMPTY_VALUE),
        ({**CODE, "params": "plt.plot()"}, TagErrorKind.WRONG_TYPE),
        ({**CODE, "params": {}}, TagErrorKind.MISSING_PARAM),
        ({**CODE, "params": {"code": "x", "dpi": 3}}, TagErrorKind.EXTRA_PARAM),
        ({**CODE, "params": {"code": 5}}, TagErrorKind.WRONG_TYPE),
        ({**CODE, "params": {"code": ""}}, TagErrorKind.EMPTY_VALUE),
        ({**SEARCH, "params": {"prompt": "x"}}, TagErrorKind.MISSING_PARAM),
        ({**SEARCH, "params": {"query": "x", "prompt": "y"}}, TagErrorKind.EXTRA_PARAM),
        ({**DIFF, "params": {"prompt": None}}, TagErrorKind.WRONG_TYPE),
        ({**DIFF, "params": {"query": "x"}}, TagErrorKind.MISSING_PARAM),
        ({**edit(0), "params": {"img_index": 0}}, TagErrorKind.MISSING_PARAM),
        ({**edit(0), "params": {"img_index": "0", "prompt": "p"}}, TagErrorKind.WRONG_TYPE),
        ({**edit(0), "params": {"img_index": 0.0, "prompt": "p"}}, TagErrorKind.WRONG_TYPE),
        ({**edit(0), "params": {"img_index": True, "prompt": "p"}}, TagErrorKind.WRONG_TYPE),
        (edit(-1), TagErrorKind.INDEX_OUT_OF_RANGE),
    ],
)
def test_each_rule_yields_its_reason(payload, kind):
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    result = validate(raw, 0, n_input_images=1, n_tags=1)
    assert isinstance(result, InvalidTag)
    assert result.kind is kind, result.reason
    assert result.reason.startswith(kind.value)


def test_all_four_sources_valid():
    for obj in (CODE, SEARCH, DIFF):
        assert isinstance(validate(json.dumps(obj), 0), ToolCall)
    assert isinstance(validate(json.dumps(edit(0)), 0, n_input_images=1), ToolCall)


def test_edit_indexing_user_images_first_then_earlier_tags():
    # two user images, this edit is tag #2 -> its own image index is 4; valid targets are 0..3
    for i in range(4):
        assert isinstance(validate(json.dumps(edit(i)), 2, n_input_images=2, n_tags=5), ToolCall)
    own = validate(json.dumps(edit(4)), 2, n_input_images=2, n_tags=5)
    later = validate(json.dumps(edit(6)), 2, n_input_images=2, n_tags=5)
    past_end = validate(json.dumps(edit(7)), 2, n_input_images=2, n_tags=5)
    assert own.kind is TagErrorKind.FORWARD_REFERENCE
    assert later.kind is TagErrorKind.FORWARD_REFERENCE
    assert past_end.kind is TagErrorKind.INDEX_OUT_OF_RANGE
    assert "0..6" in past_end.detail


def test_edit_of_itself_or_past_the_end_with_no_input_images():
    r = parse_response(tag(edit(0)))
    assert r.slots[0].kind is TagErrorKind.FORWARD_REFERENCE  # index 0 is this tag's own image
    r = parse_response(tag(edit(1)))
    assert r.slots[0].kind is TagErrorKind.INDEX_OUT_OF_RANGE


def test_invalid_tags_keep_their_slot_so_indices_stay_stable():
    text = "a" + tag("{broken") + "b" + tag(CODE) + "c" + tag(edit(1))
    r = parse_response(text)
    assert [s.index for s in r.slots] == [0, 1, 2]
    assert isinstance(r.slots[0], InvalidTag) and isinstance(r.slots[2], ToolCall)
    assert r.slots[2].depends_on == 1
    assert r.text == "abc"


# ---------------------------------------------------------------- think, fences, fillers


def test_think_blocks_are_removed_but_kept_as_think_segments():
    r = parse_response("<think>plan: " + tag(CODE) + "</think>Answer " + tag(CODE))
    assert r.text == "Answer "
    assert len(r.calls) == 1 and r.calls[0].index == 0
    assert any(isinstance(s, Think) and "plan" in s.text for s in r.segments)


def test_leading_reasoning_closed_by_bare_think_end_is_dropped():
    r = parse_response("I should draw a chart.</think>\nReport " + tag(CODE))
    assert r.text == "\nReport "
    assert strip_think("reasoning</think>kept") == "kept"


def test_tag_in_code_fence_is_text_and_a_violation():
    text = "Example:\n```\n" + tag(CODE) + "\n```\nreal " + tag(SEARCH)
    r = parse_response(text)
    assert [v.kind for v in r.violations] == ["fenced_tag"]
    assert len(r.slots) == 1 and r.slots[0].source == "search" and r.slots[0].index == 0
    assert tag(CODE) in r.text


def test_tilde_fence_and_fence_closing():
    r = parse_response("~~~\n" + tag(CODE) + "\n~~~\n" + tag(CODE))
    assert len(r.calls) == 1
    assert [v.kind for v in r.violations] == ["fenced_tag"]


@pytest.mark.parametrize(
    "before, flagged",
    [
        ("Here is an image:\n", True),
        ("Here's a chart showing the sales:\n", True),
        ("Below is an illustration of the process:", True),
        ("[Image]\n", True),
        ("以下是图片：", True),
        ("下图展示了每月的销售额：", True),
        ("Here is an image of the Eiffel Tower.", True),
        ("Here's the chart", True),
        ("For context, here is a long sentence that happens to mention an image of the tower and keeps going for a while.", False),
        ("销售额在三月翻了一番。", False),
        ("Sales doubled in March, as the chart shows.\n", False),
        ("The history of the tower.\n\n", False),
        ("", False),
    ],
)
def test_filler_detection(before, flagged):
    assert is_filler(before) is flagged
    r = parse_response(before + tag(CODE))
    assert any(v.kind == "filler_intro" for v in r.violations) is flagged
    assert len(r.calls) == 1  # a filler is a violation, the tag still runs


def test_unclosed_tags():
    r = parse_response("text " + "<imgen>" + json.dumps(CODE))
    assert isinstance(r.slots[0], InvalidTag) and r.slots[0].kind is TagErrorKind.UNCLOSED
    r = parse_response("<imgen>{'a': 1}" + tag(CODE))
    assert [type(s).__name__ for s in r.slots] == ["InvalidTag", "ToolCall"]
    assert r.slots[1].index == 1
    assert [v.kind for v in r.violations] == ["unclosed_tag"]


def test_invalid_tags_are_violations_too():
    r = parse_response(tag({"source": "x"}))
    assert [v.kind for v in r.violations] == ["invalid_tag"]


# ---------------------------------------------------------------- streaming


SAMPLES = [
    "Intro text.\n" + tag(CODE) + "\nMiddle " + tag(SEARCH) + " end.",
    "<think>reason " + tag(DIFF) + "</think>Story: " + tag(DIFF) + tag(edit(0)) + "\nfin",
    "```python\n" + tag(CODE) + "\n```\nHere is an image:\n" + tag("{'source': 'code', 'description': '图', 'params': {'code': 'plt.title(\"图表\")'}}") + "<imgen>{oops",
    "<imgen" + "> not a tag <im" + "gen>" + json.dumps(SEARCH) + "</imgen></imgen> trailing <",
]


def _collect(chunks, n_input=0, n_tags=None, start_in_think=False):
    p = StreamParser(n_input, n_tags=n_tags, start_in_think=start_in_think)
    segs = []
    for c in chunks:
        segs.extend(p.feed(c))
    segs.extend(p.close())
    return segs, p.violations


def _normalise(segs):
    out = []
    for s in segs:
        if out and type(s) in (Text, Think) and type(out[-1]) is type(s):
            out[-1] = type(s)(out[-1].text + s.text)
        elif not (type(s) in (Text, Think) and not s.text):
            out.append(s)
    return out


@pytest.mark.parametrize("sample", SAMPLES)
def test_stream_split_at_every_position_matches_batch(sample):
    batch = parse_response(sample, 1)
    from llmi.protocol import count_tags

    n = count_tags(sample)
    for i in range(len(sample) + 1):
        segs, violations = _collect([sample[:i], sample[i:]], 1, n)
        assert _normalise(segs) == batch.segments, f"split at {i}"
        assert violations == batch.violations, f"split at {i}"


@pytest.mark.parametrize("sample", SAMPLES)
def test_stream_one_char_at_a_time_and_three_way_splits(sample):
    batch = parse_response(sample, 1)
    from llmi.protocol import count_tags

    n = count_tags(sample)
    assert _normalise(_collect(list(sample), 1, n)[0]) == batch.segments
    step = max(1, len(sample) // 25)
    for i in range(0, len(sample), step):
        for j in range(i, len(sample), step):
            assert _normalise(_collect([sample[:i], sample[i:j], sample[j:]], 1, n)[0]) == batch.segments


def test_stream_emits_call_as_soon_as_tag_closes_and_holds_partial_markers():
    p = StreamParser()
    text = "Hello " + tag(CODE)
    out = p.feed(text[:-3])
    assert out == [Text("Hello ")]
    out = p.feed(text[-3:])
    assert len(out) == 1 and isinstance(out[0], ToolCall)
    assert p.feed("abc <im") == [Text("abc ")]  # "<im" may start a tag: held back
    assert p.close() == [Text("<im")]


# ---------------------------------------------------------------- never raises


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            list("<>/imgen{}'\":,[]`~\n tkhso\\0123")
            + ["<imgen>", "</imgen>", "<think>", "</think>", "```\n", json.dumps(CODE), json.dumps(edit(1)), "'img_index'", "'source'", "'edit'", ": -1", "{'params': {}}"]
        ),
        max_size=40,
    ).map("".join),
    st.integers(0, 3),
)
def test_random_responses_never_raise(response, n_input):
    r = parse_response(response, n_input)
    assert [s.index for s in r.slots] == list(range(len(r.slots)))
    for s in r.slots:
        if isinstance(s, ToolCall) and s.source == "edit":
            assert 0 <= s.params["img_index"] < n_input + s.index


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.lists(st.integers(0, 200), max_size=5))
def test_arbitrary_unicode_streamed_in_random_chunks_never_raises(text, cuts):
    cuts = sorted(c % (len(text) + 1) for c in cuts)
    chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    segs, _ = _collect(chunks)
    visible = "".join(s.text for s in segs if isinstance(s, (Text, Think)))
    assert len(visible) <= len(text)


def test_streaming_reclassifies_edits_past_the_end_once_the_response_is_complete():
    response = tag(CODE) + tag(edit(5)) + tag(edit(2))
    batch = parse_response(response)
    p = StreamParser()  # n_tags unknown while streaming
    segs = p.feed(response) + p.close()
    assert segs[1].kind is TagErrorKind.FORWARD_REFERENCE  # what could be said when the tag closed
    assert p.amended[1].kind is TagErrorKind.INDEX_OUT_OF_RANGE == batch.slots[1].kind
    assert 2 not in p.amended  # a genuine forward reference stays one
    assert p.violations == batch.violations
