"""The OpenAI Images API: ``POST {base_url}/images/generations``.

Works with OpenAI itself and any server that copies the wire format (set ``base_url``). GPT image
models (``gpt-image-1`` and later) always answer with ``b64_json`` and reject ``response_format``;
DALL·E models answer with a URL unless asked for ``b64_json``, which is what we ask for. The model id is
an option because OpenAI retires ids; nothing here depends on a particular one.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import httpx
from pydantic import Field

from ...errors import ConfigError, ToolError
from .. import imagegen
from ..base import Backend, BackendStatus, HTTPBackendOptions, ToolRequest, ToolResult

log = logging.getLogger(__name__)


class OpenAIImagesOptions(HTTPBackendOptions):
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 180.0
    model: str = "gpt-image-1"
    #: e.g. 1024x1024, 1536x1024, 1024x1536, auto (GPT image); 1792x1024 (DALL·E 3).
    size: str | None = "1024x1024"
    #: low | medium | high | auto (GPT image); standard | hd (DALL·E 3).
    quality: str | None = None
    #: png | jpeg | webp — GPT image models only.
    output_format: str | None = None
    #: None: b64_json for DALL·E, nothing for GPT image models (they reject the field).
    response_format: Literal["b64_json", "url"] | None = None
    #: OpenAI-Organization header, if your key needs one.
    organization: str | None = None
    #: More request fields passed through as they are (background, moderation, style, ...).
    extra_body: dict[str, Any] = Field(default_factory=dict)


def takes_response_format(model: str) -> bool:
    """Only the DALL·E family accepts ``response_format``; GPT image models fail on it."""
    return model.startswith("dall-e")


def auth_headers(backend: Backend) -> dict[str, str]:
    try:
        key = backend.api_key()
    except ConfigError as exc:
        raise ToolError(str(exc), kind="missing_key") from exc
    headers = {"Authorization": f"Bearer {key}"}
    org = getattr(backend.options, "organization", None)
    if org:
        headers["OpenAI-Organization"] = org
    return headers


async def probe_models(backend: Backend, service: str) -> BackendStatus:
    """``GET {base}/models``: cheap, authenticated, and served by OpenAI and Ark alike."""
    status = backend.status()
    if not status.usable:
        return status
    url = imagegen.join_url(backend.options.base_url, "models")
    try:
        resp = await backend.ctx.http.get(url, headers=auth_headers(backend),
                                          timeout=min(backend.options.timeout_s, 15.0))
    except httpx.TransportError as exc:
        return BackendStatus("unreachable", f"{service} at {backend.options.base_url}: {type(exc).__name__}")
    if resp.status_code in (401, 403):
        return BackendStatus("missing_key", f"{service} refused the API key (HTTP {resp.status_code})")
    if resp.status_code >= 500:
        return BackendStatus("unreachable", f"{service} answered HTTP {resp.status_code}")
    return BackendStatus("ok", f"reachable (HTTP {resp.status_code})")


class OpenAIImages(Backend):
    tool = "diffusion"
    name = "openai"
    Options = OpenAIImagesOptions
    options: OpenAIImagesOptions

    service = "OpenAI images"

    def status(self) -> BackendStatus:
        return self.key_status()

    async def probe(self) -> BackendStatus:
        return await probe_models(self, self.service)

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {"model": o.model, "size": o.size, "quality": o.quality, "output_format": o.output_format,
                "extra_body": o.extra_body}

    def body(self, prompt: str) -> dict[str, Any]:
        o = self.options
        body: dict[str, Any] = {"model": o.model, "prompt": prompt, "n": 1}
        for key in ("size", "quality", "output_format"):
            if getattr(o, key) is not None:
                body[key] = getattr(o, key)
        if takes_response_format(o.model):
            body["response_format"] = o.response_format or "b64_json"
        elif o.response_format:
            body["response_format"] = o.response_format
        body.update(o.extra_body)
        return body

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        headers = auth_headers(self)
        resp = await imagegen.send(
            self.ctx.http, "POST", imagegen.join_url(self.options.base_url, "images/generations"),
            service=self.service, json=self.body(prompt), headers=headers, timeout=self.options.timeout_s,
            secrets=[self.api_key(required=False)],
        )
        payload = imagegen.json_object(resp, self.service)
        image, entry = await imagegen.first_image(payload, ctx=self.ctx, service=self.service)
        provenance: dict[str, Any] = {"backend": f"{self.tool}.{self.name}", "model": self.options.model,
                                      "prompt": prompt}
        if entry.get("revised_prompt"):
            provenance["revised_prompt"] = entry["revised_prompt"]
        if entry.get("url"):
            provenance["source_url"] = entry["url"]
        return ToolResult(image=image, provenance=provenance)
