"""The SerpAPI (google_images) backend against a loopback server speaking SerpAPI's JSON."""

from __future__ import annotations

import json
import logging

import pytest

from llmi.errors import ConfigError, ToolError, TransientToolError
from llmi.tools.base import ToolRequest
from llmi.tools.search.serpapi import SerpApiSearch
from tests.helpers import make_jpeg, send
from tests.test_search_candidates import _fake_service, close_ctx, make_ctx, service  # noqa: F401

KEY = "serp-test-key-0123456789abcdef"
JPEG = make_jpeg(800, 600)


def serp_answer(base: str, results: list[dict]) -> bytes:
    return json.dumps({
        "search_metadata": {"id": "64f0c0ffee", "status": "Success",
                            "json_endpoint": "https://serpapi.com/searches/64f0c0ffee.json",
                            "google_images_url": "https://www.google.com/search?q=red+panda&tbm=isch",
                            "total_time_taken": 1.52},
        "search_parameters": {"engine": "google_images", "q": "red panda", "google_domain": "google.com"},
        "suggested_searches": [{"name": "cute", "link": "https://www.google.com/search?q=cute+red+panda"}],
        "images_results": results,
    }).encode()


def result(position: int, base: str, path: str, *, title: str, w=1920, h=1280) -> dict:
    return {
        "position": position,
        "thumbnail": f"https://serpapi.com/searches/64f0c0ffee/images/{position}.jpeg",
        "related_content_id": "abc",
        "source": "Wikipedia",
        "source_logo": "https://serpapi.com/logo.png",
        "title": title,
        "link": f"https://example.org/page{position}",
        "original": f"{base}{path}",
        "original_width": w,
        "original_height": h,
        "is_product": False,
    }


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)


def backend(ctx, base: str, **opts) -> SerpApiSearch:
    return SerpApiSearch(SerpApiSearch.Options(base_url=base, **opts), ctx)


def req(q: str) -> ToolRequest:
    return ToolRequest(tool="search", params={"query": q})


async def test_search_downloads_the_first_valid_original(service, key_env):
    b = service.base
    results = [
        result(1, b, "/img/redirect-to-loopback", title="Red panda (trap)"),
        result(2, b, "/img/panda.jpg", title="Red panda in a tree"),
    ]
    service.routes = {
        "/search.json": (200, serp_answer(b, results), "application/json; charset=utf-8", None),
        # The first "original" redirects to the metadata service: refused, the next one is used.
        "/img/redirect-to-loopback": (302, b"", "text/plain", {"Location": "http://169.254.169.254/latest/"}),
        "/img/panda.jpg": (200, JPEG, "image/jpeg", None),
    }
    ctx = make_ctx()
    try:
        res = await backend(ctx, b, hl="en", gl="us").run(req("red panda"))
    finally:
        await close_ctx(ctx)
    assert res.image.mime == "image/jpeg" and res.image.width == 800
    assert res.provenance == {
        "backend": "serpapi", "source_url": f"{b}/img/panda.jpg", "page_url": "https://example.org/page2",
        "title": "Red panda in a tree", "license": None, "author": None, "query": "red panda", "site": "Wikipedia",
    }
    path, params, _ = service.requests[0]
    assert path == "/search.json"
    assert params == {"engine": "google_images", "q": "red panda", "api_key": KEY, "safe": "active",
                      "hl": "en", "gl": "us"}


async def test_no_results_message(service, key_env):
    body = json.dumps({"search_metadata": {"status": "Success"},
                       "error": "Google hasn't returned any results for this query."}).encode()
    service.routes = {"/search.json": (200, body, "application/json", None)}
    ctx = make_ctx()
    try:
        with pytest.raises(ToolError) as ei:
            await backend(ctx, service.base).run(req("qqqqzzzz"))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == "no_result" and "hasn't returned any results" in str(ei.value)


async def test_bad_key_and_rate_limit_and_outage(service, key_env):
    ctx = make_ctx()
    try:
        service.routes = {"/search.json": (401, json.dumps(
            {"error": "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"}).encode(),
            "application/json", None)}
        with pytest.raises(ToolError) as bad:
            await backend(ctx, service.base).run(req("x"))
        service.routes = {"/search.json": (429, json.dumps(
            {"error": "Your account has run out of searches."}).encode(), "application/json", {"Retry-After": "30"})}
        with pytest.raises(TransientToolError) as limited:
            await backend(ctx, service.base).run(req("x"))
        service.routes = {"/search.json": (503, b"<html><h1>503 Service Unavailable</h1></html>", "text/html", None)}
        with pytest.raises(TransientToolError) as down:
            await backend(ctx, service.base).run(req("x"))
    finally:
        await close_ctx(ctx)
    assert bad.value.kind == "http_error" and "HTTP 401" in str(bad.value)
    assert not isinstance(bad.value, TransientToolError)
    assert limited.value.kind == "rate_limited" and limited.value.retry_after == 30.0
    assert down.value.kind == "unavailable"


async def test_key_never_appears_in_errors_or_logs(service, key_env, caplog):
    def echo(req, h):  # a misbehaving gateway that echoes the request line back
        send(h, 500, f"upstream failed for {req.path}".encode(), "text/plain")

    service.routes = {"/search.json": echo}
    ctx = make_ctx()
    try:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(TransientToolError) as ei:
                await backend(ctx, service.base).run(req("x"))
    finally:
        await close_ctx(ctx)
    assert "upstream failed" in str(ei.value)
    assert KEY not in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__suppress_context__
    assert KEY not in caplog.text
    assert "api_key=***" in caplog.text  # httpx did log the request, redacted


async def test_missing_key(service, monkeypatch):
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    ctx = make_ctx()
    try:
        b = backend(ctx, service.base)
        st = b.status()
        assert st.state == "missing_key" and "SERPAPI_API_KEY" in st.detail
        assert (await b.probe()).state == "missing_key"
        with pytest.raises(ConfigError, match="SERPAPI_API_KEY"):
            await b.run(req("x"))
    finally:
        await close_ctx(ctx)
    assert service.requests == []


async def test_key_from_config_file_option(service, monkeypatch):
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    service.routes = {"/search.json": (200, serp_answer(service.base, []), "application/json", None)}
    ctx = make_ctx()
    try:
        b = backend(ctx, service.base, api_key="from-config-123")
        assert b.status().state == "ok"
        with pytest.raises(ToolError) as ei:
            await b.run(req("x"))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == "no_result"
    assert service.requests[0][1]["api_key"] == "from-config-123"


async def test_probe_uses_the_free_account_endpoint(service, key_env):
    service.routes = {
        "/account.json": (200, json.dumps({"account_id": "x", "plan_searches_left": 90}).encode(),
                          "application/json", None)
    }
    ctx = make_ctx()
    try:
        assert (await backend(ctx, service.base).probe()).state == "ok"
        service.routes = {"/account.json": (401, b'{"error":"Invalid API key."}', "application/json", None)}
        st = await backend(ctx, service.base).probe()
    finally:
        await close_ctx(ctx)
    assert st.state == "misconfigured" and KEY not in st.detail
    assert service.requests[0][0] == "/account.json"
