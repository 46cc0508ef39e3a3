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
from ..base import HTTPBackendOptions, ToolRequest, ToolResult
from .openai import ImagesAPIBackend

ARK_BASE_URL = "https://ark.cn-beijing.volces.com/api/v3"


class ArkOptions(HTTPBackendOptions):
    """``[backends.diffusion.ark]``; ``[backends.edit.ark]`` differs only in its defaults."""

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


class ArkBase(ImagesAPIBackend):
    """What Seedream and SeedEdit share: the JSON body with Ark's knobs, on ``/images/generations``."""

    options: ArkOptions
    service = "Volcengine Ark"
    models_may_be_missing = True

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {"model": o.model, "size": o.size, "seed": o.seed, "guidance_scale": o.guidance_scale,
                "watermark": o.watermark, "extra_body": o.extra_body}

    def body(self, prompt: str) -> dict[str, Any]:
        o = self.options
        return {"model": o.model, "prompt": prompt, "response_format": o.response_format,
                "watermark": o.watermark, **imagegen.given_fields(o, ("size", "seed", "guidance_scale")),
                **o.extra_body}


class ArkSeedream(ArkBase):
    """``diffusion.ark``: Seedream text to image."""

    tool = "diffusion"
    name = "ark"
    Options = ArkOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        body = self.body(prompt)
        if request.seed is not None:
            body["seed"] = request.seed
        return await self.post("images/generations", {"prompt": prompt}, json=body)
