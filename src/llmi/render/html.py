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
from collections.abc import Callable, Iterable
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


def esc(value: Any) -> str:
    """``value`` as HTML text or attribute value."""
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


def credit_html(block: ImageBlock) -> str:
    out = []
    for part in credit_parts(block.tool, block.provenance, block.params):
        if isinstance(part, Link):
            out.append(f'<a href="{esc(part.url)}" rel="{LINK_REL}">{esc(part.text)}</a>')
        else:
            out.append(esc(part))
    return "".join(out)


def _size_attr(name: str, value: Any) -> str:
    return (
        f' {name}="{value}"' if isinstance(value, int) and not isinstance(value, bool) and value > 0 else ""
    )


def _figure(block: ImageBlock, number: int | str, index: int | None = None) -> str:
    """One embedded image with its caption. ``index`` (the number an ``edit`` uses for it) is shown when given."""
    src = _image_src(block)
    if src is None:
        return _failure_note(
            tool=block.tool,
            kind="unsupported_image",
            reason=f"image of type {block.mime!r} cannot be shown in a web page",
            description=block.description,
        )
    uri, width, height = src
    return figure_html(block, uri, width, height, anchor=f"llmi-image-{number}", index=index)


def figure_html(
    block: ImageBlock,
    src: str,
    width: Any,
    height: Any,
    *,
    anchor: str | None = None,
    index: int | None = None,
    linked: bool = False,
) -> str:
    """One image with its caption (index, description, credit and licence). ``src`` is a URL or ``data:``
    URI we made; ``anchor`` the figure's id; ``linked``: the browser fetches ``src``, so it may decode
    it off the main thread."""
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
        caption.append(f'<span class="llmi-description">{esc(desc)}</span>')
    caption.append(f'<span class="llmi-credit">{credit_html(block)}</span>')
    ident = f' id="{esc(anchor)}"' if anchor is not None else ""
    size = _size_attr("width", width) + _size_attr("height", height)
    decoding = ' decoding="async"' if linked else ""
    return (
        f'<figure class="llmi-figure llmi-tool-{esc(css_ident(block.tool))}"{ident} data-tool="{esc(block.tool)}">\n'
        f'<img src="{esc(src)}" alt="{esc(desc)}"{size}{decoding}>\n'
        f"<figcaption>{' '.join(caption)}</figcaption>\n"
        "</figure>"
    )


def css_ident(value: str) -> str:
    """A tool name made safe for a class name (``llmi-tool-<name>``)."""
    return (
        "".join(c for c in str(value).lower() if c.isascii() and (c.isalnum() or c in "-_"))[:40] or "other"
    )


def _failure_note(*, tool: str, kind: str, reason: str, description: str = "") -> str:
    desc = " ".join(str(description).split())
    wanted = f'\n<p class="llmi-failure-wanted">Wanted: {esc(desc)}</p>' if desc else ""
    return (
        f'<div class="llmi-failure" role="note" data-tool="{esc(tool)}" data-kind="{esc(kind)}">\n'
        f'<p class="llmi-failure-title"><span aria-hidden="true">⚠</span> Image failed '
        f'<span class="llmi-failure-meta">({esc(tool)} · {esc(kind)})</span></p>\n'
        f'<p class="llmi-failure-reason">{esc(reason)}</p>{wanted}\n'
        "</div>"
    )


def failure_html(block: FailureBlock) -> str:
    """The visible note that stands where a tool failed."""
    return _failure_note(tool=block.tool, kind=block.kind, reason=block.reason, description=block.description)


def text_html(markdown: str) -> str:
    """One text block: the model's Markdown, sanitised (``""`` for blank text)."""
    return f'<div class="llmi-text">\n{markdown_to_safe_html(markdown)}</div>' if markdown.strip() else ""


def linked_slot_html(block: ImageBlock | FailureBlock, url: str, *, index: int | None = None) -> str:
    """One slot whose image the page loads from ``url`` (the server's page) instead of a ``data:`` URI."""
    if isinstance(block, ImageBlock):
        return figure_html(block, url, block.width, block.height, index=index, linked=True)
    return failure_html(block)


def _stats_html(doc: Document, *, format_notes: bool = True) -> str:
    stats = doc.stats
    violations = doc.violations if format_notes else []
    if not stats and not violations:
        return ""
    lines = []
    if stats:
        total = sum(s["total"] for s in stats.values())
        ok = sum(s["success"] for s in stats.values())
        per_tool = ", ".join(f"{esc(t)} {s['success']}/{s['total']}" for t, s in sorted(stats.items()))
        lines.append(f"<p>Images: {ok} of {total} produced ({per_tool}).</p>")
    if violations:
        items = "".join(f"<li><code>{esc(v.kind)}</code>: {esc(v.detail)}</li>" for v in violations)
        lines.append(
            f"<details><summary>Format notes ({len(violations)})</summary><ul>{items}</ul></details>"
        )
    return '<footer class="llmi-stats">\n' + "\n".join(lines) + "\n</footer>"


def _blocks_html(blocks: Iterable[Any], n_inputs: int = 0, slot_url: Callable[[int], str] | None = None) -> list[str]:
    blocks = list(blocks)
    # Image numbers matter to a reader only when something refers to them (edits, the user's images).
    numbered = n_inputs > 0 or any(getattr(b, "tool", None) == "edit" for b in blocks)
    out = []
    number = 0
    slot = 0
    for block in blocks:
        if isinstance(block, TextBlock):
            if block.text.strip():
                out.append(text_html(block.text))
            continue
        slot += 1
        index = n_inputs + slot - 1 if numbered else None
        if slot_url is not None:
            out.append(linked_slot_html(block, slot_url(slot - 1), index=index))
        elif isinstance(block, ImageBlock):
            number += 1
            out.append(_figure(block, number, index))
        elif isinstance(block, FailureBlock):
            out.append(failure_html(block))
    return out


def _inputs_html(doc: Document, input_url: Callable[[int], str] | None = None) -> list[str]:
    """The user's own images, numbered as edits address them ("from image 0")."""
    if not doc.input_images:
        return []
    blocks = [ImageBlock(image=img, tool="input") for img in doc.input_images]
    if input_url is not None:
        figures = [linked_slot_html(b, input_url(i), index=i) for i, b in enumerate(blocks)]
    else:
        figures = [_figure(b, f"input-{i}", i) for i, b in enumerate(blocks)]
    return [
        '<section class="llmi-inputs" aria-label="Your images">\n'
        '<p class="llmi-prompt-label">Your images</p>\n' + "\n".join(figures) + "\n</section>"
    ]


def render_html_fragment(
    doc: Document,
    *,
    prompt: str | None = None,
    slot_url: Callable[[int], str] | None = None,
    input_url: Callable[[int], str] | None = None,
    format_notes: bool = True,
) -> str:
    """The document as an ``<article>`` for embedding in a page (no ``<html>``, styles or CSP).

    The host page must supply the stylesheet (:func:`stylesheet`) and should send the same
    Content-Security-Policy (:data:`CONTENT_SECURITY_POLICY`) as an HTTP header. Images are ``data:``
    URIs unless ``slot_url`` / ``input_url`` give each slot's and user image's URL (the server's page,
    which fetches each image once, when it is ready). ``format_notes``: list the format violations in
    the footer.
    """
    parts = ['<article class="llmi-document">']
    if prompt is not None and str(prompt).strip():
        parts.append(
            '<section class="llmi-prompt" aria-label="Prompt">\n'
            '<p class="llmi-prompt-label">Prompt</p>\n'
            f'<p class="llmi-prompt-text">{esc(prompt)}</p>\n'
            "</section>"
        )
    parts.extend(_inputs_html(doc, input_url))
    parts.extend(_blocks_html(doc.blocks, len(doc.input_images), slot_url))
    stats = _stats_html(doc, format_notes=format_notes)
    if stats:
        parts.append(stats)
    parts.append("</article>")
    return "\n".join(parts) + "\n"


def render_html(doc: Document, *, prompt: str | None = None, title: str | None = None) -> str:
    """A complete, self-contained HTML page (images as data URIs, inline CSS, a no-script CSP)."""
    given = " ".join(str(title).split()) if title is not None else ""
    title_text = given or DEFAULT_TITLE
    # The model's text usually opens with its own heading; a visible title only when one was asked for.
    heading = f'<h1 class="llmi-title">{esc(given)}</h1>\n' if given else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        "<head>\n"
        '<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CONTENT_SECURITY_POLICY)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="llmi">\n'
        f"<title>{esc(title_text)}</title>\n"
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
