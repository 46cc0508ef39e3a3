"""A document as one self-contained, script-free HTML page.

Everything that reaches the page — the user's prompt, the model's text, image descriptions, provenance
from web pages, failure reasons — is untrusted. Three layers keep it inert:

1. The model's text is Markdown rendered by markdown-it with raw HTML *off* (``<script>`` becomes text)
   and Markdown images off (no remote fetches; ``![a](u)`` shows as ``!`` plus a link).
2. That HTML is then sanitised by nh3 (ammonia) with a small allow-list of tags and attributes; links may
   only be http, https or mailto, relative URLs are dropped, and every link gets
   ``rel="noopener noreferrer nofollow"``.
3. The page carries a Content-Security-Policy that allows no script at all and loads nothing but
   ``data:`` images and inline styles, so even a sanitiser miss can neither run code nor fetch anything.

Our own markup (figures, captions, failure notes, the prompt box) is built here, and every value put
into it goes through :func:`html.escape`. Images are embedded as ``data:`` URIs, only for raster types in
an allow-list; other decodable types are converted to PNG, anything else becomes a visible note.

Each text block is rendered as Markdown on its own. A tag can interrupt a paragraph or list, so a list
may be split around a figure; in exchange nothing in one block (an unclosed code fence, a dangling
emphasis) can swallow the figures or text that follow it.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
from collections.abc import Iterable
from importlib import resources
from typing import Any

from ..document import Document, FailureBlock, ImageBlock, TextBlock
from .credit import Link, credit_parts

log = logging.getLogger(__name__)

DEFAULT_TITLE = "llmi document"

#: The policy in the page's ``<meta http-equiv>``: no script, no network, only data: images and inline CSS.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)

#: Image types a browser decodes without any script-capable format (no SVG) that we embed as they are.
EMBED_MIMES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

#: What the sanitiser lets through from rendered Markdown. No img, no forms, no media, no frames.
_ALLOWED_TAGS = frozenset(
    {
        "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "del", "s",
        "code", "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
    }
)  # fmt: skip
_ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}
_URL_SCHEMES = frozenset({"http", "https", "mailto"})
LINK_REL = "noopener noreferrer nofollow"


@functools.lru_cache(maxsize=1)
def _markdown():
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    md.disable("image")
    return md


@functools.lru_cache(maxsize=1)
def _cleaner():
    import nh3

    return nh3.Cleaner(
        tags=set(_ALLOWED_TAGS),
        clean_content_tags={"script", "style"},
        attributes={k: set(v) for k, v in _ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(_URL_SCHEMES),
        url_relative="deny",
        link_rel=LINK_REL,
        filter_style_properties={"text-align"},
        strip_comments=True,
    )


@functools.lru_cache(maxsize=1)
def stylesheet() -> str:
    """The page's CSS (package data ``llmi/render/style.css``)."""
    return resources.files(__package__).joinpath("style.css").read_text(encoding="utf-8")


def markdown_to_safe_html(text: str) -> str:
    """Untrusted Markdown to sanitised HTML (raw HTML shown as text, then allow-list cleaned)."""
    return _cleaner().clean(_markdown().render(text))


def _esc(value: Any) -> str:
    # NUL is not a character an HTML document may contain; browsers differ in what they make of it.
    return html.escape(str(value), quote=True).replace("\0", "\ufffd")


def _image_src(block: ImageBlock) -> tuple[str, int, int] | None:
    """The ``data:`` URI and size to show, converting non-embeddable types to PNG; None if impossible."""
    mime = (block.mime or "").lower()
    if mime in EMBED_MIMES:
        data, width, height = block.data, block.width, block.height
    else:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(block.data)) as im:
                if im.format in (None, "SVG"):
                    return None
                buf = io.BytesIO()
                im.convert("RGBA").save(buf, format="PNG")
                data, width, height, mime = buf.getvalue(), im.width, im.height, "image/png"
        except Exception as exc:  # noqa: BLE001 - any decode problem means "cannot show", never a crash
            log.debug("image of type %r not shown: %s", block.mime, exc)
            return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", width, height


def _credit_html(block: ImageBlock) -> str:
    out = []
    for part in credit_parts(block.tool, block.provenance, block.params):
        if isinstance(part, Link):
            out.append(f'<a href="{_esc(part.url)}" rel="{LINK_REL}">{_esc(part.text)}</a>')
        else:
            out.append(_esc(part))
    return "".join(out)


def _size_attr(name: str, value: Any) -> str:
    return (
        f' {name}="{value}"' if isinstance(value, int) and not isinstance(value, bool) and value > 0 else ""
    )


def _figure(block: ImageBlock, number: int | str, index: int | None = None) -> str:
    """One image with its caption. ``index`` (the number an ``edit`` uses for it) is shown when given."""
    src = _image_src(block)
    tool = _esc(block.tool)
    if src is None:
        return _failure_note(
            tool=block.tool,
            kind="unsupported_image",
            reason=f"image of type {block.mime!r} cannot be shown in a web page",
            description=block.description,
        )
    uri, width, height = src
    dpi = block.provenance.get("dpi")
    if isinstance(dpi, (int, float)) and not isinstance(dpi, bool) and 96 < dpi <= 1200 and width and height:
        # Charts are rendered at a print dpi: show them at their physical size (CSS px are 1/96 in),
        # so a chart's lettering reads the same size whatever its pixel count.
        width, height = round(width * 96 / dpi), round(height * 96 / dpi)
    desc = " ".join(str(block.description).split())
    caption = []
    if index is not None:
        caption.append(f'<span class="llmi-index">Image {index}</span>')
    if desc:
        caption.append(f'<span class="llmi-description">{_esc(desc)}</span>')
    caption.append(f'<span class="llmi-credit">{_credit_html(block)}</span>')
    return (
        f'<figure class="llmi-figure llmi-tool-{_esc(_css_ident(block.tool))}" id="llmi-image-{number}" '
        f'data-tool="{tool}">\n'
        f'<img src="{uri}" alt="{_esc(desc)}"{_size_attr("width", width)}{_size_attr("height", height)}>\n'
        f"<figcaption>{' '.join(caption)}</figcaption>\n"
        "</figure>"
    )


def _css_ident(value: str) -> str:
    return (
        "".join(c for c in str(value).lower() if c.isascii() and (c.isalnum() or c in "-_"))[:40] or "other"
    )


def _failure_note(*, tool: str, kind: str, reason: str, description: str = "") -> str:
    desc = " ".join(str(description).split())
    wanted = f'\n<p class="llmi-failure-wanted">Wanted: {_esc(desc)}</p>' if desc else ""
    return (
        f'<div class="llmi-failure" role="note" data-tool="{_esc(tool)}" data-kind="{_esc(kind)}">\n'
        f'<p class="llmi-failure-title"><span aria-hidden="true">⚠</span> Image failed '
        f'<span class="llmi-failure-meta">({_esc(tool)} · {_esc(kind)})</span></p>\n'
        f'<p class="llmi-failure-reason">{_esc(reason)}</p>{wanted}\n'
        "</div>"
    )


def _stats_html(doc: Document) -> str:
    stats = doc.stats
    if not stats and not doc.violations:
        return ""
    lines = []
    if stats:
        total = sum(s["total"] for s in stats.values())
        ok = sum(s["success"] for s in stats.values())
        per_tool = ", ".join(f"{_esc(t)} {s['success']}/{s['total']}" for t, s in sorted(stats.items()))
        lines.append(f"<p>Images: {ok} of {total} produced ({per_tool}).</p>")
    if doc.violations:
        items = "".join(f"<li><code>{_esc(v.kind)}</code>: {_esc(v.detail)}</li>" for v in doc.violations)
        lines.append(
            f"<details><summary>Format notes ({len(doc.violations)})</summary><ul>{items}</ul></details>"
        )
    return '<footer class="llmi-stats">\n' + "\n".join(lines) + "\n</footer>"


def _blocks_html(blocks: Iterable[Any], n_inputs: int = 0) -> list[str]:
    blocks = list(blocks)
    # Image numbers matter to a reader only when something refers to them (edits, the user's images).
    numbered = n_inputs > 0 or any(getattr(b, "tool", None) == "edit" for b in blocks)
    out = []
    number = 0
    slot = 0
    for block in blocks:
        if isinstance(block, TextBlock):
            if block.text.strip():
                out.append(f'<div class="llmi-text">\n{markdown_to_safe_html(block.text)}</div>')
            continue
        slot += 1
        if isinstance(block, ImageBlock):
            number += 1
            out.append(_figure(block, number, n_inputs + slot - 1 if numbered else None))
        elif isinstance(block, FailureBlock):
            out.append(
                _failure_note(
                    tool=block.tool, kind=block.kind, reason=block.reason, description=block.description
                )
            )
    return out


def _inputs_html(doc: Document) -> list[str]:
    """The user's own images, numbered as edits address them ("from image 0")."""
    if not doc.input_images:
        return []
    figures = [
        _figure(ImageBlock(image=img, tool="input"), f"input-{i}", i)
        for i, img in enumerate(doc.input_images)
    ]
    return [
        '<section class="llmi-inputs" aria-label="Your images">\n'
        '<p class="llmi-prompt-label">Your images</p>\n' + "\n".join(figures) + "\n</section>"
    ]


def render_html_fragment(doc: Document, *, prompt: str | None = None) -> str:
    """The document as an ``<article>`` for embedding in a page (no ``<html>``, styles or CSP).

    The host page must supply the stylesheet (:func:`stylesheet`) and should send the same
    Content-Security-Policy (:data:`CONTENT_SECURITY_POLICY`) as an HTTP header.
    """
    parts = ['<article class="llmi-document">']
    if prompt is not None and str(prompt).strip():
        parts.append(
            '<section class="llmi-prompt" aria-label="Prompt">\n'
            '<p class="llmi-prompt-label">Prompt</p>\n'
            f'<p class="llmi-prompt-text">{_esc(prompt)}</p>\n'
            "</section>"
        )
    parts.extend(_inputs_html(doc))
    parts.extend(_blocks_html(doc.blocks, len(doc.input_images)))
    stats = _stats_html(doc)
    if stats:
        parts.append(stats)
    parts.append("</article>")
    return "\n".join(parts) + "\n"


def render_html(doc: Document, *, prompt: str | None = None, title: str | None = None) -> str:
    """A complete, self-contained HTML page (images as data URIs, inline CSS, a no-script CSP)."""
    given = " ".join(str(title).split()) if title is not None else ""
    title_text = given or DEFAULT_TITLE
    # The model's text usually opens with its own heading; a visible title only when one was asked for.
    heading = f'<h1 class="llmi-title">{_esc(given)}</h1>\n' if given else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        "<head>\n"
        '<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(CONTENT_SECURITY_POLICY)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="llmi">\n'
        f"<title>{_esc(title_text)}</title>\n"
        f"<style>\n{stylesheet()}</style>\n"
        "</head>\n"
        "<body>\n"
        '<main class="llmi-page">\n'
        f"{heading}"
        f"{render_html_fragment(doc, prompt=prompt)}"
        "</main>\n"
        "</body>\n"
        "</html>\n"
    )
