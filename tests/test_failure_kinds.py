"""Failure kinds people can filter on: a safe-fetcher refusal has one kind wherever it happens, and a
failure's reason names each backend once."""

from __future__ import annotations

import json

import pytest

from llmi.config import load_settings
from llmi.engine import Engine, _labelled
from llmi.errors import ToolError, UnsafeURLError
from llmi.protocol import parse_response
from llmi.tools.search.candidates import Candidate, CandidateOptions, choose
from tests.test_search_candidates import GOOD, _fake_service, loader, service  # noqa: F401
from tests.test_search_serpapi import KEY, result, serp_answer

METADATA = "http://169.254.169.254/latest/meta-data/x.png"  # refused by the safe fetcher, whatever the allow-list


async def _choose(outcomes):
    return await choose([Candidate(u) for u in outcomes], backend="serpapi", query="q", options=CandidateOptions(),
                        min_size=(1, 1), load=loader(outcomes, []))


async def test_every_candidate_refused_is_unsafe_url_not_no_result():
    outcomes = {"u1": UnsafeURLError("169.254.169.254 is a link-local address"),
                "u2": UnsafeURLError("10.0.0.7 is a private address", kind="unsafe_url")}
    with pytest.raises(UnsafeURLError) as ei:
        await _choose(outcomes)
    assert ei.value.kind == "unsafe_url"
    assert str(ei.value).count("serpapi") == 1 and "[2] u2: 10.0.0.7" in str(ei.value)


async def test_refusals_of_one_kind_keep_that_kind_and_mixed_ones_are_unsafe_url():
    big = {f"u{i}": UnsafeURLError("larger than the limit", kind="too_large") for i in range(2)}
    with pytest.raises(UnsafeURLError) as ei:
        await _choose(big)
    assert ei.value.kind == "too_large"  # what the fetcher says for a diffusion URL too
    mixed = {"u1": UnsafeURLError("internal", kind="unsafe_url"), "u2": UnsafeURLError("ftp://", kind="bad_scheme")}
    with pytest.raises(UnsafeURLError) as ei:
        await _choose(mixed)
    assert ei.value.kind == "unsafe_url"


async def test_a_refusal_among_other_rejections_is_still_no_result():
    outcomes = {"u1": UnsafeURLError("internal"), "u2": ToolError("not an image", kind="invalid_image")}
    with pytest.raises(ToolError) as ei:
        await _choose(outcomes)
    assert ei.value.kind == "no_result" and not isinstance(ei.value, UnsafeURLError)


def test_labelled_names_a_backend_once():
    assert _labelled("serpapi", "serpapi: none of 1 candidate(s)") == "serpapi: none of 1 candidate(s)"
    assert _labelled("serpapi", "SerpAPI: quota used up") == "SerpAPI: quota used up"
    assert _labelled("wikimedia", "wikimedia found no images for 'x'") == "wikimedia found no images for 'x'"
    assert _labelled("local", "no image matches") == "local: no image matches"
    assert _labelled("serp", "serpapi: x") == "serp: serpapi: x"  # a longer name is another backend


# ------------------------------------------------------------------------------------------------
# Through the engine: a search and a diffusion answer refused the same way fail with the same kind
# ------------------------------------------------------------------------------------------------


def _tag(source, **params):
    return "<imgen>" + json.dumps({"source": source, "description": "d", "params": params}) + "</imgen>"


async def test_search_and_diffusion_refusals_have_the_same_kind(service, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)
    b = service.base
    diffusion_answer = json.dumps({"created": 1, "data": [{"url": METADATA}]}).encode()
    service.routes = {
        "/search.json": (200, serp_answer(b, [result(1, "", METADATA, title="q"),
                                              result(2, "", "http://10.1.2.3/p.jpg", title="q")]),
                         "application/json", None),
        "/v1/images/generations": (200, diffusion_answer, "application/json", None),
    }
    library = tmp_path / "library"
    library.mkdir()
    settings = load_settings(overrides={
        "tools": {"search": {"backends": ["serpapi"], "retries": 0},
                  "diffusion": {"backends": ["openai"], "retries": 0}},
        "backends": {"search": {"serpapi": {"base_url": b}, "local": {"root": str(library)}},
                     "diffusion": {"openai": {"base_url": b + "/v1", "api_key": "sk-test-0123456789",
                                              "model": "dall-e-2", "response_format": "url"}}},
        "cache": {"enabled": False},
        "fetch": {"allow": ["127.0.0.1"]},
    }, environ={})
    response = _tag("search", query="red panda") + _tag("diffusion", prompt="a red panda")
    async with Engine(settings, cache=False) as engine:
        doc = await engine.run_response(response)
    search, diffusion = doc.failures
    assert search.kind == diffusion.kind == "unsafe_url"
    assert search.reason.startswith("serpapi: none of 2 candidate(s)")

    # two search backends: each reason names its backend once
    chained = settings.model_copy(deep=True)
    chained.tools["search"].backends = ["serpapi", "local"]
    async with Engine(chained, cache=False) as engine:
        doc = await engine.run_response(_tag("search", query="red panda"))
    (failure,) = doc.failures
    assert "serpapi: serpapi" not in failure.reason and failure.reason.count("serpapi:") == 1
    assert "; local: " in failure.reason
