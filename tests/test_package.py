"""The package surface: lazy top-level names, cheap import."""

from __future__ import annotations

import subprocess
import sys


def test_top_level_names_resolve_and_generate_is_callable():
    import llmi
    import llmi.cli.generate  # noqa: F401  (importing the CLI module must not shadow llmi.generate)
    import llmi.generation  # noqa: F401

    assert callable(llmi.generate) and callable(llmi.agenerate) and callable(llmi.stream)
    for name in llmi.__all__:
        assert getattr(llmi, name) is not None


def test_import_llmi_stays_light():
    code = "import sys, llmi, llmi.engine, llmi.protocol; print(' '.join(m for m in ('matplotlib', 'torch', 'openai', 'numpy', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_image_files_are_read_safely(tmp_path):
    import os

    import pytest

    from llmi.errors import ToolError
    from llmi.images import ImageData

    from .helpers import make_png

    ok = tmp_path / "ok.png"
    ok.write_bytes(make_png(5, 4))
    assert ImageData.from_file(ok).width == 5
    with pytest.raises(ToolError, match="not a regular file"):
        ImageData.from_file("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ToolError, match="not a regular file"):
        ImageData.from_file(fifo)  # would block forever if it were opened for a plain read
    with pytest.raises(ToolError, match="byte limit"):
        ImageData.from_file(ok, max_bytes=10)


def test_document_json_paths_must_stay_inside_and_be_images(tmp_path):
    import pytest

    from llmi.document import Document
    from llmi.errors import ToolError

    from .helpers import make_png

    (tmp_path / "doc_assets").mkdir()
    (tmp_path / "doc_assets" / "image-1.png").write_bytes(make_png(6, 3))
    block = {"type": "image", "tool": "code", "mime": "image/jpeg", "width": 1, "height": 1, "path": "doc_assets/image-1.png"}
    doc = Document.from_dict({"blocks": [block]}, base_dir=str(tmp_path))
    assert (doc.images[0].mime, doc.images[0].width, doc.images[0].height) == ("image/png", 6, 3)  # from the bytes
    for bad in ("/etc/hostname", "../outside.png", "doc_assets/../../x.png"):
        with pytest.raises(ValueError):
            Document.from_dict({"blocks": [dict(block, path=bad)]}, base_dir=str(tmp_path))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ToolError):
        Document.from_dict({"blocks": [dict(block, path="notes.txt")]}, base_dir=str(tmp_path))


# ---------------------------------------------------------------- review: edge cases found later

import pytest  # noqa: E402


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"blocks": "x"},
        {"blocks": None},
        {"blocks": ["x"]},
        {"blocks": [{"type": "text"}]},
        {"blocks": [{"type": "text", "text": 5}]},
        {"blocks": [{"type": "image", "tool": "code"}]},
        {"blocks": [{"type": "image", "tool": "code", "data_base64": 5}]},
        {"blocks": [{"type": "image", "tool": "code", "data_base64": "!!!"}]},
        {"blocks": [{"type": "image", "data_base64": ""}]},
        {"blocks": [{"type": "image", "tool": "code", "path": "a\x00b"}]},
        {"blocks": [{"type": "failure", "tool": "x"}]},
        {"blocks": [{"type": "failure", "tool": "x", "reason": "r", "params": [1]}]},
        {"blocks": [{"type": "video"}]},
        {"violations": ["x"]},
        {"violations": [{"kind": "x", "bogus": 1}]},
    ],
)
def test_document_from_malformed_dicts_raises_value_error(doc):
    from llmi.document import Document
    from llmi.errors import ToolError

    with pytest.raises((ValueError, ToolError)) as info:
        Document.from_dict(doc)
    assert not isinstance(info.value, (KeyError, TypeError, AttributeError))


def test_document_from_dict_missing_file_is_os_error(tmp_path):
    from llmi.document import Document

    with pytest.raises(OSError):
        Document.from_dict({"blocks": [{"type": "image", "tool": "code", "path": "gone.png"}]}, base_dir=str(tmp_path))


def _encode(im, fmt, **kw):
    import io

    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_every_accepted_format_and_mode_validates_and_opens():
    from PIL import Image

    from llmi.images import ImageData

    rgb = Image.new("RGB", (20, 10), (10, 20, 30))
    frames = [Image.new("RGB", (20, 10), (i * 60, 0, 0)) for i in range(3)]
    samples = {
        "animated gif": (_encode(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0), "image/gif"),
        "animated webp": (_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]), "image/webp"),
        "animated png": (_encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), "image/png"),
        "webp": (_encode(rgb, "WEBP"), "image/webp"),
        "cmyk jpeg": (_encode(rgb.convert("CMYK"), "JPEG"), "image/jpeg"),
        "grey jpeg": (_encode(rgb.convert("L"), "JPEG"), "image/jpeg"),
        "16-bit png": (_encode(Image.new("I;16", (20, 10), 40000), "PNG"), "image/png"),
        "palette png": (_encode(rgb.convert("P"), "PNG"), "image/png"),
        "1-bit png": (_encode(rgb.convert("1"), "PNG"), "image/png"),
        "LA png": (_encode(Image.new("LA", (20, 10)), "PNG"), "image/png"),
        "bmp": (_encode(rgb, "BMP"), "image/bmp"),
    }
    for name, (data, mime) in samples.items():
        img = ImageData.from_bytes(data)
        assert (img.mime, img.width, img.height) == (mime, 20, 10), name
        assert img.to_pil().convert("RGB").size == (20, 10), name


def test_exif_rotated_jpeg_reports_and_opens_upright():
    # phone photos are stored sideways with an Orientation tag; browsers show them upright, so the size
    # a renderer writes into <img width height> and the pixels an edit model gets must be upright too
    from PIL import Image

    from llmi.images import ImageData

    im = Image.new("RGB", (40, 10), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 10))  # blue at the stored left end
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = ImageData.from_bytes(_encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert (img.width, img.height) == (10, 40)
    up = img.to_pil()
    assert up.size == (10, 40)
    r, g, b = up.convert("RGB").getpixel((5, 2))
    assert b > 200 and r < 60  # the stored left end is now at the top
    exif[0x0112] = 1
    assert ImageData.from_bytes(_encode(im, "JPEG", exif=exif.tobytes())).width == 40
    exif[0x0112] = 99  # nonsense orientation: ignored, never a crash
    assert ImageData.from_bytes(_encode(im, "JPEG", exif=exif.tobytes())).to_pil().size == (40, 10)
