"""The exceptions llmi raises.

A *tool* failing (a chart that raises, a search with no usable result) is not an exception: it becomes a
:class:`~llmi.document.FailureBlock` in the document. Exceptions are for the caller's mistakes and for
services the whole run depends on::

    LLMIError
    ├── ConfigError          bad or missing configuration (unknown backend, missing API key, ...)
    ├── InputError           unusable input: missing response file, unreadable user image
    ├── LLMError             the writing LLM could not be used
    │   └── LLMUnreachable   nothing answered at the base URL
    ├── JudgeError           a judge endpoint failed after retries
    └── ToolError            raised *inside* backends; the engine turns it into a failure block
        ├── TransientToolError   worth retrying (429, 503, timeouts, dropped connections)
        └── UnsafeURLError       a fetch was refused (internal address, bad scheme, too big, ...)

Third-party errors (httpx, openai, PIL) are translated to these at the boundary that sees them.
"""

from __future__ import annotations


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
    """A judge endpoint kept failing after retries."""


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
