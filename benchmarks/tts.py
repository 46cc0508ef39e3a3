"""Test-time scaling (``--tts N``) against a single generation, with the same loopback latencies.

A loopback OpenAI-compatible server (tests/sse_server.py) streams every response — each of the N
candidates, and the single generation — as ``--tokens`` deltas at ``--rate`` per second (decode time
D = tokens / rate) after ``--first`` seconds, with a search tag and a chart tag spread through the text.
The helper calls of the enhancement (a query rewrite, a chart fix) are short replies (``--helper``
deltas); the polish rewrites one paragraph of three (``--polish full``: writes the whole document again). The
judge is a loopback non-streaming endpoint answering after ``--judge`` seconds; tools are in-process
fakes that answer after ``--latency`` L seconds — the search's titles make the rewritten query the better
match, and the chart fails once, so the fix loop runs.

It prints the wall time of

* ``single``: :func:`llmi.agenerate` — one response, tools run while it streams;
* ``tts N, sample→enhance``: :func:`llmi.tts` with ``stages=sample,check,select,enhance``;
* ``tts N, all five``: the same plus ``polish``;
* the same two with ``[tts] speculative = true`` (every candidate's tools run while it streams, so the
  winner's document is ready when selection ends — N times the tool calls);

each with its ratio to ``single`` and the calls, tokens and tool calls used, then the cost of every stage
of the full run. Goals (issue 12): sample→enhance ≤ 1.4× single, all five ≤ 2.4× single.

    python benchmarks/tts.py                    # N = 4, D = 4 s, L = 0.5 s, judge 0.3 s
    python benchmarks/tts.py --n 8 --tokens 800 --rate 100 --latency 1 --repeat 3

The server streams each candidate at the full rate whatever the number of concurrent streams; a real
server shares its decode capacity between them (vLLM's batching makes that cheap for small N, not free),
so on real hardware the sampling stage costs somewhat more than D.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmi.config import load_settings
from llmi.engine import Engine
from llmi.errors import ToolError
from llmi.generation import Trace, agenerate
from llmi.images import ImageData
from llmi.llm import create_llm
from llmi.tools import registry
from llmi.tools.base import Backend, BackendOptions, ToolRequest, ToolResult
from llmi.tts import tts
from llmi.tts.cost import Cost
from tests.helpers import loopback_server, make_png, send
from tests.sse_server import Script, SSEServer

PNG = ImageData.from_bytes(make_png(32, 32))
DESCRIPTION = "A red and white lighthouse on a rocky coast"
GOOD_QUERY = "red white lighthouse rocky coast"


class SleepOptions(BackendOptions):
    latency_s: float = 0.5


class SleepSearch(Backend):
    """A search whose result's title is its query (so a query naming the description matches it best)."""

    tool, name, Options = "search", "bench", SleepOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        await asyncio.sleep(self.options.latency_s)
        q = request.params["query"]
        return ToolResult(ImageData.from_bytes(make_png(32, 32, (len(q) * 7 % 255, 90, 90))), {"title": q})


class SleepCode(Backend):
    """A chart tool that fails on code containing ``broken`` (so the fix loop runs once)."""

    tool, name, Options = "code", "bench", SleepOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        await asyncio.sleep(self.options.latency_s)
        if "broken" in request.params["code"]:
            raise ToolError("NameError: name 'broken' is not defined (line 1)", kind="code_error")
        return ToolResult(PNG, {"model": "bench"})


def tag(source: str, **params) -> str:
    return "<imgen>" + json.dumps({"source": source, "description": DESCRIPTION if source == "search" else "Sales",
                                   "params": params}) + "</imgen>"


def response(n_tokens: int, seed: int | None) -> list[str]:
    """``n_tokens`` deltas of prose with a search tag at 1/3 and a chart tag at 2/3."""
    deltas = [f"word{i} " for i in range(n_tokens)]
    deltas[n_tokens // 3] += "\n" + tag("search", query="coast") + "\n"
    deltas[2 * n_tokens // 3] += "\n" + tag("code", code="broken()\nplt.bar([1, 2], [3, 4])") + "\n"
    deltas[0] = f"Candidate {seed}: " + deltas[0]
    return deltas


def policy(args: argparse.Namespace):
    def script(n: int, body: dict) -> Script:
        system = body["messages"][0]["content"]
        kw = {"delay_s": 1.0 / args.rate, "first_token_s": args.first}
        if "You improve image-search queries" in system:
            return Script(content=[GOOD_QUERY] + [" "] * (args.helper - 1), **kw)
        if "You fix Python chart code" in system:
            return Script(content=["```python\nplt.bar([1, 2], [3, 4])\n```"] + [" "] * (args.helper - 1), **kw)
        if "You revise an illustrated document" in system:
            user = body["messages"][-1]["content"]
            if isinstance(user, list):  # the images are attached: the text is the first part
                user = "".join(p.get("text", "") for p in user if p.get("type") == "text")
            m = re.search(r"<<<DOCUMENT (\w+)>>>\n(.*)\n<<<END DOCUMENT \1>>>", user, re.DOTALL)
            doc = m.group(2) if m else ""
            if args.polish == "full":  # the whole document again, as many deltas as it has words
                words = doc.split(" ")
            else:  # paragraph mode: the paragraph before the first image is rewritten, the rest kept
                words = next(p for p in doc.split("\n\n") if p.startswith("[[P")).replace("word1 ", "WORD1 ").split(" ")
            return Script(content=[w + " " for w in words], **kw)
        return Script(content=response(args.tokens, body.get("seed")), **kw)

    return script


def judge_handler(latency: float):
    def handle(req, h):
        if req.path.endswith("/models"):
            send(h, 200, json.dumps({"object": "list", "data": [{"id": "judge", "object": "model"}]}).encode())
            return
        time.sleep(latency)
        body = json.loads(req.body)
        text = body["messages"][-1]["content"]
        seed_grade = 5 if "Candidate 2:" in text else 3
        reply = f"Text: {seed_grade}\nImage: {seed_grade}"
        send(h, 200, json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 400, "completion_tokens": 6, "total_tokens": 406}}).encode())

    return handle


def settings_for(llm_url: str, judge_url: str, latency: float):
    return load_settings(environ={}, overrides={
        "llm": {"base_url": llm_url, "model": "bench", "max_tokens": 8192},
        "llm_judge": {"base_url": judge_url, "model": "judge", "retries": 0},
        "tools": {"search": {"backends": ["bench"]}, "code": {"backends": ["bench"], "retries": 0},
                  "diffusion": {"backends": []}, "edit": {"backends": []}},
        "backends": {"search": {"bench": {"latency_s": latency}}, "code": {"bench": {"latency_s": latency}}},
        "cache": {"enabled": False},
        "tts": {"enhance": {"search": {"rewrites": 1}}},
    })


async def measure(args: argparse.Namespace, settings) -> dict:
    out: dict[str, list] = {"single": [], "enhance": [], "polish": []}
    async with Engine(settings, cache=False) as engine:  # warm-up, not measured: connections, imports
        llm = create_llm(settings.llm)
        try:
            await agenerate("warm up", settings=settings, llm=llm, engine=engine)
        finally:
            await llm.aclose()
    for _ in range(args.repeat):
        async with Engine(settings, cache=False) as engine:
            llm = create_llm(settings.llm)
            try:
                t0 = time.perf_counter()
                trace = Trace()
                await agenerate("Write about the coast and sales.", settings=settings, llm=llm, engine=engine,
                                trace=trace)
                out["single"].append((time.perf_counter() - t0, trace.usage or {}))
                for key, stages, spec in (("enhance", "sample,check,select,enhance", False),
                                          ("polish", "sample,check,select,enhance,polish", False),
                                          ("spec_enhance", "sample,check,select,enhance", True),
                                          ("spec_polish", "sample,check,select,enhance,polish", True)):
                    settings.tts.speculative = spec
                    t0 = time.perf_counter()
                    result = await tts("Write about the coast and sales.", n=args.n, stages=stages,
                                       settings=settings, llm=llm, engine=engine)
                    out.setdefault(key, []).append((time.perf_counter() - t0, result))
                settings.tts.speculative = False
            finally:
                await llm.aclose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=400, help="deltas per response")
    ap.add_argument("--rate", type=float, default=100.0, help="deltas per second")
    ap.add_argument("--first", type=float, default=0.2, help="seconds to the first delta")
    ap.add_argument("--helper", type=int, default=20, help="deltas of a helper reply (query rewrite, chart fix)")
    ap.add_argument("--latency", type=float, default=0.5, help="tool latency L (s)")
    ap.add_argument("--judge", type=float, default=0.3, help="judge latency (s)")
    ap.add_argument("--polish", choices=("paragraphs", "full"), default="paragraphs",
                    help="[tts] polish_mode; the fake rewrites one paragraph of three, or writes all again")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    registry.register(SleepSearch)
    registry.register(SleepCode)

    with SSEServer(policy(args)) as srv, loopback_server(judge_handler(args.judge)) as jurl:
        settings = settings_for(srv.base_url, jurl + "/v1", args.latency)
        settings.tts.polish_mode = args.polish
        res = asyncio.run(measure(args, settings))

    d = args.tokens / args.rate
    print(f"D = {args.tokens} deltas at {args.rate:g}/s = {d:.2f} s (+{args.first:g} s to the first), "
          f"tool latency L = {args.latency:g} s, judge {args.judge:g} s, helper replies {args.helper} deltas, "
          f"N = {args.n}, polish {args.polish}, median of {args.repeat}")
    single = statistics.median(t for t, _ in res["single"])
    print(f"{'run':<26} {'wall':>7} {'/single':>8} {'calls':>6} {'tok in':>7} {'tok out':>8} {'tools':>6}  goal")
    print("-" * 80)
    usage = res["single"][-1][1]
    print(f"{'single generation':<26} {single:>6.2f}s {1.0:>8.3f} {1:>6} {usage.get('prompt_tokens', ''):>7} "
          f"{usage.get('completion_tokens', ''):>8} {2:>6}")
    ok = True
    for key, label, goal in (("enhance", f"tts {args.n}: sample→enhance", 1.4), ("polish", f"tts {args.n}: all five", 2.4),
                             ("spec_enhance", "  speculative: →enhance", 1.4), ("spec_polish", "  speculative: all five", 2.4)):
        wall = statistics.median(t for t, _ in res[key])
        result = res[key][-1][1]
        tot: Cost = result.total
        ratio = wall / single
        met = ratio <= goal
        ok &= met
        print(f"{label:<26} {wall:>6.2f}s {ratio:>8.3f} {tot.llm_calls:>6} {tot.tokens_in:>7} {tot.tokens_out:>8} "
              f"{tot.n_tool_calls:>6}  {'ok' if met else 'MISSED'} (<= {goal}x)")
    full = res["polish"][-1][1]
    print(f"\nper stage of the full run (winner #{full.winner}, cut: {full.cut or 'none'}):")
    print(f"{'stage':<8} {'status':<9} {'calls':>6} {'tok in':>7} {'tok out':>8} {'tools':<18} {'seconds':>8}")
    for s in full.stages:
        c = s.cost
        tools = " ".join(f"{k} {v}" for k, v in sorted(c.tool_calls.items())) or "-"
        print(f"{s.name:<8} {s.status:<9} {c.llm_calls:>6} {c.tokens_in:>7} {c.tokens_out:>8} {tools:<18} {c.seconds:>8.2f}")
    enh = {w["slot"]: w["action"] for w in full.stage("enhance").detail.get("work", [])}
    pol = full.stage("polish").detail
    ahead = ", ".join(f"{a['ask']} (slot {a['slot']})" for a in full.stage("enhance").detail.get("asked_ahead", []))
    print(f"enhance: {enh}; asked while the winner's tools ran: {ahead or 'nothing'}; polish: {pol.get('result')}"
          + (f" ({pol['why']})" if pol.get("why") else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
