"""Regression tests for bugs found by using llmi as a new user would (each fixed; each must stay fixed)."""

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


def test_parsing_a_degenerate_response_is_linear(deadline):
    from llmi.protocol import parse_response

    deadline(4)
    parsed = parse_response("<imgen>" * 50_000)  # 350 KB: ~1 min today; linear parsing takes well under 1 s
    assert len(parsed.invalid) == 50_000


def test_written_documents_get_the_usual_file_mode(tmp_path):
    from llmi.document import Document, TextBlock
    from llmi.render import write_document

    old = os.umask(0o022)
    try:
        path = write_document(Document([TextBlock("hello")]), tmp_path / "doc.html")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


async def test_probe_of_a_wrong_base_url_is_not_ok():
    from llmi.tools.search.candidates import probe_http

    with loopback_server(lambda req, h: send(h, 404, b'{"error": "not found"}')) as base:
        async with httpx.AsyncClient() as client:
            status = await probe_http(client, f"{base}/account.json", service="SerpAPI")
    assert status.state != "ok", status
