"""What the routes share: the settings, one engine, one LLM backend, the store, the run manager, the
limits — and the event sources a run can be driven by (a prompt, a written response, test-time scaling).

One :class:`Services` lives for the app's lifetime (opened in the lifespan, closed at shutdown). The
engine's per-tool concurrency limits and cache are therefore shared by every user of the server, as is
the LLM backend (each call returns its own result, so concurrent streams do not mix).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from ..config import ImageLimits, Settings
from ..errors import ToolError
from ..events import Relay
from ..images import ImageData
from .auth import KeyRing, RateLimiter
from .inputs import ApiError, decode_image
from .manager import Run, RunManager
from .store import Store

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine
    from ..fetch import SafeFetcher
    from ..llm import LLMBackend
    from ..request import Request

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    keys: KeyRing
    store: Store
    manager: RunManager
    limiter: RateLimiter
    engine: "Engine | None" = None
    llm: "LLMBackend | None" = None
    fetcher: "SafeFetcher | None" = None
    light_limiter: RateLimiter | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    @property
    def server(self):
        return self.settings.server

    async def open(self, *, engine: "Engine | None" = None, llm: "LLMBackend | None" = None) -> None:
        from ..engine import Engine
        from ..fetch import SafeFetcher
        from ..llm import create_llm

        self.store.mark_interrupted()
        if engine is None:
            engine = await self._stack.enter_async_context(Engine(self.settings, max_tags=self.server.max_tags))
        self.engine = engine
        if llm is None:
            llm = create_llm(self.settings.llm)
            self._stack.push_async_callback(llm.aclose)
        self.llm = llm
        self.fetcher = SafeFetcher(self.settings.fetch)
        self._stack.push_async_callback(self.fetcher.aclose)

    async def aclose(self) -> None:
        await self.manager.shutdown()
        await self._stack.aclose()
        self.store.close()

    # -- inputs -----------------------------------------------------------------------------------
    def user_image_limits(self) -> ImageLimits:
        """User images have no minimum size (a thumbnail is a fine thing to edit); the maxima hold."""
        lim = self.settings.images
        return ImageLimits(min_width=1, min_height=1, max_width=lim.max_width, max_height=lim.max_height,
                           max_pixels=lim.max_pixels)

    async def load_images(self, refs: list[tuple[str, str]]) -> list[ImageData]:
        """``("data", uri-or-base64)`` and ``("url", http-url)`` references to checked images. URLs go
        through the safe fetcher (internal addresses refused unless ``[fetch] allow`` admits them)."""
        srv = self.server
        if len(refs) > srv.max_images:
            raise ApiError(413, f"too many images ({len(refs)}; the limit is {srv.max_images})",
                           code="too_many_images")
        limits = self.user_image_limits()
        out: list[ImageData] = []
        for i, (kind, value) in enumerate(refs):
            what = f"image {i}"
            if kind == "data":
                out.append(await asyncio.to_thread(decode_image, value, max_bytes=srv.max_image_bytes,
                                                   max_pixels=limits.max_pixels, what=what,
                                                   max_size=(limits.max_width, limits.max_height)))
                continue
            assert self.fetcher is not None
            try:
                img, _ = await self.fetcher.fetch_image(value, limits=limits)
            except ToolError as exc:
                raise ApiError(400, f"{what}: cannot fetch {value[:200]}: {exc}", code=exc.kind) from None
            if len(img.data) > srv.max_image_bytes:
                raise ApiError(413, f"{what} is too large (the limit is {srv.max_image_bytes} bytes)",
                               code="request_too_large")
            out.append(img)
        return out

    # -- event sources ----------------------------------------------------------------------------
    def generate_source(self, request: "Request", *, tts: dict[str, Any] | None = None):
        """The events of writing ``request`` with the LLM (or of test-time scaling when ``tts``)."""

        async def source(run: Run) -> AsyncIterator[Any]:
            from ..generation import Trace, stream

            trace = Trace()
            run.trace = trace
            if tts is not None:
                async with aclosing(self._tts_events(request, tts)) as evs:  # stopping early stops the run
                    async for ev in evs:
                        yield ev
                return
            events = stream(request, settings=self.settings, llm=self.llm, engine=self.engine, trace=trace)
            async with aclosing(events) as evs:
                async for ev in evs:
                    yield ev

        return source

    async def _tts_events(self, request: "Request", options: dict[str, Any]) -> AsyncIterator[Any]:
        from .. import tts as tts_pkg

        fn = tts_pkg.tts
        kwargs: dict[str, Any] = dict(options)
        params = inspect.signature(fn).parameters
        for name, value in (("settings", self.settings), ("llm", self.llm), ("engine", self.engine)):
            if name in params:
                kwargs[name] = value
        relay = Relay(lambda emit: fn(request, **kwargs, **({"on_event": emit} if "on_event" in params else {})))
        async with aclosing(relay.events()) as events:
            async for ev in events:
                yield ev
        result = relay.result
        doc = getattr(result, "document", result)
        from ..document import Document

        if isinstance(doc, Document):
            done = {"type": "done", "document_obj": doc}
            cost = getattr(result, "cost", None)
            if cost is not None:
                done["tts_cost"] = _json_safe(cost)
            yield done

    def render_source(self, response: str, images: list[ImageData], *, prompt: str = ""):
        """The events of running the tags of an already-written response (the engine's session emits
        them: ``run_started``, ``text``, ``tool_*``, ``done``)."""

        async def source(run: Run) -> AsyncIterator[Any]:
            engine = self.engine
            assert engine is not None
            relay = Relay(lambda emit: engine.run_response(response, images, emit, run_id=run.id, prompt=prompt))
            async with aclosing(relay.events()) as events:  # closing it early cancels the session's tool calls
                async for ev in events:
                    yield ev

        return source


def _json_safe(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(value, (dict, list, str, int, float, bool)) or value is None:
        return value
    return str(value)
