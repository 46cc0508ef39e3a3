"""The local image library: matching by file names, sidecars and embedded EXIF/IPTC/PNG text; staying
inside its folder; refreshing when the folder changes."""

from __future__ import annotations

import io
import json
import os
import struct

import pytest
from PIL import Image, PngImagePlugin

from llmi.config import ImageLimits
from llmi.errors import ToolError, UnsafeURLError
from llmi.tools.base import ToolRequest
from llmi.tools.search.local import LocalLibrarySearch, build_index, search_index
from tests.helpers import make_jpeg, make_png
from tests.test_search_candidates import close_ctx, make_ctx


def iptc_segment(fields: list[tuple[tuple[int, int], str]]) -> bytes:
    """A JPEG APP13 segment holding IPTC-IIM datasets, the way photo tools write them."""
    data = b""
    for (record, dataset), value in fields:
        v = value.encode()
        data += bytes([0x1C, record, dataset]) + struct.pack(">H", len(v)) + v
    resource = b"8BIM" + b"\x04\x04" + b"\x00\x00" + struct.pack(">I", len(data)) + data
    if len(data) % 2:
        resource += b"\x00"
    payload = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_metadata(*, xp_title: str = "", description: str = "", iptc=None, size=(500, 500)) -> bytes:
    exif = Image.Exif()
    if description:
        exif[270] = description
    if xp_title:
        exif[0x9C9B] = xp_title.encode("utf-16-le") + b"\x00\x00"
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(
        buf, "JPEG", exif=exif.tobytes(), extra=iptc_segment(iptc) if iptc else b""
    )
    return buf.getvalue()


def png_with_text(title: str, size=(500, 500)) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    info.add_text("Author", "Design team")
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "library"
    (root / "animals" / "cats").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "red_apple.png").write_bytes(make_png(500, 500))
    (root / "apple.png").write_bytes(make_png(100, 100))  # matches best, but too small
    (root / "goldenRetrieverPuppy.jpg").write_bytes(make_jpeg(600, 400))
    (root / "IMG_0001.jpg").write_bytes(make_jpeg(800, 600))
    (root / "IMG_0001.json").write_text(json.dumps({
        "title": "Mount Fuji at sunrise", "alt": "snow-capped volcano", "keywords": ["japan", "mountain"],
        "license": "CC0-1.0", "author": "Staff photographer", "source_url": "https://assets.example.com/1",
    }))
    (root / "IMG_0002.png").write_bytes(make_png(640, 480))
    (root / "IMG_0002.txt").write_text("A lighthouse on a rocky coast\n")
    (root / "IMG_0003.jpg").write_bytes(jpeg_with_metadata(xp_title="Eiffel Tower", description="Paris at night"))
    (root / "IMG_0004.jpg").write_bytes(jpeg_with_metadata(
        iptc=[((2, 5), "Golden Gate Bridge"), ((2, 120), "bridge in the fog"), ((2, 80), "J. Smith"),
              ((2, 116), "© Example Corp")]))
    (root / "IMG_0005.png").write_bytes(png_with_text("Quarterly sales poster"))
    (root / "东京塔.png").write_bytes(make_png(500, 500))
    (root / "animals" / "cats" / "tabby.png").write_bytes(make_png(500, 500))
    (root / ".hidden" / "secret_apple.png").write_bytes(make_png(500, 500))
    (root / "broken_banana.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (root / "notes.txt").write_text("not an image")
    return root


def backend(ctx, root, **opts) -> LocalLibrarySearch:
    return LocalLibrarySearch(LocalLibrarySearch.Options(root=str(root), **opts), ctx)


def req(q: str) -> ToolRequest:
    return ToolRequest(tool="search", params={"query": q})


async def run(root, query: str, **opts):
    ctx = make_ctx()
    try:
        return await backend(ctx, root, **opts).run(req(query))
    finally:
        await close_ctx(ctx)


async def test_matches_file_names_and_skips_images_below_the_minimum(library):
    res = await run(library, "an apple")  # apple.png (100x100) ranks first and is too small
    assert res.provenance["path"] == "red_apple.png"
    assert res.provenance["backend"] == "local"
    assert res.provenance["source_url"] is None
    assert res.image.width == 500
    res = await run(library, "golden retriever puppies")  # camelCase file name, plural query
    assert res.provenance["path"] == "goldenRetrieverPuppy.jpg"
    assert res.provenance["title"] == "goldenRetrieverPuppy"
    assert (await run(library, "apple")).provenance["title"] == "red apple"  # from red_apple.png


async def test_sidecar_json_gives_text_and_provenance(library):
    res = await run(library, "Fuji sunrise")
    p = res.provenance
    assert p["path"] == "IMG_0001.jpg"
    assert p["title"] == "Mount Fuji at sunrise"
    assert p["license"] == "CC0-1.0" and p["author"] == "Staff photographer"
    assert p["source_url"] == "https://assets.example.com/1"
    assert (await run(library, "volcano in japan")).provenance["path"] == "IMG_0001.jpg"


async def test_sidecar_text_caption(library):
    res = await run(library, "lighthouse coast")
    assert res.provenance["path"] == "IMG_0002.png"
    assert "lighthouse" in res.provenance["caption"]


async def test_exif_iptc_and_png_text(library):
    assert (await run(library, "eiffel tower")).provenance["path"] == "IMG_0003.jpg"
    assert (await run(library, "paris night")).provenance["path"] == "IMG_0003.jpg"
    iptc = await run(library, "golden gate bridge fog")
    assert iptc.provenance["path"] == "IMG_0004.jpg"
    assert iptc.provenance["title"] == "Golden Gate Bridge"
    assert iptc.provenance["author"] == "J. Smith" and iptc.provenance["license"] == "© Example Corp"
    png = await run(library, "sales poster")
    assert png.provenance["path"] == "IMG_0005.png" and png.provenance["author"] == "Design team"


async def test_cjk_queries_match_by_character(library):
    res = await run(library, "东京塔夜景")
    assert res.provenance["path"] == "东京塔.png"


async def test_folder_names_count_and_recursion_can_be_turned_off(library):
    assert (await run(library, "cat")).provenance["path"] == "animals/cats/tabby.png"
    with pytest.raises(ToolError) as ei:
        await run(library, "tabby cat", recursive=False)
    assert ei.value.kind == "no_result"


async def test_no_match_below_threshold(library):
    with pytest.raises(ToolError) as ei:
        await run(library, "submarine")
    assert ei.value.kind == "no_result" and "submarine" in str(ei.value)
    # one word in four is below the default threshold of a third
    with pytest.raises(ToolError):
        await run(library, "apple juice carton factory")
    # hidden folders are not indexed
    with pytest.raises(ToolError):
        await run(library, "secret")


async def test_invalid_file_reason_is_reported(library):
    with pytest.raises(ToolError) as ei:
        await run(library, "banana")
    assert ei.value.kind == "no_result" and "broken_banana.png" in str(ei.value)
    assert "decode" in str(ei.value)


async def test_symlinks_escaping_the_root_are_ignored(library, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "payroll.png").write_bytes(make_png(500, 500))
    (outside / "private.txt").write_text("confidential salary spreadsheet")
    os.symlink(outside / "payroll.png", library / "payroll.png")
    os.symlink(outside / "private.txt", library / "red_apple.txt")  # a sidecar escaping the root
    os.symlink(outside, library / "linked_dir")
    (library / "inside_link.png").symlink_to(library / "red_apple.png")  # stays inside: fine
    entries = build_index(library.resolve(), recursive=True, read_embedded=False)
    rels = {e.rel for e in entries}
    assert "payroll.png" not in rels and not any(r.startswith("linked_dir") for r in rels)
    assert "inside_link.png" in rels
    red = next(e for e in entries if e.rel == "red_apple.png")
    assert "salary" not in red.words
    with pytest.raises(ToolError):
        await run(library, "payroll")


async def test_file_swapped_for_an_escaping_symlink_after_indexing(library, tmp_path):
    outside = tmp_path / "outside2"
    outside.mkdir()
    (outside / "x.png").write_bytes(make_png(500, 500))
    ctx = make_ctx()
    try:
        b = backend(ctx, library)
        entries = await b.entries()
        entry = next(e for e in entries if e.rel == "red_apple.png")
        (library / "red_apple.png").unlink()
        os.symlink(outside / "x.png", library / "red_apple.png")
        with pytest.raises(UnsafeURLError):
            b._read(entry, library.resolve())
    finally:
        await close_ctx(ctx)


async def test_index_is_cached_and_refreshed_when_the_folder_changes(library):
    ctx = make_ctx()
    try:
        b = backend(ctx, library)
        first = await b.entries()
        assert await b.entries() is first  # cached
        with pytest.raises(ToolError):
            await b.run(req("zebra crossing"))
        (library / "zebra_crossing.png").write_bytes(make_png(500, 500))
        os.utime(library, ns=(1, os.stat(library).st_mtime_ns + 10_000_000))  # coarse-mtime filesystems
        res = await b.run(req("zebra crossing"))
        assert res.provenance["path"] == "zebra_crossing.png"
        assert await b.entries() is not first
    finally:
        await close_ctx(ctx)


async def test_size_cap_applies_to_library_files(library):
    ctx = make_ctx(max_bytes=200)
    try:
        with pytest.raises(ToolError) as ei:
            await backend(ctx, library).run(req("red apple"))
    finally:
        await close_ctx(ctx)
    assert "byte limit" in str(ei.value)


async def test_image_limits_come_from_settings(library):
    ctx = make_ctx(images=ImageLimits(min_width=50, min_height=50))
    try:
        res = await backend(ctx, library).run(req("apple"))
    finally:
        await close_ctx(ctx)
    assert res.provenance["path"] == "apple.png"  # the 100x100 one is fine now


def test_search_index_ranking(library):
    entries = build_index(library.resolve(), recursive=True, read_embedded=True)
    ranked = [e.rel for _, e in search_index(entries, "apple", min_score=0.34)]
    assert ranked[:2] == ["apple.png", "red_apple.png"]
    assert search_index(entries, "", min_score=0.1) == []


async def test_status(tmp_path, library):
    ctx = make_ctx()
    await close_ctx(ctx)  # status() is offline: it needs no client
    assert LocalLibrarySearch(LocalLibrarySearch.Options(), ctx).status().state == "misconfigured"
    assert backend(ctx, tmp_path / "nope").status().state == "misconfigured"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    st = backend(ctx, empty).status()
    assert st.state == "misconfigured" and "no images" in st.detail
    assert backend(ctx, library).status().state == "ok"


async def test_unconfigured_library_is_a_typed_failure():
    ctx = make_ctx()
    try:
        with pytest.raises(ToolError) as ei:
            await LocalLibrarySearch(LocalLibrarySearch.Options(), ctx).run(req("x"))
    finally:
        await close_ctx(ctx)
    assert ei.value.kind == "misconfigured"


async def test_through_the_engine_success_and_failure_blocks(library):
    """The backend as the engine uses it: a found image becomes an ImageBlock with provenance, no match a
    FailureBlock with the reason."""
    from llmi.config import load_settings
    from llmi.document import FailureBlock, ImageBlock
    from llmi.engine import Engine

    settings = load_settings(
        overrides={"backends": {"search": {"local": {"root": str(library)}}}, "cache": {"enabled": False}},
        environ={},
    )
    response = (
        'Fuji.\n<imgen>{"source": "search", "description": "Mt Fuji", "params": {"query": "Fuji at sunrise"}}</imgen>'
        '\n<imgen>{"source": "search", "description": "x", "params": {"query": "submarine"}}</imgen>'
    )
    async with Engine(settings, cache=False) as engine:
        doc = await engine.run_response(response)
    images = [b for b in doc.blocks if isinstance(b, ImageBlock)]
    failures = [b for b in doc.blocks if isinstance(b, FailureBlock)]
    assert len(images) == 1 and len(failures) == 1
    assert images[0].provenance["path"] == "IMG_0001.jpg" and images[0].provenance["license"] == "CC0-1.0"
    assert "submarine" in failures[0].reason
