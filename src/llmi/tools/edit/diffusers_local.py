"""A local diffusers edit pipeline: Qwen-Image-Edit, InstructPix2Pix, FLUX Kontext, ...

Same loading and threading as :mod:`llmi.tools.diffusion.diffusers_local`; the input image is passed as
``image`` (RGB). Each family has its own strength knob — ``true_cfg_scale`` (Qwen-Image-Edit),
``image_guidance_scale`` (InstructPix2Pix), ``guidance_scale`` (FLUX Kontext) — and each is passed only to
pipelines that take it. InstructPix2Pix keeps the input size; Qwen-Image-Edit and FLUX Kontext generate
about a megapixel (Kontext: square) unless ``height``/``width`` are set.
"""

from __future__ import annotations

from typing import Any

from .. import imagegen
from ..base import ToolRequest, ToolResult
from ..diffusion.diffusers_local import CALL_FIELDS, DiffusersBase, DiffusersOptions


class DiffusersEditOptions(DiffusersOptions):
    """``[backends.edit.diffusers]``."""

    #: InstructPix2Pix: how closely to keep the input image (>= 1).
    image_guidance_scale: float | None = None


class DiffusersEdit(DiffusersBase):
    """``edit.diffusers``: the input image goes to the pipeline as ``image`` (RGB)."""

    tool = "edit"
    name = "diffusers"
    Options = DiffusersEditOptions
    call_fields = CALL_FIELDS + ("image_guidance_scale",)

    def call_kwargs(self, prompt: str) -> dict[str, Any]:
        kwargs = super().call_kwargs(prompt)
        o = self.options
        if o.height and o.width:
            # FLUX Kontext rescales its output to max_area (1024**2 by default) and would ignore
            # height/width; pipelines without max_area drop it (DiffusersRunner keeps accepted kwargs only).
            kwargs.setdefault("max_area", o.height * o.width)
        return kwargs

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        source = imagegen.require_input_image(request)
        pil = source.to_pil()
        kwargs = {**self.call_kwargs(prompt), "image": pil.convert("RGB") if pil.mode != "RGB" else pil}
        image = await self.runner(kwargs, seed=request.seed if request.seed is not None else self.options.seed)
        return ToolResult(image=image, provenance={
            "backend": f"{self.tool}.{self.name}", "model": self.options.model_path, "prompt": prompt,
            "input_sha256": source.sha256})
