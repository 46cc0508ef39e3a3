"""Streaming execution vs "generate first, then run the tools".

A loopback OpenAI-compatible server (tests/sse_server.py) streams a response of ``--tokens`` deltas at
``--rate`` deltas per second — decode time D = tokens / rate — with ``--tags`` tags spread through it, the
last one closing right at the end. Every tool is a fake backend that answers after ``--latency`` L
seconds. For each scenario it prints the wall time of

* ``llmi``: :func:`llmi.agenerate` — tools start as their tags close, while the model keeps writing;
* ``after``: stream the whole response first, then ``engine.run_response`` (tools run concurrently);

side by side with the bound: D + L for independent tags (the last tag cannot start before D), and
D + (k+1)·L for an edit chain of depth k at the end (a search, then k edits each needing the previous
image). Goal: llmi ≤ bound + 5 %.

    python benchmarks/streaming.py                       # defaults: 8 tags, D = 2 s, L = 1 s, k = 3
    python benchmarks/streaming.py --tags 16 --rate 50 --latency 0.5 --chain 5 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmi.config import load_settings  # noqa: E402
from llmi.engine import Engine  # noqa: E402
from llmi.generation import Trace, agenerate  # noqa: E402
from llmi.images import ImageData  # noqa: E402
from llmi.llm import create_llm  # noqa: E402
from llmi.tools import registry  # noqa: E402
from llmi.tools.base import Backend, BackendOptions, ToolRequest, ToolResult  # noqa: E402
from tests.helpers import make_png  # noqa: E402
from tests.sse_server import Script, SSEServer  # noqa: E402

PNG = ImageData.from_bytes(make_png(32, 32))


class SleepOptions(BackendOptions):
    latency_s: float = 1.0


class _Sleep(Backend):
    Options = SleepOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        await asyncio.sleep(self.options.latency_s)
        return ToolResult(PNG, {"model": "sleep"})


class SleepSearch(_Sleep):
    tool, name = "search", "sleep"


class SleepCode(_Sleep):
    tool, name = "code", "sleep"


class SleepEdit(_Sleep):
    tool, name = "edit", "sleep"


def tag(source: str, **params) -> str:
    return "<imgen>" + json.dumps({"source": source, "description": f"a {source} image", "params": params}) + "</imgen>"


def response_deltas(n_tokens: int, tags: list[str]) -> list[str]:
    """``n_tokens`` deltas of prose; tag i is the delta right after token (i+1)·n/len(tags), so the last
    tag closes at the very end of the decode."""
    deltas = [f"word{i} " for i in range(n_tokens)]
    if not tags:
        return deltas
    step = n_tokens / len(tags)
    for i, t in enumerate(tags):
        pos = min(n_tokens - 1, round((i + 1) * step) - 1)
        deltas[pos] = deltas[pos] + "\n" + t + "\n"
    return deltas


def scenario_tags(kind: str, n: int, k: int) -> list[str]:
    if kind == "independent":
        return [tag("search", query=f"q{i}") if i % 2 else tag("code", code=f"plt.plot([{i}])") for i in range(n)]
    # n - k - 1 independent tags, then a search and k edits each of the previous image, at the end
    head = [tag("code", code=f"plt.plot([{i}])") for i in range(max(0, n - k - 1))]
    first = len(head)
    chain = [tag("search", query="base")] + [tag("edit", img_index=first + j, prompt=f"step {j}") for j in range(k)]
    return head + chain


def settings_for(url: str, latency: float, n: int):
    tools = {t: {"backends": ["sleep"], "concurrency": max(1, n), "retries": 0} for t in ("search", "code", "edit")}
    return load_settings(overrides={
        "llm": {"base_url": url, "model": "bench", "max_tokens": None},
        "tools": {**tools, "diffusion": {"backends": []}},
        "backends": {t: {"sleep": {"latency_s": latency}} for t in ("search", "code", "edit")},
        "cache": {"enabled": False},
    }, environ={})


async def run_llmi(settings) -> tuple[float, float, int]:
    trace = Trace()
    t0 = time.perf_counter()
    doc = await agenerate("bench", settings=settings, cache=False, trace=trace)
    return time.perf_counter() - t0, trace.timings["llm_done_s"], len(doc.images)


async def _generate_text(engine: Engine, settings) -> str:
    from llmi.prompting import build_messages, build_system_prompt

    llm = create_llm(settings.llm)
    try:
        messages = build_messages("bench", build_system_prompt(engine.usable_tools()))
        return "".join([d async for d in llm.stream(messages)])
    finally:
        await llm.aclose()


async def run_after(settings) -> float:
    """The whole response first, then all its tools at once."""
    t0 = time.perf_counter()
    async with Engine(settings, cache=False) as engine:
        text = await _generate_text(engine, settings)
        doc = await engine.run_response(text)
    assert len(doc.images) == len(doc.slots)
    return time.perf_counter() - t0


async def run_one_by_one(settings) -> float:
    """The whole response first, then each tool in turn (how a simple post-processing loop does it)."""
    from llmi.protocol import parse_response

    t0 = time.perf_counter()
    async with Engine(settings, cache=False) as engine:
        text = await _generate_text(engine, settings)
        images = []
        for call in parse_response(text).calls:
            dep = call.depends_on
            block = await engine.execute(call, images[dep] if dep is not None else None)
            images.append(block.image)
    return time.perf_counter() - t0


async def measure(kind: str, args) -> dict:
    tags = scenario_tags(kind, args.tags, args.chain)
    deltas = response_deltas(args.tokens, tags)
    delay = 1.0 / args.rate
    D = args.tokens * delay
    L = args.latency
    extra_l = L if kind == "independent" else (args.chain + 1) * L
    out: dict[str, list[float]] = {"llmi": [], "after": [], "one_by_one": [], "decode": [], "tail": []}
    with SSEServer(Script(content=deltas, delay_s=delay)) as srv:
        settings = settings_for(srv.base_url, L, len(tags))
        await run_llmi(settings)  # warm-up: imports, first connection
        for _ in range(args.repeat):
            wall, dec, n_img = await run_llmi(settings)
            assert n_img == len(tags), f"llmi produced {n_img}/{len(tags)} images"
            out["llmi"].append(wall)
            out["decode"].append(dec)
            out["tail"].append(wall - dec)
            out["after"].append(await run_after(settings))
            if not args.no_one_by_one:
                out["one_by_one"].append(await run_one_by_one(settings))
    med = {k: statistics.median(v) if v else float("nan") for k, v in out.items()}
    return {"kind": kind if kind == "independent" else f"edit chain k={args.chain}", "n": len(tags), "D": D,
            "L": L, "bound": D + extra_l, "extra_l": extra_l, **med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tags", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=400, help="deltas in the response")
    ap.add_argument("--rate", type=float, default=100.0, help="deltas per second")
    ap.add_argument("--latency", type=float, default=2.0, help="each tool's latency L (s)")
    ap.add_argument("--chain", type=int, default=3, help="edit chain depth k")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-one-by-one", action="store_true", help="skip the slow one-tool-at-a-time baseline")
    args = ap.parse_args()
    for cls in (SleepSearch, SleepCode, SleepEdit):
        registry.register(cls)

    rows = [asyncio.run(measure("independent", args)), asyncio.run(measure("chain", args))]
    print(f"D = {args.tokens} deltas at {args.rate:g}/s = {args.tokens / args.rate:.2f} s, tool latency L = "
          f"{args.latency:g} s, tags spread evenly (the last closes at the end), median of {args.repeat} run(s)")
    head = (f"{'scenario':<17}{'tags':>5}{'bound':>8}{'llmi':>8}{'/bound':>7}{'after':>8}{'/bound':>7}"
            f"{'1-by-1':>8}{'/bound':>7}  {'D seen':>7}{'tail':>7}  goal")
    print(head)
    print("-" * len(head))
    for r in rows:
        ok = r["llmi"] <= r["bound"] * 1.05
        print(f"{r['kind']:<17}{r['n']:>5}{r['bound']:>7.2f}s{r['llmi']:>7.2f}s{r['llmi'] / r['bound']:>7.3f}"
              f"{r['after']:>7.2f}s{r['after'] / r['bound']:>7.3f}{r['one_by_one']:>7.2f}s"
              f"{r['one_by_one'] / r['bound']:>7.3f}  {r['decode']:>6.2f}s{r['tail']:>6.2f}s  "
              f"{'ok' if ok else 'MISSED'} (llmi <= 1.05 x bound)")
    print("bound: D + L for independent tags, D + (k+1)·L for a search plus k chained edits closing at the end.\n"
          "after: whole response first, then all tools concurrently; 1-by-1: whole response, then one tool at a\n"
          "time. D seen: llmi's time to the end of the stream (includes start-up); tail: llmi's wait after it.")


if __name__ == "__main__":
    main()
