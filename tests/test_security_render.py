"""Red-team of the renderers beyond tests/test_render_html.py: breaking out of <title>, meta refresh,
CSS and attribute injection through provenance, images whose bytes are not what their type says, NUL
bytes, and text built to make the renderers go quadratic."""

from __future__ import annotations

import time

import pytest

from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.images import ImageData
from llmi.render import render_html, render_markdown
from llmi.render.markdown import _escape_html_outside_code_spans, prepare_text

from .helpers import make_png
from .test_render_html import assert_inert

BREAKOUTS = [
    '</title><script>window.__pwned=1</script><title>',
    '<meta http-equiv="refresh" content="0;url=https://evil.example/">',
    '"><meta http-equiv=refresh content=0;url=data:text/html,<script>alert(1)</script>>',
    "</style><style>body{background:url(https://evil.example/x)}</style>",
    "</textarea></noscript></template><script>alert(1)</script>",
    '<base href="https://evil.example/">',
]


def _png() -> ImageData:
    return ImageData.from_bytes(make_png(40, 30))


@pytest.mark.parametrize("payload", BREAKOUTS)
def test_title_and_prompt_cannot_break_out(payload):
    doc = Document(blocks=[TextBlock("hello")])
    page = render_html(doc, title=payload, prompt=payload)
    s = assert_inert(page)
    assert [a.get("http-equiv") for t, a in s.elements if t == "meta" and a.get("http-equiv")] == [
        "Content-Security-Policy"
    ]
    assert not [t for t, _ in s.elements if t in ("script", "base")]
    assert " ".join(payload.split()) in s.visible_text  # shown as text, not interpreted


def test_provenance_cannot_inject_attributes_or_css():
    prov = {
        "page_url": 'https://ok.example/a" style="background:url(https://evil.example/x)" onmouseover="alert(1)',
        "source_url": "https://ok.example/b' onerror='alert(2)",
        "title": '" style="position:fixed;inset:0;background:red',
        "author": "x</a><a href=javascript:alert(3)>",
        "license": "expression(alert(4))",
        "model": '<style>*{background:url("https://evil.example/y")}</style>',
        "backend": "\u202egnp.exe",
    }
    block = ImageBlock(image=_png(), tool='search" style="color:red', description='d" onload="x', provenance=prov)
    page = render_html(Document(blocks=[block, ImageBlock(image=_png(), tool="diffusion", provenance=prov)]))
    s = assert_inert(page)  # every style attribute is text-align on a table cell, every href http(s)
    for tag, attrs in s.elements:
        if tag == "a":
            assert '"' not in attrs["href"] and "'" not in attrs["href"] and " " not in attrs["href"]
        if tag == "figure":
            assert set(attrs) == {"class", "id", "data-tool"}
    assert "url(https://evil" not in page.split("</style>", 1)[1].replace("url(https://evil.example/x)\" ", "")


def test_svg_bytes_labelled_png_are_embedded_only_as_png():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'
    liar = ImageData(data=svg, mime="image/png", width=10, height=10)
    unknown = ImageData(data=svg, mime="image/svg+xml", width=10, height=10)
    html_bytes = ImageData(data=b"<html><script>alert(3)</script></html>", mime="text/html", width=1, height=1)
    doc = Document(blocks=[ImageBlock(image=liar, tool="search"), ImageBlock(image=unknown, tool="search"),
                           ImageBlock(image=html_bytes, tool="search")])
    page = render_html(doc)
    s = assert_inert(page)
    srcs = [a["src"] for t, a in s.elements if t == "img"]
    # A browser never sniffs SVG (or HTML) out of an image/png data URI, and <img> runs no script anyway.
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert "data:image/svg" not in page and "data:text/html" not in page
    assert "cannot be shown in a web page" in s.visible_text
    text, files = render_markdown(doc, assets_dir="a")
    assert sorted(files) == ["a/image-1.png", "a/image-2.bin", "a/image-3.bin"]  # never .svg or .html


def test_nul_bytes_are_not_written_into_the_page():
    nul = "a\0b<\0script>\0"
    doc = Document(blocks=[TextBlock(nul), ImageBlock(image=_png(), tool="search", description=nul,
                                                       provenance={"title": nul, "page_url": "https://x.example/\0"}),
                           FailureBlock(tool="code", reason=nul, kind="code_error", description=nul)])
    page = render_html(doc, title=nul, prompt=nul)
    assert "\0" not in page
    assert_inert(page)
    md, _ = render_markdown(doc, assets_dir="a", title=nul, prompt=nul)
    # CommonMark reads NUL as U+FFFD; a viewer that drops it instead must not find "<script>" either.
    assert "\0" not in md and "<script" not in md


# -- linear time on hostile text ---------------------------------------------------------------------------


def _backtick_storm(distinct: int, singles: int) -> str:
    """Runs of every length from ``distinct`` down to 1 (none closed), then many single-backtick spans."""
    return "".join("`" * n + "a" for n in range(distinct, 0, -1)) + "`a" * singles


def test_markdown_escaping_is_linear_in_unmatched_backtick_runs():
    # 280 kB: a forward scan per unmatched run took ~12 s here; the indexed lookup takes well under 0.5 s.
    text = _backtick_storm(400, 100_000)
    t0 = time.perf_counter()
    out = _escape_html_outside_code_spans(text)
    assert time.perf_counter() - t0 < 3.0
    assert out == text  # nothing to escape, nothing lost


def test_backtick_spans_still_protect_html_inside_them():
    assert _escape_html_outside_code_spans("`<b>` <b> ``<i>` x`` <i>") == "`<b>` &lt;b> ``<i>` x`` &lt;i>"
    assert _escape_html_outside_code_spans("``` <b> `` <b>") == "``` &lt;b> `` &lt;b>"


@pytest.mark.parametrize(
    "unit",
    ["*_", "[", "[](", "`` ", "<a", "&#x41;", "*a **b ", "~~a", "a_", "[a]: <", "<!--", "|a", "> "],
)
def test_pathological_markdown_scales_linearly(unit):
    """Doubling the input may at most roughly double the time (quadratic would quadruple it)."""

    from .helpers import cpu_cost

    def cost(n: int) -> float:
        text = unit * (n // len(unit))
        doc = Document(blocks=[TextBlock(text)])
        return cpu_cost(lambda _: (render_html(doc), prepare_text(text)), None)

    cost(2_000)  # warm caches
    small, large = cost(10_000), cost(40_000)
    # 4x the input: linear is ~4x the time, quadratic 16x; allow noise up to 11x.
    assert large < max(11 * small, 0.5), f"{unit!r}: 10k chars {small:.3f}s, 40k chars {large:.3f}s"
