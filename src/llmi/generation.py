"""Prompt in, illustrated document out: the LLM writes, and each tool runs while it is still writing.

The writing LLM's text deltas go through :class:`~llmi.protocol.StreamParser` as they arrive; every
segment is handed to an engine :class:`~llmi.engine.RunSession` at once, so a tool call starts the moment
its closing tag is streamed and its latency hides behind the rest of the writing. The session keeps
document order whatever finishes first. ``<think>`` blocks (written inline, or reported out of band by a
reasoning parser) never reach the document; they are kept in the trace.

Three entry points, one implementation:

* :func:`stream` — an async iterator of :mod:`llmi.events` (``text``, ``think``, ``tool_started``,
  ``tool_finished``, then ``done`` with the document), for the CLI, a server or a UI;
* :func:`agenerate` — ``await`` it for the :class:`~llmi.document.Document`;
* :func:`generate` — the same, synchronously.

When the LLM fails after it has written something (an error event mid-stream, a dropped connection),
the text so far is kept: pending tool calls finish, an unfinished tag becomes a failure block, and
:class:`GenerationError` is raised carrying that partial ``document`` and the ``trace`` — so a caller can
still render what was written, and report the failure. When nothing was written (server unreachable,
401, ...), the :class:`~llmi.errors.LLMError` itself is raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from contextlib import AsyncExitStack, aclosing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence, Union

from .document import Document, FailureBlock, ImageBlock
from .errors import GenerationError, InputError, LLMError, ToolError  # GenerationError: re-exported
from .events import Done, Event, TextEvent, ThinkEvent, ToolFinished, ToolStarted
from .images import ImageData
from .protocol import InvalidTag, Segment, StreamParser, Text, Think, ToolCall

if TYPE_CHECKING:  # pragma: no cover
    from .cache import Cache
    from .config import Settings
    from .engine import Engine
    from .llm import LLMBackend

log = logging.getLogger(__name__)

ImageInput = Union[ImageData, bytes, str, "os.PathLike[str]"]


# ------------------------------------------------------------------------------------------------
# Trace
# ------------------------------------------------------------------------------------------------


@dataclass
class ToolTrace:
    index: int
    source: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    #: Seconds from the start of the run until the tag closed and the call started.
    started_at: float = 0.0
    elapsed_s: float | None = None
    #: "image" | "failure" | "pending" (never finished: the run was cut).
    outcome: str = "pending"
    backend: str | None = None
    kind: str | None = None
    reason: str | None = None
    cached: bool = False


@dataclass
class Trace:
    """Everything about one run that helps debugging or building datasets. JSON via :meth:`to_dict`."""

    prompt: str = ""
    n_input_images: int = 0
    system_prompt_name: str = ""
    system_prompt_sha256: str = ""
    tools_advertised: list[str] = field(default_factory=list)
    llm_backend: str = ""
    llm_where: str = ""
    model: str = ""
    sees_images: bool = False
    #: The response exactly as streamed, reasoning included.
    raw_response: str = ""
    think: str = ""
    tool_calls: list[ToolTrace] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    #: ``first_token_s``, ``llm_done_s``, ``total_s`` (from the start), ``tools_after_text_s``.
    timings: dict[str, float] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    #: Why the LLM stopped: "stop", "length" (cut at max_tokens), "content_filter", ... or None.
    finish_reason: str | None = None
    error: str | None = None
    started: float = 0.0  # wall-clock epoch seconds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        for t in d["tool_calls"]:
            t["started_at"] = round(t["started_at"], 4)
            if t["elapsed_s"] is not None:
                t["elapsed_s"] = round(t["elapsed_s"], 4)
        return d

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8",
                         errors="replace")
        except OSError as exc:
            raise InputError(f"cannot write the trace to {p}: {exc}") from None
        return p


def trace_path_for(output: str | os.PathLike[str]) -> Path:
    """``out.html`` -> ``out.trace.json`` beside it."""
    p = Path(output)
    return p.with_name(p.stem + ".trace.json")


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def load_images(items: Sequence[ImageInput], *, max_pixels: int | None = None) -> list[ImageData]:
    """User images from :class:`ImageData`, raw bytes or file paths; :class:`InputError` names the bad one."""
    out: list[ImageData] = []
    for i, item in enumerate(items):
        if isinstance(item, ImageData):
            out.append(item)
            continue
        label = f"image {i}" if isinstance(item, (bytes, bytearray)) else str(item)
        kw = {"max_pixels": max_pixels} if max_pixels else {}
        try:
            if isinstance(item, (bytes, bytearray)):
                out.append(ImageData.from_bytes(bytes(item), **kw))
            else:
                out.append(ImageData.from_file(Path(item).expanduser(), **kw))
        except OSError as exc:
            raise InputError(f"cannot read input image {label}: {exc.strerror or exc}") from None
        except ToolError as exc:
            raise InputError(f"input image {label} is not usable: {exc}") from None
    return out


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

_END = object()


async def _produce(
    prompt: str,
    images: Sequence[ImageInput],
    emit: Callable[[Event], None],
    *,
    settings: "Settings | None",
    llm: "LLMBackend | None",
    engine: "Engine | None",
    cache: "Cache | bool | None",
    system_prompt_file: str | os.PathLike[str] | None,
    trace: Trace,
) -> Document:
    from .config import load_settings
    from .engine import Engine
    from .llm import create_llm
    from .prompting import build_messages, build_system_prompt

    settings = settings if settings is not None else (engine.settings if engine is not None else load_settings())
    input_images = load_images(images, max_pixels=settings.images.max_pixels)
    t0 = time.perf_counter()
    trace.prompt, trace.n_input_images, trace.started = prompt, len(input_images), time.time()

    async with AsyncExitStack() as stack:
        if engine is None:
            engine = await stack.enter_async_context(Engine(settings, cache=cache))
        if llm is None:
            llm = create_llm(settings.llm)
            stack.push_async_callback(llm.aclose)

        tools = engine.usable_tools()
        configured = settings.resolve_path(settings.llm.system_prompt_file) if settings.llm.system_prompt_file else None
        system = build_system_prompt(tools, path=system_prompt_file or configured)
        trace.system_prompt_name, trace.system_prompt_sha256 = system.name, system.sha256
        trace.tools_advertised = list(tools)
        trace.llm_backend, trace.llm_where = llm.kind, llm.where
        trace.sees_images = bool(input_images) and llm.supports_images
        if input_images and not llm.supports_images:
            log.warning("the %s model cannot see images; %d input image(s) are only editable by index",
                        llm.kind, len(input_images))
        messages = build_messages(prompt, system, n_images=len(input_images), can_see=llm.supports_images,
                                  edit_usable="edit" in tools)

        by_index: dict[int, ToolTrace] = {}

        def on_tool_event(ev: Event) -> None:
            if isinstance(ev, ToolStarted):
                tt = by_index.get(ev.index)
                if tt is None:
                    tt = by_index[ev.index] = ToolTrace(ev.index, ev.source, ev.description)
                    trace.tool_calls.append(tt)
                tt.started_at = time.perf_counter() - t0
            elif isinstance(ev, ToolFinished):
                tt = by_index.get(ev.index)
                if tt is not None:
                    _finish_tool_trace(tt, ev.block, ev.elapsed_s)
            emit(ev)

        session = engine.session(input_images, on_event=on_tool_event)
        parser = StreamParser(len(input_images))
        raw: list[str] = []
        think: list[str] = []

        def handle(seg: Segment) -> None:
            if isinstance(seg, Think):
                think.append(seg.text)
                emit(ThinkEvent(seg.text))
                return
            if isinstance(seg, (ToolCall, InvalidTag)):
                tt = ToolTrace(seg.index, getattr(seg, "source", None) or "unknown", seg.description,
                               dict(getattr(seg, "params", {}) or {}))
                if isinstance(seg, InvalidTag):
                    tt.params = {"raw": seg.raw[:2000]}
                by_index[seg.index] = tt
                trace.tool_calls.append(tt)
            session.add(seg)
            if isinstance(seg, Text) and seg.text:
                emit(TextEvent(seg.text))

        error: LLMError | None = None
        finished = False
        try:
            await llm.prepare()
            trace.model = llm.model
            try:
                async with aclosing(llm.stream(messages, images=input_images)) as deltas:
                    async for delta in deltas:
                        if not raw:
                            trace.timings["first_token_s"] = time.perf_counter() - t0
                        raw.append(delta)
                        for seg in parser.feed(delta):
                            handle(seg)
            except LLMError as exc:
                if not raw:
                    raise
                error = exc
            trace.timings["llm_done_s"] = time.perf_counter() - t0
            for seg in parser.close():
                handle(seg)
            trace.model = llm.model or trace.model
            trace.usage = llm.usage
            trace.finish_reason = getattr(llm, "finish_reason", None)
            doc = await session.finish(parser.violations, parser.amended)
            finished = True
        except BaseException as exc:
            if isinstance(exc, Exception):
                trace.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            trace.raw_response = "".join(raw)
            trace.think = "".join(think)
            trace.violations = [asdict(v) for v in parser.violations]
            trace.timings["total_s"] = time.perf_counter() - t0
            if "llm_done_s" in trace.timings:
                trace.timings["tools_after_text_s"] = trace.timings["total_s"] - trace.timings["llm_done_s"]
            if not finished:
                await session.cancel()

    if error is not None:
        trace.error = str(error)
        raise GenerationError(f"{error} — the document is cut where the stream ended", document=doc, trace=trace)
    emit(Done(doc))
    return doc


def _finish_tool_trace(tt: ToolTrace, block: ImageBlock | FailureBlock, elapsed_s: float) -> None:
    tt.elapsed_s = elapsed_s
    if isinstance(block, ImageBlock):
        tt.outcome = "image"
        tt.backend = block.provenance.get("backend")
        tt.cached = bool(block.provenance.get("cached"))
    else:
        tt.outcome, tt.kind, tt.reason = "failure", block.kind, block.reason


async def stream(
    prompt: str,
    *,
    images: Sequence[ImageInput] = (),
    settings: "Settings | None" = None,
    llm: "LLMBackend | None" = None,
    engine: "Engine | None" = None,
    cache: "Cache | bool | None" = None,
    system_prompt_file: str | os.PathLike[str] | None = None,
    trace: Trace | None = None,
) -> AsyncIterator[Event]:
    """Run ``prompt`` and yield events as they happen; the last one is :class:`~llmi.events.Done`.

    ``settings`` default to :func:`llmi.config.load_settings`. Pass ``llm`` (an
    :class:`~llmi.llm.LLMBackend`) or an open ``engine`` to reuse them across runs; otherwise they are
    created from ``settings`` and closed at the end. ``trace``, if given, is filled in as the run goes.
    Raises :class:`~llmi.errors.LLMError` (nothing written) or :class:`GenerationError` (partial document).
    Stopping the iteration early cancels the LLM stream and the pending tool calls.
    """
    trace = trace if trace is not None else Trace()
    queue: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(
        _produce(prompt, images, queue.put_nowait, settings=settings, llm=llm, engine=engine, cache=cache,
                 system_prompt_file=system_prompt_file, trace=trace)
    )
    task.add_done_callback(lambda _t: queue.put_nowait(_END))
    try:
        while True:
            ev = await queue.get()
            if ev is _END:
                break
            yield ev
        await task  # re-raises the run's error
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def agenerate(
    prompt: str,
    *,
    images: Sequence[ImageInput] = (),
    settings: "Settings | None" = None,
    llm: "LLMBackend | None" = None,
    engine: "Engine | None" = None,
    cache: "Cache | bool | None" = None,
    system_prompt_file: str | os.PathLike[str] | None = None,
    on_event: Callable[[Event], None] | None = None,
    trace: Trace | None = None,
    trace_path: str | os.PathLike[str] | None = None,
) -> Document:
    """Run ``prompt`` and return the document. ``trace_path`` saves the trace there (also on failure)."""
    trace = trace if trace is not None else Trace()
    try:
        # aclosing: leaving on Done (or on an error) closes the stream now, not when it is garbage-collected.
        async with aclosing(stream(prompt, images=images, settings=settings, llm=llm, engine=engine, cache=cache,
                                   system_prompt_file=system_prompt_file, trace=trace)) as events:
            async for ev in events:
                if on_event is not None:
                    on_event(ev)
                if isinstance(ev, Done):
                    return ev.document
    finally:
        if trace_path is not None:
            trace.save(trace_path)
    raise LLMError("the run ended without a document")  # pragma: no cover - stream always ends with Done


def generate(prompt: str, **kwargs: Any) -> Document:
    """Synchronous :func:`agenerate` (takes the same keyword arguments). Not for use inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(agenerate(prompt, **kwargs))
    raise RuntimeError("llmi.generate() was called inside a running event loop; use 'await llmi.agenerate(...)'")


__all__ = ["GenerationError", "ImageInput", "ToolTrace", "Trace", "agenerate", "generate", "load_images",
           "stream", "trace_path_for"]
