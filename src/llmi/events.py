"""The one event stream that the CLI, the server, evaluation and test-time scaling all consume.

A run (one :class:`~llmi.engine.RunSession`) emits, in order of occurrence: :class:`RunStarted`;
:class:`TextEvent` / :class:`ThinkEvent` as the model writes; :class:`ToolStarted` the moment a tag
closes and :class:`ToolFinished` when its image (or failure) is ready — possibly after later text —;
:class:`TagAmended` for a tag whose failure reason became exact only at the end of the response;
:class:`Usage` once the LLM has finished; :class:`Error` when the LLM failed; and finally :class:`Done`
with the document (also after an error, carrying the part that was written). The engine emits the tool
events itself, so ``generate`` (a live LLM), ``render`` (a finished response) and the reward (scoring a
response) produce the same stream. :class:`Stage` reports the steps of longer pipelines (test-time
scaling, evaluation).

Every event carries the ``run_id`` of its run. ``ev.to_dict()`` is its JSON form — a dict with
``"type"`` — for server-sent events and trace files, and :func:`from_dict` reads it back. The full list
with examples is in ``docs/events.md``. :class:`Relay` turns a coroutine that reports events through a
callback into an async iterator of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, ClassVar, Mapping, Union

if TYPE_CHECKING:  # pragma: no cover
    from .document import Document, FailureBlock, ImageBlock


def _plain(ev: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"type": ev.type}
    for f in fields(ev):
        v = getattr(ev, f.name)
        d[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, Mapping) else v)
    return d


@dataclass(frozen=True)
class RunStarted:
    """A run began. ``tools``: the tools the system prompt advertises; ``llm`` / ``model``: who writes
    (empty when a finished response is rendered)."""

    prompt: str = ""
    n_input_images: int = 0
    tools: tuple[str, ...] = ()
    llm: str = ""
    model: str = ""
    run_id: str = ""
    type: ClassVar[str] = "run_started"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class TextEvent:
    """Visible text, as soon as it cannot be the start of a tag."""

    text: str
    run_id: str = ""
    type: ClassVar[str] = "text"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class ThinkEvent:
    """Reasoning (``<think>`` blocks, or a server's reasoning channel): never part of the document."""

    text: str
    run_id: str = ""
    type: ClassVar[str] = "think"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class ToolStarted:
    """A tag closed and its call started. ``index``: its slot (0-based among tags; the image index is
    ``n_input_images + index``). ``params``: the call's params — for a tag that is no valid call,
    ``{"raw": <the payload, up to 2000 characters>}`` and ``source`` ``"unknown"`` unless it named one."""

    index: int
    source: str
    description: str
    params: Mapping[str, Any] = field(default_factory=dict)
    run_id: str = ""
    type: ClassVar[str] = "tool_started"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class ToolFinished:
    """Slot ``index`` is ready: an image, or a failure with its reason."""

    index: int
    block: "ImageBlock | FailureBlock"
    elapsed_s: float
    run_id: str = ""
    type: ClassVar[str] = "tool_finished"

    @property
    def ok(self) -> bool:
        return self.block.type == "image"

    def to_dict(self, *, image_data: bool = True) -> dict[str, Any]:
        from .document import block_to_dict

        return {"type": self.type, "index": self.index, "block": block_to_dict(self.block, image_data=image_data),
                "elapsed_s": round(self.elapsed_s, 4), "run_id": self.run_id}


@dataclass(frozen=True)
class TagAmended:
    """Slot ``index`` failed for a reason known only at the end of the response (an edit of an image
    index past the last tag): ``block`` replaces what :class:`ToolFinished` reported."""

    index: int
    block: "FailureBlock"
    run_id: str = ""
    type: ClassVar[str] = "tag_amended"

    def to_dict(self) -> dict[str, Any]:
        from .document import block_to_dict

        return {"type": self.type, "index": self.index, "block": block_to_dict(self.block), "run_id": self.run_id}


@dataclass(frozen=True)
class Usage:
    """The LLM finished: token counts (``prompt_tokens``, ``completion_tokens``, ``total_tokens``, or
    ``None`` when the backend reported none), why it stopped, and the model that answered."""

    usage: Mapping[str, Any] | None
    finish_reason: str | None
    model: str = ""
    run_id: str = ""
    type: ClassVar[str] = "usage"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class Error:
    """The run failed: ``kind`` ``"llm_unreachable"`` / ``"llm_error"`` (nothing was written) or
    ``"llm_cut"`` (the LLM failed part-way; :class:`Done` follows with what was written), or
    ``"internal_error"``."""

    message: str
    kind: str = "llm_error"
    run_id: str = ""
    type: ClassVar[str] = "error"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class Stage:
    """A step of a longer pipeline (test-time scaling, evaluation): ``status`` is ``"started"``,
    ``"finished"``, ``"skipped"`` or ``"cut"`` (stopped by a budget); ``detail`` what the step is about,
    ``cost`` what it spent (tokens, calls, seconds) — both JSON objects."""

    name: str
    status: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    cost: Mapping[str, Any] = field(default_factory=dict)
    run_id: str = ""
    type: ClassVar[str] = "stage"
    STATUSES: ClassVar[tuple[str, ...]] = ("started", "finished", "skipped", "cut")

    def __post_init__(self) -> None:
        if self.status not in self.STATUSES:
            raise ValueError(f"stage status {self.status!r} is not one of {', '.join(self.STATUSES)}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class Done:
    """The run's document (the last event of a run)."""

    document: "Document"
    run_id: str = ""
    type: ClassVar[str] = "done"

    def to_dict(self, *, image_data: bool = True) -> dict[str, Any]:
        doc = self.document.to_dict(image_data=image_data)
        return {"type": self.type, "document": doc, "run_id": self.run_id}


Event = Union[RunStarted, TextEvent, ThinkEvent, ToolStarted, ToolFinished, TagAmended, Usage, Error, Stage, Done]
EventHandler = Callable[[Event], None]

EVENT_TYPES: dict[str, type] = {
    cls.type: cls
    for cls in (RunStarted, TextEvent, ThinkEvent, ToolStarted, ToolFinished, TagAmended, Usage, Error, Stage, Done)
}


def to_dict(ev: Event) -> dict[str, Any]:
    """The JSON form of ``ev`` (same as ``ev.to_dict()``)."""
    return ev.to_dict()


def from_dict(d: Mapping[str, Any]) -> Event:
    """Read an event back from its JSON form. :class:`ValueError` for an unknown type or a bad field."""
    from .document import Document, block_from_dict

    if not isinstance(d, Mapping):
        raise ValueError(f"an event is a JSON object, not {type(d).__name__}")
    cls = EVENT_TYPES.get(d.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown event type {d.get('type')!r}; expected one of {', '.join(EVENT_TYPES)}")
    kw = {k: v for k, v in d.items() if k != "type"}
    if cls in (ToolFinished, TagAmended):
        kw["block"] = block_from_dict(kw.get("block"), "block")
    elif cls is Done:
        kw["document"] = Document.from_dict(kw.get("document"))
    elif cls is RunStarted and "tools" in kw:
        kw["tools"] = tuple(kw["tools"])
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ValueError(f"bad {cls.type} event: {exc}") from None


class Relay:
    """The events that a coroutine reports through a callback, as they come.

    ``relay = Relay(lambda emit: work(..., on_event=emit))``; iterating ``relay.events()`` starts ``work``
    and yields each event it reports; after the loop, ``relay.result`` is what ``work`` returned, and an
    exception of ``work`` is raised at the end of the loop. Closing the iterator early (``aclosing``)
    cancels ``work`` and waits for it.
    """

    def __init__(self, start: Callable[[Callable[[Any], None]], Awaitable[Any]]):
        self._start = start
        self.result: Any = None

    async def events(self) -> AsyncIterator[Any]:
        import asyncio

        queue: asyncio.Queue = asyncio.Queue()
        end = object()
        task = asyncio.ensure_future(self._start(queue.put_nowait))
        task.add_done_callback(lambda _t: queue.put_nowait(end))
        try:
            while True:
                ev = await queue.get()
                if ev is end:
                    break
                yield ev
            self.result = await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


__all__ = ["Done", "Error", "Event", "EventHandler", "EVENT_TYPES", "Relay", "RunStarted", "Stage", "TagAmended",
           "TextEvent", "ThinkEvent", "ToolFinished", "ToolStarted", "Usage", "from_dict", "to_dict"]
