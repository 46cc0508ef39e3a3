"""Loopback OpenAI-compatible endpoints with a concurrency cap, for the throughput benchmarks.

Each endpoint is a real HTTP server in a child process (so its work does not compete with the measured
side for the GIL). A POST beyond ``cap`` requests in flight is answered 429; the others go to the
benchmark's ``answer(handler)``. ``GET .../models`` lists model ``m``; any other GET returns the counters:
``requests``, ``in_flight``, ``max`` (the most in flight at once) and ``over_cap`` (the 429s).

    def _serve(kind, latency, cap, port_q):          # top level, in the benchmark
        serve_capped(cap, port_q, lambda h: h.send(200, json.dumps(chat_completion("hi")).encode()))

    proc, url = start(_serve, "judge", 0.1, 8)
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


def chat_completion(content: str, *, model: str = "m", usage: tuple[int, int] = (100, 10)) -> dict[str, Any]:
    """A non-streaming chat completion answering ``content``."""
    prompt, completion = usage
    return {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def serve_capped(cap: int, port_q: Any, answer: Callable[[Any], None], *, retry_after: str | None = None) -> None:
    """Serve until the process ends; puts the port on ``port_q`` once listening. ``answer(handler)``
    writes the reply to a POST within the cap (``handler.send(status, body)`` for a plain one); a 429
    carries ``Retry-After: retry_after`` when given."""
    lock = threading.Lock()
    state = {"in_flight": 0, "max": 0, "over_cap": 0, "requests": 0}
    busy = [("Retry-After", retry_after)] if retry_after is not None else []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # like real servers (uvicorn, vLLM): without it Nagle + delayed ACK add ~40 ms to every call
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def send(self, status, body, ctype="application/json", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.endswith("/models"):
                self.send(200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode())
            else:
                with lock:
                    self.send(200, json.dumps(state).encode())

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            with lock:
                state["requests"] += 1
                over = state["in_flight"] >= cap
                if over:
                    state["over_cap"] += 1
                else:
                    state["in_flight"] += 1
                    state["max"] = max(state["max"], state["in_flight"])
            if over:
                self.send(429, b'{"error": {"message": "over the concurrency cap", "type": "rate_limit"}}',
                          headers=busy)
                return
            try:
                answer(self)
            finally:
                with lock:
                    state["in_flight"] -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    port_q.put(server.server_address[1])
    server.serve_forever(poll_interval=0.05)


def start(serve: Callable[..., None], *args: Any) -> tuple[Any, str]:
    """Run ``serve(*args, port_q)`` in a forked child; returns the process and its base URL once it listens."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=serve, args=(*args, q), daemon=True)
    proc.start()
    return proc, f"http://127.0.0.1:{q.get(timeout=30)}"


def counters(url: str) -> dict[str, int]:
    """The endpoint's counters (see the module docstring)."""
    import httpx

    return httpx.get(url + "/state").json()


def stop(*procs: Any) -> None:
    for proc in procs:
        proc.terminate()
        proc.join(5)
