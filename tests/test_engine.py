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
    assert "fake: fake refused" in f.reason and "fake2: fake2 refused" in f.reason and "unknown search backend 'nope'" in f.reason


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
        parser = StreamParser()
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
