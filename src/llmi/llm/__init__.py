"""The writing LLM: one small interface, implementations chosen by ``Settings.llm.backend``.

A backend turns a conversation into a stream of text deltas (:class:`LLMStream`) whose end gives the
call's own :class:`LLMResult` (text, reasoning, usage, finish reason, model) — nothing about a call is
kept on the backend, so one instance serves many concurrent streams (N samples, many server users).
A backend knows nothing about tags or tools — the caller feeds the deltas to
:class:`llmi.protocol.StreamParser`. Reasoning that a server reports
out of band (vLLM/SGLang ``reasoning_content``, Ollama ``reasoning``) is re-inserted into the stream
wrapped in ``<think>…</think>``, so the parser drops it from the document and the trace keeps it, the
same as for models that write their reasoning inline.

Conversations are backend-neutral: a list of ``{"role": ..., "content": str}`` messages plus the user's
images as :class:`~llmi.images.ImageData`. Each backend attaches the images in its own way (OpenAI image
parts, a transformers processor) — or not at all when it cannot see images (``supports_images``).

Backends are found through the ``llmi.llm`` entry-point group (``openai``, ``transformers`` are declared
in llmi's own ``pyproject.toml``, as a plugin would declare its own); :func:`register` adds one in code.

Errors leave a backend only as :class:`~llmi.errors.LLMError` / :class:`~llmi.errors.LLMUnreachable`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence

from ..errors import ConfigError
from ..request import Sampling

if TYPE_CHECKING:  # pragma: no cover
    from ..config import LLMSettings
    from ..images import ImageData

Message = dict[str, Any]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# ------------------------------------------------------------------------------------------------
# One call's result
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMResult:
    """What one LLM call produced. ``text``: the reply without its reasoning (tags included);
    ``reasoning``: the reasoning parts, joined; ``usage``: ``{prompt_tokens, completion_tokens,
    total_tokens}`` as the backend reported them, or ``None``; ``finish_reason``: why it stopped
    ("stop", "length" = cut at ``max_tokens``, "content_filter", ...) or ``None`` when the stream broke
    off; ``model``: the model id that answered."""

    text: str
    reasoning: str = ""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    model: str = ""

    @property
    def raw(self) -> str:
        """Reasoning and text in the ``<think>…</think>`` form the stream delivered (for a whole-response
        parser)."""
        return f"{THINK_OPEN}{self.reasoning}{THINK_CLOSE}{self.text}" if self.reasoning else self.text


def split_reasoning(raw: str) -> tuple[str, str]:
    """``(text, reasoning)`` of a streamed reply: ``<think>…</think>`` parts go to the reasoning; a reply
    whose first ``</think>`` comes before any ``<think>`` started inside the reasoning (a chat template
    opened it), as :func:`llmi.protocol.parse_response` reads it. An unclosed ``<think>`` runs to the end."""
    close = raw.find(THINK_CLOSE)
    if close >= 0 and THINK_OPEN not in raw[:close]:
        raw = THINK_OPEN + raw
    text: list[str] = []
    reasoning: list[str] = []
    pos = 0
    while True:
        start = raw.find(THINK_OPEN, pos)
        if start < 0:
            text.append(raw[pos:])
            break
        text.append(raw[pos:start])
        end = raw.find(THINK_CLOSE, start + len(THINK_OPEN))
        if end < 0:
            reasoning.append(raw[start + len(THINK_OPEN):])
            break
        reasoning.append(raw[start + len(THINK_OPEN):end])
        pos = end + len(THINK_CLOSE)
    return "".join(text), "".join(reasoning)


@dataclass
class StreamMeta:
    """What a backend learns while streaming one reply (written by the backend, read by the stream)."""

    model: str = ""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None


class LLMStream:
    """One streaming call: ``async for delta in s`` yields text deltas (reasoning wrapped in
    ``<think>…</think>``); after the loop — or after it broke off or was closed — :attr:`result` is the
    call's :class:`LLMResult`. Each call has its own stream, so one backend serves many at once.

    Close an unfinished stream with ``await s.aclose()`` (or ``contextlib.aclosing``): it stops the
    generation (the HTTP response, the local generation thread).
    """

    def __init__(self, run: Callable[[StreamMeta], AsyncIterator[str]], *, model: str = ""):
        self.meta = StreamMeta(model=model)
        self._gen = run(self.meta)
        self._parts: list[str] = []
        self._result: LLMResult | None = None

    def __aiter__(self) -> "LLMStream":
        return self

    async def __anext__(self) -> str:
        if self._result is not None:
            raise StopAsyncIteration
        try:
            delta = await self._gen.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        except BaseException:
            self._finish()
            raise
        self._parts.append(delta)
        return delta

    def _finish(self) -> None:
        if self._result is None:
            text, reasoning = split_reasoning("".join(self._parts))
            m = self.meta
            self._result = LLMResult(text, reasoning, m.usage, m.finish_reason, m.model)

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> LLMResult:
        """The call's result; a RuntimeError while the stream is still being read."""
        if self._result is None:
            raise RuntimeError("the LLM stream is not finished: read it to the end (or close it) first")
        return self._result

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()  # type: ignore[attr-defined]
        finally:
            self._finish()

    async def collect(self) -> LLMResult:
        """Read the stream to its end and return the result (closing it on error or cancellation)."""
        try:
            async for _ in self:
                pass
        finally:
            await self.aclose()
        return self.result


# ------------------------------------------------------------------------------------------------
# The interface
# ------------------------------------------------------------------------------------------------


class LLMBackend:
    """Streams a model's reply. Holds configuration and clients only: every call returns its own
    :class:`LLMStream` / :class:`LLMResult`, so one instance serves many concurrent calls.

    A backend implements :meth:`_deltas` (an async generator of text deltas that fills in the
    :class:`StreamMeta` it is given), and registers under the ``llmi.llm`` entry-point group.
    """

    #: A short name for traces and messages ("openai", "transformers"), also its registry name.
    kind: str = "llm"

    def __init__(self) -> None:
        #: The model id this backend asks for (configured, or resolved by :meth:`prepare`).
        self.model: str = ""

    @property
    def supports_images(self) -> bool:
        """Whether images given to :meth:`stream` reach the model."""
        return False

    @property
    def where(self) -> str:
        """Where the model lives (a URL or a folder), for messages and traces."""
        return ""

    @property
    def starts_in_think(self) -> bool | None:
        """Whether replies begin inside reasoning (a chat template that opens ``<think>``): ``True`` /
        ``False`` when the backend knows, ``None`` when it cannot tell (a remote server)."""
        return None

    async def prepare(self) -> None:
        """Resolve the model and check the backend can start (cheap; called once before streaming)."""

    def stream(
        self, messages: Sequence[Message], *, images: Sequence["ImageData"] = (), sampling: Sampling = Sampling()
    ) -> LLMStream:
        """Stream the reply to ``messages``; ``images`` belong to the last user message. ``sampling``
        fields left ``None`` take the configured defaults."""
        return LLMStream(lambda meta: self._deltas(messages, images, sampling, meta), model=self.model)

    async def complete(
        self, messages: Sequence[Message], *, images: Sequence["ImageData"] = (), sampling: Sampling = Sampling()
    ) -> LLMResult:
        """The whole reply at once (drains :meth:`stream`)."""
        return await self.stream(messages, images=images, sampling=sampling).collect()

    def _deltas(
        self, messages: Sequence[Message], images: Sequence["ImageData"], sampling: Sampling, meta: StreamMeta
    ) -> AsyncIterator[str]:
        raise NotImplementedError  # pragma: no cover - interface

    async def aclose(self) -> None:
        """Release clients, threads and models."""

    async def __aenter__(self) -> "LLMBackend":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------

_registered: dict[str, type[LLMBackend]] = {}
_entry_points: dict[str, str] | None = None


def _load_entry_points() -> dict[str, str]:
    global _entry_points
    if _entry_points is None:
        _entry_points = {ep.name: ep.value for ep in entry_points(group="llmi.llm")}
    return _entry_points


def register(cls: type[LLMBackend], name: str | None = None) -> type[LLMBackend]:
    """Register an LLM backend class under ``name`` (default: its ``kind``); usable as a decorator.
    Built-ins are declared as ``llmi.llm`` entry points, the same way a plugin declares its own."""
    _registered[name or cls.kind] = cls
    return cls


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> list[str]:
    """Every LLM backend name known (``[llm] backend`` accepts these)."""
    return sorted(set(_registered) | set(_load_entry_points()))


def get(name: str) -> type[LLMBackend]:
    """The backend class called ``name``; a ConfigError naming the alternatives if unknown."""
    if name in _registered:
        return _registered[name]
    target = _load_entry_points().get(name)
    if target is None:
        raise ConfigError(f"unknown llm backend {name!r}; expected one of {', '.join(names()) or 'none'}")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"llm backend {name!r} cannot be imported: {exc}") from exc


def create_llm(settings: "LLMSettings") -> LLMBackend:
    """The backend ``settings.backend`` names, configured from ``settings``."""
    return get(settings.backend)(settings)  # type: ignore[call-arg]


def __getattr__(name: str) -> Any:
    if name == "BACKENDS":  # the names accepted in ``[llm] backend`` (kept for older callers)
        return tuple(names())
    raise AttributeError(name)


class ThinkWrapper:
    """Merges an out-of-band reasoning channel into the text stream as ``<think>…</think>``.

    Feed it (reasoning, content) pairs; it returns the text to emit. Reasoning that arrives after
    content started opens a new think block, which is what a model interleaving them would have written.
    """

    def __init__(self) -> None:
        self.open = False

    def push(self, reasoning: str | None, content: str | None) -> str:
        out = []
        if reasoning:
            if not self.open:
                out.append("<think>")
                self.open = True
            out.append(reasoning)
        if content:
            if self.open:
                out.append("</think>")
                self.open = False
            out.append(content)
        return "".join(out)

    def close(self) -> str:
        if self.open:
            self.open = False
            return "</think>"
        return ""


__all__ = ["LLMBackend", "LLMResult", "LLMStream", "Message", "StreamMeta", "ThinkWrapper", "create_llm", "get",
           "names", "register", "split_reasoning", "unregister"]
