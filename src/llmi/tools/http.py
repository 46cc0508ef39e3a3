"""Calling operator-configured HTTP APIs from backends: one place that maps HTTP outcomes to tool errors.

429/503 (with ``Retry-After``), other 5xx, timeouts and dropped connections become
:class:`TransientToolError` (the engine retries them with backoff); other 4xx become :class:`ToolError`.
Messages carry the status and a short, single-line excerpt of the body — never request headers, so
API keys cannot leak into documents or logs.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, Mapping

import httpx

from ..errors import ToolError, TransientToolError


def parse_retry_after(value: str | None, *, cap: float = 300.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), at most ``cap``."""
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


def retry_after(headers: Mapping[str, str] | None, *, cap: float = 300.0) -> float | None:
    """Seconds a 429/503 answer asks us to wait: OpenAI's ``retry-after-ms`` if present (it is the
    more precise of the two), else the standard ``Retry-After``; ``None`` when neither says."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, min(cap, float(ms) / 1000.0))
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"), cap=cap)


def _excerpt(resp: httpx.Response, limit: int = 200) -> str:
    try:
        text = resp.text
    except (httpx.ResponseNotRead, UnicodeDecodeError, LookupError):  # a streamed or undecodable body
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
            retry_after=retry_after(resp.headers),
        )
    if code >= 500 or code == 408:
        raise TransientToolError(msg, kind="server_error")
    raise ToolError(msg, kind="http_error")


async def send(
    client: httpx.AsyncClient, method: str, url: str, *, service: str, **kwargs: Any
) -> httpx.Response:
    """``client.request`` with transport failures (timeouts, refused or dropped connections) translated
    to :class:`TransientToolError`; the status is left for the caller to judge."""
    try:
        return await client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise TransientToolError(f"{service} timed out ({type(exc).__name__})", kind="timeout") from exc
    except httpx.TransportError as exc:
        raise TransientToolError(f"{service} is unreachable: {type(exc).__name__}: {exc}", kind="connection_error") from exc


async def request(
    client: httpx.AsyncClient, method: str, url: str, *, service: str, **kwargs: Any
) -> httpx.Response:
    """:func:`send`, then :func:`check_response`: a 2xx response or the matching tool error."""
    return check_response(await send(client, method, url, service=service, **kwargs), service)


def json_body(resp: httpx.Response, service: str) -> Any:
    """The response's JSON, or a ToolError if the service sent something else (HTML error pages...)."""
    try:
        return resp.json()
    except ValueError as exc:
        raise ToolError(f"{service} sent a non-JSON response: {_excerpt(resp, 120)!r}", kind="bad_response") from exc
