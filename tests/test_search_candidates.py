"""Shared candidate handling: text normalisation, title ranking, trying candidates until one validates."""

from __future__ import annotations

import logging

import httpx
import pytest

from llmi.config import FetchSettings, ImageLimits, Settings
from llmi.errors import ToolError, TransientToolError
from llmi.fetch import SafeFetcher
from llmi.images import ImageData
from llmi.tools.base import BackendContext
from llmi.tools.search.candidates import (
    Candidate,
    CandidateOptions,
    choose,
    overlap,
    rank_by_title,
    redact_keys_in_http_logs,
    scrub,
    strip_html,
    tokens,
)
from tests.helpers import dispatch, loopback_server, make_png


class FakeService:
    """A loopback server speaking a search service's wire format. ``routes[path]`` is
    (status, body, content_type, headers) or a callable(req, handler); every request is recorded."""

    def __init__(self, base: str):
        self.base = base
        self.routes: dict = {}
        self.requests: list = []

    def handle(self, req, h) -> None:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(req.path)
        self.requests.append((parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}, dict(req.headers)))
        dispatch(self.routes, parts.path, req, h)


@pytest.fixture(scope="module")
def _fake_service():
    holder: list[FakeService] = []
    with loopback_server(lambda req, h: holder[0].handle(req, h)) as base:
        holder.append(FakeService(base))
        yield holder[0]


@pytest.fixture
def service(_fake_service):
    """The module's fake service, with no routes and no recorded requests."""
    _fake_service.routes = {}
    _fake_service.requests = []
    return _fake_service


def make_ctx(*, allow=("127.0.0.1",), images: ImageLimits | None = None, **fetch) -> BackendContext:
    """A BackendContext like the engine builds, with a fetcher that may reach loopback test servers."""
    settings = Settings(fetch=FetchSettings(allow=list(allow), **fetch), images=images or ImageLimits())
    return BackendContext(settings=settings, http=httpx.AsyncClient(), fetcher=SafeFetcher(settings.fetch))


async def close_ctx(ctx: BackendContext) -> None:
    await ctx.http.aclose()
    await ctx.fetcher.aclose()


# -- text ------------------------------------------------------------------------------------------


def test_tokens_normalise_words():
    assert tokens("Red_Apples-on a TABLE.jpg") == ["red", "apple", "table"]
    assert tokens("redApple") == ["red", "apple"]
    assert tokens("berries boxes glasses bus") == ["berry", "box", "glass", "bus"]
    assert tokens("Ｆｕｌｌｗｉｄｔｈ") == ["fullwidth"]  # NFKC


def test_tokens_split_cjk_by_character():
    assert tokens("埃菲尔铁塔 at night") == ["埃", "菲", "尔", "铁", "塔", "night"]
    assert tokens("東京タワー2024") == ["東", "京", "タ", "ワ", "ー", "2024"]


def test_tokens_keep_stopwords_when_nothing_else_is_left():
    assert tokens("the") == ["the"]
    assert tokens("") == []


def test_overlap_is_the_share_of_query_words():
    assert overlap(["red", "apple"], ["apple", "tree"]) == 0.5
    assert overlap([], ["x"]) == 0.0


def test_strip_html_of_wikimedia_artist():
    html = '<a href="//commons.wikimedia.org/wiki/User:Jane" title="User:Jane">Jane &amp; Doe</a>\n(<i>talk</i>)'
    assert strip_html(html) == "Jane & Doe (talk)"
    assert strip_html("") == ""


def test_rank_by_title_is_stable():
    cands = [
        Candidate("u1", title="A map of Europe"),
        Candidate("u2", title="Eiffel Tower at night"),
        Candidate("u3", title="Tower bridge"),
        Candidate("u4", title="Another map"),
    ]
    ranked = rank_by_title(cands, "eiffel tower night")
    assert [c.image_url for c in ranked] == ["u2", "u3", "u1", "u4"]


# -- choosing --------------------------------------------------------------------------------------

GOOD = ImageData.from_bytes(make_png(500, 500))


def loader(outcomes: dict[str, object], calls: list[str]):
    async def load(c: Candidate):
        calls.append(c.image_url)
        out = outcomes[c.image_url]
        if isinstance(out, Exception):
            raise out
        return out, c.image_url + "?final"

    return load


async def test_choose_returns_the_first_valid_candidate_with_provenance():
    calls: list[str] = []
    outcomes = {
        "http://a/1.png": ToolError("not an image (starts with '<html>')", kind="invalid_image"),
        "http://a/2.png": GOOD,
        "http://a/3.png": GOOD,
    }
    cands = [
        Candidate("http://a/1.png", title="one"),
        Candidate("http://a/2.png", page_url="http://a/page2", title="two", license="CC BY 4.0", author="Ann",
                  extra={"license_url": "https://creativecommons.org/licenses/by/4.0/", "empty": ""}),
        Candidate("http://a/3.png"),
    ]
    result = await choose(cands, backend="test", query="q", options=CandidateOptions(), min_size=(400, 400),
                          load=loader(outcomes, calls))
    assert calls == ["http://a/1.png", "http://a/2.png"]
    assert result.image is GOOD
    assert result.provenance == {
        "backend": "test", "source_url": "http://a/2.png?final", "page_url": "http://a/page2", "title": "two",
        "license": "CC BY 4.0", "author": "Ann", "query": "q", "requested_url": "http://a/2.png",
        "license_url": "https://creativecommons.org/licenses/by/4.0/",
    }


async def test_choose_skips_reported_small_images_without_downloading():
    calls: list[str] = []
    cands = [Candidate("http://a/thumb.png", width=150, height=100), Candidate("http://a/big.png", width=800,
                                                                                height=600)]
    result = await choose(cands, backend="t", query="q", options=CandidateOptions(max_candidates=1),
                          min_size=(400, 400), load=loader({"http://a/big.png": GOOD}, calls))
    assert calls == ["http://a/big.png"]  # the thumbnail did not use up the single allowed download
    assert result.provenance["source_url"] == "http://a/big.png?final"


async def test_choose_explains_every_rejection():
    calls: list[str] = []
    outcomes = {f"http://a/{i}.png": ToolError(f"reason {i}", kind="invalid_image") for i in range(10)}
    cands = [Candidate(u) for u in outcomes]
    with pytest.raises(ToolError) as ei:
        await choose(cands, backend="t", query="cats", options=CandidateOptions(max_candidates=3),
                     min_size=(400, 400), load=loader(outcomes, calls))
    assert ei.value.kind == "no_result" and not isinstance(ei.value, TransientToolError)
    assert len(calls) == 3
    msg = str(ei.value)
    assert "[1] http://a/0.png: reason 0" in msg and "[3] http://a/2.png: reason 2" in msg and "reason 3" not in msg


async def test_choose_is_transient_when_every_failure_was():
    outcomes = {
        "u1": TransientToolError("429", kind="rate_limited", retry_after=4.0),
        "u2": TransientToolError("timeout", kind="timeout"),
    }
    with pytest.raises(TransientToolError) as ei:
        await choose([Candidate("u1"), Candidate("u2")], backend="t", query="q", options=CandidateOptions(),
                     min_size=(1, 1), load=loader(outcomes, []))
    assert ei.value.retry_after == 4.0


async def test_choose_with_no_candidates_and_duplicates():
    with pytest.raises(ToolError) as ei:
        await choose([], backend="t", query="nothing", options=CandidateOptions(), min_size=(1, 1),
                     load=loader({}, []))
    assert ei.value.kind == "no_result" and "no images" in str(ei.value)
    calls: list[str] = []
    bad = ToolError("bad", kind="invalid_image")
    with pytest.raises(ToolError):
        await choose([Candidate("u"), Candidate("u"), Candidate("u")], backend="t", query="q",
                     options=CandidateOptions(), min_size=(1, 1), load=loader({"u": bad}, calls))
    assert calls == ["u"]


async def test_choose_prefers_title_match_when_asked():
    calls: list[str] = []
    outcomes = {"u1": GOOD, "u2": GOOD}
    cands = [Candidate("u1", title="logo"), Candidate("u2", title="golden retriever puppy")]
    r = await choose(cands, backend="t", query="golden retriever", options=CandidateOptions(prefer_title_match=True),
                     min_size=(1, 1), load=loader(outcomes, calls))
    assert r.provenance["title"] == "golden retriever puppy"
    r = await choose(cands, backend="t", query="golden retriever", options=CandidateOptions(),
                     min_size=(1, 1), load=loader(outcomes, calls))
    assert r.provenance["title"] == "logo"


# -- secrets ---------------------------------------------------------------------------------------


def test_scrub_removes_keys():
    assert scrub("bad key sk-12345 given", ["sk-12345", None, ""]) == "bad key *** given"


def test_http_log_lines_are_redacted(caplog):
    redact_keys_in_http_logs()
    redact_keys_in_http_logs()  # idempotent
    with caplog.at_level(logging.INFO, logger="httpx"):
        url = httpx.URL("https://serpapi.com/search.json?engine=google_images&q=x&api_key=SECRETKEY123")
        logging.getLogger("httpx").info('HTTP Request: %s %s "%s %d %s"', "GET", url, "HTTP/1.1", 200, "OK")
    assert "SECRETKEY123" not in caplog.text
    assert "api_key=***" in caplog.text
