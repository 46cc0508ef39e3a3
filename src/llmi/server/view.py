"""What the page and the chat clients are shown: sanitised HTML parts, Markdown image links, failure images.

Everything here is pure. The HTML follows the HTML renderer's rules (:mod:`llmi.render.html`): the
model's Markdown goes through :func:`~llmi.render.html.markdown_to_safe_html` (raw HTML off, then an
allow-list sanitiser), and every value we put into our own markup is escaped. The one difference is that
images are links to the server (signed URLs) rather than ``data:`` URIs, so a page fetches each image
once, when it is ready.
"""

from __future__ import annotations

import functools
import html
import io
import textwrap
from typing import Any, Callable

from ..document import Document, FailureBlock, ImageBlock, TextBlock
from ..render.credit import Link, credit_parts
from ..render.html import LINK_REL, markdown_to_safe_html
from ..render.markdown import escape_inline

#: The page's Content-Security-Policy: scripts and styles from this origin only, no inline script,
#: images from this origin (and ``data:``/``blob:`` previews of uploads), requests to this origin only.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True).replace("\0", "\ufffd")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def credit_html(block: ImageBlock) -> str:
    out = []
    for part in credit_parts(block.tool, block.provenance, block.params):
        if isinstance(part, Link):
            out.append(f'<a href="{esc(part.url)}" rel="{LINK_REL}">{esc(part.text)}</a>')
        else:
            out.append(esc(part))
    return "".join(out)


def _css_ident(value: str) -> str:
    return "".join(c for c in str(value).lower() if c.isascii() and (c.isalnum() or c in "-_"))[:40] or "other"


def figure_html(block: ImageBlock, src: str, *, index: int | None = None) -> str:
    """One image with its caption (description, credit and licence); ``src`` is a URL we made."""
    desc = _one_line(block.description)
    caption = []
    if index is not None:
        caption.append(f'<span class="llmi-index">Image {index}</span>')
    if desc:
        caption.append(f'<span class="llmi-description">{esc(desc)}</span>')
    caption.append(f'<span class="llmi-credit">{credit_html(block)}</span>')
    size = ""
    w, h = block.width, block.height
    dpi = block.provenance.get("dpi")
    if isinstance(dpi, (int, float)) and not isinstance(dpi, bool) and 96 < dpi <= 1200 and w and h:
        w, h = round(w * 96 / dpi), round(h * 96 / dpi)
    if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
        size = f' width="{w}" height="{h}"'
    return (
        f'<figure class="llmi-figure llmi-tool-{esc(_css_ident(block.tool))}" data-tool="{esc(block.tool)}">'
        f'<img src="{esc(src)}" alt="{esc(desc)}"{size} decoding="async">'
        f"<figcaption>{' '.join(caption)}</figcaption></figure>"
    )


def failure_html(block: FailureBlock) -> str:
    desc = _one_line(block.description)
    wanted = f'<p class="llmi-failure-wanted">Wanted: {esc(desc)}</p>' if desc else ""
    return (
        f'<div class="llmi-failure" role="note" data-tool="{esc(block.tool)}" data-kind="{esc(block.kind)}">'
        f'<p class="llmi-failure-title"><span aria-hidden="true">⚠</span> Image failed '
        f'<span class="llmi-failure-meta">({esc(block.tool)} · {esc(block.kind)})</span></p>'
        f'<p class="llmi-failure-reason">{esc(block.reason)}</p>{wanted}</div>'
    )


def slot_html(block: ImageBlock | FailureBlock, src: str, *, index: int | None = None) -> str:
    return figure_html(block, src, index=index) if isinstance(block, ImageBlock) else failure_html(block)


def text_html(markdown: str) -> str:
    """The model's Markdown as sanitised HTML (as in the HTML renderer)."""
    return f'<div class="llmi-text">{markdown_to_safe_html(markdown)}</div>' if markdown.strip() else ""


def document_fragment(
    doc: Document,
    *,
    slot_url: Callable[[int], str],
    input_url: Callable[[int], str],
    prompt: str | None = None,
) -> str:
    """The document as an ``<article>`` for the page: the renderer's structure with linked images."""
    n_inputs = len(doc.input_images)
    numbered = n_inputs > 0 or any(getattr(b, "tool", None) == "edit" for b in doc.blocks)
    parts = ['<article class="llmi-document">']
    if prompt is not None and prompt.strip():
        parts.append(
            '<section class="llmi-prompt" aria-label="Prompt"><p class="llmi-prompt-label">Prompt</p>'
            f'<p class="llmi-prompt-text">{esc(prompt)}</p></section>'
        )
    if doc.input_images:
        figures = "".join(
            figure_html(ImageBlock(image=img, tool="input"), input_url(i), index=i)
            for i, img in enumerate(doc.input_images)
        )
        parts.append(
            '<section class="llmi-inputs" aria-label="Your images"><p class="llmi-prompt-label">Your images</p>'
            f"{figures}</section>"
        )
    slot = 0
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            parts.append(text_html(block.text))
            continue
        parts.append(slot_html(block, slot_url(slot), index=n_inputs + slot if numbered else None))
        slot += 1
    stats = doc.stats
    if stats:
        total = sum(s["total"] for s in stats.values())
        ok = sum(s["success"] for s in stats.values())
        per_tool = ", ".join(f"{esc(t)} {s['success']}/{s['total']}" for t, s in sorted(stats.items()))
        parts.append(f'<footer class="llmi-stats"><p>Images: {ok} of {total} produced ({per_tool}).</p></footer>')
    parts.append("</article>")
    return "\n".join(p for p in parts if p) + "\n"


# ------------------------------------------------------------------------------------------------
# Markdown for chat clients
# ------------------------------------------------------------------------------------------------


def image_alt(description: str, *, failure: FailureBlock | None = None) -> str:
    """Alt text of an image link: the description, or why the image failed."""
    if failure is not None:
        text = f"Image failed ({failure.tool}): {failure.reason}"
    else:
        text = description or "image"
    return escape_inline(text[:500])


def image_link(alt: str, url: str) -> str:
    """``![alt](<url>)`` for a URL we made (no spaces or parentheses in it)."""
    return f"![{alt}]({url})"


# ------------------------------------------------------------------------------------------------
# Images that state a reason
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def notice_png(title: str, reason: str, *, width: int = 480) -> bytes:
    """A small PNG that says ``title`` and ``reason`` (a failed tool, an image not ready yet)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=15)
        small = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = small = ImageFont.load_default()
    lines = textwrap.wrap(_one_line(reason), 62)[:8] or [""]
    line_h = 18
    height = 20 + 24 + line_h * len(lines) + 12
    img = Image.new("RGB", (width, height), (253, 242, 242))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width - 1, height - 1], outline=(200, 80, 80), width=2)
    draw.text((14, 14), _one_line(title)[:70], fill=(140, 20, 20), font=font)
    for i, line in enumerate(lines):
        draw.text((14, 42 + i * line_h), line, fill=(60, 30, 30), font=small)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def failure_png(block: FailureBlock) -> bytes:
    return notice_png(f"Image failed ({block.tool} · {block.kind})", block.reason)
