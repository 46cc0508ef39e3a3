"""Volcengine Ark SeedEdit: image editing on the same ``/images/generations`` endpoint as Seedream.

The image travels in the JSON body as a ``data:image/<png|jpeg>;base64,...`` URI (Ark takes PNG and
JPEG only, so other types are re-encoded as PNG). ``size = "adaptive"`` keeps the input's aspect ratio.
Seedream 4.x models edit too: set ``model`` to one of them and ``size`` to a size they accept.
"""

from __future__ import annotations

from .. import imagegen
from ..base import ToolRequest, ToolResult
from ..diffusion.ark import ArkBase, ArkOptions


class ArkSeedEditOptions(ArkOptions):
    """SeedEdit's model, and ``adaptive`` size (the input's aspect ratio)."""

    model: str = "doubao-seededit-3-0-i2i-250628"
    size: str | None = "adaptive"


class ArkSeedEdit(ArkBase):
    """``edit.ark``: the input image as a data URI in the JSON body."""

    tool = "edit"
    name = "ark"
    Options = ArkSeedEditOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        source = imagegen.require_input_image(request)
        body = {**self.body(prompt), "image": imagegen.data_uri(source)}
        if request.seed is not None:
            body["seed"] = request.seed
        provenance = {"prompt": prompt, "input_sha256": source.sha256}
        return await self.post("images/generations", provenance, json=body)
