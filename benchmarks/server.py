"""What `llmi serve` adds on top of the LLM: overhead per request and time to first token.

A loopback OpenAI-compatible server (tests/sse_server.py) answers every chat request with a fixed latency:
the first delta after ``--first-token`` seconds, then ``--deltas`` deltas ``--delay`` seconds apart. The
same streamed requests (the real async ``openai`` SDK) go

* ``llm``:  straight to that server, and
* ``llmi``: to `llmi serve` (uvicorn on loopback) with that server as its LLM — llmi's system prompt,
  the stream parser, the engine session, the run's event log, the chat translation and a stored
  document per request,

one client at a time (``sequential``) and ``--clients`` at once (``concurrent``). The LLM stand-in, the
server and the clients are three processes (in one process they would take turns on one interpreter
lock and measure that instead). Printed side by side:
the median end-to-end time of each and the server's overhead per request (llmi − llm), and p50 / p99
time to first content token as the ratio llmi / llm. ``--tags`` puts that many image tags in each answer
(tools answer at once; each is one more link, event and stored image).

    python benchmarks/server.py                        # 30 sequential, 64 concurrent
    python benchmarks/server.py --clients 128 --tags 2 --repeat 60
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import openai  # noqa: E402

from llmi.server import create_app  # noqa: E402
from tests import sse_server  # noqa: E402
from tests.server_support import LiveServer, settings_for, tag  # noqa: E402
from tests.sse_server import Script, SSEServer  # noqa: E402


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


async def one(client: openai.AsyncOpenAI, model: str, i: int) -> tuple[float, float]:
    """(time to first content, total) of one streamed request."""
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"q{i}"}],
                                                  stream=True, stream_options={"include_usage": True})
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    return first if first is not None else float("nan"), time.perf_counter() - t0


async def batch(base_url: str, model: str, n: int, concurrency: int) -> list[tuple[float, float]]:
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency + 8), timeout=120)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, http_client=http)
    sem = asyncio.Semaphore(concurrency)

    async def run(i: int):
        async with sem:
            return await one(client, model, i)

    try:
        await one(client, model, -1)  # warm the connection pool and the server
        return await asyncio.gather(*(run(i) for i in range(n)))
    finally:
        await client.close()


def _serve_llm(args) -> None:
    """Child process: the loopback LLM, until stdin closes."""
    sse_server.ThreadingHTTPServer.request_queue_size = 1024  # the stdlib default backlog (5) resets bursts
    with SSEServer(_script(args)) as llm:
        print("URL", llm.base_url, flush=True)
        sys.stdin.read()


def _serve_llmi(args) -> None:
    """Child process: `llmi serve` with the loopback LLM at ``--llm-url``, until stdin closes."""
    with tempfile.TemporaryDirectory() as data:
        settings = settings_for(args.llm_url, server={"max_concurrent_runs": 10_000, "burst": 10_000,
                                                      "rate_per_minute": 1e9, "heartbeat_s": 15})
        with LiveServer(create_app(settings, data_dir=data)) as srv:
            print("URL", srv.base_url, flush=True)
            sys.stdin.read()


def _script(args) -> Script:
    body = "word " * args.deltas
    pieces = [body[i * 5:(i + 1) * 5] for i in range(args.deltas)]
    for t in range(args.tags):  # spread the tags through the answer
        pieces.insert((t + 1) * len(pieces) // (args.tags + 1), tag("search", f"picture {t}", f"q {t}"))
    return Script(content=pieces, first_token_s=args.first_token, delay_s=args.delay)


def _child(mode: str, argv: list[str]):
    import subprocess

    proc = subprocess.Popen([sys.executable, __file__, mode, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline().split()
    if not line or line[0] != "URL":
        proc.kill()
        raise SystemExit(f"the {mode} process did not start")
    return proc, line[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first-token", type=float, default=0.2, help="LLM seconds to the first delta")
    ap.add_argument("--deltas", type=int, default=50, help="deltas per answer")
    ap.add_argument("--delay", type=float, default=0.01, help="seconds between deltas")
    ap.add_argument("--tags", type=int, default=1, help="image tags per answer")
    ap.add_argument("--repeat", type=int, default=30, help="sequential requests")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients")
    ap.add_argument("--llm-url", default="", help=argparse.SUPPRESS)
    if len(sys.argv) > 1 and sys.argv[1] in ("--_llm", "--_llmi"):
        mode = sys.argv.pop(1)
        args = ap.parse_args()
        (_serve_llm if mode == "--_llm" else _serve_llmi)(args)
        return
    args = ap.parse_args()
    argv = [f"--first-token={args.first_token}", f"--deltas={args.deltas}", f"--delay={args.delay}",
            f"--tags={args.tags}"]
    n_pieces = len(_script(args).content)
    print(f"loopback LLM: first delta after {args.first_token:g} s, {n_pieces} deltas {args.delay * 1000:g} ms "
          f"apart (≈ {args.first_token + (n_pieces - 1) * args.delay:.2f} s a request), {args.tags} tag(s) per "
          "answer, tools answer at once; LLM, server and clients in three processes")
    llm, llm_url = _child("--_llm", argv)
    srv, srv_url = _child("--_llmi", [*argv, f"--llm-url={llm_url}"])
    rows = []
    try:
        for name, n, conc in (("sequential", args.repeat, 1), ("concurrent", args.clients, args.clients)):
            direct = asyncio.run(batch(llm_url, "test-model", n, conc))
            served = asyncio.run(batch(srv_url + "/v1", "llmi", n, conc))
            rows.append((name, n, conc, direct, served))
    finally:
        for p in (srv, llm):
            p.stdin.close()
            p.wait(30)
    print(f"{'scenario':<11} {'reqs':>4} {'at once':>7}  {'llm p50':>8} {'llmi p50':>8} {'overhead':>9} {'ratio':>6}"
          f"  {'TTFT p50 ratio':>14} {'TTFT p99 ratio':>14}")
    print("-" * 94)
    for name, n, conc, direct, served in rows:
        d_tot = statistics.median(t for _, t in direct)
        s_tot = statistics.median(t for _, t in served)
        d_ft = [f for f, _ in direct]
        s_ft = [f for f, _ in served]
        p50 = percentile(s_ft, 50) / percentile(d_ft, 50)
        p99 = percentile(s_ft, 99) / percentile(d_ft, 99)
        print(f"{name:<11} {n:>4} {conc:>7}  {d_tot:>7.3f}s {s_tot:>7.3f}s {1000 * (s_tot - d_tot):>7.1f}ms "
              f"{s_tot / d_tot:>6.3f}  {p50:>14.3f} {p99:>14.3f}")
        print(f"{'':<11} TTFT llm p50/p99 {percentile(d_ft, 50) * 1000:.0f}/{percentile(d_ft, 99) * 1000:.0f} ms, "
              f"llmi p50/p99 {percentile(s_ft, 50) * 1000:.0f}/{percentile(s_ft, 99) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
