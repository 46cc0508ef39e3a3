"""A document as JSON: the lossless, machine-readable contract other tools read.

The shape and key names are :meth:`llmi.document.Document.to_dict`'s; images are inline base64 so one
file carries everything, and :meth:`~llmi.document.Document.from_dict` reads it back unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from ..document import Document


def _fallback(value: Any) -> Any:
    # Provenance and params are meant to be JSON values; anything else (a Path, an enum, a set) is
    # written in its text form rather than failing the whole document.
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)


def render_json(doc: Document, *, ensure_ascii: bool = False, indent: int | None = 2) -> str:
    """``doc.to_dict()`` as JSON text (UTF-8 friendly unless ``ensure_ascii``)."""
    return json.dumps(doc.to_dict(), ensure_ascii=ensure_ascii, indent=indent, default=_fallback) + "\n"
