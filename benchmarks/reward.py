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
import os
import sys
import time

from _servers import chat_completion, counters, serve_capped, start, stop

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
    reply = (
        "Image Quality: 4\nTask Relevance: 5\nText-Image Relevance: 4"
        if kind == "mllm"
        else "<think>short</think>\nText: 4\nImage: 3"
    )

    def answer(h) -> None:
        time.sleep(latency)
        h.send(200, json.dumps(chat_completion(reply, model="judge")).encode())

    serve_capped(cap, port_q, answer, retry_after="0.05")


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
    server_stats = {k: counters(u) for k, u in urls.items()}
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

    procs, urls = [], {}
    try:
        for kind, latency, cap in (("llm", args.llm_latency, args.llm_cap), ("mllm", args.mllm_latency, args.mllm_cap)):
            proc, urls[kind] = start(_serve, kind, latency, cap)
            procs.append(proc)
        asyncio.run(bench(args, urls))
    finally:
        stop(*procs)


if __name__ == "__main__":
    main()
