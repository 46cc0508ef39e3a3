"""The credit line under an image, built from its provenance — shared by the HTML and Markdown renderers.

Provenance is free-form and comes partly from the web (a photo's title, author and licence are whatever
the hosting site says), so it is untrusted. This module only decides *what* to say; each renderer escapes
it for its own format. A credit is a list of parts: plain text, or a link whose URL has already been
checked to be http(s) (anything else is shown as text, never as a link).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ..tools.spec import TOOLS

#: Longest piece of provenance text shown; a credit is a line, not a place for a page of text.
_MAX_PART = 300


@dataclass(frozen=True)
class Link:
    text: str
    url: str


Part = str | Link


def safe_http_url(value: Any) -> str | None:
    """``value`` as an absolute http(s) URL with a host, or None.

    Control characters disqualify it; spaces, quotes, angle brackets and non-ASCII characters are
    percent-encoded (so a title-like URL such as ``.../File:Fox (1).jpg`` still links).
    """
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url or any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in url):
        return None
    url = quote(url, safe=":/?#[]@!$&'()*+,;=%~-._")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return url


def _text(prov: Mapping[str, Any], key: str) -> str:
    """A provenance value as one line of text ('' when absent or not a scalar)."""
    value = prov.get(key)
    if value is None or isinstance(value, (dict, list, tuple, set, bool)):
        return ""
    text = " ".join(str(value).split())
    if len(text) > _MAX_PART:
        text = text[: _MAX_PART - 1] + "…"
    return text


def _source_part(prov: Mapping[str, Any]) -> Part | None:
    """The page (preferred) or file URL: a link labelled with its host, or plain text if not http(s)."""
    for key in ("page_url", "source_url"):
        raw = prov.get(key)
        if not raw:
            continue
        url = safe_http_url(raw)
        if url is not None:
            return Link(text=urlsplit(url).hostname or "source", url=url)
        text = _text(prov, key)
        if text:
            return f"source: {text}"
    return None


def _engine(prov: Mapping[str, Any], fallback: str) -> str:
    return _text(prov, "model") or _text(prov, "backend") or fallback


def search_credit(prov: Mapping[str, Any], params: Mapping[str, Any]) -> list[Part]:
    """``Photo: <title> by <author>, <licence> — <host link>`` (or the library path)."""
    title, author = _text(prov, "title"), _text(prov, "author")
    who = title or ""
    if author:
        who = f"{who} by {author}" if who else author
    if not who:
        query = _text(prov, "query")
        who = f"result for “{query}”" if query else (_text(prov, "backend") or "web search")
    head = f"Photo: {who}"
    license_ = _text(prov, "license")
    if license_:
        head += f", {license_}"
    parts: list[Part] = [head]
    source = _source_part(prov)
    if source is not None:
        parts.extend([" — ", source])
    elif _text(prov, "path"):  # the local image library
        parts.append(f" — image library: {_text(prov, 'path')}")
    return parts


def diffusion_credit(prov: Mapping[str, Any], params: Mapping[str, Any]) -> list[Part]:
    return [f"Generated with {_engine(prov, 'an image model')}"]


def code_credit(prov: Mapping[str, Any], params: Mapping[str, Any]) -> list[Part]:
    return ["Chart rendered from code"]


def edit_credit(prov: Mapping[str, Any], params: Mapping[str, Any]) -> list[Part]:
    text = f"Edited with {_engine(prov, 'an image model')}"
    index = params.get("img_index")
    if isinstance(index, int) and not isinstance(index, bool):
        text += f" (from image {index})"
    return [text]


def credit_parts(
    tool: str, provenance: Mapping[str, Any] | None, params: Mapping[str, Any] | None = None
) -> list[Part]:
    """What the caption says about where an image came from, e.g. ``Photo: Eiffel Tower, CC BY-SA 4.0 — source``.

    Each tool's wording is its formatter in the tool table (:data:`llmi.tools.spec.TOOLS`); the user's
    own images (``tool == "input"``) and unknown tools are handled here.
    """
    prov = provenance if isinstance(provenance, Mapping) else {}
    params = params if isinstance(params, Mapping) else {}
    spec = TOOLS.get(tool) if isinstance(tool, str) else None
    if spec is not None:
        parts = list(spec.credit(prov, params))
    elif tool == "input":
        parts = ["Your image"]
    else:
        parts = [f"Image from {' '.join(str(tool).split())[:_MAX_PART] or 'an unknown tool'}"]
    if prov.get("cached") is True:
        parts.append(" (cached)")
    return parts


def credit_text(
    tool: str, provenance: Mapping[str, Any] | None, params: Mapping[str, Any] | None = None
) -> str:
    """The credit as plain text (links written as ``host <url>``)."""
    out = []
    for p in credit_parts(tool, provenance, params):
        out.append(f"{p.text} <{p.url}>" if isinstance(p, Link) else p)
    return "".join(out)
