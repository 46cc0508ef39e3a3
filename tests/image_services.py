"""Fake image services for the ``diffusion`` and ``edit`` backend tests: the bodies the real ones send.

OpenAI/Ark answer ``{"data": [...]}`` or ``{"error": {...}}``; the LLM-I recipe's Qwen-Image servers
answer ``{"status": "success", "images": [...]}`` or FastAPI's ``{"detail": ...}``. A :class:`Service`
plays a script of such answers (and failures: 429 with ``Retry-After``, 500, slow answers, HTML pages)
behind the ``serve`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import base64
import json
import socket
import time

from tests.helpers import send

KEY = "sk-test-0123456789abcdefSECRET"
ARK_KEY = "ark-5f0c0f7e-1111-2222-3333-secretsecret"

#: ``(status, body, headers)``: one scripted answer.
Answer = tuple[int, bytes, dict]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Service:
    """A scripted HTTP service: answers the queued responses in order (the last one repeats) and
    records every request. A response is ``(status, body, headers)``, or a callable returning one,
    or ``("sleep", seconds, response)``; ``content_type`` may be overridden per response."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests = []

    def handle(self, req, handler):
        self.requests.append(req)
        resp = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if callable(resp):
            resp = resp(req)
        if resp[0] == "sleep":
            time.sleep(resp[1])
            resp = resp[2]
        status, body, headers = resp
        headers = dict(headers)
        ctype = headers.pop("content-type", "application/json")
        send(handler, status, body, content_type=ctype, headers=headers)

    def json(self, i: int = -1) -> dict:
        return json.loads(self.requests[i].body)


def dead_url() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def assert_no_secret(exc: BaseException) -> None:
    text = str(exc) + repr(exc.args)
    assert KEY not in text and ARK_KEY not in text and "SECRET" not in text


# -- OpenAI Images API ---------------------------------------------------------------------------


def openai_ok(png: bytes, **extra) -> Answer:
    """A GPT image model's success body (b64_json, usage...)."""
    item = {"b64_json": b64(png), **extra}
    body = {"created": 1713833628, "background": "opaque", "data": [item], "output_format": "png",
            "quality": "medium", "size": "1024x1024",
            "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210}}
    return 200, json.dumps(body).encode(), {}


def openai_error(status: int, message: str, code: str | None, type_: str = "invalid_request_error",
                 headers: dict | None = None) -> Answer:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return status, json.dumps(body).encode(), headers or {}


# -- Volcengine Ark ------------------------------------------------------------------------------


def ark_ok(png: bytes, model: str = "doubao-seedream-4-0-250828") -> Answer:
    body = {"model": model, "created": 1757321139,
            "data": [{"b64_json": b64(png), "size": "1024x1024"}],
            "usage": {"generated_images": 1, "output_tokens": 4096, "total_tokens": 4096}}
    return 200, json.dumps(body).encode(), {}


def ark_error(status: int, code: str, message: str, type_: str, headers: dict | None = None) -> Answer:
    body = {"error": {"code": code, "message": message, "param": "", "type": type_}}
    return status, json.dumps(body).encode(), headers or {}


# -- Qwen-Image servers (LLM-I recipe) -----------------------------------------------------------


def qwen_ok(png: bytes) -> Answer:
    return 200, json.dumps({"status": "success", "images": [b64(png)]}).encode(), {}


def qwen_detail(status: int, detail) -> Answer:
    return status, json.dumps({"detail": detail}).encode(), {}
