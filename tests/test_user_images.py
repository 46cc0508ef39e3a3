"""The one loader of the user's images (CLI, generation, reward, server): every source, one set of reasons."""

from __future__ import annotations

import base64

import pytest

from llmi.errors import InputError
from llmi.images import ImageData, load_image, load_images

from .helpers import make_png


def test_every_kind_of_reference_loads(tmp_path):
    png = make_png(7, 5)
    (tmp_path / "a.png").write_bytes(png)
    from PIL import Image

    refs = [png, bytearray(png), str(tmp_path / "a.png"), tmp_path / "a.png", "a.png",
            "data:image/png;base64," + base64.b64encode(png).decode(), Image.new("RGB", (7, 5)),
            memoryview(png), {"bytes": png, "path": None}, {"bytes": None, "path": "a.png"}]
    got = [load_image(r, base_dir=tmp_path) for r in refs]
    assert all(isinstance(g, ImageData) and (g.width, g.height) == (7, 5) for g in got)
    same = ImageData.from_bytes(png)
    assert load_image(same) is same


@pytest.mark.parametrize("ref, words", [
    ("missing.png", "input image missing.png does not exist"),
    (".", "is a folder"),
    ("/dev/zero", "is not a regular file"),
    (b"", "input image (bytes) is empty"),
    (b"II*\x00" + b"\x00" * 40, "is not a PNG, JPEG, GIF, WEBP or BMP image"),
    (make_png(64, 64)[:60], "is not usable"),
    ("data:image/png,abc", "must be base64-encoded"),
    ("data:image/png;base64,@@@", "bad base64"),
    (12, "must be a path, a data URI or image bytes"),
    ({"bytes": None, "path": ""}, "neither bytes nor a path"),
])
def test_each_unusable_image_is_one_line_naming_it(ref, words):
    with pytest.raises(InputError) as info:
        load_image(ref)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_size_and_pixel_caps_and_numbered_labels(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(make_png(50, 50))
    with pytest.raises(InputError, match="too large"):
        load_image(big, max_bytes=10)
    with pytest.raises(InputError, match="not usable.*pixel limit"):
        load_image(big, max_pixels=100)
    with pytest.raises(InputError, match="input image 1 is empty"):
        load_images([make_png(), b""])
    assert [im.width for im in load_images([make_png(3, 3), big])] == [3, 50]
