"""Google Images through SerpAPI (``engine=google_images``).

Wire format: ``GET {base_url}/search.json?engine=google_images&q=...&api_key=...`` answers
``{"search_metadata": {...}, "images_results": [{"position", "title", "link", "source", "original",
"original_width", "original_height", "thumbnail", ...}]}``; an empty search is a 200 with
``{"error": "Google hasn't returned any results for this query."}`` and a bad key a 401 with
``{"error": "Invalid API key. ..."}``. SerpAPI only takes the key as a query parameter, so the key is
scrubbed from every error message and redacted from httpx's request log lines.
"""

from __future__ import annotations

from typing import Any

from ...errors import ToolError
from ..base import BackendStatus, HTTPBackendOptions
from .candidates import (
    Candidate,
    CandidateOptions,
    WebSearchBackend,
    get_json,
    probe_http,
    redact_keys_in_http_logs,
    to_int,
)

DEFAULT_BASE_URL = "https://serpapi.com"


class SerpApiOptions(HTTPBackendOptions, CandidateOptions):
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = "SERPAPI_API_KEY"
    timeout_s: float = 30.0
    #: Google's interface language and country (``hl``, ``gl``); empty: SerpAPI's defaults.
    hl: str = ""
    gl: str = ""
    #: SafeSearch: ``active`` or ``off``.
    safe: str = "active"


class SerpApiSearch(WebSearchBackend):
    name = "serpapi"
    Options = SerpApiOptions

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        redact_keys_in_http_logs()

    @property
    def _endpoint(self) -> str:
        return self.options.base_url.rstrip("/") + "/search.json"

    async def candidates(self, query: str) -> list[Candidate]:
        opts: SerpApiOptions = self.options  # type: ignore[assignment]
        key = self.api_key()
        params: dict[str, Any] = {"engine": "google_images", "q": query, "api_key": key, "safe": opts.safe}
        if opts.hl:
            params["hl"] = opts.hl
        if opts.gl:
            params["gl"] = opts.gl
        body = await get_json(
            self.ctx.http, self._endpoint, service="SerpAPI", params=params, timeout=opts.timeout_s, secrets=[key]
        )
        if not isinstance(body, dict):
            raise ToolError("SerpAPI sent an unexpected JSON document", kind="bad_response")
        results = body.get("images_results")
        if not results:
            error = body.get("error")
            if error:
                raise ToolError(f"SerpAPI: {str(error).replace(key or '', '***')[:200]}", kind="no_result")
            return []
        out: list[Candidate] = []
        for r in results:
            if not isinstance(r, dict) or not isinstance(r.get("original"), str):
                continue
            out.append(
                Candidate(
                    image_url=r["original"],
                    page_url=str(r.get("link") or ""),
                    title=str(r.get("title") or ""),
                    width=to_int(r.get("original_width")),
                    height=to_int(r.get("original_height")),
                    extra={"site": r.get("source")} if r.get("source") else {},
                )
            )
        return out

    needs_key = True

    async def probe_key(self, key: str) -> BackendStatus:
        # account.json is free: it does not count against the search quota.
        return await probe_http(
            self.ctx.http,
            self.options.base_url.rstrip("/") + "/account.json",
            service="SerpAPI",
            params={"api_key": key},
            secrets=[key],
        )
