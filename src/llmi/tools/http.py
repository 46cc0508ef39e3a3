"""Calling operator-configured HTTP APIs from backends: one place that maps HTTP outcomes to tool errors.

429/503 (with ``Retry-After``), other 5xx, timeouts and dropped connections become
:class:`TransientToolError` (the engine retries them with backoff); other 4xx become :class:`ToolError`.
Messages carry the status and a short, single-line excerpt of the body — never request headers, so
API keys cannot leak into documents or logs.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from ..errors import ToolError, TransientToolError


def parse_retry_after(value: str | None, *, cap: float = 300.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, min(cap, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, min(cap, when.timestamp() - time.time()))


def _excerpt(resp: httpx.Response, limit: int = 200) -> str:
    try:
        text = resp.text
    except Exception:  # undecodable body
        return ""
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


def check_response(resp: httpx.Response, service: str) -> httpx.Response:
    """Return ``resp`` if it is a 2xx; otherwise raise the matching tool error."""
    code = resp.status_code
    if 200 <= code < 300:
        return resp
    body = _excerpt(resp)
    msg = f"{service} answered HTTP {code}" + (f": {body}" if body else "")
    if code in (429, 503):
        raise TransientToolError(
            msg, kind="rate_limited" if code == 429 else "unavailable",
            retry_after=parse_retry_after(resp.headers.get("retry-after")),
        )
    if code >= 500 or code == 408:
        raise TransientToolError(msg, kind="server_error")
    raise ToolError(msg, kind="http_error")


async def request(
    client: httpx.AsyncClient, method: str, url: str, *, service: str, **kwargs: Any
) -> httpx.Response:
    """``client.request`` with errors translated; the response is checked with :func:`check_response`."""
    try:
        resp = await client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise TransientToolError(f"{service} timed out ({type(exc).__name__})", kind="timeout") from exc
    except httpx.TransportError as exc:
        raise TransientToolError(f"{service} is unreachable: {type(exc).__name__}: {exc}", kind="connection_error") from exc
    return check_response(resp, service)


def json_body(resp: httpx.Response, service: str) -> Any:
    """The response's JSON, or a ToolError if the service sent something else (HTML error pages...)."""
    try:
        return resp.json()
    except ValueError as exc:
        raise ToolError(f"{service} sent a non-JSON response: {_excerpt(resp, 120)!r}", kind="bad_response") from exc
