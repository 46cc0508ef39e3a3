"""Editable documents: slots keep their call, a slot can be replaced (dependent edits re-run), the tagged
response comes back, the JSON keeps the user's images, and a sampling seed is part of a generative call."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from llmi.cache import Cache
from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.engine import Engine
from llmi.events import ToolFinished, ToolStarted
from llmi.protocol import InvalidTag, ToolCall, parse_response
from llmi.tools import registry
from llmi.tools.base import Backend, ToolRequest, ToolResult

from . import fakes
from .fakes import RECORD, png_for
from .test_engine import settings, tag
from .test_protocol_stream_agreement import RESPONSES


@pytest.fixture(autouse=True)
def fresh_record():
    fakes.register_all()
    fakes.RECORD.__init__()


CHAIN = (
    "Intro " + tag("diffusion", "a cat", prompt="cat")
    + " then " + tag("edit", "hat", img_index=1, prompt="add a hat")
    + " and " + tag("edit", "night", img_index=2, prompt="make it night")
    + " also " + tag("search", "a river", query="river")
    + " end " + tag("edit", "user photo", img_index=0, prompt="crop")
)


async def _doc(resp=CHAIN, inputs=None, s=None, **kw):
    inputs = [png_for("user")] if inputs is None else inputs
    async with Engine(s or settings(), cache=False) as engine:
        return await engine.run_response(resp, inputs, **kw)


def _calls(parsed):
    return [(c.index, c.source, c.description, c.params) for c in parsed.calls]


async def test_blocks_keep_their_slot_and_call_and_the_response_comes_back():
    doc = await _doc()
    assert [b.slot for b in doc.slots] == [0, 1, 2, 3, 4]
    assert doc.slots[1].call == {"source": "edit", "description": "hat", "params": {"img_index": 1, "prompt": "add a hat"}}
    again = parse_response(doc.to_response(), 1)
    assert _calls(again) == _calls(parse_response(CHAIN, 1))
    assert again.text == doc.text


async def test_to_response_keeps_invalid_tags_and_survives_hostile_descriptions():
    resp = "A " + tag("search", "s", query="q") + " B <imgen>{not json</imgen> C " + tag("code", "c", code="x = 1")
    doc = await _doc(resp, inputs=[])
    hostile = {"source": "search", "description": "a </imgen> in <think>here</think>", "params": {"query": "q"}}
    code = {"source": "code", "description": "c", "params": {"code": "print('<imgen></imgen>')\nx = '</think>'"}}
    doc = doc.with_slot(0, FailureBlock("search", "r", call=hostile)).with_slot(2, FailureBlock("code", "r", call=code))
    parsed = parse_response(doc.to_response())
    assert [type(s).__name__ for s in parsed.slots] == ["ToolCall", "InvalidTag", "ToolCall"]
    assert [{"source": c.source, "description": c.description, "params": c.params} for c in parsed.calls] == [hostile, code]
    assert parsed.slots[1].raw == "{not json" and doc.slots[1].raw == "{not json" and doc.slots[1].call is None
    assert parsed.text == doc.text == "A  B  C "


async def test_json_keeps_the_input_images_slots_and_calls():
    doc = await _doc()
    back = Document.from_dict(json.loads(json.dumps(doc.to_dict())))
    assert back.input_images == doc.input_images and len(back.input_images) == 1
    assert [b.slot for b in back.slots] == [0, 1, 2, 3, 4]
    assert [b.call for b in back.slots] == [b.call for b in doc.slots]
    assert back.to_response() == doc.to_response()


async def test_with_slot_is_pure():
    doc = await _doc()
    new = FailureBlock("search", "nothing found", "no_result")
    edited = doc.with_slot(3, new)
    assert edited.slots[3] == FailureBlock("search", "nothing found", "no_result", slot=3)
    assert doc.slots[3].type == "image"  # the original is untouched
    assert edited.blocks[0] is doc.blocks[0] and len(edited.blocks) == len(doc.blocks)
    with pytest.raises(IndexError):
        doc.with_slot(9, new)
    assert doc.with_text(0, "Hello ").blocks[0] == TextBlock("Hello ") and doc.blocks[0].text == "Intro "


async def test_replace_slot_reruns_the_chain_of_edits_that_depends_on_it():
    doc = await _doc()
    seen: list = []
    async with Engine(settings(), cache=False) as engine:
        new = await engine.replace_slot(doc, 0, {"source": "diffusion", "description": "a dog",
                                                 "params": {"prompt": "dog"}}, on_event=seen.append)
    assert new.slots[0].image == png_for("dog") and new.slots[0].call["params"] == {"prompt": "dog"}
    # slot 1 edits slot 0 (image index 1), slot 2 edits slot 1: both re-ran on the new images ...
    assert new.slots[1].image == png_for(new.slots[0].image.sha256 + "add a hat")
    assert new.slots[2].image == png_for(new.slots[1].image.sha256 + "make it night")
    assert new.slots[1].image != doc.slots[1].image and new.slots[2].image != doc.slots[2].image
    # ... the search and the edit of the user's photo did not
    assert new.slots[3] is doc.slots[3] and new.slots[4] is doc.slots[4]
    assert [e.index for e in seen if isinstance(e, ToolStarted)] == [0, 1, 2]
    assert [e.index for e in seen if isinstance(e, ToolFinished)] == [0, 1, 2]
    assert doc.slots[0].image == png_for("cat")  # the old document is unchanged
    assert parse_response(new.to_response(), 1).calls[0].params == {"prompt": "dog"}


async def test_replace_slot_with_a_failure_fails_its_dependents_and_a_block_is_used_as_given():
    doc = await _doc()
    async with Engine(settings(), cache=False) as engine:
        failed = await engine.replace_slot(doc, 0, FailureBlock("diffusion", "refused", "content_filter"))
        given = ImageBlock(png_for("drawn by hand"), "diffusion", "mine")
        mine = await engine.replace_slot(doc, 0, given)
        bad = await engine.replace_slot(doc, 3, {"source": "search", "params": {"query": "x"}})
    assert failed.slots[0].kind == "content_filter"
    assert failed.slots[1].kind == "dependency_failed" and "index 1" in failed.slots[1].reason
    assert failed.slots[2].kind == "dependency_failed"
    assert mine.slots[0].image == png_for("drawn by hand") and mine.slots[0].slot == 0
    assert mine.slots[1].image == png_for(png_for("drawn by hand").sha256 + "add a hat")
    assert bad.slots[3].kind == "missing_key"  # no description: not a valid call, it fails as a tag would


class Seeded(Backend):
    """A sampler: the image depends on the prompt and the seed (random without one)."""

    tool, name = "diffusion", "seeded"
    calls: list = []

    async def run(self, request: ToolRequest) -> ToolResult:
        Seeded.calls.append(request.seed)
        import random

        seed = request.seed if request.seed is not None else random.random()
        return ToolResult(png_for(f"{request.params['prompt']}|{seed}"), {"model": "seeded"})


@pytest.fixture
def seeded():
    registry.register(Seeded)
    Seeded.calls = []
    yield
    registry.unregister("diffusion", "seeded")


async def test_a_seed_is_part_of_a_generative_call_and_its_cache_key(tmp_path, seeded):
    s = settings(tools={"diffusion": {"backends": ["seeded"]}})
    resp = tag("diffusion", "d", prompt="a lighthouse")
    cache = Cache(tmp_path / "c.sqlite")
    async with Engine(s, cache=cache) as engine:
        seeded_docs = [await engine.run_response(resp, seed=k) for k in (1, 2, 3)]
        again = await engine.run_response(resp, seed=2)
        unseeded = [await engine.run_response(resp) for _ in range(3)]
    cache.close()
    images = [d.images[0].image for d in seeded_docs]
    assert len({im.sha256 for im in images}) == 3  # N seeds: N images
    assert again.images[0].image == images[1] and again.images[0].provenance.get("cached")
    assert len({d.images[0].image.sha256 for d in unseeded}) == 1  # no seed asked: one image
    assert Seeded.calls == [1, 2, 3, None]  # the backend was told the seed; repeats came from the cache


async def test_tool_calls_and_invalid_tags_made_by_hand_take_their_slot():
    doc = await _doc(inputs=[])
    async with Engine(settings(), cache=False) as engine:
        new = await engine.replace_slot(doc, 3, ToolCall(0, "search", "lake", {"query": "lake"}))
    assert new.slots[3].slot == 3 and new.slots[3].image == png_for("lake")
    with pytest.raises(IndexError):
        async with Engine(settings(), cache=False) as engine:
            await engine.replace_slot(doc, 7, FailureBlock("x", "y"))


def test_to_response_reads_back_as_the_document_for_any_response():
    """Whatever the response — reasoning first, a "</think>" left as text inside a code fence, unclosed,
    lenient or invalid tags — the document's tagged response parses back to the same text and the same
    slots (calls, and the kind of every invalid tag)."""
    import asyncio

    def slots(parsed):
        return [(type(s).__name__, getattr(s, "source", None), getattr(s, "params", None),
                 getattr(s, "kind", None)) for s in parsed.slots]

    loop = asyncio.new_event_loop()
    engine = Engine(settings(), cache=False)
    loop.run_until_complete(engine.__aenter__())  # one engine for every example
    inputs = [png_for(f"in{i}") for i in range(2)]

    @hyp_settings(max_examples=200, deadline=None)
    @given(RESPONSES, st.integers(0, 2))
    def check(response, n_input):
        doc = loop.run_until_complete(engine.run_response(response, inputs[:n_input]))
        whole, again = parse_response(response, n_input), parse_response(doc.to_response(), n_input)
        assert again.text == whole.text == doc.text
        assert slots(again) == slots(whole)

    try:
        check()
    finally:
        loop.run_until_complete(engine.aclose())
        loop.close()


def test_to_response_keeps_an_unclosed_tag_open_and_a_fenced_think_marker_as_text():
    fenced = "```\n</think>\n```\n"
    doc = Document(blocks=[TextBlock(fenced), FailureBlock("unknown", "r", "unclosed_tag", raw="{'a'", slot=0)])
    resp = doc.to_response()
    assert resp == "<think></think>" + fenced + "<imgen>{'a'"
    again = parse_response(resp)
    assert again.text == fenced and again.slots[0].kind.value == "unclosed_tag"


async def test_meta_is_kept_by_the_edits_and_the_json_and_shown_in_its_stats():
    doc = await _doc()
    assert doc.meta == {} and "meta" not in doc.to_dict()  # a plain generation writes no meta
    table = {"stages": {"sample": {"status": "finished", "llm_calls": 4}}, "total": {"llm_calls": 4}}
    doc = Document(doc.blocks, doc.violations, doc.input_images, meta={"tts": table})
    edited = doc.with_slot(3, FailureBlock("search", "none", "no_result")).with_text(0, "Hi ")
    assert edited.meta == {"tts": table} and edited.meta is not doc.meta
    async with Engine(settings(), cache=False) as engine:
        replaced = await engine.replace_slot(doc, 0, FailureBlock("diffusion", "refused", "content_filter"))
    assert replaced.meta == {"tts": table}
    d = json.loads(json.dumps(doc.to_dict()))
    assert d["meta"] == {"tts": table}
    assert d["stats"]["tts"] == table and d["stats"]["search"] == {"total": 1, "success": 1}  # counts kept
    back = Document.from_dict(d)
    assert back.meta == {"tts": table} and back.to_response() == doc.to_response()
    with pytest.raises(ValueError, match="meta"):
        Document.from_dict({**d, "meta": ["not", "an", "object"]})
