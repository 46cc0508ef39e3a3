"""generate / agenerate / stream and ``llmi generate``: a streamed response through the real engine.

The LLM is the loopback SSE server; tools are fake backends registered like plugins (they sleep, then
return a PNG), plus — when they are installed — the real chart sandbox and the local image library.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import ClassVar

import pytest

import llmi.generation as G
from llmi.config import load_settings
from llmi.document import FailureBlock, ImageBlock
from llmi.errors import ConfigError, LLMUnreachable
from llmi.events import TextEvent, ThinkEvent, ToolFinished, ToolStarted
from llmi.images import ImageData
from llmi.tools import registry
from llmi.tools.base import Backend, BackendOptions, ToolRequest, ToolResult

from .helpers import make_png
from .sse_server import Script, SSEServer, split_every


class FakeOptions(BackendOptions):
    latency_s: float = 0.0


class _Fake(Backend):
    Options = FakeOptions
    calls: ClassVar[list] = []
    cancelled: ClassVar[list] = []

    async def run(self, request: ToolRequest) -> ToolResult:
        type(self).calls.append((time.perf_counter(), request))
        try:
            await asyncio.sleep(self.options.latency_s)
        except asyncio.CancelledError:
            _Fake.cancelled.append(request.description)
            raise
        color = (10, 200, 10) if request.input_image is None else (200, 10, 200)
        return ToolResult(ImageData.from_bytes(make_png(16, 12, color)), {"model": f"fake-{self.tool}"})


class FakeCode(_Fake):
    tool, name = "code", "fake"


class FakeSearch(_Fake):
    tool, name = "search", "fake"


class FakeEdit(_Fake):
    tool, name = "edit", "fake"


@pytest.fixture(autouse=True)
def fakes():
    for cls in (FakeCode, FakeSearch, FakeEdit):
        registry.register(cls)
    _Fake.calls = []
    _Fake.cancelled = []
    yield
    for cls in (FakeCode, FakeSearch, FakeEdit):
        registry.unregister(cls.tool, cls.name)


def settings_for(url: str, latency: float = 0.0, *, tools=("code", "search", "edit"), **llm):
    over = {
        "llm": {"base_url": url, "model": "test-model", **llm},
        "tools": {t: {"backends": ["fake"] if t in tools else []} for t in ("code", "search", "edit", "diffusion")},
        "backends": {t: {"fake": {"latency_s": latency}} for t in ("code", "search", "edit")},
        "cache": {"enabled": False},
    }
    return load_settings(overrides=over, environ={})


def tag(source: str, desc: str, **params) -> str:
    return "<imgen>" + json.dumps({"source": source, "description": desc, "params": params}) + "</imgen>"


RESPONSE = (
    "<think>plan: a chart, then a photo</think>"
    "# Sales\n\nSales rose in spring.\n\n"
    + tag("code", "Monthly sales", code="plt.bar([1, 2], [3, 4])")
    + "\n\nThe office by the river.\n\n"
    + tag("search", "Office by the river", query="office river")
    + "\n\nThe same office at night.\n\n"
    + tag("edit", "Office at night", img_index=1, prompt="make it night")
    + "\n\nThat is all."
)


async def test_stream_events_and_document_in_order():
    with SSEServer(Script(content=split_every(RESPONSE, 7))) as srv:
        events = [ev async for ev in G.stream("Write about sales.", settings=settings_for(srv.base_url))]
    kinds = [e.type for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    doc = events[-1].document
    assert [b.type for b in doc.blocks] == ["text", "image", "text", "image", "text", "image", "text"]
    assert [b.tool for b in doc.slots] == ["code", "search", "edit"]
    assert doc.images[2].provenance["backend"] == "fake"
    assert "plan:" not in doc.text and doc.text.startswith("# Sales")  # think dropped
    assert "".join(e.text for e in events if isinstance(e, ThinkEvent)) == "plan: a chart, then a photo"
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == doc.text
    started = [e.index for e in events if isinstance(e, ToolStarted)]
    finished = sorted(e.index for e in events if isinstance(e, ToolFinished))
    assert started == [0, 1, 2] and finished == [0, 1, 2]
    # the edit got the search result (index 1: no user images, so slot 1) as its input image
    edit_req = [r for _, r in _Fake.calls if r.tool == "edit"][0]
    assert edit_req.input_image == doc.images[1].image


async def test_tools_start_while_the_model_is_still_writing():
    """Tag 0 closes early; its tool must start long before the stream ends, and overlap the writing."""
    pieces = split_every(RESPONSE, 7)
    delay, latency = 0.01, 0.3
    with SSEServer(Script(content=pieces, delay_s=delay)) as srv:
        trace = G.Trace()
        t0 = time.perf_counter()
        doc = await G.agenerate("Write.", settings=settings_for(srv.base_url, latency), trace=trace)
        wall = time.perf_counter() - t0
    decode = trace.timings["llm_done_s"]
    assert decode >= delay * len(pieces) * 0.9
    code_call = trace.tool_calls[0]
    assert code_call.started_at < decode * 0.6  # started while the model was writing
    # independent tags overlap the writing; the edit waits for its search: bound ≈ D + 2L (+ slack)
    assert wall < decode + 2 * latency + 0.4, (wall, decode)
    assert len(doc.images) == 3


async def test_system_prompt_advertises_only_usable_tools_and_can_be_replaced(tmp_path):
    with SSEServer(Script(content=["Just text."])) as srv:
        await G.agenerate("Hi", settings=settings_for(srv.base_url, tools=("code",)))
        system = srv.requests[0]["messages"][0]["content"]
        assert "`code`" in system and "plt" in system
        assert "`search`" not in system and "`diffusion`" not in system and "img_index" not in system

        await G.agenerate("Hi", settings=settings_for(srv.base_url, tools=("code", "edit")))
        system = srv.requests[1]["messages"][0]["content"]
        assert "`edit`" in system and "img_index" in system and "Image numbers" in system

        custom = tmp_path / "mine.md"
        custom.write_text("House style. Tools:\n{{TOOLS}}\n", encoding="utf-8")
        trace = G.Trace()
        await G.agenerate("Hi", settings=settings_for(srv.base_url, tools=("search",)), system_prompt_file=custom,
                          trace=trace)
        system = srv.requests[2]["messages"][0]["content"]
        assert system.startswith("House style.") and "`search`" in system and "`code`" not in system
        assert trace.system_prompt_name == str(custom) and len(trace.system_prompt_sha256) == 64

        with pytest.raises(ConfigError, match="system prompt file"):
            await G.agenerate("Hi", settings=settings_for(srv.base_url), system_prompt_file=tmp_path / "nope.md")


async def test_user_images_are_sent_to_a_vision_model_and_editable_by_index():
    user_png = make_png(20, 20, (1, 2, 3))
    response = "Your photo, recoloured.\n\n" + tag("edit", "Recoloured", img_index=0, prompt="make it blue")
    with SSEServer(Script(content=split_every(response, 5))) as srv:
        doc = await G.agenerate("Recolour my photo", images=[user_png], settings=settings_for(srv.base_url))
        user = srv.requests[0]["messages"][-1]["content"]
    assert [p["type"] for p in user] == ["text", "image_url"]
    assert "numbered 0" in user[0]["text"] and "cannot see" not in user[0]["text"]
    assert doc.input_images[0].data == user_png
    assert doc.slots[0].type == "image"
    edit_req = [r for _, r in _Fake.calls if r.tool == "edit"][0]
    assert edit_req.input_image.data == user_png


async def test_text_only_model_is_told_it_cannot_see_the_images_but_may_edit_them():
    response = tag("edit", "Recoloured", img_index=1, prompt="make it blue")
    with SSEServer(Script(content=[response])) as srv:
        doc = await G.agenerate("Recolour", images=[make_png(), make_png(9, 9)],
                                settings=settings_for(srv.base_url, vision=False))
        user = srv.requests[0]["messages"][-1]["content"]
    assert isinstance(user, str)  # no image parts
    assert "cannot see them" in user and "numbered 0 to 1" in user and "`edit`" in user
    assert "first tag will be image 2" in user
    assert doc.slots[0].type == "image"
    assert [r for _, r in _Fake.calls if r.tool == "edit"][0].input_image.width == 9


async def test_failure_mid_stream_keeps_the_partial_document_and_the_trace(tmp_path):
    pieces = ["Intro.\n\n", tag("code", "Chart", code="x"), "\n\nMore text ", "<imgen>{\"source\": \"se"]
    with SSEServer(Script(content=pieces, fail_after=4, fail="drop")) as srv:
        path = tmp_path / "t.json"
        with pytest.raises(G.GenerationError) as info:
            await G.agenerate("Write", settings=settings_for(srv.base_url), trace_path=path)
    doc = info.value.document
    assert doc.text.startswith("Intro.") and "More text" in doc.text
    assert isinstance(doc.slots[0], ImageBlock)  # the finished chart is kept
    assert isinstance(doc.slots[1], FailureBlock) and doc.slots[1].kind == "unclosed_tag"
    saved = json.loads(path.read_text())
    assert "broke off" in saved["error"] and saved["raw_response"].endswith('{"source": "se')
    assert saved["tool_calls"][0]["outcome"] == "image"


async def test_unreachable_llm_raises_without_a_document():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    s.close()
    with pytest.raises(LLMUnreachable) as info:
        await G.agenerate("Write", settings=settings_for(url))
    assert url in str(info.value)
    assert not isinstance(info.value, G.GenerationError)


async def test_trace_records_every_call_with_timing_backend_and_outcome(tmp_path):
    response = ("<think>hmm</think>A.\n" + tag("code", "C", code="x") + "\nB.\n"
                + tag("diffusion", "D", prompt="a cat") + "\n" + "<imgen>{bad json</imgen>")
    with SSEServer(Script(content=split_every(response, 11))) as srv:
        trace = G.Trace()
        doc = await G.agenerate("Write", settings=settings_for(srv.base_url), trace=trace)
    d = trace.to_dict()
    assert d["prompt"] == "Write" and d["model"] == "test-model" and d["llm_backend"] == "openai"
    assert d["raw_response"] == response and d["think"] == "hmm"
    assert d["usage"]["prompt_tokens"] == 9
    assert [c["outcome"] for c in d["tool_calls"]] == ["image", "failure", "failure"]
    c0, c1, c2 = d["tool_calls"]
    assert c0["backend"] == "fake" and c0["params"] == {"code": "x"} and c0["elapsed_s"] is not None
    assert c1["kind"] == "no_backend" and c1["source"] == "diffusion"
    assert c2["kind"] == "unparseable_payload" and c2["params"]["raw"] == "{bad json"
    assert d["violations"][0]["kind"] == "invalid_tag"
    assert set(d["timings"]) >= {"first_token_s", "llm_done_s", "total_s", "tools_after_text_s"}
    assert len(doc.slots) == 3


def test_sync_generate_and_its_refusal_inside_a_loop():
    with SSEServer(Script(content=["Plain ", "text."])) as srv:
        doc = G.generate("Write", settings=settings_for(srv.base_url))
    assert doc.text == "Plain text."

    async def inside():
        with pytest.raises(RuntimeError, match="agenerate"):
            G.generate("Write")

    asyncio.run(inside())


async def test_stopping_the_stream_early_cancels_pending_tools():
    response = tag("code", "Slow", code="x") + "after"
    with SSEServer(Script(content=[response, " more", " text"], delay_s=0.05)) as srv:
        agen = G.stream("Write", settings=settings_for(srv.base_url, latency=5.0))
        async for ev in agen:
            if isinstance(ev, ToolStarted):
                break
        t0 = time.perf_counter()
        await agen.aclose()
        assert time.perf_counter() - t0 < 2.0  # did not wait for the 5 s tool


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def _cli(args, settings_toml: str, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import importlib

    from llmi.cli import app

    # Register every subcommand, as llmi.cli.main does (with one command typer would drop its name).
    for mod in ("generate", "render", "doctor", "reward"):
        try:
            importlib.import_module(f"llmi.cli.{mod}")
        except ImportError:
            pass

    cfg = tmp_path / "llmi.toml"
    cfg.write_text(settings_toml, encoding="utf-8")
    for var in ("LLMI_BASE_URL", "LLMI_MODEL", "LLMI_API_KEY", "LLMI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return CliRunner().invoke(app, ["generate", *args, "--config", str(cfg)])


TOML = """
[tools.code]
backends = ["fake"]
[tools.search]
backends = ["fake"]
[tools.edit]
backends = ["fake"]
[cache]
enabled = false
"""


def test_cli_writes_the_document_streams_text_and_saves_the_trace(tmp_path, monkeypatch):
    out = tmp_path / "out.html"
    with SSEServer(Script(content=split_every(RESPONSE, 9)), models=["served-model"]) as srv:
        res = _cli(["Write about sales.", "-o", str(out), "--base-url", srv.base_url, "--trace"],
                   TOML, tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    assert "Sales rose in spring." in res.stdout  # the streamed text
    assert "plan:" not in res.stdout
    err = " ".join(res.stderr.split())  # rich wraps long lines
    assert "wrote" in err and "3 image(s)" in err and "done in" in err
    html = out.read_text()
    assert html.count("<img") >= 3
    trace = json.loads((tmp_path / "out.trace.json").read_text())
    assert trace["model"] == "served-model" and len(trace["tool_calls"]) == 3


def test_cli_without_a_reachable_llm_exits_nonzero_with_one_message(tmp_path, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    s.close()
    res = _cli(["Write", "-o", str(tmp_path / "o.md"), "--base-url", url], TOML, tmp_path, monkeypatch)
    assert res.exit_code == 2
    err = " ".join(res.stderr.split())
    assert url in err and "vllm serve" in err and "ollama serve" in err and "LLMI_BASE_URL" in err
    assert "Traceback" not in res.output
    assert not (tmp_path / "o.md").exists()


def test_cli_mid_stream_failure_writes_the_partial_document_and_exits_1(tmp_path, monkeypatch):
    out = tmp_path / "o.json"
    with SSEServer(Script(content=["Intro.\n", tag("code", "C", code="x"), "tail"], fail_after=2)) as srv:
        res = _cli(["Write", "-o", str(out), "--base-url", srv.base_url, "-m", "x"], TOML, tmp_path, monkeypatch)
    assert res.exit_code == 1, res.output
    assert "partial document written" in " ".join(res.stderr.split())
    data = json.loads(out.read_text())
    assert [b["type"] for b in data["blocks"]] == ["text", "image"]


# ------------------------------------------------------------------------------------------------
# End to end with the real chart sandbox and the local library
# ------------------------------------------------------------------------------------------------


def _real_backends_available() -> bool:
    try:
        registry.get("code", "sandbox")
        registry.get("search", "local")
    except ConfigError:
        return False
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _real_backends_available(), reason="code.sandbox / search.local not installed")
async def test_end_to_end_with_real_charts_and_the_local_library(tmp_path):
    from PIL import Image

    lib = tmp_path / "lib"
    lib.mkdir()
    Image.new("RGB", (480, 480), (30, 90, 200)).save(lib / "river-bridge-at-night.png")
    response = (
        "## Rainfall\n\nIt rained most in May.\n\n"
        + tag("code", "Monthly rainfall", code="plt.bar(['Apr', 'May'], [53, 65])\nplt.title('Rain (mm)')")
        + "\n\nThe old bridge.\n\n"
        + tag("search", "The river bridge at night", query="river bridge night")
        + "\n"
    )
    over = {
        "llm": {"model": "m"},
        "tools": {"code": {"backends": ["sandbox"]}, "search": {"backends": ["local"]}},
        "backends": {"search": {"local": {"root": str(lib)}}},
        "cache": {"enabled": False},
    }
    with SSEServer(Script(content=split_every(response, 6))) as srv:
        over["llm"]["base_url"] = srv.base_url
        settings = load_settings(overrides=over, environ={})
        from llmi.engine import Engine

        async with Engine(settings, cache=False) as engine:
            if engine.usable_tools() != ["search", "code"]:
                pytest.skip(f"real backends not usable here: {engine.usable_tools()}")
            doc = await G.agenerate("Rain and a bridge", settings=settings, engine=engine)
    assert [b.type for b in doc.blocks] == ["text", "image", "text", "image", "text"], doc.failures
    chart, photo = doc.images
    assert chart.tool == "code" and chart.mime == "image/png" and chart.width > 200
    assert photo.tool == "search" and photo.width == 480


# ------------------------------------------------------------------------------------------------
# Stopping early: the consumer breaks out, or the run is cancelled (Ctrl-C)
# ------------------------------------------------------------------------------------------------


def _watch_loop_errors() -> list[dict]:
    """What the loop reports through its exception handler ("Task was destroyed but it is pending!",
    "Task exception was never retrieved", ...)."""
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    return errors


def _our_tasks() -> list[str]:
    """Run tasks still alive besides the test itself."""
    me = asyncio.current_task()
    return [t.get_coro().__qualname__ for t in asyncio.all_tasks() if t is not me and not t.done()]


async def _until(cond, timeout: float = 5.0) -> bool:
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


SLOW_THEN_LONG = [tag("code", "Slow chart", code="x"), "\n\n"] + [" word"] * 300


async def test_breaking_out_of_the_stream_cancels_tools_and_hangs_up_on_the_llm():
    import gc

    errors = _watch_loop_errors()
    with SSEServer(Script(content=SLOW_THEN_LONG, delay_s=0.02)) as srv:
        async for ev in G.stream("Write", settings=settings_for(srv.base_url, latency=30.0)):
            if isinstance(ev, ToolStarted):
                break  # no aclose(): the generator is dropped, and asyncio's finaliser closes it
        assert await _until(lambda: _Fake.cancelled == ["Slow chart"] and srv.hangups == 1), (
            _Fake.cancelled, srv.hangups)
        assert await _until(lambda: not _our_tasks()), _our_tasks()
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


async def test_cancelling_a_run_cancels_tools_closes_the_stream_and_saves_the_trace(tmp_path):
    import gc

    errors = _watch_loop_errors()
    started = asyncio.Event()
    path = tmp_path / "t.json"
    with SSEServer(Script(content=SLOW_THEN_LONG, delay_s=0.02)) as srv:
        run = asyncio.ensure_future(G.agenerate(
            "Write", settings=settings_for(srv.base_url, latency=30.0), trace_path=path,
            on_event=lambda ev: isinstance(ev, ToolStarted) and started.set()))
        await asyncio.wait_for(started.wait(), 10)
        t0 = time.perf_counter()
        run.cancel()  # what asyncio.run does to the main task on Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await run
        assert time.perf_counter() - t0 < 2.0
        assert _Fake.cancelled == ["Slow chart"]
        assert await _until(lambda: srv.hangups == 1)
        assert not _our_tasks()
    saved = json.loads(path.read_text())
    call = saved["tool_calls"][0]
    # never finished: "pending", or — with an engine that reports cancelled calls — a "cancelled" failure
    assert call["outcome"] == "pending" or (call["outcome"], call["kind"]) == ("failure", "cancelled"), call
    assert saved["raw_response"].startswith("<imgen>")
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


def _processes_mentioning(text: str) -> list[int]:
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not _real_backends_available(), reason="code.sandbox not installed")
async def test_cancelling_a_run_leaves_no_chart_processes(tmp_path, monkeypatch):
    """A chart that never ends is running when the run is cancelled: its worker and the worker's forked
    chart child must both be gone afterwards (the workers' temp folders, and so their command lines, are
    under tmp_path, which tells them apart from other tests' workers)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    over = {"llm": {"model": "m"}, "tools": {"code": {"backends": ["sandbox"]}, "search": {"backends": []},
                                             "edit": {"backends": []}, "diffusion": {"backends": []}},
            "cache": {"enabled": False}}
    forever = tag("code", "Forever", code="x = 0\nwhile True:\n    x += 1\n")
    started = asyncio.Event()
    with SSEServer(Script(content=[forever] + [" word"] * 300, delay_s=0.02)) as srv:
        over["llm"]["base_url"] = srv.base_url
        settings = load_settings(overrides=over, environ={})
        run = asyncio.ensure_future(G.agenerate(
            "Write", settings=settings, on_event=lambda ev: isinstance(ev, ToolStarted) and started.set()))
        await asyncio.wait_for(started.wait(), 10)
        # wait until the worker has forked the chart's child (two processes with our temp folder)
        assert await _until(lambda: len(_processes_mentioning(str(tmp_path))) >= 2, 15), \
            _processes_mentioning(str(tmp_path))
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert await _until(lambda: not _processes_mentioning(str(tmp_path)), 5), _processes_mentioning(str(tmp_path))


async def test_a_hundred_tags_respect_tool_concurrency_and_keep_order():
    response = "".join(f"Paragraph {i}.\n" + tag("search", f"photo {i}", query=f"q{i}") + "\n" for i in range(100))
    settings = settings_for("http://unused", latency=0.01)
    settings.tools["search"].concurrency = 3
    running = peak = 0
    original = FakeSearch.run

    async def counting(self, request):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await original(self, request)
        finally:
            running -= 1

    FakeSearch.run = counting
    try:
        with SSEServer(Script(content=split_every(response, 13))) as srv:
            settings.llm.base_url = srv.base_url
            doc = await G.agenerate("Write a lot", settings=settings)
    finally:
        FakeSearch.run = original
    assert len(doc.images) == 100 and peak == 3
    assert [b.description for b in doc.slots] == [f"photo {i}" for i in range(100)]
    assert doc.text.startswith("Paragraph 0.") and "Paragraph 99." in doc.text


async def test_a_tag_the_model_never_closes_is_a_failure_and_the_rest_is_kept():
    response = "Intro.\n" + tag("code", "C", code="x") + "\nAnd then <imgen>{\"source\": \"search\", \"description\": \"d\""
    with SSEServer(Script(content=split_every(response, 5))) as srv:
        doc = await G.agenerate("Write", settings=settings_for(srv.base_url))
    assert [b.type for b in doc.slots] == ["image", "failure"]
    assert doc.slots[1].kind == "unclosed_tag"
    assert [v.kind for v in doc.violations] == ["unclosed_tag"]
    assert doc.text == "Intro.\n\nAnd then "


async def test_generate_and_render_agree_on_an_edit_past_the_last_tag():
    response = "A.\n" + tag("code", "C", code="x") + tag("edit", "E", img_index=7, prompt="p")
    with SSEServer(Script(content=split_every(response, 4))) as srv:
        doc = await G.agenerate("Write", settings=settings_for(srv.base_url))
    assert doc.slots[1].kind == "index_out_of_range"
    assert "out of range" in doc.violations[0].detail


# ------------------------------------------------------------------------------------------------
# The CLI against other servers' dialects, and its sampling flags
# ------------------------------------------------------------------------------------------------


def test_cli_sampling_flags_and_extra_body_reach_the_request(tmp_path, monkeypatch):
    toml = TOML + "[llm]\nextra_body = { repetition_penalty = 1.05, chat_template_kwargs = { keep = 1 } }\n"
    with SSEServer(Script(content=["Plain text."])) as srv:
        res = _cli(["Write", "-o", str(tmp_path / "o.md"), "--base-url", srv.base_url, "-m", "m",
                    "--temperature", "0.1", "--top-p", "0.8", "--max-tokens", "300", "--no-think", "--seed", "77",
                    "--extra-body", '{"top_k": 20, "chat_template_kwargs": {"x": 1}}'], toml, tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    body = srv.requests[0]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.1, 0.8, 300, 77)
    assert body["top_k"] == 20 and body["repetition_penalty"] == 1.05  # flag and config merged
    assert body["chat_template_kwargs"] == {"keep": 1, "x": 1, "enable_thinking": False}


@pytest.mark.parametrize("bad, why", [("{nope", "not valid JSON"), ("[1, 2]", "must be a JSON object")])
def test_cli_rejects_a_bad_extra_body_before_calling_anything(bad, why, tmp_path, monkeypatch):
    with SSEServer(Script(content=["x"])) as srv:
        res = _cli(["Write", "-o", str(tmp_path / "o.md"), "--base-url", srv.base_url, "--extra-body", bad],
                   TOML, tmp_path, monkeypatch)
    assert res.exit_code == 2 and why in " ".join(res.stderr.split())
    assert srv.requests == [] and "Traceback" not in res.output


@pytest.mark.parametrize("style, key", [("ollama", "reasoning"), ("vllm", "reasoning_content"),
                                        ("llamacpp", "reasoning_content"), ("azure", "reasoning_content")])
def test_cli_end_to_end_with_each_servers_dialect(style, key, tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    with SSEServer(Script(reasoning=["I will chart it."], content=split_every(RESPONSE.split("</think>")[1], 9),
                          style=style, reasoning_key=key, usage=style != "ollama"), models=["only"]) as srv:
        res = _cli(["Write about sales.", "-o", str(out), "--base-url", srv.base_url, "--trace"],
                   TOML, tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    assert "Sales rose in spring." in res.stdout and "I will chart it." not in res.stdout
    data = json.loads(out.read_text())
    assert [b["type"] for b in data["blocks"]].count("image") == 3
    trace = json.loads((tmp_path / "out.trace.json").read_text())
    assert trace["think"] == "I will chart it." and trace["model"] == "only" and trace["finish_reason"] == "stop"
    assert trace["usage"] is None if style == "ollama" else trace["usage"]["prompt_tokens"] == 9


def test_cli_warns_when_the_model_stopped_at_max_tokens(tmp_path, monkeypatch):
    with SSEServer(Script(content=["Intro.\n\n", "cut in the mid"], finish_reason="length")) as srv:
        res = _cli(["Write", "-o", str(tmp_path / "o.md"), "--base-url", srv.base_url, "-m", "m", "--max-tokens", "5",
                    "--trace"], TOML, tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())
    assert "stopped at max_tokens (5)" in err and "--max-tokens" in err
    assert json.loads((tmp_path / "o.trace.json").read_text())["finish_reason"] == "length"


# ------------------------------------------------------------------------------------------------
# Requests, one event stream, reasoning without an opening <think>, concurrent runs
# ------------------------------------------------------------------------------------------------


async def test_a_request_carries_sampling_seed_history_system_prompt_and_tools():
    from llmi.request import Request, Sampling

    history = ({"role": "user", "content": "Earlier question"}, {"role": "assistant", "content": "Earlier answer"})
    req = Request("Now this", history=history, sampling=Sampling(temperature=0.1, seed=1234, max_tokens=50),
                  tools=("search",), run_id="run-1")
    response = tag("search", "river", query="river") + tag("code", "c", code="x")
    with SSEServer(Script(content=[response])) as srv:
        trace = G.Trace()
        doc = await G.agenerate(req, settings=settings_for(srv.base_url), trace=trace)
        custom = await G.agenerate(req.replace(system_prompt="You are terse.", tools=None),
                                   settings=settings_for(srv.base_url))
    body = srv.requests[0]
    assert body["seed"] == 1234 and body["temperature"] == 0.1 and body["max_tokens"] == 50
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"] and body["messages"][-1]["content"] == "Now this"
    assert "`search`" in body["messages"][0]["content"] and "`code`" not in body["messages"][0]["content"]
    assert trace.tools_advertised == ["search"] and trace.run_id == "run-1" and trace.seed == 1234
    assert [r.seed for _, r in _Fake.calls][:2] == [1234, 1234]  # the seed reached the tools too
    assert srv.requests[1]["messages"][0]["content"] == "You are terse."
    assert len(doc.images) == 2 and len(custom.images) == 2


async def test_generate_events_have_one_run_id_usage_and_a_json_form():
    from llmi import events as E

    with SSEServer(Script(content=split_every(RESPONSE, 9))) as srv:
        events = [ev async for ev in G.stream(G.Request("Write", run_id="abc"), settings=settings_for(srv.base_url))]
    kinds = [e.type for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "done"
    assert kinds.index("usage") > max(i for i, k in enumerate(kinds) if k == "text")  # after the LLM finished
    assert {e.run_id for e in events} == {"abc"}
    usage = next(e for e in events if isinstance(e, E.Usage))
    assert usage.usage["prompt_tokens"] == 9 and usage.finish_reason == "stop" and usage.model == "test-model"
    assert events[0].llm == "openai" and events[0].tools == ("search", "code", "edit")
    for ev in events:  # (elapsed times are rounded in the JSON form: compare the forms)
        d = json.loads(json.dumps(ev.to_dict()))
        assert E.from_dict(d).to_dict() == d


async def test_a_cut_stream_yields_error_then_done_and_an_unreachable_llm_an_error():
    from llmi import events as E

    pieces = ["Intro.\n\n", tag("code", "Chart", code="x"), "\n\nMore"]
    with SSEServer(Script(content=pieces, fail_after=2, fail="drop")) as srv:
        got: list = []
        with pytest.raises(G.GenerationError):
            await G.agenerate("Write", settings=settings_for(srv.base_url), on_event=got.append)
    kinds = [e.type for e in got]
    assert kinds[-1] == "done" and kinds.count("error") == 1 and kinds.index("error") < len(kinds) - 1
    assert got[kinds.index("error")].kind == "llm_cut" and kinds.index("usage") < kinds.index("error")
    assert got[-1].document.slots[0].type == "image"

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    s.close()
    got = []
    with pytest.raises(LLMUnreachable):
        await G.agenerate("Write", settings=settings_for(url), on_event=got.append)
    assert [e.type for e in got] == ["run_started", "error"] and got[-1].kind == "llm_unreachable"


async def test_an_edit_past_the_last_tag_is_amended_at_the_end():
    from llmi import events as E

    response = tag("edit", "later", img_index=3, prompt="p") + " text " + tag("code", "c", code="x")
    with SSEServer(Script(content=split_every(response, 6))) as srv:
        got: list = []
        doc = await G.agenerate("Write", settings=settings_for(srv.base_url), on_event=got.append)
    amended = [e for e in got if isinstance(e, E.TagAmended)]
    assert [e.index for e in amended] == [0] and amended[0].block.kind == "index_out_of_range"
    assert doc.slots[0].kind == "index_out_of_range"
    assert [e.type for e in got].index("tag_amended") < [e.type for e in got].index("done")


@pytest.mark.parametrize("chunk", [1, 5, 64])
async def test_reasoning_streamed_without_an_opening_think_stays_out_of_the_document(chunk):
    """A chat template that opened <think> in the prompt: the server streams `plan…</think>answer`. The
    document is what render/reward read from the same text — the plan (and a tag inside it) is reasoning."""
    from llmi.protocol import parse_response

    response = ("I should chart it " + tag("code", "draft", code="draft") + " first.</think>"
                "# Report\n\n" + tag("search", "river", query="river") + "\n\nDone.")
    with SSEServer(Script(content=split_every(response, chunk))) as srv:
        trace = G.Trace()
        doc = await G.agenerate("Write", settings=settings_for(srv.base_url), trace=trace)
    whole = parse_response(response)
    assert doc.text == whole.text == "# Report\n\n\n\nDone."
    assert [b.tool for b in doc.slots] == ["search"] and doc.slots[0].slot == 0
    assert trace.think.startswith("I should chart it") and "first." in trace.think
    assert [c.source for c in trace.tool_calls] == ["search"]
    assert trace.raw_response == response


async def test_a_server_said_to_start_in_reasoning_streams_no_reasoning_as_text():
    """[llm] starts_in_think = true: the reply is read inside reasoning from its first delta, so no `text`
    event (what the CLI prints, what a server streams) carries the reasoning, and no draft call runs."""
    from llmi import events as E

    response = "I should chart it " + tag("code", "draft", code="draft") + " first.</think>Answer " + \
        tag("search", "river", query="river")
    with SSEServer(Script(content=split_every(response, 4))) as srv:
        got: list = []
        doc = await G.agenerate("Write", settings=settings_for(srv.base_url, starts_in_think=True), on_event=got.append)
    assert "".join(e.text for e in got if isinstance(e, E.TextEvent)) == doc.text == "Answer "
    assert [e.source for e in got if isinstance(e, E.ToolStarted)] == ["search"]
    assert "".join(e.text for e in got if isinstance(e, E.ThinkEvent)).startswith("I should chart it")


def test_cli_hints_when_a_reply_began_inside_reasoning(tmp_path, monkeypatch):
    response = "I plan it.</think>The answer."
    for extra, hinted in (("", True), ("[llm]\nstarts_in_think = true\n", False)):
        with SSEServer(Script(content=split_every(response, 5)), models=["m"]) as srv:
            res = _cli(["Write", "-o", str(tmp_path / "o.md"), "--base-url", srv.base_url], TOML + extra,
                       tmp_path, monkeypatch)
        assert res.exit_code == 0, res.output
        assert (tmp_path / "o.md").read_text(encoding="utf-8").count("I plan it") == 0
        said = " ".join(res.stderr.split())
        assert ("hint: the reply began inside reasoning" in said) is hinted, said
        assert ("starts_in_think = true" in said) is hinted
    # declared, but this reply never entered reasoning: an empty document, and a warning saying why
    with SSEServer(Script(content=["Just the answer."]), models=["m"]) as srv:
        res = _cli(["Write", "-o", str(tmp_path / "o.md"), "--base-url", srv.base_url],
                   TOML + "[llm]\nstarts_in_think = true\n", tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    assert "the whole reply was read as reasoning" in " ".join(res.stderr.split())


async def test_concurrent_runs_on_one_llm_keep_their_own_finish_reason_and_usage():
    from llmi.llm import create_llm

    def script(_n, body):
        i = int(body["messages"][-1]["content"].split()[-1])
        return Script(content=[f"Run {i}. "] * (i + 1), delay_s=0.01, finish_reason="length" if i % 2 else "stop")

    with SSEServer(script) as srv:
        settings = settings_for(srv.base_url)
        llm = create_llm(settings.llm)
        traces = [G.Trace() for _ in range(5)]
        docs = await asyncio.gather(*(G.agenerate(f"prompt {i}", settings=settings, llm=llm, trace=traces[i])
                                      for i in range(5)))
        await llm.aclose()
    for i, (doc, trace) in enumerate(zip(docs, traces)):
        assert doc.text == f"Run {i}. " * (i + 1)
        assert trace.finish_reason == ("length" if i % 2 else "stop")
        assert trace.usage["completion_tokens"] == i + 1
