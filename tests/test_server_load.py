"""Load: 64 concurrent streaming clients (the real async `openai` SDK) against one server whose LLM is a
loopback server with a fixed latency — every stream completes with its text, image link and usage."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from llmi.server import create_app  # noqa: E402

from .server_support import LiveServer, settings_for, tag  # noqa: E402
from .sse_server import Script, SSEServer, split_every  # noqa: E402

CLIENTS = 64
ANSWER = "Intro text for the load test. " + tag("search", "a picture", "load") + " And the end of it."


@pytest.mark.slow
def test_64_concurrent_streaming_clients_all_complete(tmp_path, monkeypatch):
    # The stdlib server's listen backlog is 5: 64 connections at once would be reset before the LLM
    # stand-in ever saw them (a real LLM server listens with a deep backlog).
    from . import sse_server

    monkeypatch.setattr(sse_server.ThreadingHTTPServer, "request_queue_size", 256)
    script = Script(content=split_every(ANSWER, 8), first_token_s=0.05, delay_s=0.02)
    with SSEServer(script) as llm:
        settings = settings_for(llm.base_url, delay=0.1, server={
            "max_concurrent_runs": CLIENTS, "burst": CLIENTS * 2, "rate_per_minute": 60_000})
        with LiveServer(create_app(settings, data_dir=tmp_path)) as srv:

            async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, object, float]:
                t0 = time.perf_counter()
                stream = await client.chat.completions.create(
                    model="llmi", messages=[{"role": "user", "content": f"load {i}"}], stream=True,
                    stream_options={"include_usage": True})
                parts, usage = [], None
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                    if chunk.usage is not None:
                        usage = chunk.usage
                return "".join(parts), usage, time.perf_counter() - t0

            async def main():
                http = httpx.AsyncClient(limits=httpx.Limits(max_connections=CLIENTS + 8), timeout=60)
                client = openai.AsyncOpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0,
                                            http_client=http)
                try:
                    return await asyncio.gather(*(one(client, i) for i in range(CLIENTS)))
                finally:
                    await client.close()

            t0 = time.perf_counter()
            results = asyncio.run(main())
            wall = time.perf_counter() - t0
            assert len(results) == CLIENTS
            for content, usage, _ in results:
                assert content.startswith("Intro text") and content.endswith("And the end of it.")
                (url,) = re.findall(r"\]\((http[^)]+)\)", content)
                assert usage is not None and usage.prompt_tokens == 9
            # They ran side by side: far less than 64 one-at-a-time requests would take.
            one_alone = 0.05 + len(script.content) * 0.02 + 0.1
            assert wall < CLIENTS * one_alone / 4, (wall, one_alone)
            assert len(llm.requests) == CLIENTS
            r = httpx.get(url, timeout=10)
            assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
            assert srv.services.manager.live == {}
