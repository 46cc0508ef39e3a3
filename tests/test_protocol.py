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
    # CommonMark fences: nested, mismatched, inline triple backticks, think markers inside a fence, CRLF
    "````md\r\n```python\r\n" + tag(CODE) + "\r\n```\r\n<think>x</think>\r\n````\r\n```a`b\r\n"
    + tag(SEARCH) + "\r\n~~~\r\n" + tag(DIFF) + "\r\n```\r\n~~~~\r\nHere is the chart:\r\n" + tag(edit(1)),
    # long enough that the buffer is compacted (> 4096 consumed) with remembered searches still pending
    "p" * 4300 + "<imgen>" + "{'source': 'code', 'description': 'd', 'params': {'code': '" + "q" * 200 + "'}}"
    + "</imgen>" + "r" * 50 + "<imgen>{'a'" + "<think>s" * 3 + "</think>" + tag(SEARCH) + "\n```\n" + tag(CODE) + "</thi",
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


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"sample{i}" for i in range(len(SAMPLES))])
def test_stream_split_at_every_position_matches_batch(sample):
    batch = parse_response(sample, 1)
    from llmi.protocol import count_tags

    n = count_tags(sample)
    for i in range(len(sample) + 1):
        segs, violations = _collect([sample[:i], sample[i:]], 1, n)
        assert _normalise(segs) == batch.segments, f"split at {i}"
        assert violations == batch.violations, f"split at {i}"


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"sample{i}" for i in range(len(SAMPLES))])
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
    p = StreamParser(start_in_think=False)  # a live reader that knows the response does not start in think
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


# ---------------------------------------------------------------- review: edge cases found later


def test_lone_surrogates_are_replaced_and_escaped_pairs_joined():
    # JSON joins an escaped surrogate pair itself; a Python literal does not, and a lone surrogate from
    # either cannot be encoded as UTF-8 (cache keys, documents and HTML would crash further on).
    py = "{'source': 'code', 'description': 'smile \\ud83d\\ude00', 'params': {'code': 'plt.title(\"\\ud800\")'}}"
    js = '{"source": "code", "description": "smile \\ud83d\\ude00", "params": {"code": "plt.title(\\"\\udfff\\")"}}'
    for payload in (py, js):
        call = validate(payload, 0)
        assert isinstance(call, ToolCall), call
        assert call.description == "smile \U0001f600"
        assert call.params["code"] == 'plt.title("\ufffd")'
        call.params["code"].encode("utf-8")
    bad = validate('{"source": "\\ud800", "description": "\\udc00", "params": {}}', 0)
    assert isinstance(bad, InvalidTag) and bad.kind is TagErrorKind.UNKNOWN_SOURCE
    bad.reason.encode("utf-8")
    bad.description.encode("utf-8")


@pytest.mark.parametrize("info", ["json", "json5", "python3", "py", "jsonc", "JSON", "", "json-ld"])
def test_fenced_payload_with_any_info_string(info):
    assert validate(f"```{info}\n" + json.dumps(CODE) + "\n```", 0).params == CODE["params"]


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 100_000 + "]" * 100_000,  # RecursionError in json, MemoryError/RecursionError in the parser
        '{"a": ' * 50_000 + "1" + "}" * 50_000,
        "{'source': 'edit', 'description': 'd', 'params': {'img_index': " + "9" * 100_000 + ", 'prompt': 'p'}}",
        '{"source": "edit", "description": "d", "params": {"img_index": ' + "9" * 100_000 + ', "prompt": "p"}}',
        "{'source': 'edit', 'description': 'd', 'params': {'img_index': 10**100000, 'prompt': 'p'}}",
        "{'source': 'code', 'description': 'd', 'params': {'code': 'x\x00'}}",
        "{{}: 1}",
        "\ufeff" + json.dumps({"source": "code", "description": "", "params": {"code": "x"}}),
    ],
    ids=["deep-list", "deep-dict", "huge-int-py", "huge-int-json", "power", "nul", "unhashable-key", "bom-empty"],
)
def test_hostile_payloads_are_contained(payload):
    r = validate(payload, 0, 1, 1)
    assert isinstance(r, InvalidTag)
    assert len(r.reason) < 400


def test_bom_crlf_tabs_trailing_commas_and_close_tag_in_code():
    ok = [
        "\ufeff" + json.dumps(CODE),
        '{"source": "code",\r\n "description": "d",\r\n "params": {"code": "x",},}',
        "{\t'source':\t'code', 'description': 'd', 'params': {'code': 'a\tb'}}",
        "{'source': 'code', 'description': 'd', 'params': {'code': 'a = 1\r\nb = 2'}}",
    ]
    for payload in ok:
        assert isinstance(validate(payload, 0), ToolCall), payload
    # a "</imgen>" inside a string ends the tag: the tag protocol has no escape, the payload is cut
    r = parse_response('<imgen>{"source": "code", "description": "d", "params": {"code": "print(\'</imgen>\')"}}</imgen>')
    assert r.slots[0].kind is TagErrorKind.UNPARSEABLE


def test_escape_state_machine_with_escaped_quotes_backslashes_and_triple_quotes():
    cases = {
        "{'source': 'code', 'description': 'd', 'params': {'code': 'a = \\'x\\'\nb = \"y\"'}}": "a = 'x'\nb = \"y\"",
        "{'source': 'code', 'description': 'd', 'params': {'code': 'p = \"C:\\\\\\\\\"\nq = 1'}}": 'p = "C:\\\\"\nq = 1',
        "{'source': 'code', 'description': 'd', 'params': {'code': '''a = 'x'\nb = \"\"\"y\"\"\"\n'''}}": "a = 'x'\nb = \"\"\"y\"\"\"\n",
        '{"source": "code", "description": "it\'s", "params": {"code": "s = \'\'\nt = 1"}}': "s = ''\nt = 1",
        "{'source': 'code', 'description': '', 'params': {'code': 'x'}}": None,
    }
    for payload, code in cases.items():
        r = validate(payload, 0)
        if code is None:
            assert isinstance(r, InvalidTag) and r.kind is TagErrorKind.EMPTY_VALUE
        else:
            assert isinstance(r, ToolCall), (payload, r)
            assert r.params["code"] == code


def test_think_markers_inside_a_code_fence_are_text():
    # a fenced example of the think syntax must not swallow the rest of the answer as reasoning
    text = "Format:\n```\n<think>plan</think>\n```\nAnswer " + tag(CODE) + " done"
    r = parse_response(text)
    assert "<think>plan</think>" in r.text and r.text.endswith(" done")
    assert len(r.calls) == 1 and not r.violations
    r = parse_response("Format:\n```\n<think>\n```\nAnswer " + tag(CODE) + " done")
    assert len(r.calls) == 1 and r.text.endswith(" done")


@pytest.mark.parametrize(
    "text, fenced",
    [
        # CommonMark: a fence closes only with the same character, at least as long, and no info string
        ("```\n```python\n" + tag(CODE) + "\n```\n", True),
        ("```\n~~~\n" + tag(CODE) + "\n```\n", True),
        ("````markdown\n```\n" + tag(CODE) + "\n```\n````\n", True),
        ("````\n```\n````\n" + tag(CODE), False),
        # a line starting with backticks and containing more is inline code, not a fence
        ("```print()``` is inline code.\n" + tag(CODE), False),
        ("``` a ` b\n" + tag(CODE), False),
        ("~~~ a ` b\n" + tag(CODE) + "\n~~~\n", True),
        ("    ```\n" + tag(CODE), False),  # indented four spaces: code block text, not a fence
        ("   ```\n" + tag(CODE) + "\n   ```  \n" + tag(CODE), True),
        ("```python\r\n" + tag(CODE) + "\r\n```\r\n" + tag(SEARCH), True),
        ("<think>\n```\n</think>\n" + tag(CODE), False),  # a fence opened in reasoning does not leak out
        ("```\nnever closed\n" + tag(CODE), True),
    ],
)
def test_fence_rules(text, fenced):
    r = parse_response(text)
    assert any(v.kind == "fenced_tag" for v in r.violations) is fenced
    assert len(r.calls) >= (0 if fenced else 1)
    if fenced:
        assert tag(CODE) in r.text


@pytest.mark.parametrize(
    "before",
    [
        "Here's why photos fade over time.",
        "Here is how the visual cortex works.",
        "The following section covers image processing in depth, from filters to transforms, with examples.",
        "Image quality matters.",
        "## Chart",
        "Figure 1: monthly sales",
        "以下是我们的分析。",
    ],
)
def test_filler_detection_leaves_ordinary_prose_alone(before):
    assert is_filler(before) is False


def test_compaction_keeps_remembered_searches_valid():
    # > 4096 characters consumed while a tag is open: the next feed compacts the buffer and shifts the
    # remembered (negative) searches for the close tag; the tag must still close where it does
    p = StreamParser(start_in_think=False)
    first = p.feed("p" * 4300 + "<imgen>{'source': 'code', 'description': 'd', ")
    assert first == [Text("p" * 4300)]
    segs = p.feed("'params': {'code': 'x'}}</im") + p.feed("gen> after" + tag(SEARCH))
    assert len(p._buf) < 4300  # compacted
    segs += p.close()
    assert [type(s).__name__ for s in segs] == ["ToolCall", "Text", "ToolCall"]
    assert segs[0].params == {"code": "x"} and segs[2].index == 1
