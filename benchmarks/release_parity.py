"""Tag validity: llmi's reward against the LLM-I release's rule, on thousands of generated tags.

The release (ByteDance-BandAI/LLM-I) decides which tags of a response count in two steps, re-stated here
in our own code from reading it (its code is not part of llmi):

1. *Finding tags*: a tag is ``<imgen>{`` up to the first ``}</imgen>`` after it — the payload must start
   with ``{`` right after the open marker and end with ``}`` right before the close marker, and the search
   knows nothing of Markdown fences or reasoning blocks.
2. *Reading a payload*: if it holds ``'source': 'code'`` and matches the fixed code layout
   ``{'source': 'code', 'description': '<no quote>', 'params': {'code': '<anything>'}}`` (whitespace around
   allowed), the code is everything up to the final ``'}}``; otherwise a Python literal, or nothing.
3. *Validity*: exactly the keys source/description/params; description a string, params a dict; per
   source exactly its params with string values (empty allowed); an edit's ``img_index`` an int
   (``True`` passes) with ``0 <= img_index < n_input_images + n_tags``.

For every generated response both sides list the sources of the tags they count as valid, in order; they
agree when the lists are equal. Families llmi reads differently on purpose are marked ``documented``
(docs/protocol.md says why); every other family should agree 100 % by default. The lenient column is
``[reward] lenient_tags = true``. The last line compares the code each side would run for the release's
code layout (the release runs its ``unicode_escape`` of the raw text; ASCII code only — that decoding
mangles non-ASCII, which llmi keeps).

    python benchmarks/release_parity.py [--per-family 400] [--seed 0]

Exit status 1 when a family that is not documented disagrees.
"""

from __future__ import annotations

import argparse
import ast
import codecs
import json
import random
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llmi.protocol import parse_response  # noqa: E402
from llmi.reward.rules import RewardConfig, reward_reading  # noqa: E402

# ------------------------------------------------------------------------------------------------
# The release's rule, re-stated
# ------------------------------------------------------------------------------------------------

_LAYOUT_HEAD = "{'source': 'code', 'description': '"
_LAYOUT_MID = "', 'params': {'code': '"
_LAYOUT_END = "'}}"
_PARAMS = {"diffusion": ("prompt",), "search": ("query",), "code": ("code",)}


def release_payloads(response: str) -> list[str]:
    """The payloads the release finds: ``<imgen>{`` … the first ``}</imgen>`` after it."""
    out, i = [], 0
    while True:
        start = response.find("<imgen>{", i)
        if start < 0:
            return out
        end = response.find("}</imgen>", start + len("<imgen>{"))
        if end < 0:
            return out
        out.append(response[start + len("<imgen>") : end + 1])
        i = end + len("}</imgen>")


def release_read(payload: str) -> Any:
    """The release's reading of one payload: the code layout first, then a Python literal, else None."""
    if "'source': 'code'" in payload:
        body = payload.strip()
        if body.startswith(_LAYOUT_HEAD) and body.endswith(_LAYOUT_END):
            rest = body[len(_LAYOUT_HEAD) :]
            cut = rest.find("'")
            if cut >= 0 and rest[cut:].startswith(_LAYOUT_MID):
                code_start = cut + len(_LAYOUT_MID)
                if code_start <= len(rest) - len(_LAYOUT_END):
                    return {"source": "code", "description": rest[:cut],
                            "params": {"code": rest[code_start : len(rest) - len(_LAYOUT_END)]}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ast.literal_eval(payload)
    except Exception:  # noqa: BLE001 - the release treats any failure as "not a tag"
        return None
    return value if isinstance(value, dict) else None


def release_valid(data: Any, n_tags: int, n_input: int) -> bool:
    if not isinstance(data, dict) or set(data) != {"source", "description", "params"}:
        return False
    params = data["params"]
    if not isinstance(data["description"], str) or not isinstance(params, dict):
        return False
    source = data["source"]
    if source in _PARAMS:
        (key,) = _PARAMS[source]
        return set(params) == {key} and isinstance(params[key], str)
    if source == "edit":
        i = params.get("img_index")
        return (set(params) == {"img_index", "prompt"} and isinstance(i, int) and 0 <= i < n_input + n_tags
                and isinstance(params.get("prompt"), str))
    return False


def release_sources(response: str, n_input: int) -> list[str]:
    payloads = release_payloads(response)
    datas = [release_read(p) for p in payloads]
    return [d["source"] for d in datas if release_valid(d, len(payloads), n_input)]


def release_runs(code_as_found: str) -> str:
    """The code the release executes for a code-layout tag: its escapes decoded by ``unicode_escape``."""
    try:
        return codecs.decode(code_as_found, "unicode_escape")
    except Exception:  # noqa: BLE001
        return code_as_found.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"').replace("\\'", "'")


def llmi_sources(response: str, n_input: int, lenient: bool) -> list[str]:
    parsed = reward_reading(parse_response(response, n_input), RewardConfig(lenient_tags=lenient))
    return [c.source for c in parsed.calls]


# ------------------------------------------------------------------------------------------------
# Generated families
# ------------------------------------------------------------------------------------------------

WORDS = ["sales", "Tower", "fox", "été", "月度", "销售额", "😀", "a b", "x=1", "(1, 2)", "[3]", "{k}", "50%",
         "<b>", "C:\\dir", "tab\there", "it's", 'say "hi"', "line\nbreak", "ü", "—", "#", "&", "?"]


def text(rng: random.Random, *, quotes: bool = True, newlines: bool = True, min_words: int = 1) -> str:
    pool = [w for w in WORDS if (quotes or ("'" not in w and '"' not in w)) and (newlines or "\n" not in w)]
    return " ".join(rng.choice(pool) for _ in range(rng.randint(min_words, 5)))


def call(rng: random.Random, source: str | None = None, **kw: Any) -> dict:
    source = source or rng.choice(["diffusion", "search", "code"])
    key = _PARAMS[source][0]
    return {"source": source, "description": text(rng, **kw), "params": {key: text(rng, **kw)}}


def as_json(obj: Any, rng: random.Random) -> str:
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5)


def wrap(payload: str, rng: random.Random) -> str:
    before = rng.choice(["", "Intro text.\n", "销售额在三月翻了一番。\n", "Prose before. "])
    after = rng.choice(["", "\nMore prose.", " and so on."])
    return before + "<imgen>" + payload + "</imgen>" + after


def raw_newline_json(rng: random.Random, field: str) -> str:
    obj = call(rng, newlines=False)
    key = _PARAMS[obj["source"]][0]
    s = as_json(obj, rng)
    target = json.dumps(obj["description"] if field == "description" else obj["params"][key], ensure_ascii=False)
    return s.replace(target[:-1], target[:-1] + "\n", 1) if target in s else s.replace('", "params"', '\n", "params"', 1)


def layout_code(rng: random.Random, ascii_only: bool = False) -> tuple[str, str]:
    """(code as a model trained on the release writes it, the code meant)."""
    parts = ["plt.plot(x, y, marker='o', label='China')", "plt.title(\"Sales 2024\")", "x = [1, 2, 3]",
             "plt.legend()", "d = {'a': 1}", "print(d['a'])", "s = 'it\\'s'", "plt.xlabel('月份')",
             "plt.ylabel('Ventes — été')", "y = [v * 2 for v in x]", "plt.bar(['a', 'b'], [3, 4])"]
    if ascii_only:
        parts = [p for p in parts if p.isascii()]
    lines = [rng.choice(parts) for _ in range(rng.randint(1, 6))]
    meant = "\n".join(lines)
    sep = rng.choice(["\\n", "\n"])  # escaped newlines, or raw ones (the layout allows both)
    return sep.join(lines), meant


def fam_strict_json(rng):
    return wrap(as_json(call(rng), rng), rng), 0


def fam_python_literal(rng):
    return wrap(repr(call(rng)), rng), 0


def fam_release_layout(rng):
    code, _ = layout_code(rng)
    return wrap(_LAYOUT_HEAD + text(rng, quotes=False) + _LAYOUT_MID + code + _LAYOUT_END, rng), 0


def fam_fence_in_tag(rng):
    inner = as_json(call(rng), rng) if rng.random() < 0.5 else repr(call(rng))
    info = rng.choice(["json", "python", "", "json5", "JSON"])
    return wrap("```" + info + "\n" + inner + "\n```", rng), 0


def fam_raw_newline_in_string(rng):
    if rng.random() < 0.5:
        return wrap(raw_newline_json(rng, rng.choice(["description", "param"])), rng), 0
    obj = call(rng, newlines=False)
    key = _PARAMS[obj["source"]][0]
    payload = "{'source': '%s', 'description': '%s\n%s', 'params': {'%s': '%s'}}" % (
        obj["source"], text(rng, quotes=False, newlines=False), text(rng, quotes=False, newlines=False), key,
        text(rng, quotes=False, newlines=False))
    return wrap(payload, rng), 0


def fam_raw_newline_in_code_outside_layout(rng):
    code = "x = [1, 2]\nplt.plot(x)\nplt.title(\"t\")"
    payload = rng.choice([
        '{"source": "code", "description": "d", "params": {"code": "%s"}}' % code.replace('"', '\\"'),
        "{'source': 'code', 'params': {'code': '%s'}, 'description': 'd'}" % code.replace('"', "'"),
        "{'source': 'code', 'description': 'd', 'params':{'code': '%s'}}" % code,
    ])
    return wrap(payload, rng), 0


def fam_padded(rng):
    pad = rng.choice([" ", "\n", "  \n", "\t", "\ufeff"])
    inner = as_json(call(rng), rng)
    return wrap(rng.choice([pad + inner, inner + pad, pad + inner + pad]), rng), 0


def fam_invalid(rng):
    obj = call(rng)
    key = _PARAMS[obj["source"]][0]
    broken = rng.choice([
        lambda o: {k: v for k, v in o.items() if k != rng.choice(list(o))},
        lambda o: {**o, "extra": 1},
        lambda o: {**o, "source": rng.choice(["video", "Code", "image", 3])},
        lambda o: {**o, "description": rng.choice([None, 3, ["x"]])},
        lambda o: {**o, "params": rng.choice(["x", [1], None])},
        lambda o: {**o, "params": {**o["params"], "dpi": 3}},
        lambda o: {**o, "params": {}},
        lambda o: {**o, "params": {key: rng.choice([3, None, ["x"]])}},
        lambda o: {**o, "params": {"nope": "x"}},
    ])(obj)
    return wrap(as_json(broken, rng) if rng.random() < 0.5 else repr(broken), rng), 0


def fam_unparseable(rng):
    junk = rng.choice(["{not json}", "{'a': }", "{" + text(rng) + "}", "{'source': 'code', 'description': 'd'",
                       "{\"source\": \"code\", \"description\": \"d\", \"params\": {\"code\": \"print(\"hi\")\"}}",
                       "{'source': 'code', 'description': \"Bob's\", 'params': {'code': 'f(c='r')'}}"])
    return wrap(junk, rng), 0


def fam_json_only_values(rng):
    obj = call(rng)
    s = as_json(obj, rng)
    return wrap(s.replace('"params"', '"flag": true, "params"', 1), rng), 0


def _edit_response(rng, pick: Callable[[int, int, int], int]) -> tuple[str, int]:
    n_input = rng.randint(0, 2)
    before = [as_json(call(rng), rng) for _ in range(rng.randint(0, 3))]
    after = [as_json(call(rng), rng) for _ in range(rng.randint(0, 2))]
    own = len(before)
    total = n_input + len(before) + 1 + len(after)
    idx = pick(n_input, own, total)
    edit = {"source": "edit", "description": text(rng), "params": {"img_index": idx, "prompt": text(rng)}}
    tags = before + [as_json(edit, rng) if rng.random() < 0.5 else repr(edit)] + after
    return "Story.\n" + "\n".join("<imgen>" + t + "</imgen>" for t in tags), n_input


def fam_edit_backward_or_out_of_range(rng):
    def pick(n_input, own, total):
        choices = [-1, -3, total, total + 2]
        if n_input + own > 0:
            choices += [rng.randrange(n_input + own)] * 3
        return rng.choice(choices)

    return _edit_response(rng, pick)


def fam_multi_tag(rng):
    tags = [rng.choice([as_json(call(rng), rng), repr(call(rng)), "{broken}", "{'source': 'x'}"])
            for _ in range(rng.randint(2, 5))]
    return "\n".join("Paragraph %d.\n<imgen>%s</imgen>" % (i, t) for i, t in enumerate(tags)), 0


# documented differences (docs/protocol.md, "Differences from the LLM-I release")
def fam_empty_strings(rng):
    obj = call(rng)
    key = _PARAMS[obj["source"]][0]
    if rng.random() < 0.5:
        obj["description"] = rng.choice(["", " "])
    else:
        obj["params"][key] = rng.choice(["", "  "])
    return wrap(as_json(obj, rng), rng), 0


def fam_edit_forward_reference(rng):
    return _edit_response(rng, lambda n_input, own, total: rng.randrange(n_input + own, total))


def fam_edit_bool_index(rng):
    edit = {"source": "edit", "description": "d", "params": {"img_index": True, "prompt": "p"}}
    return wrap(repr(edit), rng), 2


def fam_layout_with_extra_param(rng):
    return wrap("{'source': 'code', 'description': 'd', 'params': {'code': 'plt.plot([1])', 'dpi': '%d'}}" % rng.randint(50, 300), rng), 0


def fam_tag_in_markdown_fence(rng):
    return "Example:\n```\n<imgen>" + as_json(call(rng), rng) + "</imgen>\n```\nDone.", 0


def fam_tag_in_reasoning(rng):
    return "<think>plan: <imgen>" + as_json(call(rng), rng) + "</imgen></think>Answer " + "<imgen>" + as_json(call(rng), rng) + "</imgen>", 0


def fam_unclosed_then_valid(rng):
    return "<imgen>{'source': 'code'" + " text <imgen>" + as_json(call(rng), rng) + "</imgen>", 0


def fam_no_closing_brace_then_valid(rng):
    return "<imgen>{broken</imgen> text <imgen>" + as_json(call(rng), rng) + "</imgen>", 0


FAMILIES: list[tuple[str, Callable, bool]] = [
    ("strict JSON", fam_strict_json, False),
    ("Python literal", fam_python_literal, False),
    ("release code layout (unescaped quotes)", fam_release_layout, False),
    ("fence inside the tag", fam_fence_in_tag, False),
    ("raw newline in description/prompt/query", fam_raw_newline_in_string, False),
    ("raw newline in code outside the layout", fam_raw_newline_in_code_outside_layout, False),
    ("text around the object", fam_padded, False),
    ("invalid keys/types/params", fam_invalid, False),
    ("unparseable", fam_unparseable, False),
    ("JSON-only values (true/null)", fam_json_only_values, False),
    ("edit: backward, negative or past the end", fam_edit_backward_or_out_of_range, False),
    ("several tags, some broken", fam_multi_tag, False),
    ("empty description or param", fam_empty_strings, True),
    ("edit: forward reference", fam_edit_forward_reference, True),
    ("edit: img_index True", fam_edit_bool_index, True),
    ("code layout with an extra param", fam_layout_with_extra_param, True),
    ("tag inside a Markdown fence", fam_tag_in_markdown_fence, True),
    ("tag inside <think>", fam_tag_in_reasoning, True),
    ("unclosed tag before a valid one", fam_unclosed_then_valid, True),
    ("payload without its closing } before a valid", fam_no_closing_brace_then_valid, True),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-family", type=int, default=400, help="responses generated per family")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    print(f"{'family':<44}{'n':>6}{'default':>9}{'lenient':>9}  {'':<10}")
    total = agree = 0
    failing = []
    for name, make, documented in FAMILIES:
        n = same = same_lenient = 0
        for _ in range(args.per_family):
            response, n_input = make(rng)
            theirs = release_sources(response, n_input)
            n += 1
            same += llmi_sources(response, n_input, lenient=False) == theirs
            same_lenient += llmi_sources(response, n_input, lenient=True) == theirs
        mark = "documented" if documented else ""
        print(f"{name:<44}{n:>6}{same / n:>9.1%}{same_lenient / n:>9.1%}  {mark}")
        if not documented:
            total += n
            agree += same
            if same != n:
                failing.append(name)
    print(f"{'all families not documented':<44}{total:>6}{agree / total:>9.1%}")

    n = same = 0
    for _ in range(args.per_family):
        code, _meant = layout_code(rng, ascii_only=True)
        payload = _LAYOUT_HEAD + "d" + _LAYOUT_MID + code + _LAYOUT_END
        ours = parse_response("<imgen>" + payload + "</imgen>").calls
        found = release_read(payload)
        n += 1
        same += bool(ours) and found is not None and ours[0].params["code"] == release_runs(found["params"]["code"])
    print(f"code layout, ASCII: code run by both sides identical in {same / n:.1%} of {n}")
    if failing:
        print("disagreement outside the documented families: " + ", ".join(failing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
