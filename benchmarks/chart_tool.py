"""Chart tool speed: the warm sandboxed pool against a cold ``python -c`` per chart.

The reference release renders each chart with a fresh ``python -c`` (no sandbox): most of its time is
importing matplotlib, pandas, seaborn and numpy. llmi forks a sandboxed child from a warm worker instead.
This prints p50/p95 per chart for both paths, side by side in one run, their ratio (goal: >= 10 on a
2-core machine), and the throughput of the warm path with 2 and 8 charts in flight.

    python benchmarks/chart_tool.py [--cold N] [--warm N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

from llmi.config import Settings
from llmi.tools.base import BackendContext, ToolRequest
from llmi.tools.code.backend import SandboxChartBackend, SandboxOptions

CHARTS = [
    "plt.plot([1, 2, 3, 4], [3, 1, 4, 2], marker='o')\nplt.title('Line')",
    "plt.bar(['一月', '二月', '三月'], [120, 95, 140])\nplt.title('月度销售额')\nplt.ylabel('万元')",
    "df = pd.DataFrame({'x': np.arange(50), 'y': np.sin(np.arange(50) / 5)})\nsns.lineplot(data=df, x='x', y='y')",
    "df = pd.DataFrame({'a': [3, 5, 2], 'b': [1, 2, 4]}, index=['Q1', 'Q2', 'Q3'])\ndf.plot(kind='bar')\n"
    "plt.title('Quarterly')",
]

COLD_PRELUDE = (
    "import io, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nimport pandas as pd\n"
    "import seaborn as sns\nimport numpy as np\n"
)
COLD_EPILOGUE = "\nbuf = io.BytesIO()\nplt.gcf().savefig(buf, format='png', dpi=150, bbox_inches='tight')\n"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def cold(n: int) -> list[float]:
    times = []
    for i in range(n):
        code = COLD_PRELUDE + CHARTS[i % len(CHARTS)] + COLD_EPILOGUE
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return times


async def warm(n: int, backend: SandboxChartBackend) -> list[float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        await backend.run(ToolRequest(tool="code", params={"code": CHARTS[i % len(CHARTS)]}))
        times.append(time.perf_counter() - t)
    return times


async def throughput(backend: SandboxChartBackend, concurrency: int, total: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await backend.run(ToolRequest(tool="code", params={"code": CHARTS[i % len(CHARTS)]}))

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    return total / (time.perf_counter() - t)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cold", type=int, default=12, help="cold charts (each ~1 s)")
    ap.add_argument("--warm", type=int, default=60, help="warm charts")
    args = ap.parse_args()

    settings = Settings()
    backend = SandboxChartBackend(SandboxOptions(), BackendContext(settings=settings, http=None, fetcher=None))
    status = backend.status()
    print(f"sandbox: {status.state}: {status.detail}")
    try:
        t = time.perf_counter()
        first = await backend.run(ToolRequest(tool="code", params={"code": CHARTS[0]}))
        start = time.perf_counter() - t
        print(f"first chart (starts a worker): {start * 1000:.0f} ms; layers: {first.provenance['sandbox_layers']}; "
              f"font: {first.provenance['font']}")
        await warm(len(CHARTS), backend)  # every chart once more before timing
        w = await warm(args.warm, backend)
        c = cold(args.cold)
        wp50, wp95, cp50, cp95 = pct(w, 0.5), pct(w, 0.95), pct(c, 0.5), pct(c, 0.95)
        print()
        print(f"{'per chart':<34}{'p50 ms':>10}{'p95 ms':>10}{'n':>6}")
        print(f"{'cold python -c (no sandbox)':<34}{cp50 * 1000:>10.0f}{cp95 * 1000:>10.0f}{len(c):>6}")
        print(f"{'warm pool, sandboxed':<34}{wp50 * 1000:>10.0f}{wp95 * 1000:>10.0f}{len(w):>6}")
        print(f"{'ratio cold/warm':<34}{cp50 / wp50:>10.1f}{cp95 / wp95:>10.1f}")
        print(f"goal p50 ratio >= 10: {'met' if cp50 / wp50 >= 10 else 'NOT met'}")
        print()
        await throughput(backend, settings.sandbox.workers, 2 * settings.sandbox.workers)  # start every worker
        for conc in (2, 8):
            rate = await throughput(backend, conc, max(16, 4 * conc))
            print(f"throughput, {conc} charts in flight ({settings.sandbox.workers} workers): {rate:.1f} charts/s")
        print(f"cold python -c, sequential: {1 / statistics.mean(c):.1f} charts/s")
    finally:
        await backend.aclose()


if __name__ == "__main__":
    asyncio.run(main())
