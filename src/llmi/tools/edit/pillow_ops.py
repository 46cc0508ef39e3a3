"""An offline ``edit`` backend: a small vocabulary of instructions applied with Pillow.

It understands instructions such as "convert to black and white", "make it sepia", "blur the image",
"sharpen", "rotate 90 degrees", "flip horizontally", "mirror", "invert the colours", "make it brighter /
darker", "increase contrast", "crop to a square", "add a border", "resize to 50%" (several may be combined:
"make it grayscale and add a border"). Anything else fails with a reason that lists what it knows — it
never pretends. Useful offline, in tests, and as the last link of a fallback chain.
"""

from __future__ import annotations

import asyncio
import re

from ...errors import ToolError
from ...images import ImageData
from ..base import Backend, BackendOptions, ToolRequest, ToolResult


class PillowEditOptions(BackendOptions):
    border_px: int = 16
    border_color: str = "white"


def _ops():
    from PIL import ImageEnhance, ImageFilter, ImageOps

    def sepia(im):
        g = ImageOps.grayscale(im)
        return ImageOps.colorize(g, "#2e1f0f", "#f5e6c8")

    return [
        (r"\b(black[- ]and[- ]white|gr[ae]y ?scale|monochrome|desaturat\w*)\b", "grayscale", lambda im, m, o: ImageOps.grayscale(im).convert("RGB")),
        (r"\bsepia|vintage|old[- ]photo\b", "sepia", lambda im, m, o: sepia(im)),
        (r"\bblur\w*\b", "blur", lambda im, m, o: im.filter(ImageFilter.GaussianBlur(radius=max(2, im.width // 150)))),
        (r"\bsharpen\w*\b", "sharpen", lambda im, m, o: im.filter(ImageFilter.SHARPEN)),
        (r"\brotate\w*(?:\D{0,20}?(-?\d+))?", "rotate", lambda im, m, o: im.rotate(-int(m.group(1) or 90), expand=True)),
        (r"\bflip\w*\s+vertical\w*|upside[- ]down\b", "flip_vertical", lambda im, m, o: ImageOps.flip(im)),
        (r"\bflip\w*|mirror\w*\b", "flip_horizontal", lambda im, m, o: ImageOps.mirror(im)),
        (r"\binvert\w*|negative\b", "invert", lambda im, m, o: ImageOps.invert(im.convert("RGB"))),
        (r"\bbright\w*|lighter|lighten\b", "brighten", lambda im, m, o: ImageEnhance.Brightness(im).enhance(1.4)),
        (r"\bdark\w*\b", "darken", lambda im, m, o: ImageEnhance.Brightness(im).enhance(0.6)),
        (r"\bcontrast\b", "contrast", lambda im, m, o: ImageEnhance.Contrast(im).enhance(1.5)),
        (r"\b(?:vivid|saturat\w*|more colou?rful)\b", "saturate", lambda im, m, o: ImageEnhance.Color(im).enhance(1.6)),
        (r"\bcrop\w*\b.*\bsquare\b|\bsquare crop\b", "crop_square", lambda im, m, o: ImageOps.fit(im, (min(im.size),) * 2)),
        (r"\bborder|frame\b", "border", lambda im, m, o: ImageOps.expand(im, border=o.border_px, fill=o.border_color)),
        (r"\b(?:resize|scale)\w*\D{0,20}?(\d+)\s*%", "resize", lambda im, m, o: im.resize((max(1, im.width * int(m.group(1)) // 100), max(1, im.height * int(m.group(1)) // 100)))),
    ]


def apply_instruction(image: ImageData, prompt: str, options: PillowEditOptions | None = None) -> tuple[ImageData, list[str]]:
    """Apply every recognised operation in ``prompt``, in the order they appear in it."""
    options = options or PillowEditOptions()
    text = prompt.lower()
    found = []
    for pattern, name, fn in _ops():
        m = re.search(pattern, text)
        if m and name not in [f[1] for f in found]:
            if name == "flip_horizontal" and any(f[1] == "flip_vertical" for f in found):
                continue
            found.append((m.start(), name, fn, m))
    if not found:
        names = ", ".join(n for _, n, _ in _ops())
        raise ToolError(f"the pillow editor does not understand {prompt[:80]!r}; it knows: {names}", kind="unsupported_instruction")
    im = image.to_pil().convert("RGB")
    for _, _, fn, m in sorted(found, key=lambda f: f[0]):
        im = fn(im, m, options)
    return ImageData.from_pil(im, "PNG"), [f[1] for f in sorted(found, key=lambda f: f[0])]


class PillowEdit(Backend):
    tool = "edit"
    name = "pillow"
    Options = PillowEditOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        if request.input_image is None:
            raise ToolError("no image to edit", kind="bad_request")
        image, ops = await asyncio.to_thread(apply_instruction, request.input_image, request.params["prompt"], self.options)
        return ToolResult(image, {"model": "pillow", "operations": ops})
