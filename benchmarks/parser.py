"""Tag parsing stays linear: long tags streamed in small chunks, and hostile payloads.

Prints, side by side in one run:

* a ``--mb`` MB code tag fed to :class:`llmi.protocol.StreamParser` in ``--chunk``-character pieces against
  as much plain text fed the same way (goal: ratio ≤ 2; before the fix the tag cost 9× the text, and grew
  quadratically);
* ``parse_response`` of ``<imgen>```json`` + N newlines + ``{}</imgen>`` for N and 4N (goal: ratio ≤ 6,
  linear is ~4; the old fence regex took 18 s at N = 3,000);
* a whole response of many tags in the LLM-I release's code layout, N and 4N.

Times are CPU seconds, best of ``--repeat`` with the garbage collector paused.

    python benchmarks/parser.py [--mb 2] [--chunk 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from llmi.protocol import parse_response  # noqa: E402
from tests.helpers import cpu_cost, fed_in_chunks  # noqa: E402


def code_tag(chars: int) -> str:
    line = "plt.plot([1, 2, 3], [4, 5, 6], marker='o')\n"
    code = (line * (chars // len(line) + 1))[:chars]
    return "<imgen>" + json.dumps({"source": "code", "description": "d", "params": {"code": code}}) + "</imgen>"


def release_tags(n: int) -> str:
    one = "<imgen>{'source': 'code', 'description': 'EV', 'params': {'code': 'plt.plot(x, marker='o')\\nplt.legend()'}}</imgen>\n"
    return one * n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=2.0, help="size of the streamed tag in MB")
    ap.add_argument("--chunk", type=int, default=16, help="characters per fed chunk")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = ap.parse_args()

    tag = code_tag(int(args.mb * 1_000_000))
    plain = "p" * len(tag)
    run = fed_in_chunks(args.chunk)
    t_tag, t_plain = cpu_cost(run, tag, args.repeat), cpu_cost(run, plain, args.repeat)
    print(f"{args.mb:g} MB tag in {args.chunk}-char chunks: {t_tag:.3f}s; as much plain text: {t_plain:.3f}s; "
          f"ratio {t_tag / t_plain:.2f} (goal <= 2)")

    for what, make, n in (
        ("fence + newlines", lambda k: "<imgen>```json" + "\n" * k + "{}</imgen>", 50_000),
        ("release-layout tags", release_tags, 2_000),
    ):
        small, large = cpu_cost(parse_response, make(n), args.repeat), cpu_cost(parse_response, make(4 * n), args.repeat)
        print(f"parse_response, {what}: N={n} {small:.4f}s, 4N {large:.4f}s; ratio {large / max(small, 1e-9):.2f} "
              "(goal <= 6, linear ~4)")


if __name__ == "__main__":
    main()
