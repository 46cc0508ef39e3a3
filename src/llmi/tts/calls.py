"""The models the pipeline talks to, behind one small interface: :class:`Chat`.

Three kinds of model take part: the *policy* (the writing LLM, :class:`PolicyChat`, streamed through an
:class:`~llmi.llm.LLMBackend`), and the *judges* (``[llm_judge]`` and ``[mllm_judge]``,
:class:`JudgeChat`, non-streaming chat completions through :class:`~llmi.reward.judges.JudgeClient`,
whose retries and failure kinds are reused as they are).

Every request — a judge's retry included — first asks the run's :class:`~.budget.Meter` (and is refused
with :class:`~.budget.BudgetExhausted` when it would go over), then is charged, with the tokens the
server reported, to the costs being charged (:func:`~.cost.charging`). For the judges this happens in a
thin wrapper around the OpenAI client the judge client is given, so that each HTTP request is seen.

``ask(messages, parse)`` returns ``parse(reply)``; a reply ``parse`` rejects
(:class:`~llmi.reward.judges.ScoreParseError` or ``ValueError``) is asked again once for the policy (the
judge client retries it by its own settings), then raised as :class:`ChatFailure`. Nothing here turns a
failure into a made-up answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import LLMError, LLMIError
from ..images import ImageData
from .budget import BudgetExhausted, Meter
from .cost import IMAGE_TOKENS, estimate_tokens

log = logging.getLogger(__name__)
T = TypeVar("T")


class ChatFailure(LLMIError):
    """A model call that failed for good (after its retries). ``kind`` as in
    :class:`~llmi.reward.judges.JudgeFailure` (``timeout``, ``unparseable``, ``http_error``, ...) or
    ``llm_error`` for the policy."""

    def __init__(self, message: str, *, kind: str):
        super().__init__(message)
        self.kind = kind

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self}"


@dataclass(frozen=True)
class Reply:
    """One policy call: its text (reasoning removed), reasoning, usage and why it stopped."""

    text: str
    reasoning: str = ""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    model: str = ""

    @property
    def raw(self) -> str:
        return f"<think>{self.reasoning}</think>{self.text}" if self.reasoning else self.text


def estimate_messages(messages: Sequence[dict[str, Any]], n_images: int = 0) -> int:
    """Estimated prompt tokens of a chat (text parts over-estimated, images at ``IMAGE_TOKENS``)."""
    total = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            total += estimate_tokens(content) + 4
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    total += estimate_tokens(str(part.get("text", "")))
                elif isinstance(part, dict):
                    total += IMAGE_TOKENS
            total += 4
    return total + n_images * IMAGE_TOKENS


class Chat:
    """A model the pipeline asks things. ``name`` is its settings section (``policy`` for the writer)."""

    name: str = "chat"
    #: Whether images in a request reach the model.
    sees_images: bool = False

    async def ask(
        self,
        messages: list[dict[str, Any]],
        parse: Callable[[str], T],
        *,
        images: Sequence[ImageData] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> T:  # pragma: no cover - interface
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the chat owns."""


# ------------------------------------------------------------------------------------------------
# The policy
# ------------------------------------------------------------------------------------------------


class PolicyChat(Chat):
    """The writing LLM. ``complete`` is one streamed call with per-call sampling; ``ask`` parses it."""

    name = "policy"

    def __init__(self, llm: Any, meter: Meter, *, default_max_tokens: int | None = None):
        self.llm = llm
        self.meter = meter
        self.default_max_tokens = default_max_tokens

    @property
    def sees_images(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.llm, "supports_images", False))

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        images: Sequence[ImageData] = (),
        temperature: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        extra_body: dict[str, Any] | None = None,
        on_delta: Callable[[str], None] | None = None,
    ) -> Reply:
        """One call; raises :class:`~llmi.errors.LLMError` if it fails, BudgetExhausted if not granted.
        A stream that broke off after some text still raises (a cut candidate is not a candidate)."""
        from ..request import Sampling

        sent_images = tuple(images) if self.sees_images else ()
        est_in = estimate_messages(messages, len(sent_images))
        wanted = max_tokens if max_tokens is not None else self.default_max_tokens
        grant = self.meter.reserve_call(est_in, wanted)
        sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=grant.max_out, seed=seed,
                            extra_body=dict(extra_body or {}))
        parts: list[str] = []
        result = None
        try:
            stream = self.llm.stream(messages, images=tuple(images), sampling=sampling)
            try:
                async for delta in stream:
                    parts.append(delta)
                    if on_delta is not None:
                        on_delta(delta)
            finally:
                await stream.aclose()
            result = stream.result
        finally:
            usage = getattr(result, "usage", None)
            grant.settle(usage, est_out=estimate_tokens("".join(parts)))
        return Reply(result.text, result.reasoning, result.usage, result.finish_reason, result.model)

    async def ask(self, messages, parse, *, images=(), max_tokens=None, temperature=None):
        last: Exception | None = None
        for attempt in range(2):
            try:
                reply = await self.complete(messages, images=images, max_tokens=max_tokens, temperature=temperature)
            except LLMError as exc:
                raise ChatFailure(f"the writing LLM failed: {exc}", kind="llm_error") from exc
            try:
                return parse(reply.text)
            except ValueError as exc:  # ScoreParseError is a ValueError
                last = exc
                log.debug("policy reply not usable (attempt %d): %s", attempt + 1, exc)
        raise ChatFailure(f"the writing LLM's reply was not usable twice: {last}", kind="unparseable")


# ------------------------------------------------------------------------------------------------
# The judges
# ------------------------------------------------------------------------------------------------

#: The budget refusal met inside the current judge call (the judge client turns any exception into
#: a JudgeFailure; this lets :class:`JudgeChat` raise the refusal itself).
_REFUSED: contextvars.ContextVar[list | None] = contextvars.ContextVar("llmi_tts_refused", default=None)
#: The reply cap of the current judge call, when the caller set one (``ask(max_tokens=...)``).
_MAX_OUT: contextvars.ContextVar[int | None] = contextvars.ContextVar("llmi_tts_max_out", default=None)


class _Completions:
    def __init__(self, owner: _MeteredClient):
        self._owner = owner

    async def create(self, **kwargs: Any) -> Any:
        owner = self._owner
        messages = kwargs.get("messages") or []
        try:
            grant = owner.meter.reserve_call(estimate_messages(messages), _MAX_OUT.get() or owner.max_tokens)
        except BudgetExhausted as exc:
            cell = _REFUSED.get()
            if cell is not None:
                cell.append(exc)
            raise
        if grant.max_out is not None:
            kwargs["max_tokens"] = grant.max_out
        resp = None
        try:
            resp = await owner.inner.chat.completions.create(**kwargs)
            return resp
        finally:
            usage = getattr(resp, "usage", None)
            usage_d = usage.model_dump() if hasattr(usage, "model_dump") else (usage if isinstance(usage, dict) else None)
            text = ""
            try:
                text = resp.choices[0].message.content or ""  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - garbage bodies are the judge client's business
                log.debug("judge reply has no text to estimate its tokens: %s", exc)
            grant.settle(usage_d, est_out=estimate_tokens(text if isinstance(text, str) else ""))


class _Chat:
    def __init__(self, owner: _MeteredClient):
        self.completions = _Completions(owner)


class _MeteredClient:
    """Wraps an ``AsyncOpenAI`` client: each chat request asks the meter first and is charged after."""

    def __init__(self, inner: Any, meter: Meter, max_tokens: int | None):
        self.inner = inner
        self.meter = meter
        self.max_tokens = max_tokens
        self.chat = _Chat(self)
        self.models = inner.models

    async def close(self) -> None:
        await self.inner.close()


class JudgeChat(Chat):
    """A judge endpoint (``[llm_judge]`` or ``[mllm_judge]``). Owns its client; ``aclose`` it."""

    def __init__(self, settings: Any, name: str, meter: Meter, *, max_tokens: int | None = 1024,
                 sees_images: bool | None = None, client: Any = None, backoff_s: float | None = None):
        from ..reward.judges import JudgeClient, resolve_api_key

        self.name = name
        self.meter = meter
        self.sees_images = (name == "mllm_judge") if sees_images is None else sees_images
        if client is None:
            from openai import AsyncOpenAI

            if not settings.base_url:
                from ..errors import ConfigError

                raise ConfigError(f"{name}: no base_url; set [{name}] base_url in the config")
            client = AsyncOpenAI(base_url=settings.base_url, api_key=resolve_api_key(settings, name),
                                 timeout=settings.timeout_s, max_retries=0)
        self._metered = _MeteredClient(client, meter, max_tokens)
        self.client = JudgeClient(settings, name=name, client=self._metered, backoff_s=backoff_s)

    async def ask(self, messages, parse, *, images=(), max_tokens=None, temperature=None):
        from ..reward.judges import JudgeFailure

        if images:
            messages = _with_images(messages, images)
        cell: list = []
        token = _REFUSED.set(cell)
        cap = _MAX_OUT.set(max_tokens)
        try:
            return await self.client.ask(messages, parse)
        except JudgeFailure as exc:
            if cell:
                raise cell[0] from None
            raise ChatFailure(str(exc), kind=exc.kind) from exc
        finally:
            _MAX_OUT.reset(cap)
            _REFUSED.reset(token)

    async def aclose(self) -> None:
        await self._metered.close()


def _with_images(messages: list[dict[str, Any]], images: Sequence[ImageData]) -> list[dict[str, Any]]:
    """``images`` appended as parts of the last user message (for a judge asked with ``images=``)."""
    from ..reward.judges import image_part

    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m.get("role") == "user":
            content = m.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
            m["content"] = parts + [image_part(im) for im in images]
            break
    return out


async def gather_settled(*aws: Any) -> list[Any]:
    """``asyncio.gather(..., return_exceptions=True)`` that still lets cancellation through."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, asyncio.CancelledError):
            raise r
    return results
