"""Volcengine Ark SeedEdit: image editing on the same ``/images/generations`` endpoint as Seedream.

The image travels in the JSON body as a ``data:image/<png|jpeg>;base64,...`` URI (Ark takes PNG and
JPEG only, so other types are re-encoded as PNG). ``size = "adaptive"`` keeps the input's aspect ratio.
Seedream 4.x models edit too: set ``model`` to one of them and ``size`` to a size they accept.
"""

from __future__ import annotations

from typing import Any

from .. import imagegen
from ..base import ToolRequest, ToolResult
from ..diffusion.ark import ArkBase, ArkOptions


class ArkSeedEditOptions(ArkOptions):
    model: str = "doubao-seededit-3-0-i2i-250628"
    size: str | None = "adaptive"


class ArkSeedEdit(ArkBase):
    tool = "edit"
    name = "ark"
    Options = ArkSeedEditOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        source = imagegen.require_input_image(request)
        body: dict[str, Any] = self.body(prompt)
        body["image"] = imagegen.data_uri(source)
        return await self.generate(body, {"prompt": prompt, "input_sha256": source.sha256})
