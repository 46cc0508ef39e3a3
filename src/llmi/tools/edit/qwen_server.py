"""Self-hosted Qwen-Image-Edit servers of the LLM-I recipe: ``POST {server}/edit/``.

The body is ``{"image_b64": <base64 of the input image>, "prompt", "negative_prompt",
"num_inference_steps"}``; the answer and the load balancing are those of the generation servers
(see :mod:`llmi.tools.diffusion.qwen_server`).
"""

from __future__ import annotations

import base64

from .. import imagegen
from ..base import ToolRequest, ToolResult
from ..diffusion.qwen_server import QwenServerBase, QwenServerOptions


class QwenImageEditServerOptions(QwenServerOptions):
    """``[backends.edit.qwen-server]``: no size knobs (the output follows the input)."""

    model: str = "Qwen-Image-Edit"


class QwenImageEditServer(QwenServerBase):
    """``edit.qwen-server``: ``POST {server}/edit/`` with the input image as base64."""

    tool = "edit"
    name = "qwen-server"
    Options = QwenImageEditServerOptions
    endpoint = "edit/"
    mode = "edit"
    knobs = ("negative_prompt", "num_inference_steps")

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        source = imagegen.require_input_image(request)
        payload = self.payload(prompt)
        payload["image_b64"] = base64.b64encode(source.data).decode("ascii")
        if request.seed is not None:
            payload["seed"] = request.seed
        return await self.call(payload, {"prompt": prompt, "input_sha256": source.sha256})
