"""Events: one stream from the engine session, with a run id and a JSON form."""

from __future__ import annotations

import json

import pytest

from llmi import events as E
from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.engine import Engine

from . import fakes
from .fakes import png_for
from .test_engine import settings, tag


@pytest.fixture(autouse=True)
def fresh_record():
    fakes.register_all()
    fakes.RECORD.__init__()


def _samples() -> list:
    img = ImageBlock(png_for("a"), "search", "d", {"query": "a"}, {"backend": "fake"}, 0.25, slot=0,
                     call={"source": "search", "description": "d", "params": {"query": "a"}})
    fail = FailureBlock("edit", "index_out_of_range: no image 7", "index_out_of_range", "e", slot=1, raw="{...}")
    doc = Document([TextBlock("Hi "), img, fail], input_images=[png_for("user")])
    rid = "abc123def456"
    return [
        E.RunStarted("prompt", 1, ("search", "edit"), "openai", "m", run_id=rid),
        E.TextEvent("Hi ", run_id=rid),
        E.ThinkEvent("plan", run_id=rid),
        E.ToolStarted(0, "search", "d", {"query": "a"}, run_id=rid),
        E.ToolFinished(0, img, 0.25, run_id=rid),
        E.TagAmended(1, fail, run_id=rid),
        E.Usage({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, "stop", "m", run_id=rid),
        E.Error("the stream broke off", "llm_cut", run_id=rid),
        E.Stage("sample", "finished", {"n": 4}, {"tokens": 120}, run_id=rid),
        E.Done(doc, run_id=rid),
    ]


def test_every_event_type_round_trips_through_json():
    samples = _samples()
    assert {ev.type for ev in samples} == set(E.EVENT_TYPES)  # the samples cover every type
    for ev in samples:
        d = json.loads(json.dumps(ev.to_dict()))
        assert d["type"] == ev.type and d["run_id"] == "abc123def456"
        assert E.from_dict(d) == ev, ev.type


def test_bad_events_are_value_errors():
    with pytest.raises(ValueError, match="unknown event type"):
        E.from_dict({"type": "nope"})
    with pytest.raises(ValueError, match="bad text event"):
        E.from_dict({"type": "text", "txt": "x"})
    with pytest.raises(ValueError, match="status"):
        E.Stage("x", "halfway")


def test_a_light_form_leaves_the_image_bytes_out():
    done = _samples()[-1]
    light = done.to_dict(image_data=False)
    assert "data_base64" not in json.dumps(light)
    assert light["document"]["blocks"][1]["width"] == 16


async def test_render_path_events_come_from_the_engine_session_with_one_run_id():
    got: list = []
    resp = "Intro " + tag("search", "river", query="river") + " then " + tag("edit", "night", img_index=0, prompt="n")
    async with Engine(settings(), cache=False) as engine:
        doc = await engine.run_response(resp, on_event=got.append, run_id="r1")
    kinds = [e.type for e in got]
    assert kinds[0] == "run_started" and kinds[-1] == "done"
    assert kinds.count("tool_started") == 2 and kinds.count("tool_finished") == 2
    assert {e.run_id for e in got} == {"r1"}
    assert got[0].tools == ("search", "diffusion", "code", "edit")
    started = [e for e in got if isinstance(e, E.ToolStarted)]
    assert started[1].params == {"img_index": 0, "prompt": "n"}
    assert "".join(e.text for e in got if isinstance(e, E.TextEvent)) == doc.text == "Intro  then "
    assert got[-1].document is doc
    for e in got:  # every event of a real run has a JSON form
        json.dumps(e.to_dict())


async def test_relay_yields_what_the_coroutine_reports_then_its_result_or_error_and_cancels_on_close():
    import asyncio
    from contextlib import aclosing

    async def work(emit, *, fail=False, hang=False):
        emit("a")
        await asyncio.sleep(0)
        emit("b")
        if hang:
            await asyncio.sleep(60)
        if fail:
            raise ValueError("broke")
        return "done"

    relay = E.Relay(lambda emit: work(emit))
    assert [ev async for ev in relay.events()] == ["a", "b"] and relay.result == "done"

    seen = []
    with pytest.raises(ValueError, match="broke"):
        async for ev in E.Relay(lambda emit: work(emit, fail=True)).events():
            seen.append(ev)
    assert seen == ["a", "b"]  # every event first, then the error

    started = []

    async def hanging(emit):
        started.append(asyncio.current_task())
        return await work(emit, hang=True)

    async with aclosing(E.Relay(hanging).events()) as evs:
        async for ev in evs:
            if ev == "b":
                break
    assert started[0].cancelled()  # closing the iterator cancelled the work and waited for it
