"""The async engine: runs the tool calls of a response and assembles the document.

One :class:`Engine` owns the HTTP clients, the backends it has created and the cache, for the length of
an ``async with`` block. A :class:`RunSession` takes the segments of one response *in order* — from a
finished response or as an LLM streams it — and starts each tool call the moment it is added:

* independent calls run concurrently, bounded per tool (``tools.<tool>.concurrency``) and per backend;
* an ``edit`` waits only for the image it edits; if that failed, the edit fails with that reason;
* each attempt has a timeout; transient errors (429/503/5xx/timeouts) are retried with exponential
  backoff, honouring ``Retry-After``;
* a tool's backends form a fallback chain (``tools.search.backends = ["wikimedia", "local",
  "diffusion:openai"]``); the backend that finally served is recorded in the image's provenance;
* successful results are cached by content (tool, backend, output-shaping settings, params, input image).

A tool failure is a :class:`~llmi.document.FailureBlock`, never an exception: whatever fails, the other
images and the text are kept, and each tag keeps its slot (blocks record their ``slot`` and ``call``).

The session is the one source of a run's events (:mod:`llmi.events`): ``generate``, ``render`` and the
reward all run responses through it. A session's ``seed`` goes to every generative call (diffusion,
edit) and into their cache key. :meth:`Engine.replace_slot` edits a finished document: one slot gets a
new call (or block) and the edits that depend on it, through chains, are run again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from .cache import Cache, call_key
from .config import Settings, ToolSettings, load_settings
from .document import Block, Document, FailureBlock, ImageBlock, TextBlock
from .errors import ConfigError, ToolError, TransientToolError
from .events import (
    Done, Error, Event, EventHandler, RunStarted, TagAmended, TextEvent, ThinkEvent, ToolFinished, ToolStarted, Usage,
)
from .images import ImageData
from .protocol import (
    SOURCES, InvalidTag, ParsedResponse, Segment, Text, Think, ToolCall, Violation, parse_response, validate,
)
from .request import new_run_id
from .retry import GaveUp, RetryPolicy, Transient, retry_call
from .tools import registry
from .tools.base import Backend, BackendContext, BackendStatus, ToolRequest, ToolResult

log = logging.getLogger(__name__)

#: Tools that sample: the same call with another seed is another image (the seed is in their cache key).
GENERATIVE = ("diffusion", "edit")

#: How a call's params map onto another tool in a cross-tool fallback (e.g. search -> diffusion).
_CROSS_TOOL = {
    ("search", "diffusion"): lambda p: {"prompt": p["query"]},
    ("diffusion", "search"): lambda p: {"query": p["prompt"]},
}


def _labelled(label: str, message: str) -> str:
    """``label: message``, unless the message already starts by naming the backend
    (``serpapi: none of 3 candidate(s)…``, ``SerpAPI: quota``, ``wikimedia found no images``): once is enough."""
    head = message[: len(label) + 1].lower()
    if head.startswith(label.lower()) and head[len(label):len(label) + 1] in (":", " "):
        return message
    return f"{label}: {message}"


def parse_chain_entry(tool: str, entry: str) -> tuple[str, str]:
    """``"wikimedia"`` -> ``("search", "wikimedia")``; ``"diffusion:openai"`` -> ``("diffusion", "openai")``."""
    if ":" in entry:
        other, _, name = entry.partition(":")
        if other not in SOURCES:
            raise ConfigError(f"tools.{tool}.backends: {entry!r} names unknown tool {other!r}")
        return other, name
    return tool, entry


class Engine:
    """Runs tool calls. Use as ``async with Engine(settings) as engine: ...``.

    ``cache``: a :class:`Cache`, ``False`` for none, or ``None`` to open the one in ``settings.cache``.
    ``backends``: ready-made backend instances keyed by ``(tool, name)``, used instead of creating them
    from the registry (handy when embedding llmi or testing).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        cache: Cache | bool | None = None,
        backends: dict[tuple[str, str], Backend] | None = None,
        max_tags: int | None = None,
    ):
        self.settings = settings if settings is not None else load_settings()
        #: Most tool calls one response may run; later tags become ``too_many_tags`` failures (a server
        #: sets this so that one response cannot order thousands of tool calls). ``None``: no cap.
        self.max_tags = max_tags
        self._cache_arg = cache
        self.cache: Cache | None = None
        self._own_cache = False
        self._instances: dict[tuple[str, str], Backend] = dict(backends or {})
        self._external = set(self._instances)
        self._tool_sems: dict[str, asyncio.Semaphore] = {}
        self._backend_sems: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._ctx: BackendContext | None = None
        self._http = None
        self._fetcher = None
        #: Cache key -> the result of that call while it runs, so an identical call awaits it instead.
        self._inflight: dict[str, asyncio.Future] = {}

    # -- lifetime --------------------------------------------------------------------------------
    async def __aenter__(self) -> "Engine":
        import httpx

        from .fetch import SafeFetcher

        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=False)
        self._fetcher = SafeFetcher(self.settings.fetch)
        self._ctx = BackendContext(settings=self.settings, http=self._http, fetcher=self._fetcher)
        if isinstance(self._cache_arg, Cache):
            self.cache = self._cache_arg
        elif self._cache_arg is None and self.settings.cache.enabled:
            try:
                self.cache = Cache(self.settings.cache.resolved_path(self.settings._config_dir))
                self._own_cache = True
            except Exception as exc:  # an unwritable cache must not stop the run
                log.warning(
                    "cache disabled: cannot open %s: %s", self.settings.cache.resolved_path(self.settings._config_dir), exc
                )
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for key, backend in list(self._instances.items()):
            if key in self._external:
                continue
            try:
                await backend.aclose()
            except Exception as exc:
                log.warning("closing backend %s.%s failed: %s", *key, exc)
            self._instances.pop(key, None)
        if self._fetcher is not None:
            await self._fetcher.aclose()
            self._fetcher = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self.cache is not None and self._own_cache:
            self.cache.close()
        self.cache = None
        self._ctx = None  # its clients are closed: a later run must not hand them to a backend

    # -- backends --------------------------------------------------------------------------------
    @property
    def context(self) -> BackendContext:
        if self._ctx is None:
            raise RuntimeError("use the engine inside 'async with Engine(...) as engine'")
        return self._ctx

    def backend(self, tool: str, name: str) -> Backend:
        """The backend instance for ``tool``/``name`` (created on first use from the config)."""
        key = (tool, name)
        if key not in self._instances:
            cls = registry.get(tool, name)
            try:
                options = cls.Options.model_validate(self.settings.backend_options(tool, name))
            except ValidationError as exc:
                raise ConfigError(f"invalid options in [backends.{tool}.{name}]:\n{exc}") from exc
            self._instances[key] = cls(options, self.context)
        return self._instances[key]

    def chain(self, tool: str) -> list[tuple[str, str]]:
        return [parse_chain_entry(tool, e) for e in self.settings.tool(tool).backends]

    def backend_status(self, tool: str, name: str) -> BackendStatus:
        try:
            return self.backend(tool, name).status()
        except ConfigError as exc:
            return BackendStatus("misconfigured", str(exc))

    def usable_tools(self) -> list[str]:
        """Tools with at least one usable backend in their chain (what a system prompt may advertise)."""
        usable = []
        for tool in SOURCES:
            try:
                chain = self.chain(tool)
            except ConfigError:
                continue
            # an entry of another tool counts only if a call can be mapped onto it (as execute does)
            if any(self.backend_status(t, n).usable for t, n in chain if t == tool or (tool, t) in _CROSS_TOOL):
                usable.append(tool)
        return usable

    def _sem(self, tool: str) -> asyncio.Semaphore:
        if tool not in self._tool_sems:
            self._tool_sems[tool] = asyncio.Semaphore(max(1, self.settings.tool(tool).concurrency))
        return self._tool_sems[tool]

    def _backend_sem(self, tool: str, backend: Backend) -> asyncio.Semaphore | None:
        limit = getattr(backend.options, "concurrency", None)
        if not limit:
            return None
        key = (tool, backend.name)
        if key not in self._backend_sems:
            self._backend_sems[key] = asyncio.Semaphore(limit)
        return self._backend_sems[key]

    # -- running ---------------------------------------------------------------------------------
    def session(
        self,
        input_images: Sequence[ImageData] = (),
        on_event: EventHandler | None = None,
        *,
        run_id: str | None = None,
        seed: int | None = None,
    ) -> "RunSession":
        """A run of one response's tool calls; it emits the run's events (see :mod:`llmi.events`) to
        ``on_event``. ``seed`` goes to every generative call (and its cache key). Raises RuntimeError
        outside ``async with Engine(...)``, where every call would otherwise fail for want of the clients
        the engine opens."""
        self.context  # noqa: B018 - raises with the fix when the engine is not open
        return RunSession(self, list(input_images), on_event, run_id=run_id or new_run_id(), seed=seed)

    async def run_parsed(
        self,
        parsed: ParsedResponse,
        input_images: Sequence[ImageData] = (),
        on_event: EventHandler | None = None,
        *,
        run_id: str | None = None,
        seed: int | None = None,
        prompt: str = "",
    ) -> Document:
        """Execute the tags of a parsed response; emits ``run_started``, ``text``, ``tool_*``, ``done``."""
        session = self.session(input_images, on_event, run_id=run_id, seed=seed)
        session.started(prompt=prompt)
        for seg in parsed.segments:
            session.add(seg)
        return await session.finish(parsed.violations)

    async def run_response(
        self,
        response: str,
        input_images: Sequence[ImageData] = (),
        on_event: EventHandler | None = None,
        *,
        run_id: str | None = None,
        seed: int | None = None,
        prompt: str = "",
    ) -> Document:
        """Parse a finished response and execute its tags."""
        return await self.run_parsed(parse_response(response, len(input_images)), input_images, on_event,
                                     run_id=run_id, seed=seed, prompt=prompt)

    async def replace_slot(
        self,
        doc: Document,
        slot: int,
        new: "ToolCall | Mapping[str, Any] | ImageBlock | FailureBlock",
        *,
        seed: int | None = None,
        on_event: EventHandler | None = None,
        run_id: str | None = None,
    ) -> Document:
        """A new document with slot ``slot`` holding ``new`` — a finished block, or a call
        (``{"source", "description", "params"}`` or a :class:`~llmi.protocol.ToolCall`) run now — and
        every edit that depends on that slot, directly or through a chain of edits, re-run on the new
        image. ``doc`` itself is not changed. Tool events for the re-run slots go to ``on_event``."""
        session = self.session(doc.input_images, on_event, run_id=run_id, seed=seed)
        slots = doc.slots
        if not 0 <= slot < len(slots):
            raise IndexError(f"the document has {len(slots)} slot(s), no slot {slot}")
        if isinstance(new, (ImageBlock, FailureBlock)):
            doc = doc.with_slot(slot, new)
        else:
            doc = doc.with_slot(slot, await session.run_call(doc, slot, new))
        n = len(doc.input_images)
        changed = {slot}
        for j in range(slot + 1, len(slots)):
            call = doc.slots[j].call
            if not call or call.get("source") != "edit":
                continue
            target = call.get("params", {}).get("img_index")
            if isinstance(target, int) and target - n in changed:
                doc = doc.with_slot(j, await session.run_call(doc, j, call))
                changed.add(j)
        return doc

    async def execute(
        self, call: ToolCall, input_image: ImageData | None = None, *, seed: int | None = None
    ) -> ImageBlock | FailureBlock:
        """Run one valid call through its fallback chain. Never raises for tool failures (a RuntimeError
        outside ``async with``: that is the caller's mistake, not the tool's). ``seed``: the sampling seed
        for generative tools. The block has no ``slot``; a session sets it."""
        self.context  # noqa: B018
        t0 = time.monotonic()
        try:
            chain = self.chain(call.source)
        except ConfigError as exc:
            return FailureBlock(call.source, str(exc), "misconfigured", call.description, call.params)
        if not chain:
            return FailureBlock(
                call.source,
                f"no {call.source} backend is configured (set tools.{call.source}.backends in the config; "
                f"known backends: {', '.join(registry.names(call.source)) or 'none'})",
                "no_backend",
                call.description,
                call.params,
            )
        reasons: list[str] = []  # one per backend tried, each naming its backend once
        messages: list[str] = []  # the same, as the backend said it
        kinds: list[str] = []
        for tool, name in chain:
            label = name if tool == call.source else f"{tool}:{name}"
            if tool == call.source:
                params = call.params
            elif (call.source, tool) in _CROSS_TOOL:
                params = _CROSS_TOOL[(call.source, tool)](call.params)
            else:
                messages.append(f"cannot serve a {call.source} call")
                reasons.append(_labelled(label, messages[-1]))
                kinds.append("misconfigured")
                continue
            try:
                backend = self.backend(tool, name)
                status = backend.status()
                if not status.usable:
                    raise ToolError(f"not usable ({status.state}: {status.detail})", kind=status.state)
                result, cached = await self._run_backend(tool, backend, params, call.description, input_image, seed)
            except ToolError as exc:
                messages.append(str(exc))
                reasons.append(_labelled(label, messages[-1]))
                kinds.append(exc.kind)
                continue
            except ConfigError as exc:
                messages.append(str(exc))
                reasons.append(_labelled(label, messages[-1]))
                kinds.append("misconfigured")
                continue
            except Exception as exc:  # a backend bug must not take the run down
                log.exception("backend %s.%s crashed", tool, name)
                messages.append(f"internal error: {type(exc).__name__}: {exc}")
                reasons.append(_labelled(label, messages[-1]))
                kinds.append("internal_error")
                continue
            provenance = {"backend": name, **result.provenance}
            provenance["backend"] = name
            if tool != call.source:
                provenance["served_by_tool"] = tool
            if reasons:
                provenance["fallback_from"] = list(reasons)
            if cached:
                provenance["cached"] = True
            return ImageBlock(
                image=result.image,
                tool=call.source,
                description=call.description,
                params=call.params,
                provenance=provenance,
                elapsed_s=time.monotonic() - t0,
            )
        reason = messages[0] if len(reasons) == 1 else "; ".join(reasons)
        return FailureBlock(call.source, reason, kinds[-1], call.description, call.params, time.monotonic() - t0)

    async def _run_backend(
        self,
        tool: str,
        backend: Backend,
        params: dict[str, Any],
        description: str,
        input_image: ImageData | None,
        seed: int | None = None,
    ) -> tuple[ToolResult, bool]:
        """Run one backend call, or reuse it: from the cache, or — while an identical call is running —
        by awaiting that call. Coalescing happens only when caching is on, since a cached run would give
        the same image anyway; without a cache two identical diffusion tags are two samples.
        Returns ``(result, reused)``."""
        ts: ToolSettings = self.settings.tool(tool)
        request = ToolRequest(tool=tool, params=params, description=description, input_image=input_image, seed=seed)
        if self.cache is None or not ts.cache:
            return _checked(await self._attempt(tool, backend, request, ts), tool, backend), False
        key = call_key(tool, backend.name, params, backend.cache_identity(), input_image.sha256 if input_image else None,
                       seed if tool in GENERATIVE else None)
        hit = self.cache.get(key)
        if hit is not None:
            return hit, True
        while (leader := self._inflight.get(key)) is not None:
            try:
                return await asyncio.shield(leader), True
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if not leader.cancelled() or (me is not None and me.cancelling()):
                    raise
                # the run that was making it was cancelled, not this one: make it here
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._inflight[key] = fut
        try:
            result = _checked(await self._attempt(tool, backend, request, ts), tool, backend)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        else:
            fut.set_result(result)
            try:
                if result.cacheable:
                    self.cache.put(key, result)
            except Exception as exc:
                log.warning("cache write failed: %s", exc)
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]
        return result, False

    async def _attempt(self, tool: str, backend: Backend, request: ToolRequest, ts: ToolSettings) -> ToolResult:
        bsem = self._backend_sem(tool, backend)

        async def once() -> ToolResult:
            try:
                async with self._sem(tool):
                    if bsem is None:
                        return await asyncio.wait_for(backend.run(request), ts.timeout_s)
                    async with bsem:
                        return await asyncio.wait_for(backend.run(request), ts.timeout_s)
            except asyncio.TimeoutError:
                raise TransientToolError(f"timed out after {ts.timeout_s:g} s", kind="timeout") from None

        def on_retry(err: Exception, attempt: int, delay: float) -> None:
            log.info("%s.%s: %s; retrying in %.1f s", tool, backend.name, err, delay)

        policy = RetryPolicy(retries=ts.retries, backoff_s=ts.backoff_s, max_backoff_s=ts.max_backoff_s)
        try:
            return await retry_call(once, policy, _transient_tool_error, on_retry=on_retry)
        except GaveUp as gave:
            err: Any = gave.error  # a TransientToolError: the only kind _transient_tool_error retries
            if gave.why == "retry_after":
                # retrying sooner than the service asked only earns another refusal; let the chain move on
                raise TransientToolError(
                    f"{err}; the service asks to retry after {gave.retry_after:g} s, longer than "
                    f"tools.{tool}.max_backoff_s ({ts.max_backoff_s:g} s), so it was not retried",
                    kind=err.kind,
                    retry_after=gave.retry_after,
                ) from err
            if gave.attempts > 1:
                raise TransientToolError(f"{err} (after {gave.attempts} attempts)", kind=err.kind) from err
            raise err


def _transient_tool_error(exc: Exception) -> Transient | None:
    return Transient(exc.retry_after) if isinstance(exc, TransientToolError) else None


def _retrieve(fut: asyncio.Future) -> None:
    """Mark a coalesced call's exception as seen: it is raised in the call that made it."""
    if not fut.cancelled():
        fut.exception()


def _checked(result: Any, tool: str, backend: Backend) -> ToolResult:
    """A backend's return value, if it is a usable ToolResult; else a ToolError so the chain moves on."""
    if isinstance(result, ToolResult) and isinstance(result.image, ImageData) and isinstance(result.provenance, dict):
        return result
    raise ToolError(
        f"backend {tool}.{backend.name} returned {type(result).__name__}, not a ToolResult with an ImageData",
        kind="internal_error",
    )


class RunSession:
    """The tool calls of one response, added in document order (see :meth:`Engine.session`).

    The session is the one source of a run's events: ``text`` / ``think`` as segments are added,
    ``tool_started`` / ``tool_finished`` as calls run, ``tag_amended`` and ``done`` at :meth:`finish`;
    the writer of the response adds ``run_started`` (:meth:`started`), ``usage`` and ``error``.
    """

    def __init__(
        self,
        engine: Engine,
        input_images: list[ImageData],
        on_event: EventHandler | None,
        *,
        run_id: str = "",
        seed: int | None = None,
    ):
        self.engine = engine
        self.input_images = input_images
        self.on_event = on_event
        self.run_id = run_id
        self.seed = seed
        self._items: list[TextBlock | asyncio.Task] = []
        self._slots: list[asyncio.Task] = []
        self._segments: list[ToolCall | InvalidTag] = []  # what each slot was asked, for cancelled ones

    def emit(self, event: Event) -> None:
        """Hand ``event`` to the handler; a failing handler is logged, never breaks the run."""
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a broken progress display must not break the run
                log.exception("event handler failed")

    _emit = emit

    # -- events the writer reports ---------------------------------------------------------------
    def started(self, *, prompt: str = "", tools: Sequence[str] | None = None, llm: str = "", model: str = "") -> None:
        """Emit ``run_started`` (``tools``: those advertised; default: the usable ones)."""
        tools = self.engine.usable_tools() if tools is None else tools
        self.emit(RunStarted(prompt, len(self.input_images), tuple(tools), llm, model, run_id=self.run_id))

    def usage(self, usage: Mapping[str, Any] | None, finish_reason: str | None, model: str = "") -> None:
        self.emit(Usage(dict(usage) if usage is not None else None, finish_reason, model, run_id=self.run_id))

    def error(self, message: str, kind: str = "llm_error") -> None:
        self.emit(Error(message, kind, run_id=self.run_id))

    # -- segments --------------------------------------------------------------------------------
    def add(self, segment: Segment) -> None:
        """Add the next segment; a tool call starts running at once. Think segments become ``think``
        events and stay out of the document."""
        if isinstance(segment, Think):
            if segment.text:
                self.emit(ThinkEvent(segment.text, run_id=self.run_id))
        elif isinstance(segment, Text):
            if not segment.text:
                return
            if self._items and isinstance(self._items[-1], TextBlock):
                self._items[-1] = TextBlock(self._items[-1].text + segment.text)
            else:
                self._items.append(TextBlock(segment.text))
            self.emit(TextEvent(segment.text, run_id=self.run_id))
        elif isinstance(segment, (ToolCall, InvalidTag)):
            if segment.index != len(self._slots):
                raise ValueError(f"slot {segment.index} added out of order (expected {len(self._slots)})")
            params = dict(segment.params) if isinstance(segment, ToolCall) else {"raw": segment.raw[:2000]}
            self.emit(ToolStarted(segment.index, getattr(segment, "source", None) or "unknown", segment.description,
                                  params, run_id=self.run_id))
            task = asyncio.ensure_future(self._run_slot(segment))
            self._slots.append(task)
            self._segments.append(segment)
            self._items.append(task)

    async def _run_slot(self, seg: ToolCall | InvalidTag) -> ImageBlock | FailureBlock:
        t0 = time.monotonic()
        try:
            block = await self._slot_block(seg)
        except asyncio.CancelledError:
            self.emit(ToolFinished(seg.index, _cancelled(seg), time.monotonic() - t0, run_id=self.run_id))
            raise
        except Exception as exc:  # never lose the other slots
            log.exception("slot %d crashed", seg.index)
            block = _placed(FailureBlock(getattr(seg, "source", None) or "unknown",
                                         f"internal error: {type(exc).__name__}: {exc}", "internal_error"), seg)
        self.emit(ToolFinished(seg.index, block, time.monotonic() - t0, run_id=self.run_id))
        return block

    async def _slot_block(self, seg: ToolCall | InvalidTag) -> ImageBlock | FailureBlock:
        cap = self.engine.max_tags
        if cap is not None and seg.index >= cap:
            return _placed(FailureBlock(getattr(seg, "source", None) or "unknown",
                                        f"not run: a response may run at most {cap} tool calls here",
                                        "too_many_tags", seg.description,
                                        dict(seg.params) if isinstance(seg, ToolCall) else {}), seg)
        if isinstance(seg, InvalidTag):
            return _placed(FailureBlock(seg.source or "unknown", seg.reason, seg.kind.value, seg.description), seg)
        input_image = None
        dep = seg.depends_on
        if dep is not None:
            n = len(self.input_images)
            if dep < n:
                input_image = self.input_images[dep]
            else:
                # validation guarantees dep refers to an earlier slot
                target = self._slots[dep - n]
                try:
                    prior = await asyncio.shield(target)
                except asyncio.CancelledError:
                    me = asyncio.current_task()
                    if not target.cancelled() or (me is not None and me.cancelling()):
                        raise
                    prior = _cancelled(self._segments[dep - n])
                if isinstance(prior, FailureBlock):
                    return _placed(_dependency_failed(seg, dep, prior), seg)
                input_image = prior.image
        return _placed(await self.engine.execute(seg, input_image, seed=self.seed), seg)

    async def run_call(
        self, doc: Document, slot: int, call: "ToolCall | Mapping[str, Any]"
    ) -> ImageBlock | FailureBlock:
        """Run ``call`` as slot ``slot`` of ``doc`` (an edit takes its image from ``doc``), emitting its
        tool events; used by :meth:`Engine.replace_slot`."""
        n = len(doc.input_images)
        seg: ToolCall | InvalidTag
        if isinstance(call, ToolCall):
            seg = call if call.index == slot else ToolCall(slot, call.source, call.description, call.params,
                                                           call.raw, call.lenient)
        else:
            seg = validate(json.dumps(dict(call), ensure_ascii=False), slot, n, n_tags=len(doc.slots))
        params = dict(seg.params) if isinstance(seg, ToolCall) else {"raw": seg.raw[:2000]}
        self.emit(ToolStarted(slot, getattr(seg, "source", None) or "unknown", seg.description, params,
                              run_id=self.run_id))
        t0 = time.monotonic()
        if isinstance(seg, InvalidTag):
            block: ImageBlock | FailureBlock = _placed(
                FailureBlock(seg.source or "unknown", seg.reason, seg.kind.value, seg.description), seg)
        else:
            input_image = None
            dep = seg.depends_on
            if dep is not None and dep < n:
                input_image = doc.input_images[dep]
            elif dep is not None:
                prior = doc.slots[dep - n] if dep - n < slot else None
                if not isinstance(prior, ImageBlock):
                    failed = prior if isinstance(prior, FailureBlock) else FailureBlock(
                        "edit", f"index {dep} is not an earlier image", "forward_reference")
                    block = _placed(_dependency_failed(seg, dep, failed), seg)
                    self.emit(ToolFinished(slot, block, time.monotonic() - t0, run_id=self.run_id))
                    return block
                input_image = prior.image
            block = _placed(await self.engine.execute(seg, input_image, seed=self.seed), seg)
        self.emit(ToolFinished(slot, block, time.monotonic() - t0, run_id=self.run_id))
        return block

    async def finish(
        self, violations: Sequence[Violation] = (), amended: dict[int, InvalidTag] | None = None
    ) -> Document:
        """Wait for every call and return the document in reading order (and emit ``done``). ``amended``:
        invalid tags whose reason became exact only at the end of the response (``StreamParser.amended``),
        each reported as ``tag_amended``."""
        await asyncio.gather(*self._slots, return_exceptions=True)
        blocks: list[Block] = []
        slot = -1
        for item in self._items:
            if isinstance(item, TextBlock):
                blocks.append(item)
                continue
            slot += 1
            if amended and slot in amended:
                seg = amended[slot]
                block = _placed(FailureBlock(seg.source or "unknown", seg.reason, seg.kind.value, seg.description), seg)
                self.emit(TagAmended(slot, block, run_id=self.run_id))
                blocks.append(block)
            elif item.cancelled():
                blocks.append(_cancelled(self._segments[slot]))
            else:
                blocks.append(item.result())
        doc = Document(blocks=blocks, violations=list(violations), input_images=list(self.input_images))
        self.emit(Done(doc, run_id=self.run_id))
        return doc

    async def cancel(self) -> None:
        for t in self._slots:
            t.cancel()
        await asyncio.gather(*self._slots, return_exceptions=True)


def _call_dict(seg: ToolCall) -> dict[str, Any]:
    return {"source": seg.source, "description": seg.description, "params": dict(seg.params)}


def _placed(block: ImageBlock | FailureBlock, seg: ToolCall | InvalidTag) -> ImageBlock | FailureBlock:
    """``block`` marked with the slot and the call (or, for an invalid tag, the payload) it came from."""
    if isinstance(seg, ToolCall):
        return replace(block, slot=seg.index, call=_call_dict(seg))
    if isinstance(block, FailureBlock):
        return replace(block, slot=seg.index, raw=seg.raw)
    return replace(block, slot=seg.index)


def _dependency_failed(seg: ToolCall, dep: int, prior: FailureBlock) -> FailureBlock:
    return FailureBlock(
        seg.source,
        f"the image it edits (index {dep}) failed: {prior.reason}",
        "dependency_failed",
        seg.description,
        seg.params,
    )


def _cancelled(seg: ToolCall | InvalidTag) -> FailureBlock:
    params = seg.params if isinstance(seg, ToolCall) else {}
    block = FailureBlock(
        getattr(seg, "source", None) or "unknown",
        "the run was cancelled before this tool finished",
        "cancelled",
        seg.description,
        params,
    )
    return _placed(block, seg)  # type: ignore[return-value]
