"""The Markdown and JSON renderers and the file writer."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.errors import InputError
from llmi.images import ImageData
from llmi.protocol import Violation
from llmi.render import render_json, render_markdown, write_document
from llmi.render.markdown import escape_inline, prepare_text

from .helpers import make_jpeg, make_png
from .hostile import HOSTILE, PAYLOADS, hostile_document


def viewer_tokens(md_text: str):
    """Tokens as a Markdown viewer that allows raw HTML (like most do) would see them, inline ones included."""
    md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    out = []
    for tok in md.parse(md_text):
        out.append(tok)
        out.extend(tok.children or [])
    return out


def alt_text(image_token) -> str:
    """The alt text a viewer shows for an image token (its children as plain text)."""
    return "".join(c.content for c in image_token.children or [] if c.type in ("text", "code_inline"))


def sample_document() -> Document:
    png = ImageData.from_bytes(make_png(20, 10))
    jpg = ImageData.from_bytes(make_jpeg(12, 12))
    return Document(
        blocks=[
            TextBlock("# Foxes\n\nRed foxes live almost everywhere. See the chart"),
            ImageBlock(
                image=png,
                tool="code",
                description="Fox population [2020-2024]\nby region",
                params={"code": "plt.bar([1], [2])"},
                provenance={"backend": "sandbox"},
                elapsed_s=0.5,
            ),
            TextBlock("\n\nand a photo:\n"),
            ImageBlock(
                image=jpg,
                tool="search",
                description="A red fox",
                params={"query": "red fox"},
                provenance={
                    "backend": "wikimedia",
                    "title": "Vulpes vulpes (1)",
                    "license": "CC BY-SA 4.0",
                    "page_url": "https://commons.wikimedia.org/wiki/File:Fox (1).jpg",
                },
                elapsed_s=1.25,
            ),
            FailureBlock(
                tool="diffusion", reason="HTTP 503: <busy>", kind="http_error", description="A fox painting"
            ),
            TextBlock("The end."),
        ],
        violations=[Violation(kind="filler_intro", detail="and a photo:", tag_index=1, offset=70)],
    )


# -- Markdown ----------------------------------------------------------------------------------------------


def test_markdown_layout_and_assets():
    doc = sample_document()
    text, files = render_markdown(doc, assets_dir="out_assets")
    assert list(files) == ["out_assets/image-1.png", "out_assets/image-2.jpg"]
    assert files["out_assets/image-1.png"] == doc.images[0].data
    assert files["out_assets/image-2.jpg"] == doc.images[1].data
    assert text.startswith("# Foxes\n\nRed foxes live almost everywhere. See the chart\n\n![")
    assert (
        "![Fox population \\[2020-2024\\] by region](out_assets/image-1.png)\n\n*Chart rendered from code*"
        in text
    )
    assert (
        "*Photo: Vulpes vulpes (1), CC BY-SA 4.0 — "
        "[commons.wikimedia.org](https://commons.wikimedia.org/wiki/File:Fox%20%281%29.jpg)*"
    ) in text
    assert (
        "> ⚠ Image failed (diffusion): HTTP 503: \\<busy\\> \\[http\\_error\\]\n>\n> Wanted: A fox painting"
        in text
    )
    assert text.rstrip().endswith("The end.")

    # What a viewer makes of it: two images at the asset paths with the descriptions as alt text.
    toks = viewer_tokens(text)
    images = [t for t in toks if t.type == "image"]
    assert [t.attrs["src"] for t in images] == ["out_assets/image-1.png", "out_assets/image-2.jpg"]
    assert [alt_text(t) for t in images] == ["Fox population [2020-2024] by region", "A red fox"]
    links = [t.attrs["href"] for t in toks if t.type == "link_open"]
    assert links == ["https://commons.wikimedia.org/wiki/File:Fox%20%281%29.jpg"]
    assert not [t for t in toks if t.type in ("html_inline", "html_block")]
    quote = [t for t in toks if t.type == "blockquote_open"]
    assert len(quote) == 1


def test_markdown_neutralises_raw_html_in_text_but_keeps_code():
    text = (
        "Hello <script>alert(1)</script> and <img src=x onerror=alert(2)> and <!-- c --> "
        "and `<b>inline code</b>` and <https://example.org> and \\<already escaped>\n\n"
        "<div onclick='x'>\nblock\n</div>\n\n"
        "```html\n<script>kept()</script>\n```\n\n"
        "    <i>indented code</i>\n\n"
        "- item <em>x</em>\n"
    )
    out, _ = render_markdown(Document(blocks=[TextBlock(text)]), assets_dir="a")
    assert "```html\n<script>kept()</script>\n```" in out
    assert "    <i>indented code</i>" in out
    assert "`<b>inline code</b>`" in out
    assert "<https://example.org>" in out
    assert "\\<already escaped>" in out
    assert "&lt;script>alert(1)&lt;/script>" in out
    toks = viewer_tokens(out)
    assert not [t for t in toks if t.type in ("html_inline", "html_block")], [
        t for t in toks if "html" in t.type
    ]
    codes = [t.content for t in toks if t.type in ("fence", "code_block", "code_inline")]
    assert codes == ["<b>inline code</b>", "<script>kept()</script>\n", "<i>indented code</i>\n"]
    # Unchanged when the source is trusted.
    raw, _ = render_markdown(Document(blocks=[TextBlock(text)]), assets_dir="a", escape_html=False)
    assert raw == text


@pytest.mark.parametrize("payload", PAYLOADS)
def test_markdown_payloads_never_become_html(payload):
    png = ImageData.from_bytes(make_png())
    doc = Document(
        blocks=[
            TextBlock(payload),
            ImageBlock(
                image=png,
                tool="search",
                description=payload,
                provenance={"title": payload, "page_url": payload},
            ),
            FailureBlock(tool=payload, reason=payload, kind=payload, description=payload),
        ]
    )
    out, _files = render_markdown(doc, assets_dir="x_assets", prompt=payload, title=payload)
    toks = viewer_tokens(out)
    assert not [t for t in toks if t.type in ("html_inline", "html_block")], out
    assert [t.attrs["src"] for t in toks if t.type == "image"] == ["x_assets/image-1.png"]
    for t in toks:
        if t.type == "link_open":
            assert t.attrs["href"].startswith(("http://", "https://", "mailto:")), t.attrs


def test_hostile_document_markdown():
    out, files = render_markdown(hostile_document(), assets_dir="h_assets", prompt=HOSTILE)
    toks = viewer_tokens(out)
    assert not [t for t in toks if t.type in ("html_inline", "html_block")]
    assert len(files) == 4
    assert len([t for t in toks if t.type == "image"]) == 4


def test_unclosed_fence_is_closed_before_the_image():
    doc = Document(
        blocks=[
            TextBlock("Code:\n````python\nx = 1\n```\n"),
            ImageBlock(image=ImageData.from_bytes(make_png()), tool="code", description="chart"),
            TextBlock("after"),
        ]
    )
    out, _ = render_markdown(doc, assets_dir="a")
    assert "x = 1\n```\n````\n" in out
    toks = viewer_tokens(out)
    assert [t.type for t in toks if t.type == "image"] == ["image"]
    assert prepare_text("```\nok\n```\n") == "```\nok\n```\n"
    assert prepare_text("~~~\nopen") == "~~~\nopen\n~~~\n"


def test_escape_inline():
    assert escape_inline("a [b]\n(c) *d* _e_ <f> & `g` | ~h~ !i #j \\") == (
        "a \\[b\\] (c) \\*d\\* \\_e\\_ \\<f\\> \\& \\`g\\` \\| \\~h\\~ \\!i \\#j \\\\"
    )


@settings(max_examples=100, deadline=None)
@given(desc=st.text(max_size=60))
def test_property_alt_text_round_trips_through_a_viewer(desc):
    png = ImageData.from_bytes(make_png())
    out, _ = render_markdown(
        Document(blocks=[ImageBlock(image=png, tool="code", description=desc)]), assets_dir="a"
    )
    images = [t for t in viewer_tokens(out) if t.type == "image"]
    assert len(images) == 1
    assert images[0].attrs["src"] == "a/image-1.png"
    # Alt text is the description with whitespace collapsed (a Markdown alt is one line).
    expected = " ".join(desc.split())
    assert alt_text(images[0]) == expected.replace("\x00", "\ufffd")


def test_markdown_prompt_and_title():
    out, _ = render_markdown(
        Document(blocks=[TextBlock("Body")]),
        assets_dir="a",
        prompt="Draw *foxes*\nplease",
        title="Fox [report]",
    )
    assert out.startswith("# Fox \\[report\\]\n\n> **Prompt:** Draw \\*foxes\\*  \n> please\n\nBody")


# -- JSON --------------------------------------------------------------------------------------------------


def test_json_contract_keys():
    d = json.loads(render_json(sample_document()))
    assert set(d) == {"blocks", "stats", "violations"}
    assert [b["type"] for b in d["blocks"]] == ["text", "image", "text", "image", "failure", "text"]
    img = d["blocks"][1]
    assert {"type", "tool", "mime", "width", "height", "description", "data_base64", "provenance"} <= set(img)
    assert (img["tool"], img["mime"], img["width"], img["height"]) == ("code", "image/png", 20, 10)
    assert base64.b64decode(img["data_base64"]) == sample_document().images[0].data
    fail = d["blocks"][4]
    assert {"type": "failure", "tool": "diffusion", "reason": "HTTP 503: <busy>"}.items() <= fail.items()
    assert d["stats"] == {"code": {"total": 1, "success": 1}, "search": {"total": 1, "success": 1},
                          "diffusion": {"total": 1, "success": 0}}  # fmt: skip
    assert d["violations"] == [
        {"kind": "filler_intro", "detail": "and a photo:", "tag_index": 1, "offset": 70}
    ]


def test_json_round_trip_is_lossless(tmp_path):
    doc = sample_document()
    path = write_document(doc, tmp_path / "doc.json")
    back = Document.from_dict(json.loads(path.read_text(encoding="utf-8")))
    assert back == doc
    assert render_json(back) == render_json(doc)
    hostile = hostile_document()
    assert Document.from_dict(json.loads(render_json(hostile))) == hostile


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(), max_size=3),
    desc=st.text(),
    prov=st.dictionaries(
        st.text(max_size=8), st.one_of(st.text(), st.integers(), st.booleans(), st.none()), max_size=4
    ),
    reason=st.text(),
)
def test_property_json_round_trip(texts, desc, prov, reason):
    png = ImageData.from_bytes(make_png(3, 2))
    blocks = [TextBlock(t) for t in texts] + [
        ImageBlock(image=png, tool="search", description=desc, provenance=prov, elapsed_s=0.125),
        FailureBlock(tool="code", reason=reason, kind="code_error"),
    ]
    doc = Document(blocks=blocks)
    assert Document.from_dict(json.loads(render_json(doc))) == doc


def test_json_with_lone_surrogates_is_still_written(tmp_path):
    doc = Document(blocks=[TextBlock("bad \ud800 surrogate")])
    path = write_document(doc, tmp_path / "s.json")
    raw = path.read_bytes()
    assert b"\\ud800" in raw
    assert Document.from_dict(json.loads(raw)) == doc


# -- writer ------------------------------------------------------------------------------------------------


def test_write_markdown_creates_assets_and_removes_stale_ones(tmp_path):
    doc = sample_document()
    out = write_document(doc, tmp_path / "sub" / "out.md", title="Foxes")
    assets = tmp_path / "sub" / "out_assets"
    assert out == tmp_path / "sub" / "out.md"
    assert sorted(p.name for p in assets.iterdir()) == ["image-1.png", "image-2.jpg"]
    assert (assets / "image-2.jpg").read_bytes() == doc.images[1].data
    assert "](out_assets/image-1.png)" in out.read_text(encoding="utf-8")
    (assets / "notes.txt").write_text("mine")
    # Re-writing a document with one image removes our stale image but nothing else.
    write_document(Document(blocks=[doc.blocks[1]]), out)
    assert sorted(p.name for p in assets.iterdir()) == ["image-1.png", "notes.txt"]


def test_write_html_and_htm(tmp_path):
    doc = sample_document()
    for name in ("a.html", "b.HTM"):
        p = write_document(doc, tmp_path / name, prompt="foxes?", title="T")
        text = p.read_text(encoding="utf-8")
        assert text.startswith("<!DOCTYPE html>") and "<title>T</title>" in text and "foxes?" in text
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", ["out.txt", "out", "out.pdf", "out.md.bak"])
def test_unknown_extension_is_an_input_error(tmp_path, name):
    with pytest.raises(InputError, match=r"\.html, \.htm, \.md, \.json"):
        write_document(sample_document(), tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_unwritable_path_is_an_input_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write"):
        write_document(sample_document(), blocker / "out.html")


def test_write_markdown_with_awkward_file_name(tmp_path):
    doc = Document(blocks=[ImageBlock(image=ImageData.from_bytes(make_png()), tool="code", description="c")])
    out = write_document(doc, tmp_path / "my doc (v2).md")
    assert (tmp_path / "my doc (v2)_assets" / "image-1.png").is_file()
    images = [t for t in viewer_tokens(out.read_text(encoding="utf-8")) if t.type == "image"]
    assert [t.attrs["src"] for t in images] == ["my%20doc%20%28v2%29_assets/image-1.png"]
