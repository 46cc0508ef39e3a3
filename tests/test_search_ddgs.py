"""The best-effort ddgs backend, with the DDGS class replaced by a fake returning ddgs's real result shape
(DuckDuckGo itself cannot be reached from tests); images are served by a loopback server."""

from __future__ import annotations

import threading

import ddgs
import pytest
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

from llmi.errors import ToolError, TransientToolError
from llmi.tools.base import ToolRequest
from llmi.tools.search.ddgs import DdgsSearch
from tests.helpers import make_png
from tests.test_search_candidates import _fake_service, close_ctx, make_ctx, service  # noqa: F401

PNG = make_png(600, 600)


def fake_ddgs(results=None, exc: Exception | None = None, calls: list | None = None):
    class FakeDDGS:
        def __init__(self, proxy=None, timeout=5, *, verify=True):
            self.timeout = timeout

        def images(self, query, **kwargs):
            if calls is not None:
                calls.append((query, kwargs, self.timeout, threading.current_thread() is threading.main_thread()))
            if exc is not None:
                raise exc
            return results

    return FakeDDGS


def ddg_result(base: str, path: str, title: str, w="1200", h="900") -> dict:
    # ddgs.results.ImagesResult fields, sizes as strings like DuckDuckGo's i.js sends them
    return {"title": title, "image": f"{base}{path}", "thumbnail": "https://tse2.mm.bing.net/th?id=OIP.abc",
            "url": f"https://example.com/{title.replace(' ', '-')}", "height": h, "width": w, "source": "Bing"}


def req(q: str) -> ToolRequest:
    return ToolRequest(tool="search", params={"query": q})


async def test_results_are_fetched_in_a_thread(service, monkeypatch):
    b = service.base
    calls: list = []
    monkeypatch.setattr(ddgs, "DDGS", fake_ddgs([ddg_result(b, "/missing.png", "gone"),
                                                 ddg_result(b, "/kiwi.png", "kiwi bird")], calls=calls))
    service.routes = {"/kiwi.png": (200, PNG, "image/png", None)}
    ctx = make_ctx()
    try:
        backend = DdgsSearch(DdgsSearch.Options(region="de-de", safesearch="off", max_results=7), ctx)
        res = await backend.run(req("kiwi bird"))
    finally:
        await close_ctx(ctx)
    assert res.provenance["backend"] == "ddgs"
    assert res.provenance["source_url"] == f"{b}/kiwi.png"
    assert res.provenance["page_url"] == "https://example.com/kiwi-bird"
    assert res.provenance["provider"] == "Bing"
    query, kwargs, timeout, on_main = calls[0]
    assert query == "kiwi bird"
    assert kwargs == {"region": "de-de", "safesearch": "off", "max_results": 7, "backend": "auto"}
    assert timeout == 10 and on_main is False


@pytest.mark.parametrize(
    "exc,kind,transient",
    [
        (RatelimitException("https://duckduckgo.com/i.js 403 Ratelimit"), "rate_limited", True),
        (TimeoutException("https://duckduckgo.com/i.js timed out"), "timeout", True),
        (DDGSException("No results found."), "no_result", False),
        (DDGSException("engine broke"), "search_failed", True),
        (KeyError("vqd"), "search_failed", False),
    ],
)
async def test_failures_become_typed_tool_errors(monkeypatch, exc, kind, transient):
    monkeypatch.setattr(ddgs, "DDGS", fake_ddgs(exc=exc))
    ctx = make_ctx()
    try:
        with pytest.raises(ToolError) as ei:
            await DdgsSearch(DdgsSearch.Options(), ctx).run(req("x"))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == kind
    assert isinstance(ei.value, TransientToolError) is transient


async def test_malformed_results_are_ignored(monkeypatch):
    monkeypatch.setattr(ddgs, "DDGS", fake_ddgs([{"title": "no image key"}, None, {"image": 42}]))
    ctx = make_ctx()
    try:
        with pytest.raises(ToolError) as ei:
            await DdgsSearch(DdgsSearch.Options(), ctx).run(req("x"))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == "no_result"


async def test_status_reports_the_dependency(monkeypatch):
    ctx = make_ctx()
    await close_ctx(ctx)  # status() is offline: it needs no client
    b = DdgsSearch(DdgsSearch.Options(), ctx)
    assert b.status().state == "ok"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ddgs" else real(name, *a))
    st = b.status()
    assert st.state == "missing_dependency" and "llmi[ddgs]" in st.detail
