"""Shared by the server tests and ``benchmarks/server.py``: the app on a real loopback port in a thread
(uvicorn), settings wired to a loopback LLM (``tests/sse_server.py``) and to the fake tool backends."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from llmi.config import Settings

TAG = '<imgen>{{"source": "{source}", "description": "{desc}", "params": {{"{key}": "{value}"}}}}</imgen>'


def tag(source: str, desc: str, value: str) -> str:
    key = {"search": "query", "diffusion": "prompt", "code": "code"}[source]
    return TAG.format(source=source, desc=desc, key=key, value=value)


def settings_for(llm_url: str, *, delay: float = 0.0, fail: bool = False, server: dict[str, Any] | None = None,
                 fetch_allow: list[str] | None = None) -> Settings:
    """Settings: the LLM at ``llm_url``, every tool served by the fakes (``delay`` seconds each)."""
    from tests import fakes

    fakes.register_all()
    opts = {"delay": delay, **({"fail_kind": "permanent"} if fail else {})}
    return Settings.model_validate({
        "llm": {"base_url": llm_url, "model": "test-model", "api_key": "sk-test", "timeout_s": 30},
        "tools": {t: {"backends": ["fake"], "concurrency": 64, "timeout_s": 30, "retries": 0}
                  for t in ("search", "diffusion", "code", "edit")},
        "backends": {t: {"fake": dict(opts)} for t in ("search", "diffusion", "code", "edit")},
        "cache": {"enabled": False},
        "fetch": {"allow": fetch_allow or []},
        "server": {"heartbeat_s": 0.5, "detach_grace_s": 0.5, **(server or {})},
    })


class LiveServer:
    """``with LiveServer(app) as srv:`` — the ASGI app served by uvicorn on 127.0.0.1 (a free port)."""

    def __init__(self, app: Any):
        self.app = app
        self.base_url = ""
        self._server = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LiveServer":
        import uvicorn

        # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP (with proto 0,
        # every small write after the headers would wait ~40 ms for a delayed ACK on a kept-alive connection).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                                backlog=512)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    @property
    def services(self):
        return self.app.state.services

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(15)
