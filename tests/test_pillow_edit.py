"""The offline Pillow editor: known instructions change the image, unknown ones fail with a reason."""

from __future__ import annotations

import pytest

from llmi.errors import ToolError
from llmi.images import ImageData
from llmi.tools.edit.pillow_ops import apply_instruction

from .helpers import make_png


def _img(w=60, h=40):
    return ImageData.from_bytes(make_png(w, h, (200, 40, 40)))


def test_grayscale_and_border_in_order():
    out, ops = apply_instruction(_img(), "Add a border, then convert it to black and white")
    assert ops == ["border", "grayscale"]
    im = out.to_pil()
    assert (out.width, out.height) == (92, 72)
    r, g, b = im.getpixel((30, 30))
    assert r == g == b


@pytest.mark.parametrize(
    "prompt, size",
    [("rotate 90 degrees", (40, 60)), ("flip it upside down", (60, 40)), ("resize to 50%", (30, 20)), ("crop to a square", (40, 40))],
)
def test_geometry(prompt, size):
    out, _ = apply_instruction(_img(), prompt)
    assert (out.width, out.height) == size


def test_colour_changes_pixels():
    src = _img()
    for prompt in ("invert the colours", "make it sepia", "make it darker"):
        out, _ = apply_instruction(src, prompt)
        assert out.to_pil().convert("RGB").getpixel((5, 5)) != (200, 40, 40)


def test_unknown_instruction_fails_with_vocabulary():
    with pytest.raises(ToolError) as e:
        apply_instruction(_img(), "add a cat wearing a hat")
    assert e.value.kind == "unsupported_instruction"
    assert "grayscale" in str(e.value)
