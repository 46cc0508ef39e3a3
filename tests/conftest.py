"""Fixtures shared by several test modules.

- ``serve``: real loopback HTTP servers whose handler a test sets (the image backend tests);
- ``ctx``: a :class:`~llmi.tools.base.BackendContext` with a real ``httpx`` client and a fetcher that
  allows loopback addresses;
- ``judge_server``: a fake OpenAI-compatible judge endpoint (the judge, scoring and ``llmi reward`` tests);
- ``browser``: Debian chromium driven by Playwright (the ``browser``-marked tests; see ``helpers.Watch``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from typing import Callable, Iterator

import httpx
import pytest

from llmi.config import FetchSettings, Settings
from llmi.fetch import SafeFetcher
from llmi.tools.base import BackendContext
from tests.helpers import loopback_server, send

# ------------------------------------------------------------------------------------------------
# Loopback servers with a per-test handler
# ------------------------------------------------------------------------------------------------


class _Switch:
    """A loopback server's handler, swapped per test (servers are shared by the module: starting and
    stopping one costs half a second of ``serve_forever`` polling)."""

    def __init__(self):
        self.handle = None

    def __call__(self, req, handler):
        self.handle(req, handler)


@pytest.fixture(scope="module")
def _servers():
    switches = [_Switch() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        yield [(sw, stack.enter_context(loopback_server(sw))) for sw in switches]


@pytest.fixture
def serve(_servers):
    """``with serve(handle) as base_url:`` — a real loopback HTTP server answering with ``handle``
    (up to three per test)."""
    free = iter(_servers)

    def use(handle):
        switch, url = next(free)
        switch.handle = handle
        return contextlib.nullcontext(url)

    return use


@pytest.fixture
async def ctx():
    """What the engine hands a backend: default settings, a real client, a loopback-friendly fetcher."""
    settings = Settings()
    async with httpx.AsyncClient() as client:
        fetcher = SafeFetcher(FetchSettings(allow=["127.0.0.1"]))
        try:
            yield BackendContext(settings=settings, http=client, fetcher=fetcher)
        finally:
            await fetcher.aclose()


# ------------------------------------------------------------------------------------------------
# A fake OpenAI-compatible judge server
# ------------------------------------------------------------------------------------------------


def completion_body(content: str | None, model: str = "judge-1") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
        }
    ).encode()


class JudgeServer:
    """Records every chat request; ``reply(body, n)`` decides the answer for the n-th request (0-based).

    ``reply`` returns a string (the assistant content), or a tuple ``(status, body_bytes, headers)`` to
    send as is, or ``("sleep", seconds, content)`` to answer late.
    """

    def __init__(self, reply: Callable[[dict, int], object], models: list[str] | None = None):
        self.reply = reply
        self.models = models if models is not None else ["judge-1"]
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def handle(self, req, h) -> None:
        if req.method == "GET" and req.path.endswith("/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]
            send(h, 200, json.dumps({"object": "list", "data": data}).encode())
            return
        if not req.path.endswith("/chat/completions"):
            send(h, 404, b'{"error": {"message": "not found"}}')
            return
        body = json.loads(req.body)
        with self.lock:
            n = len(self.requests)
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            out = self.reply(body, n)
            if isinstance(out, tuple) and out[0] == "sleep":
                time.sleep(out[1])
                out = out[2]
            if isinstance(out, tuple):
                status, payload, headers = out
                headers = dict(headers)
                ctype = headers.pop("Content-Type", "application/json")
                send(h, status, payload, content_type=ctype, headers=headers)
            else:
                send(h, 200, completion_body(out, body.get("model", "judge-1")))
        finally:
            with self.lock:
                self.in_flight -= 1


@contextlib.contextmanager
def _judge_server(reply, models=None) -> Iterator[tuple[str, JudgeServer]]:
    server = JudgeServer(reply, models)
    with loopback_server(server.handle) as url:
        yield url + "/v1", server


@pytest.fixture
def judge_server():
    """``with judge_server(reply, models=None) as (base_url, server):`` — see :class:`JudgeServer`."""
    return _judge_server


# ------------------------------------------------------------------------------------------------
# A real browser
# ------------------------------------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Playwright, one per test module. Skipped with the reason when
    chromium or the playwright package is missing (CI installs chromium with apt; ``playwright install``
    is never used)."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
