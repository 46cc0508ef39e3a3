"""The LLM-I release's code-tag layout, and the lenient readings the release rejects.

The release (ByteDance-BandAI/LLM-I, ``verl/utils/reward_score/llmi_rm.py``) reads a code tag by its fixed
layout ``{'source': 'code', 'description': '…', 'params': {'code': '…'}}``, the code being everything between
its opening quote and the closing ``'}}`` — so models trained on its reward write code with unescaped single
quotes. llmi reads that layout as a valid call with no violation. Payloads it can only read leniently (a
fence inside the tag, a raw newline inside a quoted string, text around the object) still run, but are
marked and reported. See docs/protocol.md.
"""

from __future__ import annotations

import ast
import json

import pytest
from hypothesis import assume, given, settings, strategies as st

from llmi.protocol import (
    LENIENT_FENCE,
    PADDED_PAYLOAD,
    RAW_NEWLINE,
    InvalidTag,
    StreamParser,
    TagErrorKind,
    ToolCall,
    decode_payload,
    parse_response,
    read_payload,
    validate,
)


def release_code_tag(description: str, code_as_written: str) -> str:
    return "{'source': 'code', 'description': '" + description + "', 'params': {'code': '" + code_as_written + "'}}"


def written(code: str) -> str:
    """How a model trained on the release writes code in its layout: backslashes doubled, newlines as
    ``\\n``, quotes left as they are."""
    return code.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


# ---------------------------------------------------------------- the release's code layout


def test_the_issue_example_is_a_valid_call_without_violation():
    payload = release_code_tag("EV sales", "plt.plot(x, y, marker='o', label='China')\\nplt.legend()")
    r = parse_response("Sales grew.\n<imgen>" + payload + "</imgen>\nMore.")
    assert r.violations == []
    (call,) = r.calls
    assert call.lenient == ()
    assert call.description == "EV sales"
    assert call.params == {"code": "plt.plot(x, y, marker='o', label='China')\nplt.legend()"}


def test_release_layout_streams_identically():
    payload = release_code_tag("图表", "plt.title('月度 — été')\\nplt.bar(['a', 'b'], [1, 2])")
    response = "前言<imgen>" + payload + "</imgen>后记"
    whole = parse_response(response)
    p = StreamParser(start_in_think=False)
    segs = [s for ch in response for s in p.feed(ch)] + p.close()
    assert [s for s in segs if isinstance(s, ToolCall)] == whole.calls
    assert whole.calls[0].params["code"] == "plt.title('月度 — été')\nplt.bar(['a', 'b'], [1, 2])"
    assert p.violations == whole.violations == []


@pytest.mark.parametrize(
    "as_written, code",
    [
        ("a = 'x'\\nb = 2", "a = 'x'\nb = 2"),
        ("print('tab\\\\there')", "print('tab\\there')"),  # \\\\ -> one backslash: the code's own escape
        ("s = 'It\\'s'", "s = 'It's'"),  # \' is a quote, as Python (and the release's unicode_escape) read it
        ("x = '\\u00e9\\x41\\N{BULLET}\\101'", "x = 'éA•A'"),
        ("re.compile('\\d+')", "re.compile('\\d+')"),  # unknown escape kept as written
        ("bad = '\\x4'", "bad = '\\x4'"),  # malformed escapes kept as written
        ("n = '\\N{NO SUCH NAME}'", "n = '\\N{NO SUCH NAME}'"),
        ("big = '\\U00110000'", "big = '\\U00110000'"),
        ("raw\nnewline = 'ok'", "raw\nnewline = 'ok'"),  # raw newlines are part of the release's layout
        ("x = 1 + \\\n2", "x = 1 + 2"),  # backslash-newline: a line continuation, as in a Python string
        ("d = {'a': 1}\\nprint(d['a'])'}}", "d = {'a': 1}\nprint(d['a'])'}}"),  # up to the LAST '}}
        ("plt.title('销售额 — 2024 ✓')", "plt.title('销售额 — 2024 ✓')"),
    ],
)
def test_release_layout_reads_escapes_as_python_does(as_written, code):
    call = validate(release_code_tag("d", as_written), 0)
    assert isinstance(call, ToolCall), call
    assert call.params["code"] == code
    assert call.lenient == ()


def test_release_layout_only_with_its_exact_spacing_and_key_order():
    code = "plt.plot(x, marker='o')"
    for payload in (
        "{'source': 'code', 'params': {'code': '" + code + "'}, 'description': 'd'}",  # key order
        "{'source':'code', 'description': 'd', 'params': {'code': '" + code + "'}}",  # spacing
        "{'source': 'code', 'description': 'Bob\\'s', 'params': {'code': '" + code + "'}}",  # quote in description
        '{"source": "code", "description": "d", "params": {"code": "' + code.replace("'", '"') + '"}}',
        "{'source': 'code', 'description': 'd', 'params': {'code': '" + code + "'}} trailing",
    ):
        r = validate(payload, 0)
        assert isinstance(r, InvalidTag) and r.kind is TagErrorKind.UNPARSEABLE, payload


def test_strict_reading_wins_where_it_succeeds():
    # a proper literal: its reading, not the layout's. Here the literal joins two adjacent strings
    # ('a = 1' 'b'), where the layout would take the code a = 1' 'b as written
    payload = release_code_tag("d", "a = 1' 'b")
    assert validate(payload, 0).params["code"] == ast.literal_eval(payload)["params"]["code"] == "a = 1b"
    escaped = release_code_tag("d", "print(\\'a\\\\nb\\')")  # every quote escaped: a literal
    assert validate(escaped, 0).params["code"] == "print('a\\nb')"
    # strict reading of a layout-shaped payload whose "code" runs into an extra param: extra_param, as
    # literal evaluation says (the release's pattern would take "x', 'dpi': '3" as the code)
    r = validate("{'source': 'code', 'description': 'd', 'params': {'code': 'x', 'dpi': '3'}}", 0)
    assert isinstance(r, InvalidTag) and r.kind is TagErrorKind.EXTRA_PARAM


def test_release_layout_with_nul_or_empty_code_is_not_a_call():
    assert validate(release_code_tag("d", "x = 'a'\x00"), 0).kind is TagErrorKind.UNPARSEABLE
    assert validate(release_code_tag("d", ""), 0).kind is TagErrorKind.EMPTY_VALUE
    assert validate(release_code_tag("", "plot(c='r')"), 0).kind is TagErrorKind.EMPTY_VALUE


# ---------------------------------------------------------------- hypothesis: the code round-trips

CODE_ALPHABET = st.sampled_from(
    list("abcxyz019 =(),.[]{}:+-_#'\"\\\n\t%")
    + ["é", "月", "销售", "—", "✓", "😀", "\\n", "'}}", "}}", "''", "\"\"\"", "'''", "marker='o'", "{'a': 1}"]
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(CODE_ALPHABET, min_size=1, max_size=40).map("".join),
    st.text(st.characters(blacklist_characters="'\\<>\r\x00", blacklist_categories=("Cs",)), min_size=1, max_size=20),
    st.booleans(),
)
def test_release_layout_round_trips_code_with_quotes_non_ascii_and_escapes(code, description, raw_newlines):
    assume(code.strip() and description.strip())
    as_written = written(code) if not raw_newlines else code.replace("\\", "\\\\")  # raw newlines kept raw
    payload = release_code_tag(description, as_written)
    try:
        strict = ast.literal_eval(payload)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        strict = None
    r = parse_response("<imgen>" + payload + "</imgen>")
    (slot,) = r.slots
    if isinstance(strict, dict):
        # a strict literal reading exists: it wins, whatever it says
        assert validate(payload, 0) == slot
        if isinstance(slot, ToolCall):
            assert slot.params == strict["params"]
        return
    assert isinstance(slot, ToolCall), slot
    assert slot.params["code"] == code
    assert slot.lenient == () and r.violations == []


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60))
def test_release_layout_code_of_any_text_is_read_as_written(code):
    assume(code.strip() and "\x00" not in code)
    payload = release_code_tag("chart", written(code))
    value, reasons = read_payload(payload)
    assert reasons == ()
    assert value["params"]["code"] == code or ast.literal_eval(payload) == value


# ---------------------------------------------------------------- lenient readings


CODE = {"source": "code", "description": "Sales", "params": {"code": "plt.bar([1, 2], [3, 4])"}}


@pytest.mark.parametrize(
    "payload, reasons",
    [
        ("```json\n" + json.dumps(CODE) + "\n```", (LENIENT_FENCE,)),
        ("```\n" + repr(CODE) + "\n```", (LENIENT_FENCE,)),
        ('{"source": "diffusion", "description": "A fox\nin snow", "params": {"prompt": "fox"}}', (RAW_NEWLINE,)),
        ("{'source': 'search', 'description': 'Tower', 'params': {'query': 'Eiffel\ntower'}}", (RAW_NEWLINE,)),
        ('{"source": "code", "description": "d", "params": {"code": "a = 1\nb = 2"}}', (RAW_NEWLINE,)),
        ("{'source': 'code', 'description': 'd', 'params': {'code': 'a = 1\r\nb = 2'}}", ()),  # release layout
        ("{'source': 'code', 'description': 'd',  'params': {'code': 'a = 1\nb = 2'}}", (RAW_NEWLINE,)),  # not it
        ("```json\n" + '{"source": "code", "description": "d", "params": {"code": "a\nb"}}' + "\n```", (LENIENT_FENCE, RAW_NEWLINE)),
        (" " + json.dumps(CODE), (PADDED_PAYLOAD,)),
        ("\n" + json.dumps(CODE) + "\n", (PADDED_PAYLOAD,)),
        ("\ufeff" + json.dumps(CODE), (PADDED_PAYLOAD,)),
        ("(" + repr(CODE) + ")", (PADDED_PAYLOAD,)),
        (json.dumps(CODE), ()),
        (repr(CODE), ()),
        ("{'source': 'code', 'description': 'd', 'params': {'code': '''a = 1\nb = 'x'\n'''}}", ()),  # triple quotes
    ],
)
def test_lenient_readings_are_marked_and_reported(payload, reasons):
    r = parse_response("Text.\n<imgen>" + payload + "</imgen>")
    (call,) = r.calls
    assert call.lenient == reasons
    assert [v.kind for v in r.violations] == list(reasons)
    assert all(v.tag_index == 0 and v.offset == len("Text.\n") for v in r.violations)
    assert all("leniently" in v.detail for v in r.violations)


def test_lenient_reading_still_runs_and_release_reading_makes_it_invalid():
    fenced = "<imgen>```json\n" + json.dumps(CODE) + "\n```</imgen>"
    edit = '<imgen>{"source": "edit", "description": "e", "params": {"img_index": 0, "prompt": "blue"}}</imgen>'
    r = parse_response(fenced + " and " + edit)
    assert [type(s).__name__ for s in r.slots] == ["ToolCall", "ToolCall"]
    strict = r.release_reading()
    assert [type(s).__name__ for s in strict.slots] == ["InvalidTag", "ToolCall"]
    bad = strict.slots[0]
    assert bad.kind is TagErrorKind.LENIENT and bad.source == "code" and bad.description == "Sales"
    assert bad.index == 0 and strict.slots[1].depends_on == 0  # the edit stays, and will have no image
    assert strict.violations == r.violations and strict.text == r.text
    assert r.release_reading().release_reading() == strict
    clean = parse_response("<imgen>" + json.dumps(CODE) + "</imgen>")
    assert clean.release_reading() is clean


def test_decode_payload_keeps_its_meaning():
    assert decode_payload("```json\n{\"a\": 1}\n```") == {"a": 1}
    assert decode_payload("{'a': 'x\ny'}") == {"a": "x\ny"}
    with pytest.raises(ValueError):
        decode_payload("{nope")


def test_invalid_tags_carry_no_lenient_violation():
    r = parse_response('<imgen>```json\n{"source": "video", "description": "d", "params": {}}\n```</imgen>')
    assert [v.kind for v in r.violations] == ["invalid_tag"]


# ---------------------------------------------------------------- differential check against the release's rule


def test_release_parity_benchmark_agrees_on_every_family_not_documented(capsys):
    """benchmarks/release_parity.py re-states the release's tag rule; outside the documented families
    llmi's default reward validity must agree with it on every generated response."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "release_parity.py"
    spec = importlib.util.spec_from_file_location("release_parity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv, sys.argv = sys.argv, ["release_parity.py", "--per-family", "60", "--seed", "11"]
    try:
        rc = module.main()
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "all families not documented" in out and "100.0%" in out.split("all families not documented")[1]
