"""A loopback OpenAI-compatible chat server that streams server-sent events the way vLLM and OpenAI do.

Used by the LLM tests and by ``benchmarks/streaming.py``. What a real server sends, byte for byte in
shape (HTTP/1.1, ``Transfer-Encoding: chunked``, ``text/event-stream``)::

    data: {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null,
                        "finish_reason": null}]}                                  # role-only first chunk

    data: {... "choices": [{"index": 0, "delta": {"content": "Sales"}, ...}]}     # one per delta

    data: {... "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}   # the finish chunk

    data: {... "choices": [], "usage": {"prompt_tokens": 9, ...}}               # if include_usage

    data: [DONE]

Failures a test can ask for: an HTTP status instead of a stream (401, 429 with ``Retry-After``, 500),
the first N requests only; an ``{"error": {...}}`` event mid-stream (vLLM's shape) or the older top-level
``{"object": "error", ...}``; a dropped connection (the socket closes without the chunked terminator);
no finish chunk and no ``[DONE]``; reasoning sent in ``reasoning_content`` as vLLM's reasoning parsers do.

Other servers' dialects (``Script.style``), each as that server writes it:

* ``"ollama"`` — every delta repeats ``"role": "assistant"``, no ``logprobs``, ``system_fingerprint:
  "fp_ollama"``; the finish chunk's delta is ``{"role": "assistant", "content": ""}``; reasoning in
  ``delta.reasoning``; older versions ignore ``include_usage`` (``usage=False``).
* ``"llamacpp"`` — the first delta's content is ``null``; usage and ``timings`` ride in the finish chunk
  itself (its ``choices`` not empty).
* ``"azure"`` — a first chunk with ``choices: []`` and ``prompt_filter_results`` (and an empty ``model``),
  ``content_filter_results`` in every choice.

``finish_with_last`` puts ``finish_reason`` on the last content delta instead of a separate chunk (as some
servers do). ``error_body`` replaces the JSON of a ``status`` answer (e.g. OpenAI's 400 for an unsupported
parameter). ``SSEServer(api_key=..., key_header="api-key")`` also accepts the key in Azure's header.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator


@dataclass
class Script:
    """What the server answers to one chat request."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    #: Seconds between two deltas (the decode rate); the first delta comes after ``first_token_s``.
    delay_s: float = 0.0
    first_token_s: float = 0.0
    role_chunk: bool = True
    finish_reason: str | None = "stop"
    done: bool = True
    #: After this many content deltas: send an error event ("error") or drop the connection ("drop").
    fail_after: int | None = None
    fail: str = "error"  # error | error-old | drop
    error_message: str = "CUDA out of memory"
    #: Answer with this HTTP status instead of streaming (and ``retry_after`` as Retry-After).
    status: int | None = None
    retry_after: str | None = None
    #: The JSON body of a ``status`` answer (default: a generic ``{"error": {...}}``).
    error_body: dict | None = None
    #: "vllm" (also SGLang, LM Studio, OpenAI) | "ollama" | "llamacpp" | "azure"
    style: str = "vllm"
    #: The delta key reasoning arrives in: "reasoning_content" (vLLM, SGLang, llama.cpp) or "reasoning" (Ollama).
    reasoning_key: str = "reasoning_content"
    #: Whether a usage chunk is sent when the request asks for it.
    usage: bool = True
    finish_with_last: bool = False
    #: Extra top-level fields in every content/finish chunk (e.g. ``{"error": None}``).
    chunk_extra: dict = field(default_factory=dict)


class SSEServer:
    """``with SSEServer(script) as srv:`` — ``srv.base_url`` ends with ``/v1``; ``srv.requests`` holds the
    decoded JSON bodies received, ``srv.headers`` their headers.

    ``script`` is a :class:`Script` or a function ``(request_number, body) -> Script``.
    ``models`` is what ``GET /v1/models`` lists.
    """

    def __init__(self, script: Script | Callable[[int, dict], Script], *, models: list[str] | list[dict] | None = None,
                 api_key: str | None = None, key_header: str | None = None):
        self.script = script
        #: Model ids, or whole model objects (to mimic a server's own listing shape).
        self.models = ["test-model"] if models is None else models
        self.api_key = api_key
        #: Besides ``Authorization: Bearer``, accept the key in this header (Azure's ``api-key``).
        self.key_header = key_header
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        #: The request paths (with query strings) of the chat requests.
        self.paths: list[str] = []
        self.request_times: list[float] = []
        #: Responses the client hung up on before the server finished writing them.
        self.hangups = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.base_url = ""

    # -- wire helpers ----------------------------------------------------------------------------
    @staticmethod
    def _send_json(h: BaseHTTPRequestHandler, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def _chunk(h: BaseHTTPRequestHandler, data: str) -> None:
        raw = data.encode()
        h.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        h.wfile.flush()

    def _event(self, h: BaseHTTPRequestHandler, obj: Any) -> None:
        self._chunk(h, "data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n")

    # -- handlers --------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        key_ok = h.headers.get("authorization") == f"Bearer {self.api_key}" or (
            self.key_header is not None and h.headers.get(self.key_header) == self.api_key)
        if self.api_key is not None and not key_ok:
            given = (h.headers.get("authorization") or "").removeprefix("Bearer ")
            masked = given[:3] + "*" * 8 + given[-4:] if len(given) > 8 else "****"
            self._send_json(h, 401, {"error": {"message": f"Incorrect API key provided: {masked}. You can find "
                                                          "your API key at https://platform.openai.com/account/api-keys.",
                                               "type": "invalid_request_error",
                                               "code": "invalid_api_key"}})
            return
        path = h.path.split("?")[0]
        if h.command == "GET" and path.endswith("/models"):
            self._send_json(h, 200, {"object": "list", "data": [
                m if isinstance(m, dict) else {"id": m, "object": "model", "created": 1, "owned_by": "llmi-test"}
                for m in self.models]})
            return
        if h.command != "POST" or not path.endswith("/chat/completions"):
            self._send_json(h, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        body = json.loads(raw or b"{}")
        with self._lock:
            n = len(self.requests)
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in h.headers.items()})
            self.paths.append(h.path)
            self.request_times.append(time.perf_counter())
        script = self.script(n, body) if callable(self.script) else self.script
        if script.status is not None:
            headers = {"Retry-After": script.retry_after} if script.retry_after is not None else {}
            kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(script.status, "server_error")
            body = script.error_body or {"error": {"message": f"test status {script.status}", "type": kind,
                                                   "code": script.status}}
            self._send_json(h, script.status, body, headers)
            return
        self._stream(h, body, script)

    def _stream(self, h: BaseHTTPRequestHandler, body: dict, s: Script) -> None:
        first = self.models[0] if self.models else "test-model"
        model = body.get("model") or (first["id"] if isinstance(first, dict) else first)
        base: dict[str, Any] = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1700000000,
                                "model": model}
        if s.style == "ollama":
            base["system_fingerprint"] = "fp_ollama"

        def chunk(delta: dict, finish: str | None = None, **extra: Any) -> dict:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            if s.style == "ollama":
                choice["delta"] = {"role": "assistant", **delta}
            else:
                choice["logprobs"] = None
            if s.style == "azure":
                choice["content_filter_results"] = {"hate": {"filtered": False, "severity": "safe"}}
            return {**base, **s.chunk_extra, "choices": [choice], **extra}

        want_usage = s.usage and bool((body.get("stream_options") or {}).get("include_usage"))
        deltas = [(s.reasoning_key, r) for r in s.reasoning] + [("content", c) for c in s.content]
        usage = {"prompt_tokens": 9, "completion_tokens": len(deltas), "total_tokens": 9 + len(deltas)}

        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        if s.style == "azure":
            self._event(h, {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": [
                {"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}}}]})
        if s.role_chunk:
            self._event(h, chunk({"role": "assistant", "content": None if s.style == "llamacpp" else ""}))
        sent_content = 0
        start = time.perf_counter()
        for i, (key, text) in enumerate(deltas):
            if key == "content" and s.fail_after is not None and sent_content >= s.fail_after:
                self._fail(h, s)
                return
            # An absolute schedule, so sleep overshoot does not pile up: delta i leaves at first + i·delay.
            wait = start + s.first_token_s + i * s.delay_s - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            last = i == len(deltas) - 1
            finish = s.finish_reason if (s.finish_with_last and last and s.fail_after is None) else None
            self._event(h, chunk({key: text}, finish))
            sent_content += key == "content"
        if s.fail_after is not None and sent_content >= s.fail_after:
            self._fail(h, s)
            return
        if s.finish_reason is not None and not (s.finish_with_last and deltas):
            extra: dict[str, Any] = {}
            if s.style == "llamacpp" and want_usage:
                extra = {"usage": usage, "timings": {"prompt_n": 9, "predicted_n": len(deltas)}}
                want_usage = False
            self._event(h, chunk({} if s.style != "ollama" else {"content": ""}, s.finish_reason, **extra))
        if want_usage:
            self._event(h, {**base, "choices": [], "usage": usage})
        if s.done:
            self._event(h, "[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def _fail(self, h: BaseHTTPRequestHandler, s: Script) -> None:
        if s.fail == "drop":
            # Close mid-body: no chunked terminator, as when a server process dies.
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(2)
            return
        if s.fail == "error-old":
            err: dict = {"object": "error", "message": s.error_message, "type": "InternalServerError", "code": 500}
        else:
            err = {"error": {"message": s.error_message, "type": "InternalServerError", "param": None, "code": 500}}
        self._event(h, err)
        self._event(h, "[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "SSEServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _dispatch(self):
                try:
                    server._handle(self)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True
                    with server._lock:
                        server.hangups += 1

            do_GET = do_POST = _dispatch

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def sse_server(script: Script | Callable[[int, dict], Script], **kw: Any) -> Iterator[SSEServer]:
    with SSEServer(script, **kw) as srv:
        yield srv


def split_every(text: str, n: int) -> list[str]:
    """``text`` cut into pieces of ``n`` characters — so tags straddle chunk boundaries."""
    return [text[i : i + n] for i in range(0, len(text), n)]
