"""DuckDuckGo (and the other engines the ``ddgs`` metasearch package scrapes) — best-effort, no key.

``ddgs`` scrapes undocumented endpoints, so it breaks and rate-limits without warning; use it as the
last link of a fallback chain. It is synchronous, so the call runs in a worker thread. Its image results
are dicts ``{"title", "image" (the image URL), "thumbnail", "url" (the page), "height", "width",
"source"}`` with the sizes as strings.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from ...errors import ToolError, TransientToolError
from ..base import BackendOptions, BackendStatus
from .candidates import Candidate, CandidateOptions, WebSearchBackend, to_int


class DdgsOptions(BackendOptions, CandidateOptions):
    region: str = "us-en"
    safesearch: Literal["on", "moderate", "off"] = "moderate"
    max_results: int = 20
    timeout_s: int = 10
    #: ``ddgs`` engine selection ("auto", "duckduckgo", "bing", ... comma-separated).
    engines: str = "auto"


class DdgsSearch(WebSearchBackend):
    name = "ddgs"
    Options = DdgsOptions
    requires = ("ddgs",)
    extra = "ddgs"

    def _search(self, query: str) -> list[dict[str, Any]]:
        import ddgs  # the module attribute is looked up at call time (tests replace ddgs.DDGS)

        opts: DdgsOptions = self.options  # type: ignore[assignment]
        client = ddgs.DDGS(timeout=opts.timeout_s)
        return client.images(
            query,
            region=opts.region,
            safesearch=opts.safesearch,
            max_results=opts.max_results,
            backend=opts.engines,
        )

    async def candidates(self, query: str) -> list[Candidate]:
        try:
            from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException
        except ImportError as exc:
            raise ToolError(
                "the ddgs backend needs the ddgs package: pip install 'llmi[ddgs]'", kind="missing_dependency"
            ) from exc
        try:
            results = await asyncio.to_thread(self._search, query)
        except RatelimitException as exc:
            raise TransientToolError(f"ddgs was rate-limited: {exc}", kind="rate_limited", retry_after=30.0) from exc
        except TimeoutException as exc:
            raise TransientToolError(f"ddgs timed out: {exc}", kind="timeout") from exc
        except DDGSException as exc:
            if "no results" in str(exc).lower():
                raise ToolError(f"ddgs found no images for {query!r}", kind="no_result") from exc
            raise TransientToolError(f"ddgs failed: {exc}", kind="search_failed") from exc
        except Exception as exc:  # scraping breaks in many ways; never let it crash a run
            raise ToolError(f"ddgs failed: {type(exc).__name__}: {exc}", kind="search_failed") from exc
        out: list[Candidate] = []
        for r in results or []:
            if not isinstance(r, dict) or not isinstance(r.get("image"), str):
                continue
            out.append(
                Candidate(
                    image_url=r["image"],
                    page_url=str(r.get("url") or ""),
                    title=str(r.get("title") or ""),
                    width=to_int(r.get("width")),
                    height=to_int(r.get("height")),
                    extra={"provider": r.get("source")} if r.get("source") else {},
                )
            )
        return out

    def status(self) -> BackendStatus:
        st = super().status()
        if st.usable:
            return BackendStatus("ok", "best-effort scraping; may be rate-limited")
        return st
