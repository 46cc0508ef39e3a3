"""Writing documents to files: HTML (one self-contained page), Markdown (+ an image folder), JSON.

The renderers in :mod:`.html`, :mod:`.markdown` and :mod:`.json` are pure functions from a
:class:`~llmi.document.Document` to text; :func:`write_document` is the only place that touches the disk.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..document import Document
from ..errors import InputError
from ..files import atomic_write
from .html import render_html, render_html_fragment
from .json import render_json
from .markdown import render_markdown

__all__ = [
    "FORMATS",
    "render_html",
    "render_html_fragment",
    "render_json",
    "render_markdown",
    "write_document",
]

#: Output format for each file extension :func:`write_document` accepts.
FORMATS = {".html": "html", ".htm": "html", ".md": "markdown", ".json": "json"}

_OUR_ASSET = re.compile(r"^image-\d+\.[a-z]+$")


def write_document(
    doc: Document, path: str | os.PathLike[str], *, prompt: str | None = None, title: str | None = None
) -> Path:
    """Write ``doc`` to ``path`` in the format its extension names; returns the path written.

    ``.html``/``.htm``: one self-contained page. ``.md``: the Markdown file plus ``<stem>_assets/`` next
    to it with ``image-<n>.<ext>`` (earlier ``image-*`` files there that this document no longer has are
    removed). ``.json``: the JSON contract with inline base64 images (``prompt`` and ``title`` are not
    part of it and are ignored). Parent folders are created. Raises :class:`InputError` for any other
    extension or when the file cannot be written.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot tell the output format of {str(path)!r} from its extension "
            f"{path.suffix or '(none)'!r}: use one of {', '.join(FORMATS)}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "html":
            atomic_write(path, render_html(doc, prompt=prompt, title=title))
        elif fmt == "json":
            text = render_json(doc)
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: \u escapes keep the JSON lossless and valid
                data = render_json(doc, ensure_ascii=True).encode("ascii")
            atomic_write(path, data)
        else:
            assets_name = f"{path.stem}_assets"
            text, files = render_markdown(doc, assets_dir=assets_name, prompt=prompt, title=title)
            assets = path.parent / assets_name
            if files:
                assets.mkdir(exist_ok=True)
            if assets.is_dir():
                keep = {Path(rel).name for rel in files}
                for old in assets.iterdir():
                    if _OUR_ASSET.match(old.name) and old.name not in keep and old.is_file():
                        old.unlink()
            for rel, data in files.items():
                atomic_write(path.parent / rel, data)
            atomic_write(path, text)
    except OSError as exc:
        raise InputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    return path
