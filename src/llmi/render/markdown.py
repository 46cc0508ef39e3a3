"""A document as a Markdown file plus a folder of image files.

The model's text is Markdown already and is written as it is, with one exception: raw HTML. A Markdown
viewer passes raw HTML through, so a ``<script>`` or ``<img onerror=...>`` in the model's text (or in
text the model copied from a web page) would reach whoever opens the file. By default every ``<`` that
would start an HTML tag, comment or declaration is written as ``&lt;`` — it then displays as the
literal text ``<script>`` — except inside code spans and code blocks, which Markdown never treats as
HTML and which must stay byte-exact. ``http``/``https``/``mailto`` autolinks (``<https://…>``) are kept.
Pass ``escape_html=False`` to write the text untouched when the source is trusted.

Markdown *links* in the text (``[x](url)``) are left as written; viewers are expected to refuse
``javascript:`` URLs (GitHub, VS Code and markdown-it do). Our own lines — image alt text, captions,
failure notes — are escaped so that nothing in a description or a provenance field is read as Markdown
or HTML, and caption links are only written for http(s) URLs.

If a text block ends inside an unclosed code fence (a truncated response), the fence is closed so the
images that follow are not swallowed by it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from ..document import Document, FailureBlock, ImageBlock, TextBlock
from ..images import file_extension
from .credit import Link, credit_parts

#: Characters that can start Markdown or HTML syntax inside a line of our own text.
_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~!#])")
_AUTOLINK = re.compile(r"<(?:https?|mailto):[^\s<>]*>", re.IGNORECASE)
#: ``<`` followed by what HTML would read as a tag, end tag, comment, declaration or processing instruction.
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")
_BACKTICKS = re.compile(r"`+")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def escape_inline(text: Any) -> str:
    """Plain text for one line of Markdown: whitespace collapsed, every syntax character backslash-escaped."""
    return _INLINE_SPECIAL.sub(r"\\\1", " ".join(str(text).replace("\0", "\ufffd").split()))


def _escape_html_outside_code_spans(text: str) -> str:
    """Write ``<`` of HTML-looking tags as ``&lt;``, leaving code spans and safe autolinks untouched.

    A code span runs from a backtick run to the next run of exactly the same length; a run without such
    a partner is literal text (CommonMark 6.1). The partner is looked up in a per-length index rather
    than by scanning ahead, so text made of many unmatched runs (hostile or not) stays linear — a scan
    per run made 300 kB of such text take over ten seconds.
    """
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(text)]
    by_length: dict[int, list[int]] = {}
    for i, (a, b) in enumerate(runs):
        by_length.setdefault(b - a, []).append(i)
    cursor: dict[int, int] = {}  # per length: first entry of by_length[length] not yet passed
    out: list[str] = []
    pos = 0
    i = 0
    while i < len(runs):
        start, end = runs[i]
        out.append(_escape_html_plain(text[pos:start]))
        same = by_length[end - start]
        k = cursor.get(end - start, 0)
        while k < len(same) and same[k] <= i:
            k += 1
        cursor[end - start] = k
        if k == len(same):  # no closing run: the backticks are literal text
            out.append(text[start:end])
            pos = end
            i += 1
        else:
            j = same[k]
            out.append(text[start : runs[j][1]])
            pos = runs[j][1]
            i = j + 1
    out.append(_escape_html_plain(text[pos:]))
    return "".join(out)


def _escape_html_plain(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _HTML_START.finditer(text):
        start = m.start()
        if start < pos:
            continue
        auto = _AUTOLINK.match(text, start)
        if auto:
            out.append(text[pos : auto.end()])
            pos = auto.end()
            continue
        # An odd run of backslashes before it means the author already escaped the "<".
        k = start
        while k > 0 and text[k - 1] == "\\":
            k -= 1
        if (start - k) % 2 == 1:
            continue
        out.append(text[pos:start])
        out.append("&lt;")
        pos = start + 1
    out.append(text[pos:])
    return "".join(out)


def _code_line_ranges(text: str) -> tuple[list[tuple[int, int]], str | None]:
    """Line ranges of code blocks and fences (per markdown-it), and the closing fence an open fence needs."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    lines = text.split("\n")
    ranges = []
    missing_close = None
    for tok in md.parse(text):
        if tok.type not in ("fence", "code_block") or tok.map is None:
            continue
        start, end = tok.map
        ranges.append((start, end))
        if tok.type == "fence":
            missing_close = None
            last = lines[end - 1].strip() if end - 1 < len(lines) else ""
            char = tok.markup[:1]
            closed = end - start >= 2 and len(last) >= len(tok.markup) and last == char * len(last)
            if not closed and end >= len(lines) - (1 if text.endswith("\n") else 0):
                missing_close = tok.markup
    return ranges, missing_close


def prepare_text(text: str, *, escape_html: bool = True) -> str:
    """A text block as Markdown to write: raw HTML neutralised outside code, open fences closed.

    NUL becomes U+FFFD first, as CommonMark reads it: a viewer that dropped it instead would see
    ``<\\0script>`` turn into ``<script>`` after the escaping here had let it pass as "not a tag".
    """
    text = text.replace("\0", "\ufffd")
    ranges, missing_close = _code_line_ranges(text)
    if escape_html:
        lines = text.split("\n")
        in_code = [False] * len(lines)
        for start, end in ranges:
            for i in range(start, min(end, len(lines))):
                in_code[i] = True
        out: list[str] = []
        i = 0
        while i < len(lines):
            j = i
            while j < len(lines) and in_code[j] == in_code[i]:
                j += 1
            chunk = "\n".join(lines[i:j])
            out.append(chunk if in_code[i] else _escape_html_outside_code_spans(chunk))
            i = j
        text = "\n".join(out)
    if missing_close:
        text = text.rstrip("\n") + "\n" + missing_close + "\n"
    return text


def _url_for_markdown(url: str) -> str:
    """A URL safe inside ``(...)``: spaces, brackets, parentheses and quotes percent-encoded."""
    return quote(url, safe=":/?#@!$&*+,;=%~-._")


def _credit_markdown(block: ImageBlock) -> str:
    out = []
    for part in credit_parts(block.tool, block.provenance, block.params):
        if isinstance(part, Link):
            out.append(f"[{escape_inline(part.text)}]({_url_for_markdown(part.url)})")
        else:
            # Keep the single spaces around separators such as " — ".
            lead = " " if part[:1].isspace() else ""
            trail = " " if part[-1:].isspace() else ""
            out.append(lead + escape_inline(part) + trail if part.strip() else " ")
    return "".join(out).strip()


def _failure_markdown(block: FailureBlock) -> str:
    line = f"> ⚠ Image failed ({escape_inline(block.tool)}): {escape_inline(block.reason)}"
    if block.kind:
        line += f" \\[{escape_inline(block.kind)}\\]"
    if str(block.description).strip():
        line += f"\n>\n> Wanted: {escape_inline(block.description)}"
    return line


def render_markdown(
    doc: Document,
    *,
    assets_dir: str,
    prompt: str | None = None,
    title: str | None = None,
    escape_html: bool = True,
) -> tuple[str, dict[str, bytes]]:
    """The Markdown text and the image files it refers to, as ``{relative path: bytes}``.

    ``assets_dir`` is the folder (relative to the Markdown file) the images go in, e.g. ``"out_assets"``;
    images are named ``image-1.png``, ``image-2.jpg`` … in reading order.
    """
    assets_dir = assets_dir.strip("/") or "."
    files: dict[str, bytes] = {}
    out: list[str] = []

    def separate() -> None:
        # Our blocks must start a new paragraph whatever the previous text ended with.
        joined = out[-1] if out else ""
        if joined and not joined.endswith("\n\n"):
            out.append("\n" if joined.endswith("\n") else "\n\n")

    if title is not None and str(title).strip():
        out.append(f"# {escape_inline(title)}\n\n")
    if prompt is not None and str(prompt).strip():
        lines = [escape_inline(line) for line in str(prompt).splitlines()]
        out.append("> **Prompt:** " + "  \n> ".join(lines) + "\n\n")

    number = 0
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            if block.text:
                out.append(prepare_text(block.text, escape_html=escape_html))
        elif isinstance(block, ImageBlock):
            number += 1
            ext = file_extension(block.mime)
            rel = f"{assets_dir}/image-{number}.{ext}"
            files[rel] = block.data
            separate()
            out.append(f"![{escape_inline(block.description)}]({_url_for_markdown(rel)})\n\n")
            credit = _credit_markdown(block)
            if credit:
                out.append(f"*{credit}*\n\n")
        elif isinstance(block, FailureBlock):
            separate()
            out.append(_failure_markdown(block) + "\n\n")
    text = "".join(out)
    if not text.endswith("\n"):
        text += "\n"
    return text, files
