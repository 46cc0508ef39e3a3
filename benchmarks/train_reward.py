"""The reward phase of one training step, against loopback judges and tools with fixed latencies.

A GRPO step scores ``prompts x generations`` rollouts. ``llmi train``'s reward function
(:class:`llmi.train.reward.TrainingReward`, called exactly as TRL calls it) runs every rollout's tags
and both judges at once, bounded only by the configured caps. So with caps at least the batch size the
step's reward phase should take about as long as *one* rollout does (its tool latency, then the MLLM
judge; the LLM judge overlaps them). Goal: step wall time / one rollout's latency <= 1.3, printed side by
side with the sequential time (rollouts one after another). A second run with a judge cap below the
batch shows the phase then takes ceil(batch / cap) rounds, and nothing more.

Judges: real OpenAI-compatible HTTP servers in child processes that answer after a fixed latency and
return 429 above their cap; their listen backlog is 1024 as a real server's (uvicorn: 2048), since a
whole batch connects at once. Tools: an injected executor that sleeps per tag under a cap
(``benchmarks/reward.py``'s stand-in for the engine, which is benchmarked elsewhere).

    python benchmarks/train_reward.py [--prompts 8] [--generations 8] [--tags 2] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reward import tool_executor  # noqa: E402  (the fake tool layer)


def _serve(kind: str, latency: float, cap: int, port_q) -> None:
    """A judge endpoint: the chat-completion reply after ``latency`` s, 429 above ``cap`` in flight."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()
    state = {"in_flight": 0}
    reply = ("Image Quality: 4\nTask Relevance: 5\nText-Image Relevance: 4" if kind == "mllm"
             else "Text: 4\nImage: 3")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as real servers; else Nagle + delayed ACK add ~40 ms per call

        def log_message(self, *a):
            pass

        def _send(self, status, body, headers=()):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            with lock:
                over = state["in_flight"] >= cap
                state["in_flight"] += not over
            if over:
                self._send(429, b'{"error": {"message": "over the cap"}}', [("Retry-After", "0.05")])
                return
            try:
                time.sleep(latency)
                body = {"id": "c", "object": "chat.completion", "created": 0, "model": "judge",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                     "finish_reason": "stop"}]}
                self._send(200, json.dumps(body).encode())
            finally:
                with lock:
                    state["in_flight"] -= 1

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # a class attribute: listen() reads it when the server is built

    server = Server(("127.0.0.1", 0), Handler)
    port_q.put((kind, server.server_address[1]))
    server.serve_forever()


def completions(n: int, tags: int) -> list[str]:
    out = []
    for i in range(n):
        parts = [f"Part {i}. " + "Tides follow the moon. " * 10]
        for t in range(tags):
            source, key = (("code", "code"), ("search", "query"))[t % 2]
            payload = {"source": source, "description": f"figure {t}", "params": {key: f"tide chart {i}-{t}"}}
            parts.append("<imgen>" + json.dumps(payload) + "</imgen>")
            parts.append("More explanation. " * 5)
        out.append("\n".join(parts))
    return out


async def run(args, urls, judge_cap: int) -> dict:
    from llmi.config import JudgeSettings, Settings
    from llmi.train.reward import TrainingReward

    def judge(url):
        return JudgeSettings(base_url=url + "/v1", model="judge", concurrency=judge_cap, timeout_s=60, retries=2)

    settings = Settings(llm_judge=judge(urls["llm"]), mllm_judge=judge(urls["mllm"]))
    execute = tool_executor(args.tool_latency, args.tool_cap, 64)
    reward = TrainingReward(settings, execute=execute)
    n = args.prompts * args.generations
    texts = completions(n, args.tags)
    columns = {
        "image_num": [args.tags] * n, "tools": [["code", "search"]] * n,
        "question": [f"Explain tides {i // args.generations}" for i in range(n)],
        "row": [i // args.generations for i in range(n)],
    }

    async def call(idx):
        return await reward(prompts=[columns["question"][i] for i in idx], completions=[texts[i] for i in idx],
                            **{k: [v[i] for i in idx] for k, v in columns.items()})

    await call([0])  # warm-up: connections, imports
    one = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        scores = await call([i])
        one.append(time.perf_counter() - t0)
        assert scores[0] is not None
    step, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        scores = await call(list(range(n)))
        step.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        logged = reward.last.elapsed_s  # what metrics.jsonl's reward_time_s would say for this step
        assert all(s is not None for s in scores), "a rollout was dropped"
    measured = min(n, args.sequential_rows) if args.sequential else 0
    t0 = time.perf_counter()
    for i in range(measured):
        await call([i])
    sequential = (time.perf_counter() - t0) * (n / measured) if measured else 0.0
    judges = {k: v.as_dict() for k, v in reward.stats.judges.items()}
    await reward.aclose()
    return {"n": n, "one": statistics.median(one), "step": statistics.median(step), "sequential": sequential,
            "logged": logged, "cpu": statistics.median(cpu), "all_steps": step, "tool_max": execute.state["max"], "judges": judges}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--tags", type=int, default=2)
    # per-call latencies of the order of real judges (a large model writing a short grade) and tools
    p.add_argument("--llm-latency", type=float, default=1.0)
    p.add_argument("--mllm-latency", type=float, default=1.5)
    p.add_argument("--tool-latency", type=float, default=0.5)
    p.add_argument("--sequential-rows", type=int, default=16,
                   help="rollouts timed one after another; the sequential time is scaled to the batch")
    p.add_argument("--tool-cap", type=int, default=256)
    p.add_argument("--low-cap", type=int, default=16, help="the judge cap of the second, cap-limited run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-sequential", dest="sequential", action="store_false")
    args = p.parse_args()
    n = args.prompts * args.generations
    ctx = mp.get_context("fork")
    results = {}
    for cap in (n, args.low_cap):
        q = ctx.Queue()
        procs = [ctx.Process(target=_serve, args=(k, lat, cap, q), daemon=True)
                 for k, lat in (("llm", args.llm_latency), ("mllm", args.mllm_latency))]
        for proc in procs:
            proc.start()
        urls = {k: f"http://127.0.0.1:{port}" for k, port in (q.get(timeout=30) for _ in procs)}
        try:
            args_run = argparse.Namespace(**{**vars(args), "sequential": args.sequential and cap == n})
            results[cap] = asyncio.run(run(args_run, urls, cap))
        finally:
            for proc in procs:
                proc.terminate()
    full, low = results[n], results[args.low_cap]
    bound = args.tags and max(args.llm_latency, args.tool_latency + args.mllm_latency)
    print(f"batch: {args.prompts} prompts x {args.generations} generations = {n} rollouts, {args.tags} tags each; "
          f"latency llm {args.llm_latency}s, mllm {args.mllm_latency}s, tool {args.tool_latency}s "
          f"(one rollout's floor {bound:.2f}s)")
    print(f"caps >= batch ({n}): one rollout {full['one']:.3f}s | step {full['step']:.3f}s | "
          f"sequential {full['sequential']:.2f}s ({min(n, args.sequential_rows)} rollouts timed, scaled to {n})")
    print(f"  step / one rollout = {full['step'] / full['one']:.2f}  (goal <= 1.3); "
          f"sequential / step = {full['sequential'] / full['step']:.1f}x; last step's logged reward_time_s {full['logged']:.3f}; "
          f"tool calls in flight max {full['tool_max']}")
    retries = {k: v["retries"] for k, v in full["judges"].items()}
    print(f"  fixed cost: scorer CPU per step {full['cpu']:.3f}s ({1000 * full['cpu'] / n:.1f} ms/rollout); step times "
          f"{', '.join(f'{t:.3f}' for t in full['all_steps'])}; judge retries {retries}")
    rounds = math.ceil(n / args.low_cap)
    print(f"judge cap {args.low_cap} < batch: step {low['step']:.3f}s = {low['step'] / low['one']:.2f} x one rollout; "
          f"cap-limited bound {rounds} rounds of the MLLM judge + first tool wait "
          f"= {args.tool_latency + rounds * args.mllm_latency:.2f}s; measured / bound = "
          f"{low['step'] / (args.tool_latency + rounds * args.mllm_latency):.2f}")


if __name__ == "__main__":
    main()
