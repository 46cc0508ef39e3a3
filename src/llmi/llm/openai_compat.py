"""Any OpenAI-compatible chat-completions server, streamed through the ``openai`` SDK.

vLLM, SGLang, Ollama, LM Studio, llama.cpp's server, OpenAI and Azure OpenAI all speak this wire format:
a POST to ``{base_url}/chat/completions`` with ``stream: true`` answers with server-sent events, one
``chat.completion.chunk`` per delta, an optional usage chunk with empty ``choices``, and ``data: [DONE]``.

Dialects seen in the wild and handled here: reasoning in ``delta.reasoning_content`` (vLLM and SGLang with
``--reasoning-parser``, llama.cpp) or ``delta.reasoning`` (Ollama, newer vLLM); no usage chunk (older
Ollama); usage inside the finish chunk (llama.cpp); a leading chunk with no choices (Azure's prompt filter
results); ``finish_reason`` on the last content delta. OpenAI's and Azure's reasoning models refuse
``max_tokens`` (they take ``max_completion_tokens``) and any ``temperature``/``top_p`` but the default; such a
400 — it names the parameter in ``error.param`` — is answered by adapting the request once and sending it
again, and the adaptation is kept for later requests.

The SDK's own retries are switched off (``max_retries=0``): llmi retries a 429 / 5xx answer a couple of
times itself through :mod:`llmi.retry`, honoring ``Retry-After`` (a wait beyond 30 s ends the retries),
and only before the first token — once text has been streamed to the caller a retry would duplicate it,
so a failure mid-stream is reported instead. Every SDK error is translated here into :class:`~llmi.errors.LLMError` or :class:`~llmi.errors.LLMUnreachable`, with
messages that never contain the API key.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from urllib.parse import urlsplit

from ..errors import LLMError, LLMUnreachable
from ..redaction import redact, safe_url
from ..keys import resolve_api_key
from ..retry import GaveUp, RetryPolicy, Transient, retry_call
from ..request import Sampling
from . import LLMBackend, Message, StreamMeta, ThinkWrapper

if TYPE_CHECKING:  # pragma: no cover
    from ..config import LLMSettings
    from ..images import ImageData

log = logging.getLogger(__name__)

#: How many times a 429 / 5xx answer is retried before the first token, and the longest wait honored.
RETRIES = 2
BACKOFF_S = 1.0
MAX_WAIT_S = 30.0

START_HINT = (
    "start an OpenAI-compatible server, e.g. `vllm serve Qwen/Qwen3-8B` (http://localhost:8000/v1) or "
    "`ollama serve` (http://localhost:11434/v1), or point llmi at one with --base-url / LLMI_BASE_URL "
    "(and --model / LLMI_MODEL)"
)


def unreachable_message(base_url: str, detail: str = "") -> str:
    extra = f" ({detail})" if detail else ""
    return f"no LLM server answered at {base_url}{extra}. To fix: {START_HINT}."


def image_part(image: "ImageData") -> dict[str, Any]:
    """An OpenAI ``image_url`` content part carrying the image inline as a data URL."""
    b64 = base64.b64encode(image.data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{image.mime};base64,{b64}"}}


def with_images(messages: Sequence[Message], images: Sequence["ImageData"]) -> list[Message]:
    """Attach ``images`` to the last user message as content parts (text first, then images in order)."""
    out = [dict(m) for m in messages]
    if not images:
        return out
    for m in reversed(out):
        if m.get("role") == "user":
            text = m.get("content") or ""
            parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if isinstance(text, str) else list(text)
            m["content"] = parts + [image_part(im) for im in images]
            return out
    out.append({"role": "user", "content": [image_part(im) for im in images]})
    return out


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class _Retryable(Exception):
    """An :class:`LLMError` from an answer worth retrying (429, 5xx, timeout), with the server's wait."""

    def __init__(self, error: LLMError, retry_after: float | None = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after

    @staticmethod
    def verdict(exc: Exception) -> Transient | None:
        return Transient(exc.retry_after) if isinstance(exc, _Retryable) else None


def _unsupported_param(exc: Any) -> str | None:
    """The request parameter a 400 answer refuses as unsupported (OpenAI's ``error.param``), if any."""
    body = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None
    param, code = err.get("param"), str(err.get("code") or "")
    message = str(err.get("message") or "").lower()
    if isinstance(param, str) and (code.startswith("unsupported") or "unsupported" in message or "not supported" in message):
        return param
    return None


def _error_detail(exc: Any) -> str:
    """The server's own message, without echoing request data, and with echoed (masked) keys removed."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if isinstance(msg, str) and msg:
            return redact(msg)[:300]
    msg = getattr(exc, "message", "") or str(exc)
    return redact(str(msg))[:300]


class OpenAICompatLLM(LLMBackend):
    kind = "openai"

    def __init__(self, settings: "LLMSettings", *, client: Any = None):
        super().__init__()
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.model = settings.model
        self._client = client
        self._own_client = client is None
        #: Request changes a server asked for with a 400 (parameter -> replacement name, or None to drop).
        self._adapted: dict[str, str | None] = {}

    # -- setup -----------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """The server, for messages and traces (no credentials or query string)."""
        return safe_url(self.base_url)

    @property
    def starts_in_think(self) -> bool | None:
        # A server cannot say whether its chat template opens <think>; the user can ([llm] starts_in_think).
        return self.settings.starts_in_think

    @property
    def supports_images(self) -> bool:
        # Chat servers accept image parts; a text-only model behind one rejects them, which the user
        # states with `vision = false`.
        return self.settings.vision is not False

    def _api_key(self) -> str:
        # OPENAI_API_KEY is only ever sent to OpenAI itself, never to whatever base_url points at.
        to_openai = (urlsplit(self.base_url).hostname or "").lower() == "api.openai.com"
        key = resolve_api_key(self.settings.api_key, "OPENAI_API_KEY" if to_openai else "",
                              owner="the writing LLM", table="llm", required=False)
        # Local servers (vLLM, Ollama, LM Studio) accept any key; the SDK insists on one.
        return key or "EMPTY"

    @property
    def client(self) -> Any:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._api_key(),
                max_retries=0,
                timeout=self.settings.timeout_s,
            )
        return self._client

    async def prepare(self) -> None:
        """Pick the model: the configured one, else the only one the server lists."""
        if self.model:
            return
        import openai

        try:
            page = await self.client.models.list()
            ids = [m.id for m in page.data]
        except openai.APIConnectionError as exc:
            raise LLMUnreachable(unreachable_message(self.where, type(exc.__cause__ or exc).__name__)) from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.OpenAIError as exc:
            raise LLMError(f"listing models at {self.where} failed: {_error_detail(exc)}") from None
        if len(ids) == 1:
            self.model = ids[0]
            log.info("using the only model served at %s: %s", self.where, self.model)
            return
        if not ids:
            raise LLMError(f"the server at {self.where} lists no models; name one with --model / LLMI_MODEL")
        shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
        raise LLMError(
            f"the server at {self.where} serves {len(ids)} models ({shown}); choose one with --model / LLMI_MODEL"
        )

    # -- errors ----------------------------------------------------------------------------------
    def _status_error(self, exc: Any) -> LLMError:
        status = getattr(exc, "status_code", None)
        detail = _error_detail(exc)
        if status == 401:
            return LLMError(
                f"the LLM server at {self.where} refused the API key (401: {detail}); set the right key "
                "in LLMI_API_KEY or in [llm] api_key of the config file"
            )
        if status == 403:
            return LLMError(f"the LLM server at {self.where} denied access (403: {detail}); check LLMI_API_KEY")
        if status == 404:
            return LLMError(
                f"the LLM server at {self.where} answered 404 ({detail}); check the model name "
                f"({self.model or 'none given'}) and that the base URL ends with /v1"
            )
        if status == 429:
            return LLMError(f"the LLM server at {self.where} kept rate-limiting (429: {detail}); try again later")
        return LLMError(f"the LLM server at {self.where} answered {status}: {detail}")

    # -- streaming -------------------------------------------------------------------------------
    def _request(self, messages: Sequence[Message], images: Sequence["ImageData"], sampling: Sampling) -> dict[str, Any]:
        s = sampling.over(self.settings)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": with_images(messages, images if self.supports_images else ()),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if s.top_p is not None:
            body["top_p"] = s.top_p
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        if s.seed is not None:
            body["seed"] = s.seed
        if s.extra_body:
            body["extra_body"] = dict(s.extra_body)
        return self._adapt(body)

    def _adapt(self, body: dict[str, Any]) -> dict[str, Any]:
        for param, replacement in self._adapted.items():
            if param in body:
                value = body.pop(param)
                if replacement is not None:
                    body[replacement] = value
        return body

    def _learn(self, exc: Any, request: dict[str, Any]) -> bool:
        """Adapt ``request`` to a 400 that refuses one of our sampling parameters; False if it is not that."""
        param = _unsupported_param(exc)
        if param not in ("max_tokens", "temperature", "top_p") or param not in request or param in self._adapted:
            return False
        self._adapted[param] = "max_completion_tokens" if param == "max_tokens" else None
        self._adapt(request)
        what = "sending it as max_completion_tokens" if param == "max_tokens" else "using the server's default"
        log.warning("the model %s at %s does not accept %s; %s", self.model, self.where, param, what)
        return True

    async def _open(self, request: dict[str, Any]) -> Any:
        """Send the request, retrying 429 / 5xx answers and timeouts a few times; return the stream."""
        import openai

        async def once() -> Any:
            while True:
                try:
                    return await self.client.chat.completions.create(**request)
                except openai.APITimeoutError:
                    raise _Retryable(LLMError(
                        f"the LLM server at {self.where} did not answer within {self.settings.timeout_s:g} s"
                    )) from None
                except openai.APIConnectionError as exc:
                    raise LLMUnreachable(
                        unreachable_message(self.where, type(exc.__cause__ or exc).__name__)
                    ) from None
                except openai.APIStatusError as exc:
                    if exc.status_code == 400 and self._learn(exc, request):
                        continue  # not a retry: the same request, minus what the model refuses
                    err = self._status_error(exc)
                    if exc.status_code != 429 and exc.status_code < 500:
                        raise err from None
                    raise _Retryable(err, _retry_after(exc)) from None
                except openai.OpenAIError as exc:
                    raise LLMError(f"the LLM request to {self.where} failed: {_error_detail(exc)}") from None

        def on_retry(exc: Exception, attempt: int, delay: float) -> None:
            log.warning("%s; retrying in %.1f s", exc, delay)

        policy = RetryPolicy(retries=RETRIES, backoff_s=BACKOFF_S, max_backoff_s=MAX_WAIT_S)
        try:
            return await retry_call(once, policy, _Retryable.verdict, on_retry=on_retry)
        except GaveUp as gave:
            err = gave.error.error  # type: ignore[attr-defined]
            if gave.why == "retry_after":
                raise LLMError(f"{err}; the server asks to retry after {gave.retry_after:g} s, longer than "
                               f"llmi waits ({MAX_WAIT_S:g} s)") from None
            raise err from None

    async def _deltas(
        self, messages: Sequence[Message], images: Sequence["ImageData"], sampling: Sampling, meta: StreamMeta
    ) -> AsyncIterator[str]:
        import openai

        if not self.model:
            await self.prepare()
        request = self._request(messages, images, sampling)
        meta.model = self.model
        response = await self._open(request)
        think = ThinkWrapper()
        finished = False
        try:
            async for chunk in response:
                if chunk.usage is not None:
                    meta.usage = chunk.usage.model_dump(exclude_none=True)
                extra = chunk.model_extra or {}
                if getattr(chunk, "object", None) == "error" or extra.get("error"):  # vLLM's older error shape
                    err = extra.get("error") or extra
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise LLMError(f"the LLM server at {self.where} failed mid-stream: {msg}")
                if chunk.model:
                    meta.model = chunk.model
                for choice in (chunk.choices or [])[:1]:
                    delta = choice.delta
                    dx = (delta.model_extra or {}) if delta is not None else {}
                    reasoning = dx.get("reasoning_content") or dx.get("reasoning")
                    text = think.push(reasoning if isinstance(reasoning, str) else None,
                                      delta.content if delta is not None else None)
                    if text:
                        yield text
                    if choice.finish_reason:
                        finished = True
                        meta.finish_reason = choice.finish_reason
                        if choice.finish_reason == "length":
                            log.warning("the model hit max_tokens (%s); the response is cut", request.get(
                                "max_tokens", request.get("max_completion_tokens")))
                        elif choice.finish_reason == "content_filter":
                            log.warning("the server's content filter cut the response")
        except openai.APIStatusError as exc:
            raise LLMError(f"the LLM server at {self.where} failed mid-stream: {_error_detail(exc)}") from None
        except openai.APIError as exc:  # includes the SDK's mid-stream {"error": ...} and dropped connections
            kind = "the connection dropped" if isinstance(exc, openai.APIConnectionError) else _error_detail(exc)
            raise LLMError(f"the LLM stream from {self.where} broke off: {kind}") from None
        finally:
            await response.close()
        tail = think.close()
        if tail:
            yield tail
        if not finished:
            raise LLMError(f"the LLM stream from {self.where} ended before the model finished (no finish_reason)")

    async def aclose(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.close()
            self._client = None
