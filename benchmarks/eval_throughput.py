"""Throughput of ``llmi eval`` against loopback servers with fixed latencies, as a ratio of what the
concurrency caps allow.

A policy LLM (streaming chat completions that take ``--gen-latency`` seconds each) and a judge (JSON
answers after ``--judge-latency`` seconds) run as real OpenAI-compatible HTTP servers in child processes,
so their work does not compete with the evaluation for the GIL; each answers 429 above its concurrency
cap and counts the most requests it saw at once. The evaluation runs LLMI-Bench items with ``--criteria``
judge calls each, through the real runner (batch runner, run folder, engine with the offline ``local``
search backend for the one tag per document, judge client, summary and report).

The cap-limited rate is what a perfect pipeline reaches: ``min(G / gen_latency, J / (K × judge_latency))``
items/s for G generations and J judge requests in flight and K criteria per item. Goal: measured / cap-limited
≥ 0.8 in every scenario.

    python benchmarks/eval_throughput.py [--items 48] [--gen-latency 0.5] [--judge-latency 0.1] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _servers import chat_completion, counters, serve_capped, start, stop

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

TAG = '<imgen>{"source": "search", "description": "moon", "params": {"query": "moon"}}</imgen>'


def _serve(kind: str, latency: float, cap: int, port_q) -> None:
    """The policy LLM (``llm``: a streamed reply spread over ``latency`` s) or the judge (a JSON score
    after ``latency`` s)."""

    def answer(h) -> None:
        if kind == "judge":
            time.sleep(latency)
            body = chat_completion('{"score": 2, "justification": "meets it"}', usage=(10, 5))
            h.send(200, json.dumps(body).encode())
        else:
            _stream(h, latency)

    serve_capped(cap, port_q, answer)


def _stream(h, latency: float) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    pieces = ["# Report\n", "The moon, in brief. ", TAG, "\nThat is all."]
    start = time.perf_counter()

    def event(obj) -> None:
        raw = ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n").encode()
        h.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        h.wfile.flush()

    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    for i, p in enumerate(pieces):
        wait = start + latency * (i + 1) / len(pieces) - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        event({**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
    event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    event({**base, "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90}})
    event("[DONE]")
    h.wfile.write(b"0\r\n\r\n")
    h.wfile.flush()


async def scenario(name: str, *, items: int, gen_latency: float, judge_latency: float, gen_cap: int, judge_cap: int,
                   criteria: int, judge_only_from: Path | None = None, workdir: Path) -> dict:
    from llmi.config import load_settings
    from llmi.eval.runner import EvalConfig, run_eval

    llm_p, llm_url = start(_serve, "llm", gen_latency, gen_cap)
    judge_p, judge_url = start(_serve, "judge", judge_latency, judge_cap)
    try:
        lib = workdir / "library"
        lib.mkdir(exist_ok=True)
        from PIL import Image

        Image.new("RGB", (64, 64), (180, 180, 200)).save(lib / "moon.png")
        data = workdir / "bench.json"
        data.write_text(json.dumps([{"prompt": f"Topic {i}", **{f"r{k + 1}": f"criterion {k}" for k in range(criteria)}}
                                    for i in range(items)]))
        settings = load_settings(None, environ={}, overrides={
            "llm": {"base_url": llm_url + "/v1", "model": "m"},
            "eval_judge": {"base_url": judge_url + "/v1", "model": "m", "concurrency": judge_cap, "retries": 3,
                           "backoff_s": 0.05},
            "tools": {"search": {"backends": ["local"], "concurrency": 64}},
            "backends": {"search": {"local": {"root": str(lib)}}},
            "images": {"min_width": 16, "min_height": 16},
            "cache": {"enabled": False},
        })
        out = workdir / f"run-{name.replace(' ', '-')}"
        cfg = EvalConfig("llmi-bench", out, data=data, concurrency=gen_cap, outputs=judge_only_from, report=False)
        t0 = time.perf_counter()
        summary = await run_eval(settings, cfg)
        elapsed = time.perf_counter() - t0
        gen_rate = gen_cap / gen_latency if judge_only_from is None else float("inf")
        judge_rate = judge_cap / (criteria * judge_latency)
        bound = min(gen_rate, judge_rate)
        batch_s = summary["cost"]["this_run"]["batch"]["elapsed_s"]
        return {
            "name": name, "items": summary["items"]["finished"], "elapsed": elapsed, "rate": items / elapsed,
            "batch_rate": items / batch_s, "caps": f"{gen_cap if judge_only_from is None else '-'}/{judge_cap}",
            "bound": bound, "bottleneck": "judge" if judge_rate < gen_rate else "generation",
            "llm": counters(llm_url), "judge": counters(judge_url), "score": summary["scores"]["score"]["mean"], "out": out,
        }
    finally:
        stop(llm_p, judge_p)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--criteria", type=int, default=4)
    ap.add_argument("--gen-latency", type=float, default=0.5)
    ap.add_argument("--judge-latency", type=float, default=0.1)
    ap.add_argument("--gen-cap", type=int, default=4)
    ap.add_argument("--judge-cap", type=int, default=8)
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results.append(await scenario("generation-bound", items=args.items, gen_latency=args.gen_latency,
                                      judge_latency=args.judge_latency, gen_cap=args.gen_cap,
                                      judge_cap=args.judge_cap * 2, criteria=args.criteria, workdir=work))
        results.append(await scenario("judge-bound", items=args.items, gen_latency=args.judge_latency,
                                      judge_latency=args.judge_latency * 2, gen_cap=args.gen_cap * 2,
                                      judge_cap=args.judge_cap // 2, criteria=args.criteria, workdir=work))
        results.append(await scenario("judge-only", items=args.items, gen_latency=args.gen_latency,
                                      judge_latency=args.judge_latency * 2, gen_cap=args.gen_cap,
                                      judge_cap=args.judge_cap // 2, criteria=args.criteria,
                                      judge_only_from=results[0]["out"], workdir=work))
    print(f"items={args.items} criteria/item={args.criteria} (one tag per document, run through the engine)")
    print("bound: the cap-limited rate; llmi: items / wall time of the whole run (start-up, summary included);")
    print("batch: items / time inside the batch runner (steady state). Ratios: llmi / bound.")
    print(f"{'scenario':<18}{'caps G/J':>9}{'bound it/s':>11}{'llmi it/s':>10}{'ratio':>7}{'batch it/s':>11}{'ratio':>7}"
          f"{'max in flight L/J':>19}{'429s':>6}  goal")
    worst = 1.0
    for r in results:
        ratio = r["rate"] / r["bound"]
        worst = min(worst, ratio)
        caps = f"{r['llm']['max']}/{r['judge']['max']}"
        print(f"{r['name']:<18}{r['caps']:>9}{r['bound']:>11.2f}{r['rate']:>10.2f}{ratio:>7.2f}{r['batch_rate']:>11.2f}"
              f"{r['batch_rate'] / r['bound']:>7.2f}{caps:>19}"
              f"{r['llm']['over_cap'] + r['judge']['over_cap']:>6}  {'ok' if ratio >= 0.8 else 'MISSED'} (>= 0.8, {r['bottleneck']}-bound)")
    print(f"worst ratio {worst:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
