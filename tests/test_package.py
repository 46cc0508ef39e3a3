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
