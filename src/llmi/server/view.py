"""What the page and the chat clients are shown besides the document's HTML: the page's CSP, Markdown
image links, and images that state a reason (a failed tool, an image not ready yet).

Everything here is pure. The page's HTML is the HTML renderer's (:mod:`llmi.render.html`:
``render_html_fragment`` with ``slot_url``/``input_url``, ``linked_slot_html``, ``text_html``), with
images as links to the server (signed URLs) rather than ``data:`` URIs, so a page fetches each image once,
when it is ready.
"""

from __future__ import annotations

import functools
import io
import textwrap
from typing import Any

from ..document import FailureBlock
from ..render.markdown import escape_inline

#: The page's Content-Security-Policy: scripts and styles from this origin only, no inline script,
#: images from this origin (and ``data:``/``blob:`` previews of uploads), requests to this origin only.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


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
