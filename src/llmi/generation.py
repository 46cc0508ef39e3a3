"""Prompt in, illustrated document out: the LLM writes, and each tool runs while it is still writing.

The writing LLM's text deltas go through :class:`~llmi.protocol.StreamParser` as they arrive; every
segment is handed to an engine :class:`~llmi.engine.RunSession` at once, so a tool call starts the moment
its closing tag is streamed and its latency hides behind the rest of the writing. The session keeps
document order whatever finishes first. ``<think>`` blocks (written inline, or reported out of band by a
reasoning parser) never reach the document; they are kept in the trace.

Three entry points, one implementation, each taking a :class:`~llmi.request.Request` (prompt, images,
earlier turns, sampling with its seed, system prompt, constraints) or just a prompt string:

* :func:`stream` — an async iterator of :mod:`llmi.events` (``run_started``, ``text``, ``think``,
  ``tool_started``, ``tool_finished``, ``tag_amended``, ``usage``, then ``done`` with the document), for
  the CLI, a server or a UI — the engine's session emits them, the same as for ``render``;
* :func:`agenerate` — ``await`` it for the :class:`~llmi.document.Document`;
* :func:`generate` — the same, synchronously.

When the LLM fails after it has written something (an error event mid-stream, a dropped connection),
the text so far is kept: pending tool calls finish, an unfinished tag becomes a failure block, and
:class:`GenerationError` is raised carrying that partial ``document`` and the ``trace`` — so a caller can
still render what was written, and report the failure. When nothing was written (server unreachable,
401, ...), the :class:`~llmi.errors.LLMError` itself is raised. Either way an ``error`` event comes first.

A server that streams reasoning without an opening ``<think>`` (the chat template opened it) is read
as the whole-response parser reads it: the reply is taken as text until its first think marker; when
that is a bare ``</think>``, everything so far was reasoning, and the reply is read again from the start
with the parser inside the reasoning (the calls started meanwhile are cancelled, their slots re-used).
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
from .errors import GenerationError, InputError, LLMError, LLMUnreachable  # GenerationError: re-exported
from .events import Done, Event, Relay, TagAmended, ThinkEvent, ToolFinished, ToolStarted
from .images import ImageData
from .images import load_images as _load_images
from .protocol import THINK_CLOSE, THINK_OPEN, StreamParser
from .request import Request, Sampling

if TYPE_CHECKING:  # pragma: no cover
    from .cache import Cache
    from .config import Settings
    from .engine import Engine
    from .llm import LLMBackend
    from .prompting import SystemPrompt

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
    #: The run's id (the ``run_id`` of its events) and the sampling seed it asked for.
    run_id: str = ""
    seed: int | None = None

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
    """User images from :class:`ImageData`, raw bytes or file paths (:func:`llmi.images.load_images`);
    :class:`InputError` names the bad one."""
    return _load_images(items, max_pixels=max_pixels)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

class _FirstThinkMarker:
    """Finds the first ``<think>`` or ``</think>`` of a stream, wherever the chunks split it: whether
    the response started inside reasoning is decided there (:func:`llmi.protocol.starts_in_think`)."""

    def __init__(self) -> None:
        self.found: str | None = None  # THINK_OPEN | THINK_CLOSE
        self._tail = ""

    def feed(self, chunk: str) -> str | None:
        if self.found is None:
            text = self._tail + chunk
            i, j = text.find(THINK_OPEN), text.find(THINK_CLOSE)
            if i >= 0 or j >= 0:
                self.found = THINK_OPEN if j < 0 or 0 <= i < j else THINK_CLOSE
            else:
                self._tail = text[-(len(THINK_CLOSE) - 1):]
        return self.found


def _system_prompt(request: Request, tools: Sequence[str], settings: "Settings",
                   system_prompt_file: str | os.PathLike[str] | None) -> "SystemPrompt":
    from .prompting import SystemPrompt, build_system_prompt

    if request.system_prompt is not None:
        return SystemPrompt(request.system_prompt, "request")
    configured = settings.resolve_path(settings.llm.system_prompt_file) if settings.llm.system_prompt_file else None
    return build_system_prompt(tools, path=system_prompt_file or configured)


async def _produce(
    request: Request,
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
    from .prompting import build_messages

    settings = settings if settings is not None else (engine.settings if engine is not None else load_settings())
    input_images = list(request.images) + _load_images(images, max_pixels=settings.images.max_pixels)
    prompt = request.prompt
    t0 = time.perf_counter()
    trace.prompt, trace.n_input_images, trace.started = prompt, len(input_images), time.time()
    trace.run_id, trace.seed = request.run_id, request.sampling.seed

    async with AsyncExitStack() as stack:
        if engine is None:
            engine = await stack.enter_async_context(Engine(settings, cache=cache))
        if llm is None:
            llm = create_llm(settings.llm)
            stack.push_async_callback(llm.aclose)

        tools = engine.usable_tools()
        if request.tools is not None:
            tools = [t for t in tools if t in request.tools]
        system = _system_prompt(request, tools, settings, system_prompt_file)
        trace.system_prompt_name, trace.system_prompt_sha256 = system.name, system.sha256
        trace.tools_advertised = list(tools)
        trace.llm_backend, trace.llm_where = llm.kind, llm.where
        trace.sees_images = bool(input_images) and llm.supports_images
        if input_images and not llm.supports_images:
            log.warning("the %s model cannot see images; %d input image(s) are only editable by index",
                        llm.kind, len(input_images))
        messages = build_messages(prompt, system, n_images=len(input_images), can_see=llm.supports_images,
                                  edit_usable="edit" in tools)
        if request.history:
            messages = messages[:1] + [dict(m) for m in request.history] + messages[1:]

        by_index: dict[int, ToolTrace] = {}

        def on_event(ev: Event) -> None:
            """The session's events: into the trace, then to the caller."""
            if isinstance(ev, ToolStarted):
                tt = by_index[ev.index] = ToolTrace(ev.index, ev.source, ev.description, dict(ev.params))
                tt.started_at = time.perf_counter() - t0
                trace.tool_calls.append(tt)
            elif isinstance(ev, ToolFinished):
                if ev.index in by_index:
                    _finish_tool_trace(by_index[ev.index], ev.block, ev.elapsed_s)
            elif isinstance(ev, TagAmended):
                if ev.index in by_index:
                    tt = by_index[ev.index]
                    tt.outcome, tt.kind, tt.reason = "failure", ev.block.kind, ev.block.reason
            elif isinstance(ev, ThinkEvent):
                think.append(ev.text)
            emit(ev)

        seed = request.sampling.seed
        session = engine.session(input_images, on_event=on_event, run_id=request.run_id, seed=seed)
        # A backend that knows whether replies begin inside reasoning says so; otherwise the reply is read
        # as text until its first think marker, and re-read as reasoning-first if that is a bare </think>.
        known = llm.starts_in_think
        parser = StreamParser(len(input_images), start_in_think=bool(known))
        marker = _FirstThinkMarker() if known is None else None
        raw: list[str] = []
        think: list[str] = []

        async def reread() -> None:
            """The reply began inside reasoning: drop what was read as text and read it all again."""
            nonlocal session, parser
            old = session
            old.on_event = None  # its cancelled calls are no part of this reply
            await old.cancel()
            by_index.clear()
            trace.tool_calls.clear()
            think.clear()
            session = engine.session(input_images, on_event=on_event, run_id=request.run_id, seed=seed)
            parser = StreamParser(len(input_images), start_in_think=True)
            for seg in parser.feed("".join(raw)):
                session.add(seg)

        error: LLMError | None = None
        finished = False
        result = None
        try:
            session.started(prompt=prompt, tools=tools, llm=llm.kind, model=llm.model)
            deltas = None
            try:
                await llm.prepare()
                trace.model = llm.model
                deltas = llm.stream(messages, images=input_images, sampling=request.sampling)
                async with aclosing(deltas):
                    async for delta in deltas:
                        if not raw:
                            trace.timings["first_token_s"] = time.perf_counter() - t0
                        raw.append(delta)
                        if marker is not None and marker.found is None and marker.feed(delta) == THINK_CLOSE:
                            await reread()
                            continue
                        for seg in parser.feed(delta):
                            session.add(seg)
            except LLMError as exc:
                if not raw or deltas is None:
                    session.error(str(exc), "llm_unreachable" if isinstance(exc, LLMUnreachable) else "llm_error")
                    raise
                error = exc
            result = deltas.result
            trace.timings["llm_done_s"] = time.perf_counter() - t0
            for seg in parser.close():
                session.add(seg)
            trace.model = result.model or llm.model or trace.model
            trace.usage = dict(result.usage) if result.usage is not None else None
            trace.finish_reason = result.finish_reason
            session.usage(result.usage, result.finish_reason, trace.model)
            if error is not None:
                session.error(f"{error} — the document is cut where the stream ended", "llm_cut")
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
    request: "Request | str",
    *,
    images: Sequence[ImageInput] = (),
    settings: "Settings | None" = None,
    llm: "LLMBackend | None" = None,
    engine: "Engine | None" = None,
    cache: "Cache | bool | None" = None,
    system_prompt_file: str | os.PathLike[str] | None = None,
    trace: Trace | None = None,
) -> AsyncIterator[Event]:
    """Run ``request`` (a :class:`~llmi.request.Request` or a prompt) and yield its events as they
    happen (see :mod:`llmi.events`): ``run_started``, ``text`` / ``think``, ``tool_started`` /
    ``tool_finished``, ``tag_amended``, ``usage``, and last ``done`` with the document.

    ``images``: more user images (paths, bytes, :class:`ImageData`), after the request's own.
    ``settings`` default to :func:`llmi.config.load_settings`. Pass ``llm`` (an
    :class:`~llmi.llm.LLMBackend`) or an open ``engine`` to reuse them across runs — both serve many runs
    at once —; otherwise they are created from ``settings`` and closed at the end. ``trace``, if given, is
    filled in as the run goes. ``system_prompt_file`` replaces the built-in prompt (a request's own
    ``system_prompt`` wins over both).

    Raises :class:`~llmi.errors.LLMError` after an ``error`` event when nothing was written, and
    :class:`GenerationError` after ``error`` and ``done`` (with the partial document) when the LLM failed
    part-way. Stopping the iteration early cancels the LLM stream and the pending tool calls.
    """
    req = Request.of(request)
    trace = trace if trace is not None else Trace()
    relay = Relay(lambda emit: _produce(req, images, emit, settings=settings, llm=llm, engine=engine, cache=cache,
                                        system_prompt_file=system_prompt_file, trace=trace))
    async with aclosing(relay.events()) as events:  # the run's error is raised at the end
        async for ev in events:
            yield ev


async def agenerate(
    request: "Request | str",
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
    """Run ``request`` (a :class:`~llmi.request.Request` or a prompt) and return the document;
    ``on_event`` sees every event of :func:`stream`. ``trace_path`` saves the trace there (also on
    failure)."""
    trace = trace if trace is not None else Trace()
    doc: Document | None = None
    try:
        # aclosing: leaving on an error (or a cancellation) closes the stream now, not when it is
        # garbage-collected. It is read to its end: after a cut, `done` comes before the error.
        async with aclosing(stream(request, images=images, settings=settings, llm=llm, engine=engine, cache=cache,
                                   system_prompt_file=system_prompt_file, trace=trace)) as events:
            async for ev in events:
                if on_event is not None:
                    on_event(ev)
                if isinstance(ev, Done):
                    doc = ev.document
    finally:
        if trace_path is not None:
            trace.save(trace_path)
    if doc is None:  # pragma: no cover - a run ends with Done or raises
        raise LLMError("the run ended without a document")
    return doc


def generate(request: "Request | str", **kwargs: Any) -> Document:
    """Synchronous :func:`agenerate` (takes the same keyword arguments). Not for use inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(agenerate(request, **kwargs))
    raise RuntimeError("llmi.generate() was called inside a running event loop; use 'await llmi.agenerate(...)'")


__all__ = ["GenerationError", "ImageInput", "Request", "Sampling", "ToolTrace", "Trace", "agenerate", "generate",
           "load_images", "stream", "trace_path_for"]
