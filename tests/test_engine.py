"""The engine: concurrency, edit dependencies, failures, retries, timeouts, fallbacks, caching."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from llmi.cache import Cache
from llmi.config import load_settings
from llmi.document import FailureBlock, ImageBlock
from llmi.engine import Engine
from llmi.events import ToolFinished, ToolStarted

from . import fakes
from .fakes import RECORD, png_for


@pytest.fixture(autouse=True)
def fresh_record():
    fakes.register_all()
    fakes.RECORD.__init__()
    yield


def settings(tools=None, backends=None, **kw):
    tools = tools or {}
    base = {t: {"backends": ["fake"], "retries": 0, "backoff_s": 0.01, "concurrency": 8} for t in ("search", "diffusion", "code", "edit")}
    for t, v in tools.items():
        base[t] = {**base[t], **v}
    return load_settings(overrides={"tools": base, "backends": backends or {}, "cache": {"enabled": False}, **kw}, environ={})


def tag(source, description, **params):
    return "<imgen>" + json.dumps({"source": source, "description": description, "params": params}) + "</imgen>"


async def run(resp, s=None, inputs=(), cache=False, events=None):
    async with Engine(s or settings(), cache=cache) as engine:
        return await engine.run_response(resp, inputs, on_event=events.append if events is not None else None)


async def test_independent_calls_run_concurrently_and_keep_order():
    s = settings(backends={"diffusion": {"fake": {"delay": 0.3}}})
    resp = "".join(f"p{i} " + tag("diffusion", f"d{i}", prompt=f"img{i}") for i in range(4)) + " end"
    t0 = time.monotonic()
    doc = await run(resp, s)
    assert time.monotonic() - t0 < 0.9  # 4 x 0.3 s in sequence would be 1.2 s
    assert RECORD.peak == 4
    assert [b.type for b in doc.blocks] == ["text", "image"] * 4 + ["text"]
    assert [b.params["prompt"] for b in doc.images] == [f"img{i}" for i in range(4)]
    assert doc.images[2].image == png_for("img2")
    assert doc.images[0].provenance["backend"] == "fake"
    assert doc.stats == {"diffusion": {"total": 4, "success": 4}}


async def test_per_tool_concurrency_limit():
    s = settings(tools={"search": {"concurrency": 2}}, backends={"search": {"fake": {"delay": 0.05}}})
    await run("".join(tag("search", "d", query=f"q{i}") for i in range(6)), s)
    assert RECORD.peak == 2


async def test_per_backend_concurrency_limit():
    s = settings(tools={"search": {"concurrency": 8}}, backends={"search": {"fake": {"delay": 0.05, "concurrency": 1}}})
    await run("".join(tag("search", "d", query=f"q{i}") for i in range(3)), s)
    assert RECORD.peak == 1


async def test_edit_waits_only_for_its_target_and_chains_work():
    s = settings(backends={"diffusion": {"fake": {"delay": 0.4}}, "edit": {"fake": {"delay": 0.05}}})
    user = png_for("user photo")
    resp = (
        tag("diffusion", "slow", prompt="slow")  # image 1
        + tag("edit", "e1", img_index=0, prompt="edit user")  # image 2 edits the user image
        + tag("edit", "e2", img_index=2, prompt="edit the edit")  # image 3 edits image 2
        + tag("edit", "e3", img_index=1, prompt="edit slow")  # image 4 waits for the slow one
    )
    doc = await run(resp, s, inputs=[user])
    assert all(isinstance(b, ImageBlock) for b in doc.slots)
    # the chain on the user image finished before the slow diffusion did
    assert RECORD.ends["edit the edit"] < RECORD.ends["slow"]
    assert RECORD.starts["edit slow"] >= RECORD.ends["slow"]
    e1, e2 = doc.slots[1], doc.slots[2]
    assert e1.image == png_for(user.sha256 + "edit user")
    assert e2.image == png_for(e1.image.sha256 + "edit the edit")


async def test_failure_propagates_down_an_edit_chain_with_its_reason():
    s = settings(backends={"diffusion": {"fake": {"fail_kind": "permanent"}}})
    resp = tag("diffusion", "base", prompt="base") + tag("edit", "e", img_index=0, prompt="x") + tag("edit", "e", img_index=1, prompt="y")
    doc = await run(resp, s)
    a, b, c = doc.slots
    assert isinstance(a, FailureBlock) and a.kind == "no_result" and "refused 'base'" in a.reason
    assert isinstance(b, FailureBlock) and b.kind == "dependency_failed" and "index 0" in b.reason and "refused" in b.reason
    assert isinstance(c, FailureBlock) and c.kind == "dependency_failed" and "index 1" in c.reason
    assert [call[0] for call in RECORD.calls] == ["diffusion"]  # the edits never ran


async def test_invalid_tags_become_failures_in_their_slot():
    resp = "a<imgen>{oops</imgen>b" + tag("search", "d", query="q") + "<imgen>{'source': 'video', 'description': 'd', 'params': {}}</imgen>"
    events = []
    doc = await run(resp, events=events)
    kinds = [b.kind if isinstance(b, FailureBlock) else "image" for b in doc.slots]
    assert kinds == ["unparseable_payload", "image", "unknown_source"]
    assert doc.text == "ab"
    assert doc.stats == {"search": {"total": 1, "success": 1}}
    assert [type(e) for e in events].count(ToolStarted) == 3
    assert sorted(e.index for e in events if isinstance(e, ToolFinished)) == [0, 1, 2]


async def test_transient_errors_are_retried_with_backoff():
    s = settings(tools={"search": {"retries": 2}}, backends={"search": {"fake": {"fail_times": 2}}})
    doc = await run(tag("search", "d", query="q"), s)
    assert isinstance(doc.slots[0], ImageBlock)
    assert RECORD.attempts["q"] == 3


async def test_retries_exhausted_is_a_failure_naming_attempts():
    s = settings(tools={"search": {"retries": 1}}, backends={"search": {"fake": {"fail_times": 5}}})
    doc = await run(tag("search", "d", query="q"), s)
    f = doc.slots[0]
    assert isinstance(f, FailureBlock) and f.kind == "rate_limited" and "after 2 attempts" in f.reason


async def test_retry_after_is_honoured():
    s = settings(tools={"search": {"retries": 1, "backoff_s": 0.0}}, backends={"search": {"fake": {"fail_times": 1, "retry_after": 0.3}}})
    t0 = time.monotonic()
    doc = await run(tag("search", "d", query="q"), s)
    assert isinstance(doc.slots[0], ImageBlock)
    assert time.monotonic() - t0 >= 0.3


async def test_timeout_per_attempt():
    s = settings(tools={"search": {"timeout_s": 0.1}}, backends={"search": {"fake": {"delay": 5}}})
    t0 = time.monotonic()
    doc = await run(tag("search", "d", query="q") + tag("search", "d", query="q"), s)
    assert time.monotonic() - t0 < 2
    assert all(isinstance(b, FailureBlock) and b.kind == "timeout" for b in doc.slots)


async def test_backend_crash_is_contained():
    s = settings(backends={"search": {"fake": {"fail_kind": "crash"}}})
    doc = await run(tag("search", "d", query="q") + tag("code", "c", code="x"), s)
    assert doc.slots[0].kind == "internal_error" and "RuntimeError: backend bug" in doc.slots[0].reason
    assert isinstance(doc.slots[1], ImageBlock)


async def test_fallback_chain_within_and_across_tools():
    s = settings(
        tools={"search": {"backends": ["fake", "fake2"]}},
        backends={"search": {"fake": {"fail_kind": "permanent"}}},
    )
    doc = await run(tag("search", "d", query="q"), s)
    img = doc.slots[0]
    assert img.provenance["backend"] == "fake2"
    assert "refused" in img.provenance["fallback_from"][0]

    s = settings(tools={"search": {"backends": ["fake", "diffusion:fake"]}}, backends={"search": {"fake": {"fail_kind": "permanent"}}})
    doc = await run(tag("search", "d", query="a cat"), s)
    img = doc.slots[0]
    assert img.tool == "search" and img.provenance["served_by_tool"] == "diffusion"
    assert ("diffusion", "fake", {"prompt": "a cat"}) in RECORD.calls


async def test_every_backend_failing_lists_each_reason():
    s = settings(tools={"search": {"backends": ["fake", "fake2", "nope"]}}, backends={"search": {"fake": {"fail_kind": "permanent"}, "fake2": {"fail_kind": "permanent"}}})
    f = (await run(tag("search", "d", query="q"), s)).slots[0]
    assert "fake refused" in f.reason and "fake2 refused" in f.reason and "unknown search backend 'nope'" in f.reason
    assert "fake: fake" not in f.reason and "fake2: fake2" not in f.reason  # each backend named once


async def test_no_backend_and_bad_options_are_clear_failures():
    s = settings(tools={"edit": {"backends": []}})
    doc = await run(tag("search", "d", query="q") + tag("edit", "e", img_index=0, prompt="p"), s)
    assert doc.slots[1].kind == "no_backend" and "tools.edit.backends" in doc.slots[1].reason

    s = settings(backends={"search": {"fake": {"bogus": 1}}})
    f = (await run(tag("search", "d", query="q"), s)).slots[0]
    assert f.kind == "misconfigured" and "bogus" in f.reason


async def test_cache_hits_skip_the_backend_and_persist(tmp_path):
    path = tmp_path / "c.sqlite"
    s = settings(backends={"edit": {"fake": {}}})
    user_a, user_b = png_for("a"), png_for("b")
    resp = tag("search", "d", query="q") + tag("edit", "e", img_index=0, prompt="p")
    cache = Cache(path)
    doc1 = await run(resp, s, inputs=[user_a], cache=cache)
    assert len(RECORD.calls) == 2 and len(cache) == 2
    doc2 = await run(resp, s, inputs=[user_a], cache=cache)
    assert len(RECORD.calls) == 2  # nothing ran again
    assert doc2.slots[0].provenance["cached"] is True
    assert [b.image for b in doc2.images] == [b.image for b in doc1.images]
    cache.close()
    # a new process / engine with the same file: still cached; a different input image misses
    cache = Cache(path)
    await run(resp, s, inputs=[user_b], cache=cache)
    assert [c[0] for c in RECORD.calls[2:]] == ["edit"]
    cache.close()


async def test_failures_are_not_cached(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    s = settings(backends={"search": {"fake": {"fail_kind": "permanent"}}})
    await run(tag("search", "d", query="q"), s, cache=cache)
    assert len(cache) == 0


async def test_streaming_session_starts_calls_before_the_response_ends():
    s = settings(backends={"diffusion": {"fake": {"delay": 0.2}}})
    from llmi.protocol import StreamParser

    async with Engine(s, cache=False) as engine:
        session = engine.session()
        parser = StreamParser(start_in_think=False)
        for seg in parser.feed("Intro " + tag("diffusion", "d", prompt="first") + " more"):
            session.add(seg)
        await asyncio.sleep(0.05)
        assert RECORD.running == 1  # the call is already running while the "model" still writes
        for seg in parser.feed(" text" + tag("diffusion", "d", prompt="second")) + parser.close():
            session.add(seg)
        doc = await session.finish(parser.violations)
    assert doc.text == "Intro  more text"
    assert len(doc.images) == 2


async def test_usable_tools_reflect_configuration():
    s = settings(tools={"edit": {"backends": []}, "code": {"backends": ["nope"]}})
    async with Engine(s, cache=False) as engine:
        assert engine.usable_tools() == ["search", "diffusion"]


_PIECES = [
    "text ", "\n", "```\n", "<think>", "</think>", "<imgen>", "</imgen>", "{", "}", "'", '"',
    tag("search", "d", query="q"), tag("code", "c", code="x"), tag("edit", "e", img_index=0, prompt="p"),
    tag("edit", "e", img_index=2, prompt="p"), tag("edit", "e", img_index=-1, prompt="p"),
    "{'source': 'edit', 'description': 'd', 'params': {'img_index': 1, 'prompt': 'p'}}", "Here is an image:\n",
]


def test_random_responses_through_the_engine_never_raise():
    from hypothesis import given, settings as hsettings, strategies as st

    s = settings(tools={"diffusion": {"backends": []}})

    @hsettings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from(_PIECES), max_size=25).map("".join), st.integers(0, 2))
    def check(response, n_inputs):
        inputs = [png_for(f"in{i}") for i in range(n_inputs)]
        doc = asyncio.run(run(response, s, inputs=inputs))
        from llmi.protocol import parse_response

        assert len(doc.slots) == len(parse_response(response, n_inputs).slots)
        for block in doc.slots:
            assert isinstance(block, (ImageBlock, FailureBlock))
            if isinstance(block, FailureBlock):
                assert block.reason and block.kind

    check()


# ---------------------------------------------------------------- review: edge cases found later


async def test_engine_used_without_async_with_says_how():
    engine = Engine(settings(), cache=False)
    with pytest.raises(RuntimeError, match="async with"):
        await engine.run_response(tag("search", "d", query="q"))
    with pytest.raises(RuntimeError, match="async with"):
        engine.session()
    from llmi.protocol import validate

    with pytest.raises(RuntimeError, match="async with"):
        await engine.execute(validate(json.dumps({"source": "search", "description": "d", "params": {"query": "q"}}), 0))
    async with engine:
        doc = await engine.run_response(tag("search", "d", query="q"))
        assert isinstance(doc.slots[0], ImageBlock)
    with pytest.raises(RuntimeError, match="async with"):  # closed again: its clients are gone
        await engine.run_response(tag("search", "d", query="q"))


async def test_retry_after_beyond_max_backoff_gives_up_instead_of_retrying_early():
    # retrying before the server's Retry-After only earns another 429; the chain moves on instead
    s = settings(
        tools={"search": {"retries": 3, "max_backoff_s": 0.05, "backends": ["fake", "fake2"]}},
        backends={"search": {"fake": {"fail_times": 9, "retry_after": 60}}},
    )
    t0 = time.monotonic()
    doc = await run(tag("search", "d", query="q"), s)
    assert time.monotonic() - t0 < 1
    img = doc.slots[0]
    assert isinstance(img, ImageBlock) and img.provenance["backend"] == "fake2"
    assert [c[1] for c in RECORD.calls] == ["fake", "fake2"]  # one attempt, not four
    assert "retry after 60 s" in img.provenance["fallback_from"][0] and "max_backoff_s" in img.provenance["fallback_from"][0]

    s = settings(tools={"search": {"retries": 3, "max_backoff_s": 0.05}}, backends={"search": {"fake": {"fail_times": 9, "retry_after": 60}}})
    f = (await run(tag("search", "d", query="q2"), s)).slots[0]
    assert isinstance(f, FailureBlock) and f.kind == "rate_limited" and "60" in f.reason


async def test_timeouts_count_per_attempt_and_are_retried():
    s = settings(tools={"search": {"timeout_s": 0.1, "retries": 2, "backoff_s": 0.01}}, backends={"search": {"fake": {"delay": 5}}})
    t0 = time.monotonic()
    f = (await run(tag("search", "d", query="q"), s)).slots[0]
    assert 0.3 <= time.monotonic() - t0 < 2
    assert RECORD.attempts["q"] == 3
    assert f.kind == "timeout" and "after 3 attempts" in f.reason


async def test_usable_tools_only_count_chain_entries_that_can_serve_the_tool():
    s = settings(tools={"edit": {"backends": ["diffusion:fake"]}, "code": {"backends": ["search:fake"]}, "search": {"backends": ["diffusion:fake"]}})
    async with Engine(s, cache=False) as engine:
        assert engine.usable_tools() == ["search", "diffusion"]


class _Garbage(fakes._Fake):
    tool, name = "search", "garbage"

    async def run(self, request):
        return {"image": "not a ToolResult"}


async def test_a_backend_returning_garbage_falls_through_the_chain():
    from llmi.tools import registry

    registry.register(_Garbage)
    try:
        s = settings(tools={"search": {"backends": ["garbage", "fake"]}})
        img = (await run(tag("search", "d", query="q"), s)).slots[0]
        assert isinstance(img, ImageBlock) and img.provenance["backend"] == "fake"
        assert "garbage" in img.provenance["fallback_from"][0] and "ToolResult" in img.provenance["fallback_from"][0]
        s = settings(tools={"search": {"backends": ["garbage"]}})
        f = (await run(tag("search", "d", query="q"), s)).slots[0]
        assert isinstance(f, FailureBlock) and f.kind == "internal_error"
    finally:
        registry.unregister("search", "garbage")


async def test_identical_calls_in_flight_are_coalesced_when_caching():
    s = settings(backends={"search": {"fake": {"delay": 0.2}}})
    resp = tag("search", "a", query="same") + tag("search", "b", query="same") + tag("search", "c", query="other")
    doc = await run(resp, s, cache=Cache(":memory:"))
    assert sorted(c[2]["query"] for c in RECORD.calls) == ["other", "same"]  # "same" ran once
    a, b, _ = doc.slots
    assert a.image == b.image and b.description == "b"
    assert [bool(x.provenance.get("cached")) for x in (a, b)] == [False, True]
    # without a cache each tag is its own call (a diffusion model may be asked twice on purpose)
    RECORD.__init__()
    await run(resp, s, cache=False)
    assert len(RECORD.calls) == 3


async def test_a_coalesced_failure_is_shared_and_a_cancelled_leader_does_not_cancel_followers():
    s = settings(backends={"search": {"fake": {"fail_kind": "permanent", "delay": 0.05}}})
    doc = await run(tag("search", "a", query="q") + tag("search", "b", query="q"), s, cache=Cache(":memory:"))
    assert [f.kind for f in doc.slots] == ["no_result", "no_result"] and len(RECORD.calls) == 1

    RECORD.__init__()
    s = settings(backends={"search": {"fake": {"delay": 0.2}}})
    async with Engine(s, cache=Cache(":memory:")) as engine:
        first, second = engine.session(), engine.session()
        for seg in engine_parse(tag("search", "a", query="q")):
            first.add(seg)
        await asyncio.sleep(0.05)
        for seg in engine_parse(tag("search", "b", query="q")):
            second.add(seg)
        await asyncio.sleep(0.02)
        await first.cancel()
        doc = await second.finish()
    assert isinstance(doc.slots[0], ImageBlock)
    assert RECORD.attempts["q"] == 2  # the follower ran the call itself once the leader was cancelled


def engine_parse(resp):
    from llmi.protocol import parse_response

    return parse_response(resp).segments


async def test_cancel_then_finish_keeps_each_slot_with_its_tool():
    s = settings(backends={"diffusion": {"fake": {"delay": 5}}})
    events = []
    async with Engine(s, cache=False) as engine:
        session = engine.session(on_event=events.append)
        for seg in engine_parse("a" + tag("diffusion", "slow", prompt="p") + tag("edit", "e", img_index=0, prompt="x") + "b"):
            session.add(seg)
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await session.cancel()
        doc = await session.finish()
        assert time.monotonic() - t0 < 1
    assert doc.text == "ab"
    assert [(f.tool, f.kind, f.description) for f in doc.slots] == [("diffusion", "cancelled", "slow"), ("edit", "cancelled", "e")]
    assert sorted(e.index for e in events if isinstance(e, ToolFinished)) == [0, 1]  # progress displays finish


async def test_edit_of_an_invalid_tag_fails_with_that_reason():
    resp = "<imgen>{'source': 'search'}</imgen>" + tag("edit", "e", img_index=0, prompt="p")
    doc = await run(resp)
    bad, e = doc.slots
    assert bad.kind == "missing_key"
    assert e.kind == "dependency_failed" and "index 0" in e.reason and "missing_key" in e.reason
    assert RECORD.calls == []


def test_cache_keys_are_stable_and_encodable():
    from llmi.cache import call_key

    a = call_key("search", "x", {"query": "été 月", "n": 1}, {"model": "m", "size": [1, 2]}, None)
    b = call_key("search", "x", {"n": 1, "query": "été 月"}, {"size": [1, 2], "model": "m"}, None)
    assert a == b and len(a) == 64
    assert call_key("search", "x", {"query": "e\u0301te"}, {}, None) != call_key("search", "x", {"query": "ète"}, {}, None)
    # a lone surrogate (which the protocol replaces, but a library caller may pass) must not crash
    assert len(call_key("search", "x", {"query": "\ud800"}, {}, None)) == 64


async def test_event_handler_errors_do_not_break_the_run():
    def handler(event):
        raise ValueError("display broke")

    async with Engine(settings(), cache=False) as engine:
        doc = await engine.run_response(tag("search", "d", query="q") + "<imgen>{bad</imgen>", on_event=handler)
    assert isinstance(doc.slots[0], ImageBlock) and doc.slots[1].kind == "unparseable_payload"


async def test_one_engine_shared_by_concurrent_runs_shares_backends_and_limits():
    s = settings(backends={"search": {"fake": {"delay": 0.05, "concurrency": 1}}})
    async with Engine(s, cache=False) as engine:
        docs = await asyncio.gather(*(engine.run_response(tag("search", "d", query=f"q{i}")) for i in range(4)))
        assert len([k for k in engine._instances if k == ("search", "fake")]) == 1
    assert all(isinstance(d.slots[0], ImageBlock) for d in docs)
    assert RECORD.peak == 1  # the per-backend limit holds across runs


async def test_unicode_params_through_the_cache(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    resp = "<imgen>{'source': 'search', 'description': '塔 \\ud83d\\ude00', 'params': {'query': 'tour \\ud800 été'}}</imgen>"
    doc = await run(resp, cache=cache)
    assert isinstance(doc.slots[0], ImageBlock), doc.slots[0]
    doc2 = await run(resp, cache=cache)
    assert doc2.slots[0].provenance.get("cached") is True
    cache.close()


async def test_a_cap_on_tags_per_response_keeps_later_tags_as_failures_in_their_slots():
    resp = "".join(f"p{i} " + tag("diffusion", f"d{i}", prompt=f"img{i}") for i in range(4))
    async with Engine(settings(), cache=False, max_tags=2) as engine:
        doc = await engine.run_response(resp)
    assert [b.type for b in doc.slots] == ["image", "image", "failure", "failure"]
    assert {b.kind for b in doc.failures} == {"too_many_tags"}
    assert "at most 2 tool calls" in doc.failures[0].reason
    assert [b.slot for b in doc.slots] == [0, 1, 2, 3]
    assert [c[2]["prompt"] for c in RECORD.calls] == ["img0", "img1"]  # the capped ones never ran
