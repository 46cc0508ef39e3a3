"""A local diffusers text-to-image pipeline (Qwen-Image, FLUX, Stable Diffusion, ...).

``model_path`` is a folder written by ``save_pretrained`` / ``huggingface-cli download``; the pipeline
class is read from its ``model_index.json`` unless ``pipeline_class`` names one. torch and diffusers are
imported on first use only (``pip install 'llmi[local]'``), the weights are loaded once in a worker thread
and every call runs in a thread too, so the event loop keeps serving the other tools meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from .. import imagegen
from ..base import Backend, BackendOptions, BackendStatus, ToolRequest, ToolResult


class DiffusersOptions(BackendOptions):
    """``[backends.diffusion.diffusers]``; the edit backend adds its own strength knob."""

    #: A local pipeline folder (or a Hugging Face id with allow_download = true).
    model_path: str = ""
    #: "auto" (model_index.json) or a diffusers class: QwenImagePipeline, FluxPipeline, ...
    pipeline_class: str = "auto"
    #: auto: cuda if available, else mps, else cpu.
    device: str = "auto"
    #: auto: bfloat16 (or float16) on GPU, float32 on CPU; or float32 / float16 / bfloat16.
    dtype: str = "auto"
    #: Let diffusers download model_path from the Hugging Face Hub when it is not a local folder.
    allow_download: bool = False
    #: Keep weights on the CPU and move each part to the GPU when used (slower, much less VRAM).
    cpu_offload: bool = False
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    #: Qwen-Image's classifier-free guidance knob (needs a negative prompt to take effect).
    true_cfg_scale: float | None = None
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    #: A fixed seed makes outputs reproducible (and the cache meaningful).
    seed: int | None = None
    #: More keyword arguments for the pipeline call; ones it does not take are ignored.
    call_kwargs: dict[str, Any] = Field(default_factory=dict)


#: Option fields passed to the pipeline call (dropped where the pipeline does not take them).
CALL_FIELDS = ("num_inference_steps", "guidance_scale", "true_cfg_scale", "height", "width", "negative_prompt")


class DiffusersBase(Backend):
    """What the text-to-image and edit backends share: one :class:`~llmi.tools.imagegen.DiffusersRunner`,
    the status check, the call's keyword arguments."""

    options: DiffusersOptions
    requires = ("torch", "diffusers")
    extra = "local"
    call_fields: tuple[str, ...] = CALL_FIELDS

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        o = self.options
        self.runner = imagegen.DiffusersRunner(
            model_path=o.model_path, pipeline_class=o.pipeline_class, device=o.device, dtype=o.dtype,
            allow_download=o.allow_download, cpu_offload=o.cpu_offload, service=f"{self.tool}.{self.name}",
        )

    def status(self) -> BackendStatus:
        base = super().status()
        if not base.usable:
            return base
        o = self.options
        if not o.model_path:
            return BackendStatus("misconfigured", f"set model_path in [backends.{self.tool}.{self.name}]")
        if not o.allow_download and not Path(o.model_path).expanduser().is_dir():
            return BackendStatus("misconfigured", f"model_path {o.model_path!r} is not a folder")
        return BackendStatus("ok", o.model_path)

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {"model": o.model_path, "pipeline_class": o.pipeline_class, "dtype": o.dtype, "seed": o.seed,
                **{k: getattr(o, k) for k in self.call_fields}, "call_kwargs": o.call_kwargs}

    def call_kwargs(self, prompt: str) -> dict[str, Any]:
        o = self.options
        return {"prompt": prompt, **imagegen.given_fields(o, self.call_fields), **o.call_kwargs}

    async def aclose(self) -> None:
        self.runner.close()


class DiffusersText2Image(DiffusersBase):
    """``diffusion.diffusers``: text to image with a local pipeline."""

    tool = "diffusion"
    name = "diffusers"
    Options = DiffusersOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        seed = request.seed if request.seed is not None else self.options.seed  # a run's seed wins
        image = await self.runner(self.call_kwargs(prompt), seed=seed)
        return ToolResult(image=image, provenance={
            "backend": f"{self.tool}.{self.name}", "model": self.options.model_path, "prompt": prompt})
