"""The exceptions llmi raises: one tree, drawn here.

A *tool* failing (a chart that raises, a search with no usable result) is not an exception: it becomes a
:class:`~llmi.document.FailureBlock` in the document. A *row* failing in a batch is not one either: it
becomes that row's error line (:mod:`llmi.batch`). Exceptions are for the caller's mistakes and for
services the whole run depends on::

    LLMIError
    ├── ConfigError              bad or missing configuration (unknown backend, missing API key, ...)
    │   ├── MissingKeyError      an API key is not set (llmi.keys)
    │   └── RecipeError          a training recipe cannot be used (llmi.train)
    ├── InputError               unusable input: missing response file, unreadable user image
    │   └── TrainDataError       a training data set cannot be used (llmi.train)
    ├── LLMError                 the writing LLM could not be used
    │   ├── LLMUnreachable       nothing answered at the base URL
    │   └── GenerationError      it failed part-way; carries the partial document and the trace
    ├── JudgeError               a judge could not give a score
    │   ├── JudgeFailure         a judge call failed after its retries (``kind``, ``attempts``, ``status``)
    │   └── ScoreParseError      a judge reply without the expected scores (also a ValueError)
    ├── SandboxError             the chart sandbox itself could not be used (inside the code tool)
    │   ├── WorkerStartError     a chart worker did not start
    │   ├── WorkerDied           a chart worker ended or broke its protocol (it is replaced)
    │   └── SandboxSetupError    a required sandbox layer failed in the child (the chart is refused)
    └── ToolError                raised *inside* backends; the engine turns it into a failure block
        ├── TransientToolError   worth retrying (429, 503, timeouts, dropped connections)
        └── UnsafeURLError       a fetch was refused (internal address, bad scheme, too big, ...):
                                 kind ``unsafe_url`` wherever it happens

Feature packages add their own leaves under these (``llmi.server``'s ``ApiError``, ``llmi.tts``'s
``ChatFailure``); each is an :class:`LLMIError`. Third-party errors (httpx, openai, PIL) are translated to
these at the boundary that sees them; a few private exceptions used only for control flow inside one
module (retry signals) stay outside the tree because they never reach a caller.
"""

from __future__ import annotations

from typing import Any


class LLMIError(Exception):
    """Base class of every error llmi raises on purpose."""


class ConfigError(LLMIError):
    """Configuration is invalid or incomplete; the message says what to change."""


class InputError(LLMIError):
    """The input given to llmi cannot be used (missing file, undecodable image, ...)."""


class LLMError(LLMIError):
    """The writing LLM failed (HTTP error, stream cut, bad response)."""


class LLMUnreachable(LLMError):
    """No LLM server answered at the configured base URL."""


class JudgeError(LLMIError):
    """A judge could not give a score."""


class JudgeFailure(JudgeError):
    """A judge call that failed after its retries.

    ``kind``: ``timeout``, ``connection``, ``rate_limited``, ``http_error``, ``auth``, ``bad_response``,
    ``unparseable`` or ``error``; ``attempts``: how many requests were made; ``status``: the last HTTP
    status, if any.
    """

    def __init__(self, message: str, *, kind: str, attempts: int = 1, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts
        self.status = status

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self}"


class ScoreParseError(JudgeError, ValueError):
    """A judge reply without the expected scores. Also a ``ValueError``, which callers catch."""

    kind = "unparseable"


class GenerationError(LLMError):
    """The LLM failed part-way. ``document`` is what was written until then (tools finished), ``trace``
    the run's trace."""

    def __init__(self, message: str, *, document: Any, trace: Any):
        super().__init__(message)
        self.document = document
        self.trace = trace


class SandboxError(LLMIError):
    """The chart sandbox could not be used. Raised and handled inside the code tool, which reports a
    failure block; it reaches a caller only through the pool's own API."""


class WorkerStartError(SandboxError):
    """A worker could not start (missing library, broken environment): not worth retrying at once."""


class WorkerDied(SandboxError):
    """The worker process ended or broke the protocol; the pool replaces it."""


class SandboxSetupError(SandboxError):
    """A layer could not be applied in the child: the chart is refused, never run unprotected."""


class ToolError(LLMIError):
    """A tool backend could not produce an image.

    ``kind`` is a short machine-readable reason code (``"http_error"``, ``"no_result"``,
    ``"invalid_image"``, ``"code_error"``, ``"timeout"``, ...) that ends up in the failure block;
    the message is the human-readable reason.
    """

    def __init__(self, message: str, *, kind: str = "tool_error", retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class TransientToolError(ToolError):
    """A failure that may go away if the call is retried (rate limits, 5xx, timeouts)."""

    def __init__(self, message: str, *, kind: str = "transient", retry_after: float | None = None):
        super().__init__(message, kind=kind, retry_after=retry_after)


class UnsafeURLError(ToolError):
    """A URL was refused by the safe fetcher (internal address, scheme, size, content type)."""

    def __init__(self, message: str, *, kind: str = "unsafe_url"):
        super().__init__(message, kind=kind)
