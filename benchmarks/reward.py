"""Throughput of the reward scorer against loopback judges and a fake tool layer with fixed latencies.

256 rollouts, each with ~4 tags and two judge calls (LLM judge on the raw response, MLLM judge on the
executed document with its images). The two judges are real OpenAI-compatible HTTP servers in
separate processes (so their work does not compete with the scorer for the GIL); they answer after a
fixed latency and enforce a concurrency cap per endpoint by answering 429 when it is exceeded. The tool
layer is an injected executor that sleeps per tag under its own cap (it stands in for the engine, whose
speed is benchmarked separately). The scorer is configured with the same caps.

The cap-limited maximum is what a perfect pipeline could reach: the slowest endpoint's
``cap / (latency × calls per rollout)``. Goal: measured / max ≥ 0.8.

    python benchmarks/reward.py [--rollouts 256] [--llm-latency 0.2] [--mllm-latency 0.3] ...
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


# ------------------------------------------------------------------------------------------------
# Servers (child process)
# ------------------------------------------------------------------------------------------------


def _png(size: int) -> bytes:
    import random

    from PIL import Image

    rnd = random.Random(0)
    im = Image.frombytes("RGB", (size, size), bytes(rnd.getrandbits(8) for _ in range(size * size * 3)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _serve(kind: str, latency: float, cap: int, port_q) -> None:
    lock = threading.Lock()
    state = {"in_flight": 0, "max": 0, "over_cap": 0, "requests": 0}
    reply = (
        "Image Quality: 4\nTask Relevance: 5\nText-Image Relevance: 4"
        if kind == "mllm"
        else "<think>short</think>\nText: 4\nImage: 3"
    )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # like real servers (uvicorn, vLLM): without it Nagle + delayed ACK add ~40 ms to every call
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def _send(self, status, body, ctype="application/json", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            with lock:
                self._send(200, json.dumps(state).encode())

        def do_POST(self):
            n = int(self.headers.get("content-length") or 0)
            self.rfile.read(n)
            with lock:
                state["requests"] += 1
                if state["in_flight"] >= cap:
                    state["over_cap"] += 1
                    over = True
                else:
                    over = False
                    state["in_flight"] += 1
                    state["max"] = max(state["max"], state["in_flight"])
            if over:
                self._send(429, b'{"error": {"message": "over the concurrency cap"}}', headers=[("Retry-After", "0.05")])
                return
            try:
                time.sleep(latency)
                body = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "judge",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                }
                self._send(200, json.dumps(body).encode())
            finally:
                with lock:
                    state["in_flight"] -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    port_q.put((kind, server.server_address[1]))
    server.serve_forever()


# ------------------------------------------------------------------------------------------------
# The scorer side
# ------------------------------------------------------------------------------------------------

SOURCES = [("search", "query"), ("diffusion", "prompt"), ("code", "code"), ("search", "query")]


def make_rollouts(n: int, tags: int):
    from llmi.reward.scoring import Sample

    samples = []
    for i in range(n):
        parts = [f"Section {i}. " + "The tide rises and falls with the moon's pull. " * 12]
        for t in range(tags):
            source, key = SOURCES[t % len(SOURCES)]
            payload = {"source": source, "description": f"figure {t} of {i}", "params": {key: f"tide chart {i}-{t}"}}
            parts.append("<imgen>" + json.dumps(payload) + "</imgen>")
            parts.append("More explanation of the phenomenon follows here. " * 6)
        samples.append(Sample(prompt=f"Explain tides, part {i}", response="\n".join(parts), image_num=tags, tools=["code", "search"]))
    return samples


def tool_executor(latency: float, cap: int, image_size: int):
    """A stand-in for the engine: every tag takes ``latency`` seconds, at most ``cap`` at once across
    all rollouts, and yields the same validated image. It measures the scorer, not a tool backend."""
    from llmi.document import Document, ImageBlock, TextBlock
    from llmi.images import ImageData
    from llmi.protocol import Text, ToolCall, parse_response

    sem = asyncio.Semaphore(cap)
    image = ImageData.from_bytes(_png(image_size))
    state = {"in_flight": 0, "max": 0, "calls": 0}

    async def run_tag(call: ToolCall):
        async with sem:
            state["in_flight"] += 1
            state["max"] = max(state["max"], state["in_flight"])
            state["calls"] += 1
            try:
                await asyncio.sleep(latency)
            finally:
                state["in_flight"] -= 1
        return ImageBlock(image, call.source, call.description)

    async def execute(response: str, images) -> Document:
        parsed = parse_response(response, len(images))
        calls = [s for s in parsed.segments if isinstance(s, ToolCall)]
        done = dict(zip((c.index for c in calls), await asyncio.gather(*(run_tag(c) for c in calls))))
        blocks = []
        for seg in parsed.segments:
            if isinstance(seg, Text):
                blocks.append(TextBlock(seg.text))
            elif isinstance(seg, ToolCall):
                blocks.append(done[seg.index])
        return Document(blocks=blocks, violations=parsed.violations)

    execute.state = state
    return execute


async def bench(args, urls) -> None:
    from llmi.config import JudgeSettings, Settings
    from llmi.reward.scoring import RewardScorer

    settings = Settings(
        llm_judge=JudgeSettings(base_url=urls["llm"] + "/v1", model="judge", concurrency=args.llm_cap, timeout_s=30,
                                backoff_s=0.05),
        mllm_judge=JudgeSettings(base_url=urls["mllm"] + "/v1", model="judge", concurrency=args.mllm_cap, timeout_s=30,
                                 backoff_s=0.05),
    )
    samples = make_rollouts(args.rollouts, args.tags)
    execute = tool_executor(args.tool_latency, args.tool_cap, args.image_size)
    async with RewardScorer(settings, execute=execute) as scorer:
        # warm-up (connections, imports) outside the timed run
        await scorer.score_batch(make_rollouts(4, args.tags))
        t0, c0 = time.perf_counter(), time.process_time()
        results = await scorer.score_batch(samples)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        stats = scorer.stats.as_dict()
        busy = {k: v.busy_s / max(1, v.requests) for k, v in scorer.stats.judges.items()}

    scored = sum(r.score is not None for r in results)
    rate = args.rollouts / elapsed
    limits = {
        "llm": args.llm_cap / args.llm_latency,
        "mllm": args.mllm_cap / args.mllm_latency,
        "tool": args.tool_cap / (args.tool_latency * args.tags),
    }
    cap_max = min(limits.values())
    bottleneck = min(limits, key=limits.get)
    import httpx

    server_stats = {k: httpx.get(u + "/stats").json() for k, u in urls.items()}
    print(
        f"rollouts={args.rollouts} tags/rollout={args.tags} scored={scored} elapsed={elapsed:.2f}s "
        f"scorer_cpu={cpu:.2f}s ({1000 * cpu / args.rollouts:.1f} ms/rollout)"
    )
    print(
        "caps: "
        + ", ".join(f"{k} {v:.1f}/s" for k, v in limits.items())
        + f" (bottleneck: {bottleneck})"
    )
    for k, s in server_stats.items():
        print(f"  {k:<5} requests={s['requests']} max_in_flight={s['max']} over_cap_429={s['over_cap']}")
    print(f"  tool  calls={execute.state['calls']} max_in_flight={execute.state['max']} (in-process, sleeps)")
    errors = [e for r in results for e in r.errors.items()]
    if errors:
        print(f"  errors: {len(errors)}, e.g. {errors[0]}")
    print(
        f"  mean judge call: llm {1000 * busy['llm_judge']:.0f} ms (server latency {1000 * args.llm_latency:.0f}), "
        f"mllm {1000 * busy['mllm_judge']:.0f} ms (server latency {1000 * args.mllm_latency:.0f})"
    )
    print(f"  judge retries: llm={stats['judges']['llm_judge']['retries']} mllm={stats['judges']['mllm_judge']['retries']}")
    print(f"rollouts/s={rate:.2f} cap-limited max={cap_max:.2f} ratio={rate / cap_max:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rollouts", type=int, default=256)
    p.add_argument("--tags", type=int, default=4)
    p.add_argument("--llm-latency", type=float, default=0.20)
    p.add_argument("--llm-cap", type=int, default=16)
    p.add_argument("--mllm-latency", type=float, default=0.30)
    p.add_argument("--mllm-cap", type=int, default=12)
    p.add_argument("--tool-latency", type=float, default=0.10)
    p.add_argument("--tool-cap", type=int, default=32)
    p.add_argument("--image-size", type=int, default=160, help="side of the PNG each tool returns")
    args = p.parse_args()

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_serve, args=("llm", args.llm_latency, args.llm_cap, q), daemon=True),
        ctx.Process(target=_serve, args=("mllm", args.mllm_latency, args.mllm_cap, q), daemon=True),
    ]
    for proc in procs:
        proc.start()
    urls = dict((k, f"http://127.0.0.1:{port}") for k, port in (q.get(timeout=30) for _ in procs))
    try:
        asyncio.run(bench(args, urls))
    finally:
        for proc in procs:
            proc.terminate()


if __name__ == "__main__":
    main()
