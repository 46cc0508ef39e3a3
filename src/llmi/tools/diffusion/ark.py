"""Volcengine Ark Seedream: ``POST {base_url}/images/generations`` on Ark's OpenAI-compatible wire.

Plain HTTP with the key as a bearer token — the Ark SDK (hundreds of megabytes) adds nothing here.
Ark-specific fields (``watermark``, ``seed``, ``guidance_scale``, ``sequential_image_generation``, ...) go
in the JSON body next to the OpenAI ones. We ask for ``b64_json`` by default: Ark's URLs expire after a
day and would cost a second download. Errors come as ``{"error": {"code", "message", "type"}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .. import imagegen
from ..base import Backend, BackendStatus, HTTPBackendOptions, ToolRequest, ToolResult
from .openai import auth_headers, probe_models

ARK_BASE_URL = "https://ark.cn-beijing.volces.com/api/v3"


class ArkOptions(HTTPBackendOptions):
    base_url: str = ARK_BASE_URL
    api_key_env: str = "ARK_API_KEY"
    timeout_s: float = 180.0
    #: A model id (doubao-seedream-4-0-250828, doubao-seedream-3-0-t2i-250415, ...) or an endpoint id (ep-...).
    model: str = "doubao-seedream-4-0-250828"
    #: "WxH" or, for Seedream 4.x, "1K" / "2K" / "4K" (Seedream 4.5 needs at least 2K).
    size: str | None = "1024x1024"
    response_format: Literal["b64_json", "url"] = "b64_json"
    #: Ark adds an "AI generated" mark unless told not to.
    watermark: bool = False
    seed: int | None = None
    guidance_scale: float | None = None
    #: More request fields passed through as they are (e.g. sequential_image_generation).
    extra_body: dict[str, Any] = Field(default_factory=dict)


class ArkBase(Backend):
    """What Seedream and SeedEdit share: the body's Ark knobs, the call, the answer."""

    options: ArkOptions
    service = "Volcengine Ark"

    def status(self) -> BackendStatus:
        return self.key_status()

    async def probe(self) -> BackendStatus:
        return await probe_models(self, self.service)

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {"model": o.model, "size": o.size, "seed": o.seed, "guidance_scale": o.guidance_scale,
                "watermark": o.watermark, "extra_body": o.extra_body}

    def body(self, prompt: str) -> dict[str, Any]:
        o = self.options
        body: dict[str, Any] = {"model": o.model, "prompt": prompt, "response_format": o.response_format,
                                "watermark": o.watermark}
        for key in ("size", "seed", "guidance_scale"):
            if getattr(o, key) is not None:
                body[key] = getattr(o, key)
        body.update(o.extra_body)
        return body

    async def generate(self, body: dict[str, Any], provenance: dict[str, Any]) -> ToolResult:
        resp = await imagegen.send(
            self.ctx.http, "POST", imagegen.join_url(self.options.base_url, "images/generations"),
            service=self.service, json=body, headers=auth_headers(self), timeout=self.options.timeout_s,
            secrets=[self.api_key(required=False)],
        )
        payload = imagegen.json_object(resp, self.service)
        image, entry = await imagegen.first_image(payload, ctx=self.ctx, service=self.service)
        prov = {"backend": f"{self.tool}.{self.name}", "model": str(payload.get("model") or self.options.model),
                **provenance}
        if entry.get("url"):
            prov["source_url"] = entry["url"]
        return ToolResult(image=image, provenance=prov)


class ArkSeedream(ArkBase):
    tool = "diffusion"
    name = "ark"
    Options = ArkOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        return await self.generate(self.body(prompt), {"prompt": prompt})
