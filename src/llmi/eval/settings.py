"""The ``[eval_judge]`` config table: the judge ``llmi eval`` asks, any OpenAI-compatible chat endpoint.

Kept free of imports from the rest of llmi so that :mod:`llmi.config` can hold it as one field of
:class:`~llmi.config.Settings` without an import cycle.

Scores are only comparable under the same judge: the published numbers used GPT-4o (LLMI-Bench, OpenING)
and GPT-4.1 (ISG-Bench's current scripts), at temperature 0 with JSON answers, which are the defaults here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class EvalJudgeSettings(BaseModel):
    """The evaluation judge. Multimodal benchmarks send it images, so it must be a vision model for them."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("", description="OpenAI-compatible base URL of the judge (e.g. https://api.openai.com/v1)")
    model: str = Field("", description="judge model id (published numbers: gpt-4o; ISG: gpt-4.1); empty: the only one served")
    api_key: SecretStr | None = Field(None, description="API key (prefer api_key_env)")
    api_key_env: str = Field("", description="environment variable holding the API key, e.g. OPENAI_API_KEY")
    concurrency: int = Field(8, ge=1, description="judge requests in flight at once")
    timeout_s: float = Field(180.0, gt=0, description="seconds per judge request")
    retries: int = Field(3, ge=0, description="extra attempts after a transient failure or an unusable answer")
    backoff_s: float = Field(1.0, ge=0, description="first wait between attempts; doubled per retry, with jitter")
    max_backoff_s: float = Field(30.0, ge=0, description="longest wait between attempts, Retry-After included")
    temperature: float | None = Field(0.0, description="sampling temperature sent to the judge (None: server default)")
    max_tokens: int | None = Field(None, ge=1, description="cap on the judge's answer length (None: server default)")
    json_mode: bool = Field(True, description="ask for a JSON object (response_format json_object), as the official scripts do")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields passed through")

    def request_body(self) -> dict[str, Any]:
        """What goes into every judge request besides model and messages."""
        body: dict[str, Any] = {}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        body.update(self.extra_body)
        return body
