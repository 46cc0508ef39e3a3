"""Bugs found while using llmi as a new user, in files the QA review does not own.

Each test states the behaviour a user needs and is marked ``xfail(strict=True)`` until the owner fixes
it — when the fix lands the test passes, strict mode turns that into a failure, and the marker must go.
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from tests.helpers import loopback_server, send


@pytest.fixture
def deadline():
    """Raise TimeoutError in the test if it runs longer than N seconds (a hang becomes a failure)."""

    def _arm(seconds: int):
        def boom(*_):
            raise TimeoutError(f"still running after {seconds} s")

        signal.signal(signal.SIGALRM, boom)
        signal.alarm(seconds)

    yield _arm
    signal.alarm(0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


@pytest.mark.xfail(strict=True, reason=(
    "protocol.StreamParser.feed is quadratic: each loop re-slices self._buf (_consume) and re-runs "
    "self._buf.find() for markers that are absent from the rest of the buffer (CLOSE_TAG in 'tag' mode, "
    "THINK_OPEN in 'text' mode). 20k unclosed '<imgen>' (140 KB) take ~10 s, 5M take hours; degenerate "
    "RL rollouts repeat like this. Fix: a read cursor instead of slicing, and remember 'marker absent "
    "after position p' per marker so each find scans the buffer once."))
def test_parsing_a_degenerate_response_is_linear(deadline):
    from llmi.protocol import parse_response

    deadline(4)
    parsed = parse_response("<imgen>" * 50_000)  # 350 KB: ~1 min today; linear parsing takes well under 1 s
    assert len(parsed.invalid) == 50_000


@pytest.mark.xfail(strict=True, reason=(
    "render/__init__.py:37 writes through tempfile.mkstemp, whose file is mode 0600, and os.replace keeps "
    "it: report.html is unreadable to a web server or another user. Fix: os.chmod(tmp, 0o666 & ~umask) "
    "before os.replace (read the umask once with os.umask(0); os.umask(old))."))
def test_written_documents_get_the_usual_file_mode(tmp_path):
    from llmi.document import Document, TextBlock
    from llmi.render import write_document

    old = os.umask(0o022)
    try:
        path = write_document(Document([TextBlock("hello")]), tmp_path / "doc.html")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


@pytest.mark.xfail(strict=True, reason=(
    "tools/search/candidates.py:322 (probe_http) reports any status below 500 other than 401/403/422 as "
    "'ok', so `llmi doctor --probe` says ok for a base_url that answers 404 (a wrong path or a proxy "
    "that is not the service). Same in tools/diffusion/openai.py:76 (probe_models). Fix: 404/405/410 -> "
    "BackendStatus('misconfigured', f'{service} answered HTTP 404 at {url}: check base_url')."))
async def test_probe_of_a_wrong_base_url_is_not_ok():
    from llmi.tools.search.candidates import probe_http

    with loopback_server(lambda req, h: send(h, 404, b'{"error": "not found"}')) as base:
        async with httpx.AsyncClient() as client:
            status = await probe_http(client, f"{base}/account.json", service="SerpAPI")
    assert status.state != "ok", status
