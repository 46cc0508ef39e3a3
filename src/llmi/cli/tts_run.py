"""``llmi generate --tts N``: test-time scaling from the command line (called by :mod:`.generate`).

stderr shows one line per stage and per candidate / slot as the run goes (live in a terminal, one line
per finished item into a pipe or file), plus the winner's tool lines; the final document's text goes to
stdout at the end (the candidates are written in parallel, so there is no single stream to echo). The
summary names the winner, the cost of the whole run and any stage the budget cut. ``--trace`` saves the
test-time-scaling trace (every candidate, check, verdict, enhancement and cost) as ``OUT.trace.json``.

Exit codes as for ``llmi generate``: 0 written (also when the budget cut stages: the best document so
far is written and the cut stages are named); 2 nothing produced (no candidate could be sampled, or the
budget allowed none).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ..events import Stage
from .common import console, info, warn

_MARK = {"started": "⏳", "finished": "✔", "skipped": "·", "cut": "✂"}
_STYLE = {"started": "yellow", "finished": "green", "skipped": "dim", "cut": "magenta"}


def _clip(s: Any, n: int = 70) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def describe(ev: Stage) -> tuple[tuple, str]:
    """A stage event as ``(line key, text)``: one key per stage, per candidate, per slot."""
    d, name = ev.detail, ev.name
    cost = ""
    if ev.cost and ev.status != "started":
        from ..tts.cost import Cost

        cost = "  (" + Cost.from_dict(ev.cost).summary() + ")"
    if "candidate" in d and name in ("sample", "check"):
        head = f"{name:<8} #{d['candidate']}"
        if name == "sample":
            head += f" t={d.get('temperature')} seed={d.get('seed')}"
            if ev.status == "started":
                return (name, d["candidate"]), head + "  writing"
            body = f"error: {_clip(d['error'])}" if d.get("error") else f"{d.get('tags', 0)} tag(s), {d.get('chars', 0)} chars"
            return (name, d["candidate"]), f"{head}  {body}{cost}"
        problems = "; ".join(d.get("problems") or []) or "clean"
        verdict = "kept" if d.get("kept") else "dropped"
        return (name, d["candidate"]), f"{head}  {verdict}: {_clip(problems, 90)}"
    if "slot" in d and name == "enhance":
        head = f"enhance  slot {d['slot']} {d.get('tool', '')}"
        if ev.status == "started":
            return (name, "slot", d["slot"]), head + "  working"
        why = f": {_clip(d['why'])}" if d.get("why") else ""
        return (name, "slot", d["slot"]), f"{head}  {d.get('action', '')}{why}{cost}"
    head = f"{name:<8}"
    if ev.status == "started":
        return (name,), head + "  running"
    if ev.status in ("skipped", "cut"):
        return (name,), f"{head}  {ev.status}: {_clip(d.get('why', ''), 100)}{cost}"
    body = {
        "sample": lambda: f"{d.get('ok', 0)} of {d.get('asked', 0)} candidate(s)"
                          + (f", {d['reduced_by_budget']} not sampled (budget)" if d.get("reduced_by_budget") else ""),
        "check": lambda: f"kept {d.get('kept')}, dropped {d.get('dropped')}",
        "select": lambda: f"winner #{d.get('winner')} — {_clip(d.get('decided_by', ''), 80)}",
        "execute": lambda: f"{d.get('images', 0)} of {d.get('slots', 0)} image(s)" + (f" ({d['reused']})" if d.get("reused") else ""),
        "enhance": lambda: ", ".join(f"{k} {d[k]}" for k in ("replaced", "kept", "skipped", "cut") if d.get(k)) or "nothing to do",
        "polish": lambda: _clip(d.get("result", "") + (f" ({d['why']})" if d.get("why") else ""), 100),
    }.get(name, lambda: "")()
    return (name,), f"{head}  {body}{cost}"


class StageProgress:
    """Stage, candidate, slot and tool lines on stderr (see the module doc)."""

    def __init__(self, out: Console, *, n_inputs: int = 0):
        self.console = out
        self.live_mode = out.is_terminal
        self.n_inputs = n_inputs
        self.lines: dict[tuple, tuple[str, str]] = {}
        self._live: Live | None = None

    def __enter__(self) -> StageProgress:
        if self.live_mode:
            self._live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def _render(self) -> Group:
        return Group(*(Text(f"{_MARK.get(st, '?')} {text}", style=_STYLE.get(st, "")) for st, text in self.lines.values()))

    def _put(self, key: tuple, status: str, text: str) -> None:
        self.lines[key] = (status, text)
        if self._live is not None:
            self._live.update(self._render())
        elif status != "started":
            self.console.print(f"{_MARK.get(status, '?')} {text}", highlight=False, markup=False, soft_wrap=True)

    def handle(self, ev: Any) -> None:
        if isinstance(ev, Stage):
            key, text = describe(ev)
            self._put(key, ev.status, text)
        elif getattr(ev, "type", "") == "tool_started":
            self._put(("tool", ev.index), "started", f"  [{ev.index + self.n_inputs}] {ev.source:<9} {_clip(ev.description, 50)}")
        elif getattr(ev, "type", "") == "tool_finished":
            b = ev.block
            ok = getattr(b, "type", "") == "image"
            text = f"  [{ev.index + self.n_inputs}] {b.tool:<9} {_clip(b.description, 50)}  " + (
                f"done in {ev.elapsed_s:.1f} s" if ok else f"failed: {_clip(getattr(b, 'reason', ''), 100)}")
            self._put(("tool", ev.index), "finished" if ok else "cut", text)


def generate_with_tts(
    prompt: str,
    images: list[Path],
    settings: Any,
    output: Path,
    *,
    n: int | None,
    stages: str | None,
    budget: str | None,
    trace_path: Path | None,
    title: str | None,
    quiet: bool,
    seed: int | None = None,
    temperature: float | None = None,
) -> None:
    """Run :func:`llmi.tts` for the CLI, write the document (and trace), print the summary. ``seed`` is
    candidate 0's seed (candidate i gets seed + i); ``temperature`` (``--temperature``) is used for every
    candidate instead of the ``[tts] temperatures`` schedule."""
    from ..generation import load_images
    from ..render import write_document
    from ..request import Request, Sampling
    from ..tts import tts

    loaded = load_images(images, max_pixels=settings.images.max_pixels)
    request = Request(prompt, images=tuple(loaded), sampling=Sampling(seed=seed, temperature=temperature))
    t0 = time.perf_counter()
    with StageProgress(console, n_inputs=len(loaded)) as progress:
        result = asyncio.run(tts(request, n=n, stages=stages, budget=budget, settings=settings,
                                 on_event=progress.handle))
    doc = result.document
    if trace_path is not None:
        trace_path.parent.mkdir(parents=True, exist_ok=True)
        trace_path.write_text(json.dumps({"prompt": prompt, "tts": result.trace}, ensure_ascii=False, indent=2,
                                         default=str) + "\n", encoding="utf-8", errors="replace")
    path = write_document(doc, output, prompt=prompt, title=title)
    if not quiet and doc.text:
        sys.stdout.write(doc.text if doc.text.endswith("\n") else doc.text + "\n")
        sys.stdout.flush()
    total = result.total
    info(f"wrote {path}: {len(doc.images)} image(s), {len(doc.failures)} failure(s) in {time.perf_counter() - t0:.1f} s"
         f" — tts {len(result.candidates)}: winner #{result.winner}, {total.summary()}")
    if trace_path is not None:
        info(f"trace: {trace_path}")
    if result.cut:
        why = "; ".join(f"{s} ({result.stage(s).detail.get('resource', '?')})" for s in result.cut)
        warn(f"the budget ({budget or settings.tts.budget or 'none'}) cut: {why}; the best document so far was written")
