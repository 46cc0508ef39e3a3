"""The OpenAI Images API edit endpoint: ``POST {base_url}/images/edits`` as multipart/form-data.

The input image is the ``image`` file part; ``prompt``, ``model``, ``size``, ... are form fields. GPT
image models take PNG, JPEG or WebP and always answer ``b64_json``; ``dall-e-2`` takes a square PNG and
answers with a URL unless asked for ``b64_json``. Anything else is re-encoded as PNG before upload.
"""

from __future__ import annotations

import json
from typing import Any

from ...images import ImageData
from .. import imagegen
from ..base import ToolRequest, ToolResult
from ..diffusion.openai import OpenAIImagesBase, OpenAIImagesOptions, is_dalle

_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class OpenAIImageEditsOptions(OpenAIImagesOptions):
    """The same table as the generation backend; ``extra_body`` becomes extra form fields
    (e.g. ``input_fidelity = "high"``)."""


def form_value(value: Any) -> str:
    """Form fields are strings: booleans as JSON literals, other non-strings as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


class OpenAIImageEdits(OpenAIImagesBase):
    """``edit.openai``: the input image and the instruction as multipart form data."""

    tool = "edit"
    name = "openai"
    Options = OpenAIImageEditsOptions
    service = "OpenAI image edits"

    def upload(self, image: ImageData) -> tuple[str, bytes, str]:
        """The file part: the image as it is when the model takes its type, else as PNG."""
        accepted = ("image/png",) if is_dalle(self.options.model) else tuple(_EXT)
        if image.mime in accepted:
            return f"image.{_EXT[image.mime]}", image.data, image.mime
        return "image.png", imagegen.png_bytes(image), "image/png"

    def form(self, prompt: str) -> dict[str, str]:
        return {k: form_value(v) for k, v in self.fields(prompt).items()}

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        source = imagegen.require_input_image(request)
        return await self.post("images/edits", {"prompt": prompt, "input_sha256": source.sha256},
                               data=self.form(prompt), files={"image": self.upload(source)})
