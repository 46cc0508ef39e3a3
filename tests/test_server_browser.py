"""The page at `/` in a real browser (Debian chromium through Playwright, as tests/test_browser.py):
type a prompt, watch the text stream and the images appear in place, download the HTML; a hostile
answer runs no script and makes no request outside the server.

Skipped with the reason when chromium or playwright is missing (``playwright install`` is never used).
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from llmi.server import create_app  # noqa: E402

from .helpers import Watch, loopback_server, make_png, send  # noqa: E402
from .hostile import HOSTILE  # noqa: E402
from .server_support import LiveServer, settings_for, tag  # noqa: E402
from .sse_server import Script, SSEServer, split_every  # noqa: E402

pytestmark = pytest.mark.browser
SCREENSHOT = "/tmp/llmi_server_page.png"

ANSWER = ("# Owls\n\nOwls hunt at **night**. " + tag("search", "A barn owl", "barn owl")
          + "\n\nSightings per year:\n\n" + tag("code", "Owl sightings", "plt.bar([1], [2])")
          + "\n\nThat is all about owls.")


@pytest.fixture(scope="module")
def evil():
    """A loopback server standing for 'the outside': nothing the page shows may reach it."""
    hits: list[str] = []

    def handle(req, h):
        hits.append(req.path)
        send(h, 200, make_png(4, 4), "image/png")

    with loopback_server(handle) as url:
        yield url, hits


@pytest.fixture(scope="module")
def server(tmp_path_factory, evil):
    evil_url, _ = evil
    hostile = (f"# Hostile\n\n{HOSTILE}\n\n![tracker]({evil_url}/md.png) <img src=\"{evil_url}/raw.png\"> "
               f"[link]({evil_url}/click) "
               + tag("search", "<img src=x onerror='window.__pwned=99'> owl", "owl")
               + f"\n\n<script>fetch('{evil_url}/script')</script> end. <imgen>{{not json</imgen> after.")

    def script(n: int, body: dict) -> Script:
        content = body["messages"][-1]["content"]
        text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
        if "hostile" in text:
            return Script(content=split_every(hostile, 40))
        return Script(content=split_every(ANSWER, 4), delay_s=0.03)

    with SSEServer(script) as llm:
        settings = settings_for(llm.base_url, delay=1.0)
        app = create_app(settings, data_dir=tmp_path_factory.mktemp("page-data"))
        with LiveServer(app) as srv:
            yield srv


def _order(page) -> list[str]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('#doc article > *')).map(e =>
        e.tagName === 'FIGURE' ? 'figure' : e.classList.contains('llmi-text') ? 'text'
        : e.classList.contains('llmi-pending') ? 'pending' : e.classList.contains('llmi-slot') ? 'slot'
        : e.tagName.toLowerCase())""")


@pytest.mark.slow
def test_the_page_streams_text_shows_images_in_place_and_downloads_html(browser, server, tmp_path):
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    watch = Watch(page)
    try:
        page.goto(server.base_url + "/", wait_until="load")
        page.set_input_files("#images", files=[{"name": "owl.png", "mimeType": "image/png",
                                                "buffer": make_png(60, 40, (90, 60, 30))}])
        assert page.locator("#previews img").count() == 1
        page.fill("#prompt", "Tell me about owls")
        page.click("#send")
        # Text arrives while the model is still writing: some of it, not yet the end.
        page.wait_for_function("() => (document.querySelector('#doc .llmi-streaming, #doc .llmi-text') || {})"
                               ".textContent?.includes('Owls hunt')")
        assert "That is all" not in page.inner_text("#doc")
        # A spinner with the tool's name stands where the image will be, while its tool runs (1 s).
        page.wait_for_selector("#doc .llmi-pending .spinner")
        assert "search" in page.inner_text("#doc .llmi-pending")
        # Then the document is done: the images are in place between the texts, with credits.
        page.wait_for_function("() => document.querySelector('#status').textContent === 'done'", timeout=20000)
        page.wait_for_function("() => Array.from(document.querySelectorAll('#doc figure img'))"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        order = [x for x in _order(page) if x not in ("section",)]
        assert order == ["text", "figure", "text", "figure", "text", "footer"], order
        sizes = page.evaluate("() => Array.from(document.querySelectorAll('#doc figure img')).map(i => i.naturalWidth)")
        assert sizes == [60, 16, 16]  # the user's image (shown first), then the two tool images
        assert page.locator("#doc strong").inner_text() == "night"  # Markdown rendered (server-side, sanitised)
        assert "Chart rendered from code" in page.inner_text("#doc") or page.locator("#doc figcaption").count() == 3
        page.screenshot(path=SCREENSHOT, full_page=True)
        # The list of earlier documents has it.
        page.wait_for_selector("#history button[aria-current='true']")
        assert "Owls" in page.inner_text("#history")
        # Download the HTML: one self-contained file with the images inside.
        with page.expect_download() as dl:
            page.click("#dl-html")
        html = open(dl.value.path(), encoding="utf-8").read()
        assert html.startswith("<!DOCTYPE html>") and html.count("data:image/") == 3 and "Owls hunt" in html
        assert watch.errors == [] and watch.dialogs == []
        assert all(u.startswith((server.base_url, "blob:", "data:")) for u in watch.requests), watch.requests
    finally:
        context.close()


def test_a_hostile_answer_runs_nothing_and_fetches_nothing_outside(browser, server, evil):
    _, hits = evil
    context = browser.new_context()
    page = context.new_page()
    watch = Watch(page)
    try:
        page.goto(server.base_url + "/", wait_until="load")
        page.fill("#prompt", "a hostile answer please")
        page.click("#send")
        page.wait_for_function("() => document.querySelector('#status').textContent === 'done'", timeout=20000)
        page.wait_for_timeout(300)  # timers, lazy handlers, image errors
        assert page.evaluate("() => window.__pwned") is None
        assert page.title() == "llmi"
        assert watch.dialogs == [] and watch.errors == []
        assert hits == []
        outside = [u for u in watch.requests if not u.startswith((server.base_url, "blob:", "data:"))]
        assert outside == []
        live = "script, iframe, object, embed, svg, form, base, link, meta"
        assert page.evaluate("(sel) => document.querySelectorAll(sel).length",
                             ", ".join("#doc " + t for t in live.split(", "))) == 0
        handlers = page.evaluate("""() => Array.from(document.querySelectorAll('#doc *')).flatMap(
            el => Array.from(el.attributes).map(a => a.name)).filter(n => n.startsWith('on'))""")
        assert handlers == []
        # The broken tag is a visible failure note with its reason; the hostile text is there, as text.
        note = page.locator("#doc .llmi-failure")
        assert note.count() == 1 and "unparseable" in note.inner_text().lower()
        assert "<script>window.__pwned=1" in page.inner_text("#doc")
        srcs = page.evaluate("() => Array.from(document.querySelectorAll('#doc img')).map(i => i.src)")
        assert srcs and all(s.startswith(server.base_url + "/images/") for s in srcs)
        # The page itself forbids inline script and foreign connections.
        csp = page.evaluate("() => fetch('/').then(r => r.headers.get('content-security-policy'))")
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    finally:
        context.close()


def test_the_page_asks_for_the_key_when_the_server_has_keys(browser, tmp_path):
    from llmi.server.auth import KeyRing

    keys = KeyRing()
    keys.add("sk-page-test-123456", "page")
    with SSEServer(Script(content=split_every(ANSWER, 30))) as llm:
        app = create_app(settings_for(llm.base_url), keys=keys, data_dir=tmp_path)
        with LiveServer(app) as srv:
            context = browser.new_context()
            page = context.new_page()
            try:
                page.goto(srv.base_url + "/", wait_until="load")
                page.wait_for_selector("#api-key", state="visible")
                page.fill("#prompt", "owls")
                page.click("#send")
                page.wait_for_function("() => document.querySelector('#status').textContent.length > 0")
                assert "API key" in page.inner_text("#status") or "key" in page.inner_text("#status")
                page.fill("#api-key", "sk-page-test-123456")
                page.dispatch_event("#api-key", "change")
                page.click("#send")
                page.wait_for_function("() => document.querySelector('#status').textContent === 'done'",
                                       timeout=20000)
                page.wait_for_function("() => document.querySelectorAll('#doc figure img').length === 2 && "
                                       "Array.from(document.querySelectorAll('#doc figure img'))"
                                       ".every(i => i.complete && i.naturalWidth > 0)")
            finally:
                context.close()
