"""Rendered HTML in a real browser (Debian chromium driven by Playwright): images load, nothing runs.

Skipped with the reason when chromium or the playwright package is missing (CI installs chromium with
apt; ``playwright install`` is never used). Each payload in the hostile document tries to set
``window.__pwned``, change ``document.title``, open a dialog or fetch a URL; the test listens for all
of those. A second test plants script directly in a rendered page — as if the sanitiser had missed it —
and checks the page's Content-Security-Policy blocks it.
"""

from __future__ import annotations

import pytest

from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.images import ImageData
from llmi.render import write_document

from .helpers import Watch, loopback_server, make_jpeg, make_png, send
from .hostile import HOSTILE, hostile_document

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/llmi_render.png"
def _open(browser, path, *, color_scheme="light"):
    context = browser.new_context(color_scheme=color_scheme, java_script_enabled=True)
    page = context.new_page()
    watch = Watch(page)
    page.goto(path.as_uri(), wait_until="load")
    # Give timers, lazy handlers and image error events a moment to fire if anything slipped through.
    page.wait_for_timeout(300)
    return context, page, watch


def _images_state(page):
    return page.evaluate(
        """() => Array.from(document.images).map(i => ({
            complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, alt: i.alt}))"""
    )


def test_images_load_and_hostile_content_stays_inert(browser, tmp_path):
    doc = hostile_document()
    path = write_document(doc, tmp_path / "hostile.html", prompt=HOSTILE, title="Hostile test")
    context, page, watch = _open(browser, path)
    try:
        images = _images_state(page)
        assert len(images) == len(doc.images) == 4
        expected = [(b.width, b.height) for b in doc.images]
        assert [(i["w"], i["h"]) for i in images] == expected
        assert all(i["complete"] and i["alt"] for i in images)
        # All image data URIs decode (decode() rejects on broken data).
        assert page.evaluate(
            "() => Promise.all(Array.from(document.images).map(i => i.decode())).then(() => true)"
        )

        assert page.evaluate("() => window.__pwned") is None
        assert page.title() == "Hostile test"
        assert watch.dialogs == []
        assert watch.errors == []
        # Nothing was fetched but the page itself (data: images are not network requests).
        assert [u for u in watch.requests if not u.startswith(("file:", "data:"))] == []
        # No live script, frame, object or handler exists in the DOM at all.
        assert (
            page.evaluate(
                """() => document.querySelectorAll('script, iframe, object, embed, svg, form, base, link, '
                 + 'meta[http-equiv=refresh], [srcdoc]').length"""
            )
            == 0
        )
        handlers = page.evaluate(
            """() => Array.from(document.querySelectorAll('*')).flatMap(
                   el => Array.from(el.attributes).map(a => a.name)).filter(n => n.startsWith('on'))"""
        )
        assert handlers == []
        # The hostile text is on the page as text.
        assert "<script>window.__pwned=1" in page.inner_text(".llmi-prompt")
        assert page.locator(".llmi-failure").count() == 2
        page.screenshot(path=SCREENSHOT.replace(".png", "_hostile.png"), full_page=True)
    finally:
        context.close()


def test_csp_blocks_script_that_slipped_past_the_sanitiser(browser, tmp_path):
    doc = Document(
        blocks=[TextBlock("Hello"), ImageBlock(image=ImageData.from_bytes(make_png(30, 20)), tool="code")]
    )
    path = write_document(doc, tmp_path / "planted.html")
    hits: list[str] = []

    def handle(request, handler):
        hits.append(request.path)
        send(handler, 200, make_png(5, 5), content_type="image/png")

    with loopback_server(handle) as base:
        planted = (
            "<script>window.__pwned=1;alert('inline')</script>"
            '<img src="x" onerror="window.__pwned=2">'
            f'<img src="{base}/remote.png" id="remote">'
            f'<link rel="stylesheet" href="{base}/style.css">'
            '<iframe srcdoc="<script>parent.__pwned=3</script>"></iframe>'
            '<a id="js" href="javascript:window.__pwned=4">x</a>'
        )
        html = path.read_text(encoding="utf-8").replace("</article>", planted + "</article>")
        path.write_text(html, encoding="utf-8")
        context, page, watch = _open(browser, path)
        try:
            page.click("#js")
            page.wait_for_timeout(200)
            assert page.evaluate("() => window.__pwned") is None
            assert watch.dialogs == []
            assert page.evaluate("() => document.getElementById('remote').naturalWidth") == 0
            assert watch.csp_reports, "the browser reported no CSP violation for the planted script"
            # Our own image is still allowed by the policy.
            assert page.evaluate("() => document.images[0].naturalWidth") == 30
        finally:
            context.close()
    # The real server saw nothing: the policy stopped the fetches before they left the browser.
    assert hits == []


def test_screenshot_of_a_normal_document(browser, tmp_path):
    doc = Document(
        blocks=[
            TextBlock(
                "# Red foxes\n\nThe **red fox** is the largest of the true foxes.\n\n- adaptable\n- widespread\n"
            ),
            ImageBlock(
                image=ImageData.from_bytes(make_jpeg(320, 200, (190, 90, 40))),
                tool="search",
                description="A red fox in the snow",
                provenance={
                    "backend": "wikimedia",
                    "title": "Vulpes vulpes",
                    "author": "Jane Doe",
                    "license": "CC BY-SA 4.0",
                    "page_url": "https://commons.wikimedia.org/wiki/File:Fox.jpg",
                },
            ),
            TextBlock("Population over time:"),
            ImageBlock(
                image=ImageData.from_bytes(make_png(300, 160, (40, 110, 200))),
                tool="code",
                description="Fox population 2015-2024",
            ),
            FailureBlock(
                tool="diffusion",
                reason="HTTP 503 from the image server",
                kind="http_error",
                description="A painting of a fox",
            ),
        ]
    )
    path = write_document(doc, tmp_path / "foxes.html", prompt="Tell me about red foxes, with pictures.")
    for scheme in ("light", "dark"):
        context, page, watch = _open(browser, path, color_scheme=scheme)
        try:
            assert [(i["w"], i["h"]) for i in _images_state(page)] == [(320, 200), (300, 160)]
            # The failure note is visible and styled differently from body text.
            note = page.locator(".llmi-failure")
            assert note.is_visible()
            assert "HTTP 503 from the image server" in note.inner_text()
            styles = page.evaluate(
                """() => [getComputedStyle(document.querySelector('.llmi-failure')).backgroundColor,
                         getComputedStyle(document.body).backgroundColor,
                         getComputedStyle(document.documentElement).backgroundColor]"""
            )
            assert styles[0] != styles[2]
            caption = page.inner_text("figure figcaption")
            assert "Photo: Vulpes vulpes by Jane Doe, CC BY-SA 4.0" in caption
            assert watch.errors == [] and watch.dialogs == []
            page.screenshot(
                path=SCREENSHOT if scheme == "light" else SCREENSHOT.replace(".png", "_dark.png"),
                full_page=True,
            )
        finally:
            context.close()
