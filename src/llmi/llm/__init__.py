"""The writing LLM: one small interface, two implementations, chosen by ``Settings.llm.backend``.

A backend turns a conversation into a stream of text deltas. It knows nothing about tags or tools —
the caller feeds the deltas to :class:`llmi.protocol.StreamParser`. Reasoning that a server reports
out of band (vLLM/SGLang ``reasoning_content``, Ollama ``reasoning``) is re-inserted into the stream
wrapped in ``<think>…</think>``, so the parser drops it from the document and the trace keeps it, the
same as for models that write their reasoning inline.

Conversations are backend-neutral: a list of ``{"role": ..., "content": str}`` messages plus the user's
images as :class:`~llmi.images.ImageData`. Each backend attaches the images in its own way (OpenAI image
parts, a transformers processor) — or not at all when it cannot see images (``supports_images``).

Errors leave a backend only as :class:`~llmi.errors.LLMError` / :class:`~llmi.errors.LLMUnreachable`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..config import LLMSettings
    from ..images import ImageData

Message = dict[str, Any]

#: Backend names accepted in ``[llm] backend``.
BACKENDS = ("openai", "transformers")


class LLMBackend:
    """Streams a model's reply as text deltas.

    After a stream ends, ``usage`` holds the token counts the backend reported (``prompt_tokens``,
    ``completion_tokens``, ...) or ``None``, ``model`` the model id that actually answered, and
    ``finish_reason`` why it stopped (``"length"``: cut at ``max_tokens``).
    """

    #: A short name for traces and messages ("openai", "transformers").
    kind: str = "llm"

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.model: str = ""
        #: Why the last stream ended, as the server said: "stop", "length" (max_tokens hit), ...
        self.finish_reason: str | None = None

    @property
    def supports_images(self) -> bool:
        """Whether images given to :meth:`stream` reach the model."""
        return False

    @property
    def where(self) -> str:
        """Where the model lives (a URL or a folder), for messages and traces."""
        return ""

    async def prepare(self) -> None:
        """Resolve the model and check the backend can start (cheap; called once before streaming)."""

    def stream(self, messages: Sequence[Message], *, images: Sequence["ImageData"] = ()) -> AsyncIterator[str]:
        """Yield the reply as text deltas. ``images`` belong to the last user message."""
        raise NotImplementedError  # pragma: no cover - interface

    async def aclose(self) -> None:
        """Release clients, threads and models."""

    async def __aenter__(self) -> "LLMBackend":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def create_llm(settings: "LLMSettings") -> LLMBackend:
    """The backend ``settings.backend`` names, configured from ``settings``."""
    if settings.backend == "openai":
        from .openai_compat import OpenAICompatLLM

        return OpenAICompatLLM(settings)
    if settings.backend == "transformers":
        from .transformers_local import TransformersLLM

        return TransformersLLM(settings)
    raise ConfigError(f"unknown llm backend {settings.backend!r}; expected one of {', '.join(BACKENDS)}")


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


__all__ = ["BACKENDS", "LLMBackend", "Message", "ThinkWrapper", "create_llm"]
