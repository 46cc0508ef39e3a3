"""Brave Image Search API.

Wire format: ``GET {base_url}/images/search?q=...&count=...&safesearch=strict`` with the key in the
``X-Subscription-Token`` header answers ``{"type": "images", "query": {...}, "results": [{"type":
"image_result", "title", "url" (the page), "source", "thumbnail": {"src", "width", "height"},
"properties": {"url" (the image), "placeholder", "width", "height"}, ...}], "extra": {...}}``. Errors are
``{"type": "ErrorResponse", "error": {"status", "code", "detail"}}`` — 422 ``SUBSCRIPTION_TOKEN_INVALID``,
429 ``RATE_LIMITED`` with ``X-RateLimit-Reset: "<seconds>, <seconds>"`` (per-second and per-month windows)
rather than ``Retry-After``.
"""

from __future__ import annotations

import httpx

from ...errors import ToolError
from ..base import BackendStatus, HTTPBackendOptions
from .candidates import Candidate, CandidateOptions, WebSearchBackend, get_json, probe_http, to_int

DEFAULT_BASE_URL = "https://api.search.brave.com/res/v1"


class BraveOptions(HTTPBackendOptions, CandidateOptions):
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = "BRAVE_API_KEY"
    timeout_s: float = 30.0
    #: Results asked for (the API allows up to 200 for images).
    count: int = 20
    #: ``strict`` or ``off`` (the image API has no ``moderate``).
    safesearch: str = "strict"
    country: str = ""
    search_lang: str = ""


def _reset_hint(resp: httpx.Response) -> float | None:
    """Seconds until the nearest rate-limit window resets (``X-RateLimit-Reset: 1, 1419704``)."""
    raw = resp.headers.get("x-ratelimit-reset", "")
    try:
        first = raw.split(",")[0].strip()
        return max(0.0, min(300.0, float(first))) if first else None
    except ValueError:
        return None


class BraveSearch(WebSearchBackend):
    name = "brave"
    Options = BraveOptions

    @property
    def _endpoint(self) -> str:
        return self.options.base_url.rstrip("/") + "/images/search"

    def _headers(self, key: str) -> dict[str, str]:
        return {"Accept": "application/json", "X-Subscription-Token": key}

    async def candidates(self, query: str) -> list[Candidate]:
        opts: BraveOptions = self.options  # type: ignore[assignment]
        key = self.api_key()
        params = {"q": query, "count": opts.count, "safesearch": opts.safesearch}
        if opts.country:
            params["country"] = opts.country
        if opts.search_lang:
            params["search_lang"] = opts.search_lang
        body = await get_json(
            self.ctx.http,
            self._endpoint,
            service="Brave Search",
            params=params,
            headers=self._headers(key),
            timeout=opts.timeout_s,
            secrets=[key],
            retry_after_hint=_reset_hint,
        )
        if not isinstance(body, dict):
            raise ToolError("Brave Search sent an unexpected JSON document", kind="bad_response")
        out: list[Candidate] = []
        for r in body.get("results") or []:
            if not isinstance(r, dict):
                continue
            props = r.get("properties") if isinstance(r.get("properties"), dict) else {}
            thumb = r.get("thumbnail") if isinstance(r.get("thumbnail"), dict) else {}
            image_url = props.get("url") or thumb.get("src")
            if not isinstance(image_url, str):
                continue
            extra = {"site": r.get("source")} if r.get("source") else {}
            if not props.get("url"):
                extra["note"] = "Brave thumbnail (no original URL given)"
            out.append(
                Candidate(
                    image_url=image_url,
                    page_url=str(r.get("url") or ""),
                    title=str(r.get("title") or ""),
                    width=to_int(props.get("width")) if props.get("url") else to_int(thumb.get("width")),
                    height=to_int(props.get("height")) if props.get("url") else to_int(thumb.get("height")),
                    extra=extra,
                )
            )
        return out

    needs_key = True

    async def probe_key(self, key: str) -> BackendStatus:
        # One tiny query (count=1): Brave has no free endpoint to check a key with.
        return await probe_http(
            self.ctx.http, self._endpoint, service="Brave Search", params={"q": "test", "count": 1},
            headers=self._headers(key), secrets=[key],
        )
