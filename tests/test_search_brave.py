"""The Brave Image Search backend against a loopback server speaking Brave's JSON."""

from __future__ import annotations

import json

import pytest

from llmi.errors import ToolError, TransientToolError
from llmi.tools.base import ToolRequest
from llmi.tools.search.brave import BraveSearch
from tests.helpers import make_png
from tests.test_search_candidates import _fake_service, close_ctx, make_ctx, service  # noqa: F401

KEY = "BSA-test-subscription-token-42"
PNG = make_png(1000, 700)


def image_result(base: str, path: str | None, *, title: str, page: str, thumb: str, size=(1000, 700),
                 thumb_size=(500, 350)) -> dict:
    r = {
        "type": "image_result",
        "title": title,
        "url": page,
        "source": "example.org",
        "page_fetched": "2024-05-01T10:00:00Z",
        "thumbnail": {"src": thumb, "width": thumb_size[0], "height": thumb_size[1]},
        "meta_url": {"scheme": "https", "netloc": "example.org", "hostname": "example.org",
                     "favicon": "https://imgs.search.brave.com/favicon.png", "path": "› photos"},
        "confidence": "high",
    }
    if path is not None:
        r["properties"] = {"url": f"{base}{path}", "placeholder": "https://imgs.search.brave.com/ph.jpg",
                           "width": size[0], "height": size[1]}
    return r


def brave_answer(results: list[dict]) -> bytes:
    return json.dumps({"type": "images", "query": {"original": "lighthouse", "spellcheck_off": False},
                       "results": results, "extra": {"might_be_offensive": False}}).encode()


def brave_error(status: int, code: str, detail: str) -> bytes:
    return json.dumps({"type": "ErrorResponse",
                       "error": {"id": "f5a0e2c1", "status": status, "code": code, "detail": detail,
                                 "meta": {"component": "rate_limiter"}},
                       "time": 1717000000}).encode()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("BRAVE_API_KEY", KEY)


def backend(ctx, base: str, **opts) -> BraveSearch:
    return BraveSearch(BraveSearch.Options(base_url=f"{base}/res/v1", **opts), ctx)


def req(q: str) -> ToolRequest:
    return ToolRequest(tool="search", params={"query": q})


async def test_search_uses_original_image_and_header_key(service, key_env):
    b = service.base
    results = [
        image_result(b, "/img/huge-decl.png", title="Lighthouse wallpaper", page="https://example.org/1",
                     thumb=f"{b}/th/1.jpg"),
        image_result(b, "/img/lighthouse.png", title="Lighthouse at dusk", page="https://example.org/2",
                     thumb=f"{b}/th/2.jpg"),
    ]
    service.routes = {
        "/res/v1/images/search": (200, brave_answer(results), "application/json", None),
        "/img/huge-decl.png": (200, PNG, "image/png", None),
        "/img/lighthouse.png": (200, PNG, "image/png", None),
    }
    # Both would validate; prefer_title_match re-ranks so that the "dusk" one is tried first.
    ctx = make_ctx()
    try:
        res = await backend(ctx, b, prefer_title_match=True, country="us").run(req("lighthouse dusk"))
    finally:
        await close_ctx(ctx)
    assert res.provenance["title"] == "Lighthouse at dusk"
    assert res.provenance["source_url"] == f"{b}/img/lighthouse.png"
    assert res.provenance["page_url"] == "https://example.org/2"
    assert res.provenance["site"] == "example.org"
    path, params, headers = service.requests[0]
    assert path == "/res/v1/images/search"
    assert params == {"q": "lighthouse dusk", "count": "20", "safesearch": "strict", "country": "us"}
    assert headers["X-Subscription-Token"] == KEY and headers["Accept"] == "application/json"
    assert "api_key" not in json.dumps(params)


async def test_thumbnail_used_when_no_original(service, key_env):
    b = service.base
    service.routes = {
        "/res/v1/images/search": (200, brave_answer([
            image_result(b, None, title="small", page="https://e/0", thumb=f"{b}/th/0.png"),
            image_result(b, None, title="t", page="https://e/1", thumb=f"{b}/th/1.png", thumb_size=(1000, 700)),
        ]),
                                  "application/json", None),
        "/th/1.png": (200, PNG, "image/png", None),
    }
    ctx = make_ctx()
    try:
        res = await backend(ctx, b).run(req("t"))
    finally:
        await close_ctx(ctx)
    assert res.provenance["source_url"] == f"{b}/th/1.png"
    assert [p for p, _, _ in service.requests] == ["/res/v1/images/search", "/th/1.png"]  # /th/0 too small
    assert "thumbnail" in res.provenance["note"]


async def test_rate_limit_uses_x_ratelimit_reset(service, key_env):
    service.routes = {"/res/v1/images/search": (
        429, brave_error(429, "RATE_LIMITED", "Request rate limit exceeded for plan."), "application/json",
        {"X-RateLimit-Limit": "1, 2000", "X-RateLimit-Remaining": "0, 1500", "X-RateLimit-Reset": "1, 1419704"})}
    ctx = make_ctx()
    try:
        with pytest.raises(TransientToolError) as ei:
            await backend(ctx, service.base).run(req("x"))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == "rate_limited" and ei.value.retry_after == 1.0
    assert "RATE_LIMITED" in str(ei.value)


async def test_invalid_token_and_garbage(service, key_env):
    ctx = make_ctx()
    try:
        service.routes = {"/res/v1/images/search": (
            422, brave_error(422, "SUBSCRIPTION_TOKEN_INVALID", "The provided subscription token is invalid."),
            "application/json", None)}
        with pytest.raises(ToolError) as bad:
            await backend(ctx, service.base).run(req("x"))
        service.routes = {"/res/v1/images/search": (200, b"<html>captive portal</html>", "text/html", None)}
        with pytest.raises(ToolError) as html:
            await backend(ctx, service.base).run(req("x"))
        service.routes = {"/res/v1/images/search": (200, brave_answer([]), "application/json", None)}
        with pytest.raises(ToolError) as empty:
            await backend(ctx, service.base).run(req("x"))
        service.routes = {"/res/v1/images/search": (
            200, brave_answer([{"type": "image_result", "title": "no urls at all"}, "junk", 3]), "application/json",
            None)}
        with pytest.raises(ToolError) as junk:
            await backend(ctx, service.base).run(req("x"))
    finally:
        await close_ctx(ctx)
    assert bad.value.kind == "http_error" and "SUBSCRIPTION_TOKEN_INVALID" in str(bad.value)
    assert KEY not in str(bad.value)
    assert html.value.kind == "bad_response"
    assert empty.value.kind == "no_result" and junk.value.kind == "no_result"


async def test_status_and_probe(service, key_env, monkeypatch):
    service.routes = {"/res/v1/images/search": (200, brave_answer([]), "application/json", None)}
    ctx = make_ctx()
    try:
        b = backend(ctx, service.base)
        assert b.status().state == "ok"
        assert (await b.probe()).state == "ok"
        assert service.requests[-1][1]["count"] == "1"
        service.routes = {"/res/v1/images/search": (
            422, brave_error(422, "SUBSCRIPTION_TOKEN_INVALID", "invalid"), "application/json", None)}
        assert (await b.probe()).state == "misconfigured"
        monkeypatch.delenv("BRAVE_API_KEY")
        assert b.status().state == "missing_key"
    finally:
        await close_ctx(ctx)
