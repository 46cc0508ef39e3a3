"""The HTML renderer: structure, credits, failures, and that hostile input never becomes live markup.

Safety is checked on the parsed output, not on substrings: every element and attribute in the page must
be one the renderer means to produce, every URL must have an allowed scheme, and no event handler,
script, frame, object, form, base or meta-refresh may exist, whatever the untrusted fields contain.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.images import ImageData
from llmi.protocol import Violation
from llmi.render import render_html, render_html_fragment
from llmi.render.html import CONTENT_SECURITY_POLICY, stylesheet

from .helpers import make_jpeg, make_png
from .hostile import HOSTILE, PAYLOADS, hostile_document, hostile_provenance

#: Every element the page may contain: our own frame plus what the sanitiser lets through.
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "h4", "h5", "h6",
    "article", "section", "div", "p", "span", "figure", "img", "figcaption", "footer", "details",
    "summary", "ul", "ol", "li", "code", "pre", "a", "strong", "em", "b", "i", "del", "s", "blockquote",
    "br", "hr", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
PAGE_ATTRS = {
    "lang", "charset", "http-equiv", "content", "name", "class", "id", "role", "aria-label", "aria-hidden",
    "data-tool", "data-kind", "src", "alt", "width", "height", "decoding", "href", "rel", "title", "start",
    "style",
}  # fmt: skip
DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+$")


class PageScan(HTMLParser):
    """Collects elements, attributes and visible text of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if not self._in_style:
            self.text.append(data)

    @property
    def visible_text(self) -> str:
        return "".join(self.text)


def scan(page: str) -> PageScan:
    p = PageScan()
    p.feed(page)
    p.close()
    return p


def assert_inert(page: str, *, full_page: bool = True) -> PageScan:
    """The structural safety contract of a rendered page."""
    s = scan(page)
    for tag, attrs in s.elements:
        assert tag in PAGE_TAGS, f"unexpected element <{tag}>"
        for name, value in attrs.items():
            assert name in PAGE_ATTRS, f"unexpected attribute {name!r} on <{tag}>"
            assert not name.startswith("on")
            value = value or ""
            if name == "href":
                assert tag == "a" and re.match(r"^(https?:|mailto:)", value, re.IGNORECASE), value
            if name == "src":
                assert tag == "img" and DATA_IMAGE.match(value), value[:80]
            if name == "style":
                assert tag in ("th", "td") and re.fullmatch(
                    r"text-align:\s*(left|right|center)\s*;?", value
                ), value
            if name == "http-equiv":
                assert value == "Content-Security-Policy"
            if name == "rel":
                assert value == "noopener noreferrer nofollow"
            # Of the allowed attributes only href and src are URLs (checked above); the rest are text.
        if tag == "a":
            assert attrs.get("rel") == "noopener noreferrer nofollow"
    tags = [t for t, _ in s.elements]
    if full_page:
        assert tags.count("style") == 1 and tags.count("meta") == 5 and tags.count("title") == 1
        # The CSP must come before anything it protects: right after the charset declaration.
        assert s.elements[2] == ("meta", {"charset": "utf-8"})
        assert s.elements[3] == (
            "meta",
            {"http-equiv": "Content-Security-Policy", "content": CONTENT_SECURITY_POLICY},
        )
        assert page.count("<style>") == 1 and page.count("</style>") == 1
        assert stylesheet() in page
    else:
        assert "style" not in tags and "meta" not in tags
    return s


def _image(width=8, height=8, jpeg=False) -> ImageData:
    return ImageData.from_bytes(make_jpeg(width, height) if jpeg else make_png(width, height))


# -- hostile input -----------------------------------------------------------------------------------------


def test_hostile_document_renders_inert():
    doc = hostile_document()
    page = render_html(doc, prompt=HOSTILE, title=HOSTILE)
    s = assert_inert(page)
    # Nothing was silently dropped from the places we show as text: the payloads are visible, escaped.
    text = s.visible_text
    assert "<script>window.__pwned=1;document.title='pwned';alert(1)</script>" in text  # prompt + title
    assert '<svg onload="window.__pwned=3">' in text
    assert "javascript:window.__pwned=32" in text  # page_url shown as text, not a link
    assert "<b onmouseover=window.__pwned=52>" in text  # failure kind
    # Real images still made it, as data URIs with alt text.
    imgs = [a for t, a in s.elements if t == "img"]
    assert len(imgs) == 4
    assert imgs[1]["alt"] == '"onerror="window.__pwned=50'
    assert all(a["alt"] for a in imgs)


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize(
    "where", ["prompt", "title", "text", "description", "provenance", "failure", "violation"]
)
def test_each_payload_in_each_field(payload, where):
    png = _image()
    prov = {"backend": "b"}
    blocks = [TextBlock("intro")]
    kwargs = {}
    if where == "prompt":
        kwargs["prompt"] = payload
    elif where == "title":
        kwargs["title"] = payload
    elif where == "text":
        blocks.append(TextBlock(payload))
    elif where == "provenance":
        prov = {k: payload for k in hostile_provenance()}
    doc = Document(
        blocks=blocks
        + [
            ImageBlock(
                image=png,
                tool="search",
                description=payload if where == "description" else "d",
                provenance=prov,
            ),
            FailureBlock(tool="code", reason=payload if where == "failure" else "r", kind="code_error"),
        ],
        violations=[] if where != "violation" else [Violation("invalid_tag", payload)],
    )
    page = render_html(doc, **kwargs)
    s = assert_inert(page)
    assert len([t for t, _ in s.elements if t == "img"]) == 1
    assert_inert(render_html_fragment(doc, prompt=kwargs.get("prompt")), full_page=False)


def test_markdown_links_and_images_in_model_text():
    doc = Document(
        blocks=[
            TextBlock(
                "[ok](https://example.org/a?b=1) [mail](mailto:a@b.c) [rel](../../etc/passwd) "
                "[frag](#x) [js](javascript:alert(1)) [data](data:text/html;base64,PHNjcmlwdD4=) "
                "[vb](vbscript:msgbox) ![remote](https://example.org/x.png) <https://example.org/auto>"
            )
        ]
    )
    s = assert_inert(render_html(doc))
    hrefs = [a.get("href") for t, a in s.elements if t == "a"]
    # Relative links lose their target (a local file must not point into the disk); unsafe schemes
    # are not even links (markdown-it refuses them, nh3 would strip them).
    assert hrefs == [
        "https://example.org/a?b=1",
        "mailto:a@b.c",
        None,
        None,
        "https://example.org/x.png",
        "https://example.org/auto",
    ]
    assert "[js](javascript:alert(1))" in s.visible_text
    # Markdown images never fetch anything: no <img> came from the text.
    assert [t for t, _ in s.elements].count("img") == 0
    assert "rel" in s.visible_text and "js" in s.visible_text


def test_markdown_features_survive_sanitising():
    md = (
        "## Heading\n\nSome **bold**, *em*, ~~gone~~ and `code`.\n\n"
        "- one\n- two\n\n3. three\n4. four\n\n> quote\n\n```python\nprint('<hi>')\n```\n\n"
        "| a | b |\n|:--|--:|\n| 1 | 2 |\n\n---\n"
    )
    page = render_html(Document(blocks=[TextBlock(md)]))
    s = assert_inert(page)
    tags = [t for t, _ in s.elements]
    for t in (
        "h2",
        "strong",
        "em",
        "s",
        "code",
        "ul",
        "ol",
        "li",
        "blockquote",
        "pre",
        "table",
        "th",
        "td",
        "hr",
    ):
        assert t in tags, t
    assert ("ol", {"start": "3"}) in s.elements
    assert ("td", {"style": "text-align:right"}) in s.elements
    assert "print('<hi>')" in s.visible_text


def test_unclosed_constructs_do_not_swallow_following_blocks():
    doc = Document(
        blocks=[
            TextBlock("start\n```python\nx = 1\n"),  # unclosed fence
            ImageBlock(image=_image(), tool="code", description="chart"),
            TextBlock("*dangling emphasis and [open link"),
            FailureBlock(tool="search", reason="no result", kind="no_result"),
        ]
    )
    page = render_html(doc)
    assert_inert(page)
    fig = page.index("<figure")
    assert page.index("</pre>") < fig  # the fence closed before the figure
    assert page.count('class="llmi-failure"') == 1


# -- images, credits, failures ----------------------------------------------------------------------------


def test_figure_has_data_uri_alt_size_and_credit():
    img = _image(40, 30)
    doc = Document(
        blocks=[
            ImageBlock(
                image=img,
                tool="search",
                description="The Eiffel Tower at dusk",
                provenance={
                    "backend": "wikimedia",
                    "title": "Tour Eiffel",
                    "author": "Jane Doe",
                    "license": "CC BY-SA 4.0",
                    "page_url": "https://commons.wikimedia.org/wiki/File:Tour.jpg",
                    "source_url": "https://upload.wikimedia.org/tour.jpg",
                },
            )
        ]
    )
    s = assert_inert(render_html(doc))
    (img_attrs,) = [a for t, a in s.elements if t == "img"]
    assert img_attrs["alt"] == "The Eiffel Tower at dusk"
    assert (img_attrs["width"], img_attrs["height"]) == ("40", "30")
    import base64

    assert base64.b64decode(img_attrs["src"].split(",", 1)[1]) == img.data
    links = [a for t, a in s.elements if t == "a"]
    assert links == [
        {"href": "https://commons.wikimedia.org/wiki/File:Tour.jpg", "rel": "noopener noreferrer nofollow"}
    ]
    assert "Photo: Tour Eiffel by Jane Doe, CC BY-SA 4.0 — commons.wikimedia.org" in s.visible_text


@pytest.mark.parametrize(
    "tool, prov, params, expected",
    [
        ("diffusion", {"backend": "openai", "model": "gpt-image-1"}, {}, "Generated with gpt-image-1"),
        ("diffusion", {"backend": "qwen-server"}, {}, "Generated with qwen-server"),
        ("diffusion", {}, {}, "Generated with an image model"),
        ("code", {"backend": "sandbox"}, {}, "Chart rendered from code"),
        (
            "edit",
            {"backend": "ark", "model": "seededit"},
            {"img_index": 1},
            "Edited with seededit (from image 1)",
        ),
        ("input", {}, {}, "Your image"),
        ("search", {"backend": "wikimedia", "query": "red fox"}, {}, "Photo: result for “red fox”"),
        ("search", {"backend": "wikimedia", "license": "CC0"}, {}, "Photo: wikimedia, CC0"),
        (
            "search",
            {"title": "Fox", "source_url": "ftp://files/x.jpg"},
            {},
            "Photo: Fox — source: ftp://files/x.jpg",
        ),
        ("diffusion", {"model": "m", "cached": True}, {}, "Generated with m (cached)"),
    ],
)
def test_credit_wording(tool, prov, params, expected):
    doc = Document(
        blocks=[ImageBlock(image=_image(), tool=tool, description="d", provenance=prov, params=params)]
    )
    s = assert_inert(render_html(doc))
    assert expected in s.visible_text
    if "ftp:" in expected:
        assert not [t for t, _ in s.elements if t == "a"]


def test_non_embeddable_types_are_converted_or_refused():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12, 7), (1, 2, 3)).save(buf, format="BMP")
    bmp = ImageData.from_bytes(buf.getvalue())
    assert bmp.mime == "image/bmp"
    svg = ImageData(
        data=b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>",
        mime="image/svg+xml",
        width=1,
        height=1,
    )
    doc = Document(
        blocks=[
            ImageBlock(image=bmp, tool="search", description="bitmap"),
            ImageBlock(image=svg, tool="search", description="vector"),
        ]
    )
    s = assert_inert(render_html(doc))
    (img,) = [a for t, a in s.elements if t == "img"]
    assert img["src"].startswith("data:image/png;base64,") and (img["width"], img["height"]) == ("12", "7")
    assert "image of type 'image/svg+xml' cannot be shown" in s.visible_text
    assert "<svg" not in render_html(doc)


def test_failure_note_is_visible_and_escaped():
    doc = Document(
        blocks=[
            TextBlock("Before."),
            FailureBlock(
                tool="search",
                reason="HTTP 429 from api: <rate limited> & retry later",
                kind="http_error",
                description="A red fox",
            ),
        ]
    )
    page = render_html(doc)
    s = assert_inert(page)
    notes = [a for t, a in s.elements if a.get("class") == "llmi-failure"]
    assert notes == [
        {"class": "llmi-failure", "role": "note", "data-tool": "search", "data-kind": "http_error"}
    ]
    assert "Image failed (search · http_error)" in " ".join(s.visible_text.split())
    assert "HTTP 429 from api: <rate limited> & retry later" in s.visible_text
    assert "Wanted: A red fox" in s.visible_text
    assert ".llmi-failure {" in page  # styled


def test_stats_and_violations_footer():
    doc = Document(
        blocks=[
            ImageBlock(image=_image(), tool="code", description="c"),
            FailureBlock(tool="search", reason="none", kind="no_result"),
            ImageBlock(image=_image(jpeg=True), tool="search", description="s"),
        ],
        violations=[Violation("filler_intro", "Here is an image:", 0, 10)],
    )
    s = assert_inert(render_html(doc))
    text = " ".join(s.visible_text.split())
    assert "Images: 2 of 3 produced (code 1/1, search 1/2)." in text
    assert "Format notes (1)" in text and "filler_intro: Here is an image:" in text


def test_title_prompt_and_fragment():
    doc = Document(blocks=[TextBlock("Hello")])
    page = render_html(doc)
    assert "<title>llmi document</title>" in page and 'class="llmi-title"' not in page
    page = render_html(doc, title="Fox & <friends>", prompt="line one\nline <two>")
    assert "<title>Fox &amp; &lt;friends&gt;</title>" in page
    assert '<h1 class="llmi-title">Fox &amp; &lt;friends&gt;</h1>' in page
    s = assert_inert(page)
    assert "line one\nline <two>" in s.visible_text  # shown verbatim, newlines kept (pre-wrap)
    frag = render_html_fragment(doc, prompt="p")
    assert frag.startswith('<article class="llmi-document">') and "<html" not in frag and "<style" not in frag
    assert_inert(frag, full_page=False)
    assert 'class="llmi-prompt"' not in render_html_fragment(doc)


def test_stylesheet_is_package_data_with_dark_mode():
    css = stylesheet()
    assert "prefers-color-scheme: dark" in css and "max-width" in css and "figcaption" in css


# -- property: no text ever produces live markup ------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    ["<", ">", "\"", "'", "`", "&", "=", "/", "\n", " ", "*", "[", "]", "(", ")", "!", "#", "|", "-", ":",
     "script", "img", "svg", "iframe", "onerror", "onload", "javascript", "data", "src", "href", "alert(1)",
     "<script>", "</script>", "<a href=", "](", "](javascript:", "```", "&lt;", "&#x3c;", "<!--", "-->", "\\"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    text=st.lists(_FRAGMENTS, max_size=40).map("".join),
    other=st.lists(_FRAGMENTS, max_size=15).map("".join),
)
def test_property_any_text_renders_inert(text, other):
    doc = Document(
        blocks=[
            TextBlock(text),
            ImageBlock(
                image=_image(),
                tool="search",
                description=other,
                provenance={"title": other, "page_url": other, "license": text},
            ),
            FailureBlock(tool="code", reason=other, kind=other),
        ]
    )
    assert_inert(render_html(doc, prompt=other, title=text))


def test_user_images_are_shown_and_images_numbered_as_edits_address_them():
    from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
    from llmi.images import ImageData
    from llmi.render import render_html

    from .helpers import make_png

    user = ImageData.from_bytes(make_png(10, 10, (1, 2, 3)))
    made = ImageData.from_bytes(make_png(12, 12, (9, 9, 9)))
    doc = Document(
        blocks=[TextBlock("Intro"), FailureBlock("search", "none found", "no_result"),
                ImageBlock(made, "edit", "Edited", {"img_index": 0, "prompt": "p"}, {"backend": "pillow"})],
        input_images=[user],
    )
    page = render_html(doc)
    assert page.count("data:image/png;base64,") == 2
    assert "Your images" in page and ">Image 0<" in page
    assert ">Image 2<" in page  # one user image, then slot 0 (failed) is image 1, the edit is image 2
    plain = render_html(Document(blocks=[ImageBlock(made, "code", "Chart")]))
    assert "llmi-index" not in plain.split("</style>")[1] and "Your images" not in plain
