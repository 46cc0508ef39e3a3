"""Keeping secrets out of messages, logs, traces and documents. Pure string functions.

Keys reach error text in two ways: a service echoes them (OpenAI's 401 message shows a masked
``sk-…abcd``), or they are part of a URL (``https://user:pass@host``, ``?api_key=``, signed image URLs).
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import urlsplit, urlunsplit

_MASKED_OPENAI_KEY = re.compile(r"\bsk-[\w*-]{6,}")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every given secret, and any OpenAI-style (masked) key, replaced by ``***``."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return _MASKED_OPENAI_KEY.sub("***", text)


def safe_url(url: str) -> str:
    """``url`` without user info, query string or fragment — what may be shown or stored."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
