r"""The ``<imgen>`` tag protocol: finding, decoding and validating tool calls in an LLM response.

Pure: no I/O. A response is text with inline tags::

    Sales rose in spring.
    <imgen>{"source": "code", "description": "Monthly sales 2024", "params": {"code": "plt.bar(...)"}}</imgen>

The payload may be JSON or a Python dict literal (single quotes, ``True``/``None``), which is what models
trained on the LLM-I data write. Strings are decoded exactly once, by the JSON or Python literal rules:
``\n`` escapes become newlines and non-ASCII text is kept as is.

The LLM-I release's own code-tag layout is read too: ``{'source': 'code', 'description': '…', 'params':
{'code': '…'}}`` with *unescaped* single quotes inside the code, where the code is everything between its
opening quote and the closing ``'}}`` (escapes read as Python reads them). It is that release's format, so it
is no violation. Where a strict JSON or Python-literal reading succeeds, it wins.

Some payloads can only be read *leniently* — the release's parser rejects them: a Markdown fence inside the
tag (``<imgen>```json {...}```</imgen>``), a quoted string with a raw newline in it, or text around the
object (``<imgen> {...} </imgen>``, which the release's tag pattern ``<imgen>{…}</imgen>`` does not see).
They still become tool calls (users want the picture), marked :attr:`ToolCall.lenient` with the reasons
and reported as a :class:`Violation` each; :meth:`ParsedResponse.release_reading` turns them into invalid
tags for a reward that follows the release (see ``docs/protocol.md``).

Every tag — valid or not — takes one *slot*; images are numbered user images first (``0..n-1``), then one
per slot, so an ``edit``'s ``img_index`` means the same thing whatever fails. An invalid tag yields an
:class:`InvalidTag` with a :class:`TagErrorKind`; nothing here raises on bad input.

Format violations that a reward needs (a tag inside a Markdown code fence — which stays plain text —,
filler such as "Here is an image:" before a tag, an unclosed tag, invalid tags, lenient readings) are
reported as :class:`Violation` values.

:class:`StreamParser` does the same incrementally: feed it chunks as a model streams them and it returns
text and complete tool calls as soon as each tag closes, wherever the chunk boundaries fall. Fed any
response in any chunks, it gives what :func:`parse_response` gives for the whole response (same segments
once adjacent texts are joined, same violations, and :attr:`StreamParser.amended` for the tags whose reason
became exact at the end). Both run in time linear in the input.
"""

from __future__ import annotations

import ast
import enum
import json
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from .tools.spec import PARAMS, SOURCES  # the tool table: names in order, each one's exact parameters

TOP_KEYS = ("source", "description", "params")

OPEN_TAG, CLOSE_TAG = "<imgen>", "</imgen>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class TagErrorKind(str, enum.Enum):
    """Why a tag is not a valid tool call."""

    UNPARSEABLE = "unparseable_payload"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_KEY = "missing_key"
    EXTRA_KEY = "extra_key"
    UNKNOWN_SOURCE = "unknown_source"
    WRONG_TYPE = "wrong_type"
    EMPTY_VALUE = "empty_value"
    MISSING_PARAM = "missing_param"
    EXTRA_PARAM = "extra_param"
    INDEX_OUT_OF_RANGE = "index_out_of_range"
    FORWARD_REFERENCE = "forward_reference"
    UNCLOSED = "unclosed_tag"
    #: Readable only leniently, and counted invalid as the LLM-I release counts it
    #: (made by :meth:`ParsedResponse.release_reading`, never by the parser itself).
    LENIENT = "lenient_reading"


#: Why a valid call was read leniently (each is also a :class:`Violation` kind). The LLM-I release's
#: parser rejects all three; llmi still runs the call.
LENIENT_FENCE = "lenient_fence"  # a Markdown code fence inside the tag
RAW_NEWLINE = "raw_newline_in_string"  # a quoted string holding a raw newline (or other control character)
PADDED_PAYLOAD = "padded_payload"  # text around the object: not `{` right after <imgen>, `}` right before </imgen>
LENIENT_REASONS = (LENIENT_FENCE, RAW_NEWLINE, PADDED_PAYLOAD)
_LENIENT_DETAIL = {
    LENIENT_FENCE: "the payload is wrapped in a Markdown code fence inside the tag",
    RAW_NEWLINE: "a quoted string holds a raw newline (write \\n inside strings)",
    PADDED_PAYLOAD: "the payload does not start with '{' right after <imgen> and end with '}' right before </imgen>",
}


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Think:
    """Reasoning inside ``<think>…</think>``: dropped from documents, kept in traces."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """A valid tag. ``index`` counts tags from 0; its image index is ``n_input_images + index``.

    ``lenient``: why the payload could only be read leniently (:data:`LENIENT_REASONS`), empty for a
    strict reading; such a call runs, but the LLM-I release's parser would have rejected it.
    """

    index: int
    source: str
    description: str
    params: dict[str, Any]
    raw: str = ""
    lenient: tuple[str, ...] = ()

    @property
    def depends_on(self) -> int | None:
        """The image index this call needs first (``edit`` only)."""
        return self.params["img_index"] if self.source == "edit" else None


@dataclass(frozen=True)
class InvalidTag:
    """A tag that cannot run. It still takes slot ``index``."""

    index: int
    kind: TagErrorKind
    detail: str
    raw: str = ""
    source: str | None = None
    description: str = ""

    @property
    def reason(self) -> str:
        return f"{self.kind.value}: {self.detail}"


@dataclass(frozen=True)
class Violation:
    """A format problem in the response.

    ``kind``: ``fenced_tag``, ``filler_intro``, ``unclosed_tag``, ``invalid_tag``, or a lenient reading of a
    call that still runs (``lenient_fence``, ``raw_newline_in_string``, ``padded_payload``). ``offset``
    is where the tag starts in the response.
    """

    kind: str
    detail: str
    tag_index: int | None = None
    offset: int = 0


Segment = Union[Text, Think, ToolCall, InvalidTag]
Slot = Union[ToolCall, InvalidTag]


@dataclass
class ParsedResponse:
    """One reading of a whole response. ``start_in_think``: whether it was read as starting inside the
    reasoning (a leading part closed by a bare ``</think>``)."""

    segments: list[Segment] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    start_in_think: bool = False

    @property
    def slots(self) -> list[Slot]:
        return [s for s in self.segments if isinstance(s, (ToolCall, InvalidTag))]

    @property
    def calls(self) -> list[ToolCall]:
        return [s for s in self.segments if isinstance(s, ToolCall)]

    @property
    def invalid(self) -> list[InvalidTag]:
        return [s for s in self.segments if isinstance(s, InvalidTag)]

    @property
    def text(self) -> str:
        """The visible text (no think blocks, no tags)."""
        return "".join(s.text for s in self.segments if isinstance(s, Text))

    @property
    def lenient(self) -> list[ToolCall]:
        """The calls that could only be read leniently."""
        return [s for s in self.segments if isinstance(s, ToolCall) and s.lenient]

    def tagged_text(self) -> str:
        """The response without its reasoning, tags kept as written (what :func:`strip_think` returns)."""
        out: list[str] = []
        for s in self.segments:
            if isinstance(s, Text):
                out.append(s.text)
            elif isinstance(s, (ToolCall, InvalidTag)):
                out.append(OPEN_TAG + s.raw + CLOSE_TAG)
        return "".join(out)

    def release_reading(self) -> "ParsedResponse":
        """This reading with every lenient call turned into an :class:`InvalidTag` (``lenient_reading``).

        That is how the LLM-I release's reward sees such a tag: no image, no attempt. Slots keep their
        indices; an ``edit`` of such a slot stays a call (the release counts it valid) and fails when run
        because the image it edits does not exist. Violations are unchanged (the lenient ones are there).
        """
        if not any(isinstance(s, ToolCall) and s.lenient for s in self.segments):
            return self
        segments: list[Segment] = []
        for s in self.segments:
            if isinstance(s, ToolCall) and s.lenient:
                s = InvalidTag(
                    index=s.index,
                    kind=TagErrorKind.LENIENT,
                    detail=f"read only leniently ({', '.join(s.lenient)}); the LLM-I release's parser rejects it",
                    raw=s.raw,
                    source=s.source,
                    description=s.description,
                )
            segments.append(s)
        return ParsedResponse(segments, list(self.violations), self.start_in_think)


# ------------------------------------------------------------------------------------------------
# Payload decoding and validation
# ------------------------------------------------------------------------------------------------


def _escape_raw_newlines(payload: str) -> str:
    """Turn real newlines/tabs *inside* quoted strings into escapes, so literal_eval/json accept them.

    Python single-quoted strings may not span lines, but models write multi-line code that way.
    Triple-quoted strings are left alone (they may legally contain newlines).
    """
    out: list[str] = []
    quote: str | None = None
    i, n = 0, len(payload)
    while i < n:
        c = payload[i]
        if quote is None:
            if payload.startswith('"""', i) or payload.startswith("'''", i):
                end = payload.find(payload[i : i + 3], i + 3)
                end = n if end == -1 else end + 3
                out.append(payload[i:end])
                i = end
                continue
            if c in "\"'":
                quote = c
            out.append(c)
        else:
            if c == "\\" and i + 1 < n:
                out.append(payload[i : i + 2])
                i += 2
                continue
            if c == quote:
                quote = None
                out.append(c)
            elif c == "\n":
                out.append("\\n")
            elif c == "\r":
                out.append("\\r")
            elif c == "\t":
                out.append("\\t")
            else:
                out.append(c)
        i += 1
    return "".join(out)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_strings(obj: Any) -> Any:
    """Join surrogate pairs and replace lone surrogates with U+FFFD, in every string of ``obj``.

    ``"\\ud83d\\ude00"`` in a Python literal decodes to two surrogates rather than one emoji, and a lone
    surrogate from either format is a ``str`` that cannot be written as UTF-8 — cache keys, JSON documents
    and HTML would fail on it far from the tag that caused it.
    """
    if isinstance(obj, str):
        if _SURROGATE.search(obj):
            return obj.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return obj
    if isinstance(obj, dict):
        return {_clean_strings(k): _clean_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean_strings(v) for v in obj]
    return obj


_ESCAPE = re.compile(r"\\(N\{[^{}\n]{1,100}\}|x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {
    "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
    "v": "\v", "\n": "",
}


def _python_unescape(text: str) -> str:
    r"""Read the escapes in ``text`` as a Python string literal would (``\n``, ``\'``, ``\\``, ``\x41``,
    ``\u00e9``, ``\N{BULLET}``, octal, a backslash before a newline), in one linear pass.

    An escape Python does not know (``\d``) or one it would refuse (``\x4``, ``\N{nonsense}``, a code point
    past U+10FFFF) is kept exactly as written — there is no unambiguous reading of it. Non-ASCII passes
    through untouched.
    """
    if "\\" not in text:
        return text

    def one(m: re.Match) -> str:
        e = m.group(1)
        c = e[0]
        if len(e) == 1:
            if c in _SIMPLE_ESCAPES:
                return _SIMPLE_ESCAPES[c]
            if c in "01234567":
                return chr(int(e, 8))
            return m.group(0)
        if c in "xuU":
            cp = int(e[1:], 16)
            return chr(cp) if cp <= 0x10FFFF else m.group(0)
        if c == "N":
            try:
                return unicodedata.lookup(e[2:-1])
            except KeyError:
                return m.group(0)
        return chr(int(e, 8))  # two or three octal digits

    return _ESCAPE.sub(one, text)


#: The fixed head of the LLM-I release's code-tag layout, up to the code's opening quote. The description
#: may hold no single quote (the release's pattern is the same).
_RELEASE_CODE_HEAD = re.compile(r"\{'source': 'code', 'description': '([^']*)', 'params': \{'code': '")
_RELEASE_CODE_TAIL = "'}}"


def _release_code_form(text: str) -> dict[str, Any] | None:
    """The LLM-I release's code tag, whose code may hold unescaped single quotes, or ``None``.

    ``{'source': 'code', 'description': '<no quote>', 'params': {'code': '<anything>'}}`` with exactly this
    spacing and key order: the code is everything between its opening quote and the closing ``'}}`` at the
    end (raw newlines included), its escapes read as Python reads them. Linear: one anchored match and
    one look at the end.
    """
    m = _RELEASE_CODE_HEAD.match(text)
    if m is None or "\x00" in text:  # no Python source holds a NUL; a literal reading refuses it too
        return None
    body = text.rstrip()
    end = len(body) - len(_RELEASE_CODE_TAIL)
    if not body.endswith(_RELEASE_CODE_TAIL) or end < m.end():
        return None
    return {
        "source": "code",
        "description": _python_unescape(m.group(1)),
        "params": {"code": _python_unescape(body[m.end() : end])},
    }


_FENCE_OPEN = re.compile(r"```[\w.+-]*")


def _unfence(text: str) -> str | None:
    """The inside of a payload wrapped in a code fence (any info string: json, json5, py3), or ``None``.

    A fixed-width look at both ends rather than a regex over the whole payload, which backtracked
    quadratically on whitespace (a ```` ``` ```` followed by thousands of newlines took seconds).
    """
    if len(text) < 6 or not (text.startswith("```") and text.endswith("```")):
        return None
    m = _FENCE_OPEN.match(text)
    end = len(text) - 3
    if m is None or m.end() > end:
        return None
    return text[m.end() : end].strip()


_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


def _literal(text: str) -> Any:
    """``ast.literal_eval`` without its warnings: an escape Python does not know (``'C:\\dir'``) is model
    output to read, not source code to lint, and would print a SyntaxWarning per tag on Python 3.12."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.literal_eval(text)


def _strict(text: str) -> tuple[bool, Any, list[Exception]]:
    """Strict JSON, a Python literal, or the release's code layout — the readings the release accepts."""
    errors: list[Exception] = []
    try:
        return True, json.loads(text), errors
    except (ValueError, RecursionError) as exc:
        errors.append(exc)
    try:
        return True, _literal(text), errors
    except _LITERAL_ERRORS as exc:
        errors.append(exc)
    code = _release_code_form(text)
    if code is not None:
        return True, code, errors
    return False, None, errors


def _raw_newlines(text: str) -> tuple[bool, Any]:
    """JSON or a Python literal whose strings may hold raw newlines (and other control characters)."""
    try:
        return True, json.loads(text, strict=False)
    except (ValueError, RecursionError):
        pass
    escaped = _escape_raw_newlines(text)
    if escaped == text:
        return False, None
    try:
        return True, json.loads(escaped, strict=False)
    except (ValueError, RecursionError):
        pass
    try:
        return True, _literal(escaped)
    except _LITERAL_ERRORS:
        return False, None


def read_payload(payload: str) -> tuple[Any, tuple[str, ...]]:
    """Decode a tag payload: ``(value, lenient reasons)``. Raises ValueError when nothing reads it.

    Strict readings first (JSON, a Python literal, the release's code layout); then, in order, a code
    fence around the object (:data:`LENIENT_FENCE`) and quoted strings with raw newlines
    (:data:`RAW_NEWLINE`). Whitespace or other text around the object is :data:`PADDED_PAYLOAD`.
    """
    text = payload.strip().lstrip("\ufeff").strip()
    reasons: list[str] = []
    inner = _unfence(text)
    if inner is not None:
        reasons.append(LENIENT_FENCE)
        text = inner
    elif not (payload.startswith("{") and payload.endswith("}")):
        reasons.append(PADDED_PAYLOAD)
    ok, value, errors = _strict(text)
    if not ok:
        ok, value = _raw_newlines(text)
        reasons.append(RAW_NEWLINE)
    if not ok:
        raise ValueError(f"payload is neither JSON nor a Python literal ({errors[0]})")
    return _clean_strings(value), tuple(reasons)


def decode_payload(payload: str) -> Any:
    """Decode a tag payload written as JSON or as a Python literal. Raises ValueError if neither.

    The value of :func:`read_payload`, without the reasons.
    """
    return read_payload(payload)[0]


def validate(
    payload: str, index: int, n_input_images: int = 0, n_tags: int | None = None
) -> ToolCall | InvalidTag:
    """Decode and validate one tag payload occupying slot ``index``.

    ``n_tags`` (the number of tags in the whole response) tells an index past the end
    (``index_out_of_range``) from one pointing at a later tag (``forward_reference``); without it, both
    are reported as ``forward_reference``.
    """

    def bad(kind: TagErrorKind, detail: str, source: Any = None, description: Any = "") -> InvalidTag:
        return InvalidTag(
            index=index,
            kind=kind,
            detail=detail,
            raw=payload,
            source=source if isinstance(source, str) else None,
            description=description if isinstance(description, str) else "",
        )

    try:
        obj, lenient = read_payload(payload)
    except ValueError as exc:
        return bad(TagErrorKind.UNPARSEABLE, str(exc)[:300])
    if not isinstance(obj, dict):
        return bad(TagErrorKind.NOT_AN_OBJECT, f"payload is a {type(obj).__name__}, not an object")
    source, description = obj.get("source"), obj.get("description", "")
    missing = [k for k in TOP_KEYS if k not in obj]
    if missing:
        return bad(TagErrorKind.MISSING_KEY, f"missing key(s): {', '.join(missing)}", source, description)
    extra = [str(k) for k in obj if k not in TOP_KEYS]
    if extra:
        return bad(TagErrorKind.EXTRA_KEY, f"unexpected key(s): {', '.join(extra)}", source, description)
    if not isinstance(source, str):
        return bad(TagErrorKind.WRONG_TYPE, f"source must be a string, got {type(source).__name__}")
    if source not in PARAMS:
        return bad(
            TagErrorKind.UNKNOWN_SOURCE,
            f"unknown source {source[:40]!r}; expected one of {', '.join(SOURCES)}",
            None,
            description,
        )
    if not isinstance(description, str):
        return bad(TagErrorKind.WRONG_TYPE, f"description must be a string, got {type(description).__name__}", source)
    if not description.strip():
        return bad(TagErrorKind.EMPTY_VALUE, "description is empty", source)
    params = obj["params"]
    if not isinstance(params, dict):
        return bad(TagErrorKind.WRONG_TYPE, f"params must be an object, got {type(params).__name__}", source, description)
    spec = PARAMS[source]
    missing = [k for k in spec if k not in params]
    if missing:
        return bad(
            TagErrorKind.MISSING_PARAM, f"{source} needs param(s): {', '.join(missing)}", source, description
        )
    extra = [str(k) for k in params if k not in spec]
    if extra:
        return bad(
            TagErrorKind.EXTRA_PARAM,
            f"{source} takes only {', '.join(spec)}; unexpected: {', '.join(extra)}",
            source,
            description,
        )
    for key, typ in spec.items():
        value = params[key]
        if typ is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, typ)
        if not ok:
            return bad(
                TagErrorKind.WRONG_TYPE,
                f"params.{key} must be {'an integer' if typ is int else 'a string'}, got {type(value).__name__}",
                source,
                description,
            )
        if typ is str and not value.strip():
            return bad(TagErrorKind.EMPTY_VALUE, f"params.{key} is empty", source, description)
    if source == "edit":
        i = params["img_index"]
        own = n_input_images + index
        if i < 0:
            return bad(TagErrorKind.INDEX_OUT_OF_RANGE, f"img_index {i} is negative", source, description)
        if n_tags is not None and i >= n_input_images + n_tags:
            return bad(
                TagErrorKind.INDEX_OUT_OF_RANGE,
                f"img_index {i} is out of range: there are {n_input_images} input image(s) and "
                f"{n_tags} tag(s), so valid indices are 0..{n_input_images + n_tags - 1}",
                source,
                description,
            )
        if i >= own:
            return bad(
                TagErrorKind.FORWARD_REFERENCE,
                f"img_index {i} refers to {'this' if i == own else 'a later'} image; an edit can only use "
                f"an input image or an earlier tag (indices 0..{own - 1})",
                source,
                description,
            )
    return ToolCall(
        index=index, source=source, description=description, params=dict(params), raw=payload, lenient=lenient
    )


# ------------------------------------------------------------------------------------------------
# Format checks
# ------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$", re.DOTALL)
#: How much of a line is kept to recognise a fence (the marker and enough of an info string).
_FENCE_LINE_CHARS = 256


def _next_fence(fence: tuple[str, int] | None, line: str) -> tuple[str, int] | None:
    """The open fence (character, length) after ``line``, by the CommonMark rules.

    A fence opens with three or more backticks or tildes (at most three spaces of indent); a backtick
    fence's info string may not contain a backtick (```` ```x``` ```` is inline code). It closes only with
    the same character, at least as many of them, and nothing after but spaces — so ```` ```python ````
    inside a fence, or ``~~~`` inside a backtick fence, is content.
    """
    m = _FENCE.match(line)
    if m is None:
        return fence
    run, info = m.group(1), m.group(2)
    if fence is None:
        if run[0] == "`" and "`" in info:
            return None
        return run[0], len(run)
    char, length = fence
    if run[0] == char and len(run) >= length and not info.strip():
        return None
    return fence
_IMAGE_WORDS = r"(?:image|picture|photo(?:graph)?|chart|graph|figure|illustration|diagram|visual(?:ization)?|plot|rendering)s?"
_FILLER = re.compile(
    r"(?:\b(?:here(?:'s| is| are)|below (?:is|are)|the following|as (?:shown|seen|illustrated) below|"
    r"see the|let's (?:look at|see)|take a look at|check out)\b[^.\n]{0,60}\b" + _IMAGE_WORDS + r"\b"
    r"|^\s*\[?\s*" + _IMAGE_WORDS + r"\s*\]?\s*:?\s*$)",
    re.IGNORECASE | re.MULTILINE,
)


#: A short line that *starts* by presenting an image: the image word comes right after the phrase or after
#: a determiner and at most three words ("Here is an image of", "Here's the sales chart"), so prose such
#: as "Here's why photos fade" is not flagged.
_FILLER_START = re.compile(
    r"^\W*(?:here(?:'s| is| are)|below (?:is|are)|the following|see|take a look at|check out)\s+"
    r"(?:(?:a|an|the|this|these|that|those|our|my|your|its|their|some|another|one|two|three)\s+(?:[^\s.]+\s+){0,3}?)?"
    + _IMAGE_WORDS + r"\b",
    re.IGNORECASE,
)
_FILLER_ZH = re.compile(r"^\W*(?:(?:以下是|下面是|这是|请看)[^。\n]{0,30}(?:图片|图表|照片|插图|图像|图)|如下图|下图|见下图)")


def is_filler(preceding_text: str) -> bool:
    """True when the text right before a tag is an introduction such as "Here is an image:".

    Only the last non-empty line counts. It is filler when it ends with a colon and announces an image
    ("Below is a chart of sales:"), when it is a short line that starts by announcing one ("Here is an
    image of the tower."), or when it is a bare "[Image]"-style placeholder — so ordinary prose that
    mentions a chart is not flagged. English and Chinese phrasings are recognised.
    """
    lines = [ln for ln in preceding_text.splitlines() if ln.strip()]
    if not lines:
        return False
    last = lines[-1].strip()
    if re.fullmatch(r"\[?\s*" + _IMAGE_WORDS + r"\s*\]?\s*[:：]?", last, re.I):
        return True
    announces = _FILLER.search(last) or _FILLER_ZH.search(last)
    if not announces:
        return False
    if last.endswith((":", "：")):
        return True
    return len(last) <= 80 and (_FILLER_START.search(last) or _FILLER_ZH.search(last)) is not None


# ------------------------------------------------------------------------------------------------
# Incremental parser
# ------------------------------------------------------------------------------------------------

_MARKERS = (OPEN_TAG, THINK_OPEN, THINK_CLOSE)
#: The longest proper prefix of any marker: this much of the unread end may have to wait for more input.
_HOLD = max(len(m) for m in (OPEN_TAG, CLOSE_TAG, THINK_OPEN, THINK_CLOSE)) - 1


def _partial_suffix(buf: str, markers: Iterable[str]) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of some marker."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(buf)), best, -1):
            if buf.endswith(m[:k]):
                best = k
                break
    return best


def starts_in_think(response: str) -> bool:
    """Whether a whole response starts inside the reasoning: a ``</think>`` comes before any ``<think>``.

    That happens when the chat template opened ``<think>`` in the prompt (DeepSeek-R1 distills, QwQ, the
    Qwen3 thinking models) and the server passes the reasoning on in the text. This is the decision
    :func:`parse_response` and ``StreamParser(start_in_think=None)`` make; markers count wherever they are
    (a fence does not hide them).
    """
    close = response.find(THINK_CLOSE)
    return close >= 0 and THINK_OPEN not in response[:close]


def prompt_opens_think(prompt: str) -> bool:
    """Whether a rendered prompt leaves a ``<think>`` block open, so the response starts in the reasoning.

    For backends that render the chat template themselves: pass the result as ``start_in_think`` to
    :class:`StreamParser` and :func:`parse_response` to read a response live without holding it back.
    """
    opened = prompt.rfind(THINK_OPEN)
    return opened >= 0 and prompt.find(THINK_CLOSE, opened) < 0


class StreamParser:
    """Incremental tag parser. ``feed(chunk)`` and ``close()`` return the new segments.

    Text is returned as soon as it cannot be the start of a tag; a tool call is returned the moment its
    closing tag arrives. ``violations`` accumulates format problems.

    ``start_in_think``: ``True`` when the response starts inside the reasoning (the chat template opened
    ``<think>`` in the prompt), ``False`` when it does not, ``None`` (the default) to decide as
    :func:`parse_response` does (:func:`starts_in_think`) — which needs to see the first think marker, so
    until one arrives (or :meth:`close`) nothing is returned: a live caller that knows the answer passes
    it (``generate`` does, and re-reads the reply if it guessed wrong).
    :attr:`think_start` is the decision once made. Whatever the chunks, the output agrees with
    :func:`parse_response` given the same ``start_in_think``.

    Linear in the input: the unread buffer never holds more than a possible partial marker between
    calls; the inside of a long tag and an undecided beginning are kept as lists of pieces.
    """

    def __init__(
        self, n_input_images: int = 0, *, n_tags: int | None = None, start_in_think: bool | None = None
    ):
        self.n_input_images = n_input_images
        self.n_tags = n_tags
        self.violations: list[Violation] = []
        # Unread input is self._buf[self._pos:]; a cursor (not re-slicing) keeps one big feed linear.
        self._buf = ""
        self._pos = 0
        #: marker -> (lo, hi, found): the first occurrence at or after buffer index lo, searched up to hi.
        self._memo: dict[str, tuple[int, int, int]] = {}
        #: The decision, once made (None while undecided).
        self.think_start: bool | None = start_in_think
        self._mode = "undecided" if start_in_think is None else ("think" if start_in_think else "text")
        self._held: list[str] = []  # undecided beginning, not yet read (not counted in _offset)
        self._payload: list[str] = []  # the inside of the open tag read so far
        self._offset = 0  # offset in the raw response of the cursor
        self._tag_start = 0
        self._next_index = 0
        self._fence: tuple[str, int] | None = None  # the open code fence: (character, length)
        self._line = ""  # the current (unfinished) line of visible text, for fence tracking
        self._tail = ""  # recent visible text, for filler detection
        self._text: list[str] = []  # visible text not yet returned as a Text segment
        self._closed = False
        #: Edits past the current tag, classified before the number of tags was known: (violation, tag).
        self._forward: list[tuple[int, InvalidTag]] = []
        #: After :meth:`close`: tags whose reason changed once the number of tags was known (by index).
        self.amended: dict[int, InvalidTag] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def _rest(self) -> int:
        return len(self._buf) - self._pos

    def _find(self, marker: str) -> int:
        """Where ``marker`` next occurs, relative to the cursor, or -1.

        Remembers earlier searches, so text that was already searched is not scanned again — without
        this a response of many unclosed tags costs O(n²).
        """
        buf, pos = self._buf, self._pos
        memo = self._memo.get(marker)
        if memo is not None and memo[0] <= pos:
            lo, hi, found = memo
            if found >= pos:
                return found - pos
            if found < 0:
                start = max(pos, hi - len(marker) + 1)
                found = buf.find(marker, start)
                self._memo[marker] = (pos, len(buf), found)
                return found - pos if found >= 0 else -1
        found = buf.find(marker, pos)
        self._memo[marker] = (pos, len(buf), found)
        return found - pos if found >= 0 else -1

    def _held_back(self, markers: Iterable[str]) -> int:
        """How much of the unread end may be the start of a marker (so must wait for more input)."""
        tail = self._buf[max(self._pos, len(self._buf) - 10):]
        return _partial_suffix(tail, markers)

    def _compact(self) -> None:
        """Drop what was read. Between calls the unread part is at most a partial marker, so this is cheap."""
        if self._pos:
            self._buf = self._buf[self._pos :]
            self._pos = 0
            self._memo = {}

    def _push(self, out: list[Segment], seg: Segment) -> None:
        self._flush_text(out)
        out.append(seg)

    def _flush_text(self, out: list[Segment]) -> None:
        if self._text:
            out.append(Text("".join(self._text)))
            self._text = []

    def _visible(self, text: str, out: list[Segment]) -> None:
        if not text:
            return
        self._text.append(text)
        self._track(text)

    def _track(self, text: str) -> None:
        self._tail = (self._tail + text[-400:])[-400:]
        parts = (self._line + text).split("\n")
        for line in parts[:-1]:
            self._fence = _next_fence(self._fence, line)
        self._line = parts[-1][:_FENCE_LINE_CHARS]  # a fence is recognised by a line's start; keep no more

    def _consume(self, n: int) -> str:
        s = self._buf[self._pos : self._pos + n]
        self._pos += n
        self._offset += n
        return s

    def _slot(self, payload: str, out: list[Segment], offset: int) -> None:
        idx = self._next_index
        self._next_index += 1
        seg = validate(payload, idx, self.n_input_images, self.n_tags)
        if is_filler(self._tail):
            self.violations.append(
                Violation("filler_intro", "a filler introduction precedes the tag: " + self._tail.strip().splitlines()[-1][-80:], idx, offset)
            )
        if isinstance(seg, InvalidTag):
            kind = "unclosed_tag" if seg.kind is TagErrorKind.UNCLOSED else "invalid_tag"
            self.violations.append(Violation(kind, seg.reason, idx, offset))
            if seg.kind is TagErrorKind.FORWARD_REFERENCE and self.n_tags is None:
                self._forward.append((len(self.violations) - 1, seg))
        else:
            for reason in seg.lenient:
                self.violations.append(
                    Violation(reason, _LENIENT_DETAIL[reason] + "; read leniently (the LLM-I release rejects it)", idx, offset)
                )
        self._push(out, seg)
        # a tag ends the current line of text as far as fences and fillers are concerned
        self._tail = ""

    def _decide(self, final: bool) -> bool:
        """Make the start-in-think decision if the input so far allows it; True when made."""
        close = self._find(THINK_CLOSE)
        opened = self._find(THINK_OPEN)
        if opened >= 0 and (close < 0 or opened < close):
            decision = False
        elif close >= 0:
            decision = True
        elif final:
            decision = False
        else:
            # neither marker yet: keep all but a possible partial marker aside, unread
            keep = self._pos + max(0, self._rest() - _HOLD)
            if keep > self._pos:
                self._held.append(self._buf[self._pos : keep])
                self._buf, self._pos, self._memo = self._buf[keep:], 0, {}
            return False
        if self._held:
            self._buf = "".join(self._held) + self._buf[self._pos :]
            self._held, self._pos, self._memo = [], 0, {}
        self.think_start = decision
        self._mode = "think" if decision else "text"
        return True

    def _run(self, out: list[Segment], final: bool) -> None:
        while True:
            if self._mode == "undecided":
                if not self._decide(final):
                    return
                continue
            if not self._rest() and not (final and self._mode == "tag"):
                return
            if self._mode == "text":
                positions = [(p, m) for m in _MARKERS if (p := self._find(m)) >= 0]
                if not positions:
                    keep = 0 if final else self._held_back(_MARKERS)
                    self._visible(self._consume(self._rest() - keep), out)
                    return
                pos, marker = min(positions)
                self._visible(self._consume(pos), out)
                if self._fence is not None:
                    # inside a code fence every marker is text: a tag is shown, not run (a violation);
                    # a think marker is an example of the syntax, not reasoning
                    if marker == OPEN_TAG:
                        self.violations.append(
                            Violation("fenced_tag", "a tag inside a Markdown code fence is shown as text, not run", None, self._offset)
                        )
                    self._visible(self._consume(len(marker)), out)
                    continue
                start = self._offset
                self._consume(len(marker))
                if marker == OPEN_TAG:
                    self._mode, self._tag_start = "tag", start
                elif marker == THINK_OPEN:
                    self._mode = "think"
                # a stray </think> in text is dropped
            elif self._mode == "think":
                pos = self._find(THINK_CLOSE)
                if pos < 0:
                    keep = 0 if final else self._held_back((THINK_CLOSE,))
                    text = self._consume(self._rest() - keep)
                    if text:
                        self._push(out, Think(text))
                    return
                text = self._consume(pos)
                if text:
                    self._push(out, Think(text))
                self._consume(len(THINK_CLOSE))
                self._mode = "text"
            else:  # inside a tag
                close = self._find(CLOSE_TAG)
                reopen = self._find(OPEN_TAG)
                if reopen >= 0 and (close < 0 or reopen < close):
                    # a new tag opens before this one closed: this one is unclosed
                    self._unclosed(self._take_payload(reopen), out)
                    self._mode = "text"
                    continue
                if close < 0:
                    if final:
                        self._unclosed(self._take_payload(self._rest()), out)
                        self._mode = "text"
                        return
                    # wait for more; set aside all but what may be the start of a marker
                    n = self._rest() - _HOLD
                    if n > 0:
                        self._payload.append(self._consume(n))
                    return
                payload = self._take_payload(close)
                self._consume(len(CLOSE_TAG))
                self._slot(payload, out, self._tag_start)
                self._mode = "text"

    def _take_payload(self, n: int) -> str:
        """The open tag's payload: what was set aside and the next ``n`` unread characters."""
        last = self._consume(n)
        if not self._payload:
            return last
        self._payload.append(last)
        payload = "".join(self._payload)
        self._payload = []
        return payload

    # -- public API ------------------------------------------------------------------------------
    def feed(self, chunk: str) -> list[Segment]:
        if self._closed:
            raise RuntimeError("feed() after close()")
        self._compact()
        self._buf += chunk
        out: list[Segment] = []
        self._run(out, final=False)
        self._flush_text(out)
        return out

    def _unclosed(self, payload: str, out: list[Segment]) -> None:
        idx = self._next_index
        self._next_index += 1
        seg = InvalidTag(idx, TagErrorKind.UNCLOSED, "the tag was never closed with </imgen>", raw=payload)
        self.violations.append(Violation("unclosed_tag", seg.reason, idx, self._tag_start))
        self._push(out, seg)
        self._tail = ""

    def close(self) -> list[Segment]:
        """Flush at the end of the response: held-back text, an unfinished think block or tag."""
        if self._closed:
            return []
        self._closed = True
        self._compact()
        out: list[Segment] = []
        self._run(out, final=True)
        self._flush_text(out)
        self._buf, self._pos, self._memo = "", 0, {}
        self._amend_forward_references()
        return out

    def _amend_forward_references(self) -> None:
        """Now that the number of tags is known, an edit that pointed past the last tag is
        ``index_out_of_range`` rather than ``forward_reference`` — as :func:`parse_response` says."""
        for vi, seg in self._forward:
            again = validate(seg.raw, seg.index, self.n_input_images, self._next_index)
            if isinstance(again, InvalidTag) and again.kind is not seg.kind:
                self.amended[seg.index] = again
                old = self.violations[vi]
                self.violations[vi] = Violation(old.kind, again.reason, old.tag_index, old.offset)
        self._forward = []

    @property
    def n_slots(self) -> int:
        return self._next_index


def _merge(segments: Iterable[Segment]) -> list[Segment]:
    """Join adjacent Text (and adjacent Think) segments, each run joined once."""
    merged: list[Segment] = []
    run: list[str] = []  # texts of the current run of Text (or Think) segments
    for seg in segments:
        if run and type(seg) is type(merged[-1]) and type(seg) in (Text, Think):
            run.append(seg.text)
            continue
        if len(run) > 1:
            merged[-1] = type(merged[-1])("".join(run))
        merged.append(seg)
        run = [seg.text] if type(seg) in (Text, Think) else []
    if len(run) > 1:
        merged[-1] = type(merged[-1])("".join(run))
    return merged


def parse_response(response: str, n_input_images: int = 0, *, start_in_think: bool | None = None) -> ParsedResponse:
    """Parse a complete response in one pass.

    ``start_in_think``: ``None`` decides with :func:`starts_in_think` — a leading reasoning part closed by a
    bare ``</think>`` is read as reasoning and dropped from the text; ``True``/``False`` say it.
    """
    p = StreamParser(n_input_images, start_in_think=start_in_think)
    segments = p.feed(response) + p.close()
    if p.amended:
        segments = [p.amended.get(s.index, s) if isinstance(s, InvalidTag) else s for s in segments]
    return ParsedResponse(_merge(segments), p.violations, bool(p.think_start))


def count_tags(response: str, *, start_in_think: bool | None = None) -> int:
    """How many slots a full response has."""
    return len(parse_response(response, start_in_think=start_in_think).slots)


def strip_think(response: str, *, start_in_think: bool | None = None) -> str:
    """The response without reasoning blocks (tags kept)."""
    return parse_response(response, start_in_think=start_in_think).tagged_text()


_starts_in_think = starts_in_think  # the old private name
