"""Shared test helpers: image bytes, a real loopback HTTP server, a browser page watch, CPU timing."""

from __future__ import annotations

import gc
import io
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator


def make_png(width: int = 8, height: int = 8, color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def make_jpeg(width: int = 8, height: int = 8, color=(30, 30, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="JPEG")
    return buf.getvalue()


class Request:
    """What a handler function sees of one request."""

    def __init__(self, handler: BaseHTTPRequestHandler, body: bytes):
        self.method = handler.command
        self.path = handler.path
        self.headers = handler.headers
        self.body = body


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (timeouts, size caps) are expected in these tests: no tracebacks."""

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


@contextmanager
def loopback_server(handle: Callable[[Request, BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """Serve ``handle(request, handler)`` on 127.0.0.1 in a thread; yields the base URL.

    ``handle`` writes the response itself with ``handler.send_response`` / ``send_header`` /
    ``end_headers`` / ``wfile.write`` — so tests can send exactly the bytes a real service sends,
    including malformed ones, or sleep to provoke timeouts.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # otherwise every small response waits ~40 ms for an ACK

        def log_message(self, *args):  # keep test output quiet
            pass

        def _dispatch(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                handle(Request(self, body), self)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    server = _QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", content_type: str = "application/json", headers: dict | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def dispatch(routes: dict, path: str, req: Request, handler: BaseHTTPRequestHandler) -> None:
    """Answer from a route table: ``routes[path]`` is ``(status, body, content_type, headers)`` or a
    callable ``(req, handler)``; an unknown path gets a 404."""
    route = routes.get(path)
    if route is None:
        send(handler, 404, b"not found", "text/plain")
    elif callable(route):
        route(req, handler)
    else:
        status, body, ctype, headers = route
        send(handler, status, body, ctype, headers)


class Watch:
    """Everything a browser page did that it should not have: dialogs, requests, script errors and the
    Content-Security-Policy reports chromium logs to the console (see the ``browser`` fixture)."""

    def __init__(self, page):
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.csp_reports: list[str] = []
        page.on("dialog", self._dialog)
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", self._console)

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, msg):
        if "Content Security Policy" in msg.text:
            self.csp_reports.append(msg.text)


def cpu_cost(fn: Callable, arg, repeat: int = 3) -> float:
    """The least CPU time of ``repeat`` calls of ``fn(arg)``: other processes on the machine do not count,
    and the garbage collector is paused (a full collection landing in one run is not ``fn``'s cost)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.process_time()
            fn(arg)
            best = min(best, time.process_time() - t0)
        finally:
            gc.enable()
    return best


def fed_in_chunks(chunk: int, start_in_think: bool | None = False) -> Callable[[str], None]:
    """``run(text)``: ``text`` fed to a fresh :class:`~llmi.protocol.StreamParser` ``chunk`` characters at a
    time, then closed."""
    from llmi.protocol import StreamParser

    def run(text: str) -> None:
        p = StreamParser(start_in_think=start_in_think)
        for i in range(0, len(text), chunk):
            p.feed(text[i : i + chunk])
        p.close()

    return run
