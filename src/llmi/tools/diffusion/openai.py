"""The OpenAI Images API: ``POST {base_url}/images/generations``.

Works with OpenAI itself and any server that copies the wire format (set ``base_url``). GPT image
models (``gpt-image-1`` and later) always answer with ``b64_json`` and reject ``response_format``;
DALL·E models answer with a URL unless asked for ``b64_json``, which is what we ask for. The model id is
an option because OpenAI retires ids; nothing here depends on a particular one.

:class:`ImagesAPIBackend` is the part of this wire that Ark and the edit endpoint share too.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field

from ...errors import ConfigError, ToolError
from .. import imagegen
from ..base import Backend, BackendStatus, HTTPBackendOptions, ToolRequest, ToolResult


class OpenAIImagesOptions(HTTPBackendOptions):
    """``[backends.diffusion.openai]`` (and, field for field, ``[backends.edit.openai]``)."""

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


def is_dalle(model: str) -> bool:
    """The DALL·E family: the only models that take ``response_format``, and ``dall-e-2`` edits take
    PNG only. GPT image models fail on ``response_format``."""
    return model.startswith("dall-e")


def auth_headers(backend: Backend) -> dict[str, str]:
    """The bearer token (and OpenAI-Organization), or ``missing_key`` saying where to put the key."""
    try:
        key = backend.api_key()
    except ConfigError as exc:
        raise ToolError(str(exc), kind="missing_key") from exc
    headers = {"Authorization": f"Bearer {key}"}
    org = getattr(backend.options, "organization", None)
    if org:
        headers["OpenAI-Organization"] = org
    return headers


async def probe_models(backend: Backend, service: str, *, not_found_ok: bool = False) -> BackendStatus:
    """``GET {base}/models``: cheap and authenticated. A 404 there means the base URL is wrong (not the
    service), unless the service is not known to list models (``not_found_ok``)."""
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
    if resp.status_code in (404, 405, 410) and not not_found_ok:
        return BackendStatus("misconfigured", f"{service} answered HTTP {resp.status_code} at {url}: check base_url")
    return BackendStatus("ok", f"reachable (HTTP {resp.status_code})")


class ImagesAPIBackend(Backend):
    """What every backend on the OpenAI Images wire shares — OpenAI and Ark, generation and edits: the
    key, the ``/models`` probe, and one POST whose ``{"data": [...]}`` answer becomes the result."""

    options: HTTPBackendOptions  # with a ``model`` field
    service: ClassVar[str]
    #: Whether ``GET /models`` answering 404 still proves the service is there (Ark: not documented).
    models_may_be_missing: ClassVar[bool] = False

    def status(self) -> BackendStatus:
        return self.key_status()

    async def probe(self) -> BackendStatus:
        return await probe_models(self, self.service, not_found_ok=self.models_may_be_missing)

    async def post(self, path: str, provenance: dict[str, Any], **request: Any) -> ToolResult:
        """POST ``request`` (``json=`` or ``data=``/``files=``) to ``{base_url}/{path}``; the first image
        of the answer, with ``provenance`` plus what the answer says (model, revised prompt, URL)."""
        o = self.options
        resp = await imagegen.send(
            self.ctx.http, "POST", imagegen.join_url(o.base_url, path), service=self.service,
            headers=auth_headers(self), timeout=o.timeout_s, secrets=[self.api_key(required=False)], **request,
        )
        payload = imagegen.json_object(resp, self.service)
        image, entry = await imagegen.first_image(payload, ctx=self.ctx, service=self.service)
        prov: dict[str, Any] = {"backend": f"{self.tool}.{self.name}",
                                "model": str(payload.get("model") or o.model), **provenance}
        if entry.get("revised_prompt"):
            prov["revised_prompt"] = entry["revised_prompt"]
        if entry.get("url"):
            prov["source_url"] = entry["url"]
        return ToolResult(image=image, provenance=prov)


class OpenAIImagesBase(ImagesAPIBackend):
    """The OpenAI request fields, shared by generation (a JSON body) and edits (form fields)."""

    options: OpenAIImagesOptions

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {"model": o.model, "size": o.size, "quality": o.quality, "output_format": o.output_format,
                "extra_body": o.extra_body}

    def fields(self, prompt: str) -> dict[str, Any]:
        o = self.options
        fields: dict[str, Any] = {"model": o.model, "prompt": prompt, "n": 1,
                                  **imagegen.given_fields(o, ("size", "quality", "output_format"))}
        if is_dalle(o.model):
            fields["response_format"] = o.response_format or "b64_json"
        elif o.response_format:
            fields["response_format"] = o.response_format
        fields.update(o.extra_body)
        return fields


class OpenAIImages(OpenAIImagesBase):
    """``diffusion.openai``: text to image with ``POST {base_url}/images/generations``."""

    tool = "diffusion"
    name = "openai"
    Options = OpenAIImagesOptions
    service = "OpenAI images"

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        return await self.post("images/generations", {"prompt": prompt}, json=self.fields(prompt))
