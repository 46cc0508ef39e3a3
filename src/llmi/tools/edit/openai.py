"""The OpenAI Images API edit endpoint: ``POST {base_url}/images/edits`` as multipart/form-data.

The input image is the ``image`` file part; ``prompt``, ``model``, ``size``, ... are form fields. GPT
image models take PNG, JPEG or WebP and always answer ``b64_json``; ``dall-e-2`` takes a square PNG and
answers with a URL unless asked for ``b64_json``. Anything else is re-encoded as PNG before upload.
"""

from __future__ import annotations

import json
from typing import Any

from .. import imagegen
from ..base import Backend, BackendStatus, ToolRequest, ToolResult
from ..diffusion.openai import OpenAIImagesOptions, auth_headers, probe_models, takes_response_format

_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class OpenAIImageEditsOptions(OpenAIImagesOptions):
    """The same table as the generation backend; ``extra_body`` becomes extra form fields
    (e.g. ``input_fidelity = "high"``)."""


def form_value(value: Any) -> str:
    """Form fields are strings: booleans as JSON literals, other non-strings as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


class OpenAIImageEdits(Backend):
    tool = "edit"
    name = "openai"
    Options = OpenAIImageEditsOptions
    options: OpenAIImageEditsOptions

    service = "OpenAI image edits"

    def status(self) -> BackendStatus:
        return self.key_status()

    async def probe(self) -> BackendStatus:
        return await probe_models(self, self.service)

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {"model": o.model, "size": o.size, "quality": o.quality, "output_format": o.output_format,
                "extra_body": o.extra_body}

    def upload(self, image) -> tuple[str, bytes, str]:
        """The file part: the image as it is when the model takes its type, else as PNG."""
        accepted = ("image/png",) if self.options.model.startswith("dall-e") else tuple(_EXT)
        if image.mime in accepted:
            return f"image.{_EXT[image.mime]}", image.data, image.mime
        return "image.png", imagegen.png_bytes(image), "image/png"

    def form(self, prompt: str) -> dict[str, str]:
        o = self.options
        fields: dict[str, Any] = {"model": o.model, "prompt": prompt, "n": 1}
        for key in ("size", "quality", "output_format"):
            if getattr(o, key) is not None:
                fields[key] = getattr(o, key)
        if takes_response_format(o.model):
            fields["response_format"] = o.response_format or "b64_json"
        elif o.response_format:
            fields["response_format"] = o.response_format
        fields.update(o.extra_body)
        return {k: form_value(v) for k, v in fields.items()}

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        source = imagegen.require_input_image(request)
        headers = auth_headers(self)
        resp = await imagegen.send(
            self.ctx.http, "POST", imagegen.join_url(self.options.base_url, "images/edits"),
            service=self.service, data=self.form(prompt), files={"image": self.upload(source)},
            headers=headers, timeout=self.options.timeout_s, secrets=[self.api_key(required=False)],
        )
        payload = imagegen.json_object(resp, self.service)
        image, entry = await imagegen.first_image(payload, ctx=self.ctx, service=self.service)
        provenance: dict[str, Any] = {"backend": f"{self.tool}.{self.name}", "model": self.options.model,
                                      "prompt": prompt, "input_sha256": source.sha256}
        if entry.get("revised_prompt"):
            provenance["revised_prompt"] = entry["revised_prompt"]
        if entry.get("url"):
            provenance["source_url"] = entry["url"]
        return ToolResult(image=image, provenance=provenance)
