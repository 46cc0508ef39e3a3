"""The Wikimedia Commons backend against a loopback server speaking the MediaWiki Action API's JSON."""

from __future__ import annotations

import json
import socket
import time

import pytest

from llmi.errors import ToolError, TransientToolError
from llmi.tools.base import ToolRequest
from llmi.tools.search.wikimedia import WikimediaSearch
from tests.helpers import make_png, send
from tests.test_search_candidates import _fake_service, close_ctx, make_ctx, service  # noqa: F401

PNG = make_png(640, 480)


def page(pageid: int, index: int, base: str, name: str, *, mime="image/jpeg", width=3000, height=2000,
         thumb: str | None = None, thumb_size=(1280, 853), artist='<a href="//commons.wikimedia.org/wiki/User:Example"'
         ' title="User:Example">Example</a>', license="CC BY-SA 4.0") -> dict:
    """One page of a ``generator=search`` + ``prop=imageinfo`` answer, as Commons sends it."""
    info = {
        "url": f"{base}/upload/{name}",
        "descriptionurl": f"https://commons.wikimedia.org/wiki/File:{name}",
        "descriptionshorturl": f"https://commons.wikimedia.org/w/index.php?curid={pageid}",
        "width": width,
        "height": height,
        "size": 123456,
        "mime": mime,
        "extmetadata": {
            "DateTime": {"value": "2021-06-01 10:00:00", "source": "mediawiki-metadata", "hidden": ""},
            "ObjectName": {"value": name.rsplit(".", 1)[0].replace("_", " "), "source": "mediawiki-metadata",
                           "hidden": ""},
            "ImageDescription": {"value": "<p>The <a href=\"/wiki/Eiffel_Tower\">Eiffel Tower</a> at night</p>",
                                 "source": "commons-desc-page"},
            "Credit": {"value": '<span class="int-own-work" lang="en">Own work</span>', "source": "commons-desc-page",
                       "hidden": ""},
            "Artist": {"value": artist, "source": "commons-desc-page"},
            "LicenseShortName": {"value": license, "source": "commons-desc-page", "hidden": ""},
            "LicenseUrl": {"value": "https://creativecommons.org/licenses/by-sa/4.0", "source": "commons-desc-page",
                           "hidden": ""},
        },
    }
    if thumb:
        info.update(thumburl=thumb, thumbwidth=thumb_size[0], thumbheight=thumb_size[1])
    return {"pageid": pageid, "ns": 6, "title": f"File:{name}", "index": index, "imagerepository": "local",
            "imageinfo": [info]}


def answer(*pages: dict) -> bytes:
    return json.dumps({
        "batchcomplete": "",
        "continue": {"gsroffset": len(pages), "continue": "gsroffset||"},
        "query": {"pages": {str(p["pageid"]): p for p in pages}},
    }).encode()


def backend(ctx, base: str, **opts) -> WikimediaSearch:
    return WikimediaSearch(WikimediaSearch.Options(base_url=f"{base}/w", **opts), ctx)


def req(query: str) -> ToolRequest:
    return ToolRequest(tool="search", params={"query": query})


async def test_finds_first_usable_image_and_records_artist_and_licence(service):
    b = service.base
    pages = [  # deliberately out of rank order: Commons keys pages by id, the rank is "index"
        page(30, 3, b, "Eiffel_Tower_night.jpg", thumb=f"{b}/thumb/good.png"),
        page(10, 1, b, "Tiny.jpg", width=120, height=90, thumb=f"{b}/thumb/tiny.jpg", thumb_size=(120, 90)),
        page(20, 2, b, "Hotlinked.jpg", thumb=f"{b}/thumb/html.jpg"),
        page(40, 4, b, "Sound.ogg", mime="application/ogg"),
    ]
    service.routes = {
        "/w/api.php": (200, answer(*pages), "application/json; charset=utf-8", None),
        "/thumb/html.jpg": (200, b"<html><body>Error: 403 Forbidden</body></html>", "text/html", None),
        "/thumb/good.png": (200, PNG, "image/png", None),
    }
    ctx = make_ctx()
    try:
        result = await backend(ctx, b).run(req("Eiffel tower at night"))
    finally:
        await close_ctx(ctx)
    assert (result.image.width, result.image.height) == (640, 480)
    p = result.provenance
    assert p["backend"] == "wikimedia"
    assert p["source_url"] == f"{b}/thumb/good.png"
    assert p["original_url"] == f"{b}/upload/Eiffel_Tower_night.jpg"
    assert p["page_url"] == "https://commons.wikimedia.org/wiki/File:Eiffel_Tower_night.jpg"
    assert p["title"] == "Eiffel Tower night"
    assert p["license"] == "CC BY-SA 4.0"
    assert p["license_url"] == "https://creativecommons.org/licenses/by-sa/4.0"
    assert p["author"] == "Example"  # HTML stripped
    assert p["query"] == "Eiffel tower at night"
    # The tiny one was skipped by its reported size (no download), the HTML one was downloaded and refused.
    fetched = [path for path, _, _ in service.requests if not path.startswith("/w/")]
    assert fetched == ["/thumb/html.jpg", "/thumb/good.png"]
    path, params, headers = service.requests[0]
    assert path == "/w/api.php"
    assert params["action"] == "query" and params["generator"] == "search" and params["gsrnamespace"] == "6"
    assert params["gsrsearch"].endswith("Eiffel tower at night") and "filetype:bitmap" in params["gsrsearch"]
    assert set(params["iiprop"].split("|")) >= {"url", "size", "mime", "extmetadata"}
    assert params["iiurlwidth"] == "1280" and params["format"] == "json"
    assert headers["User-Agent"] == ctx.settings.fetch.user_agent


async def test_original_files_when_thumbnails_are_off(service):
    b = service.base
    service.routes = {
        "/w/api.php": (200, answer(page(1, 1, b, "Photo.png", mime="image/png", width=640, height=480)),
                       "application/json", None),
        "/upload/Photo.png": (200, PNG, "image/png", None),
    }
    ctx = make_ctx()
    try:
        result = await backend(ctx, b, thumb_width=0).run(req("photo"))
    finally:
        await close_ctx(ctx)
    assert result.provenance["source_url"] == f"{b}/upload/Photo.png"
    assert "iiurlwidth" not in service.requests[0][1]


async def test_candidate_pointing_at_metadata_service_is_refused_and_skipped(service):
    b = service.base
    evil = page(1, 1, b, "Evil.jpg", thumb="http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    good = page(2, 2, b, "Good.png", thumb=f"{b}/thumb/good.png")
    service.routes = {"/w/api.php": (200, answer(evil, good), "application/json", None),
                      "/thumb/good.png": (200, PNG, "image/png", None)}
    ctx = make_ctx()
    try:
        result = await backend(ctx, b).run(req("good"))
    finally:
        await close_ctx(ctx)
    assert result.provenance["title"] == "Good"


async def test_no_hits_is_no_result(service):
    service.routes = {"/w/api.php": (200, b'{"batchcomplete":""}', "application/json", None)}
    ctx = make_ctx()
    try:
        with pytest.raises(ToolError) as ei:
            await backend(ctx, service.base).run(req("qwxzv"))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == "no_result"


async def test_every_candidate_rejected_explains_why(service):
    b = service.base
    service.routes = {
        "/w/api.php": (200, answer(page(1, 1, b, "A.jpg", thumb=f"{b}/t/a"), page(2, 2, b, "B.jpg", thumb=f"{b}/t/b")),
                       "application/json", None),
        "/t/a": (200, PNG[:200], "image/png", None),
        "/t/b": (404, b"Not Found", "text/plain", None),
    }
    ctx = make_ctx()
    try:
        with pytest.raises(ToolError) as ei:
            await backend(ctx, b).run(req("a b"))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == "no_result"
    assert "does not decode" in str(ei.value) and "HTTP 404" in str(ei.value)


async def test_api_errors(service):
    err = {"error": {"code": "badvalue", "info": "Unrecognized value for parameter \"gsrnamespace\"", "*": "..."},
           "servedby": "mw1234"}
    maxlag = {"error": {"code": "maxlag", "info": "Waiting for a database server: 6 seconds lagged."}}
    ctx = make_ctx()
    try:
        service.routes = {"/w/api.php": (200, json.dumps(err).encode(), "application/json", None)}
        with pytest.raises(ToolError) as bad:
            await backend(ctx, service.base).run(req("x"))
        service.routes = {"/w/api.php": (200, json.dumps(maxlag).encode(), "application/json", {"Retry-After": "5"})}
        with pytest.raises(TransientToolError) as lag:
            await backend(ctx, service.base).run(req("x"))
        service.routes = {"/w/api.php": (429, b"Too many requests", "text/plain", {"Retry-After": "12"})}
        with pytest.raises(TransientToolError) as limited:
            await backend(ctx, service.base).run(req("x"))
        service.routes = {"/w/api.php": (500, b"<html>Wikimedia Error</html>", "text/html", None)}
        with pytest.raises(TransientToolError) as server:
            await backend(ctx, service.base).run(req("x"))
        service.routes = {"/w/api.php": (200, b"<!DOCTYPE html><html>maintenance</html>", "text/html", None)}
        with pytest.raises(ToolError) as html:
            await backend(ctx, service.base).run(req("x"))
    finally:
        await close_ctx(ctx)
    assert bad.value.kind == "api_error" and "badvalue" in str(bad.value)
    assert lag.value.kind == "unavailable"
    assert limited.value.kind == "rate_limited" and limited.value.retry_after == 12.0
    assert server.value.kind == "server_error"
    assert html.value.kind == "bad_response"


async def test_api_timeout(service):
    def slow(req, h):
        time.sleep(1.0)
        send(h, 200, b"{}")

    service.routes = {"/w/api.php": slow}
    ctx = make_ctx()
    try:
        with pytest.raises(TransientToolError) as ei:
            await backend(ctx, service.base, timeout_s=0.2).run(req("x"))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == "timeout"


async def test_empty_query_is_refused(service):
    ctx = make_ctx()
    try:
        with pytest.raises(ToolError) as ei:
            await backend(ctx, service.base).run(req("   "))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == "bad_request"
    assert service.requests == []


async def test_status_and_probe(service):
    service.routes = {"/w/api.php": (200, b'{"batchcomplete":"","query":{"general":{"sitename":"Wikimedia Commons"}}}',
                                     "application/json", None)}
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
    s.close()
    ctx = make_ctx()
    try:
        b = backend(ctx, service.base)
        assert b.status().state == "ok"
        assert (await b.probe()).state == "ok"
        assert service.requests[-1][1]["meta"] == "siteinfo"
        down = backend(ctx, f"http://127.0.0.1:{closed_port}")
        assert (await down.probe()).state == "unreachable"
        wrong = WikimediaSearch(WikimediaSearch.Options(base_url="ftp://x"), ctx)
        assert wrong.status().state == "misconfigured"
    finally:
        await close_ctx(ctx)
