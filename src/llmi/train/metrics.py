"""Per-step training metrics from the recorded reward batches (pure), the JSONL log and the plot.

One ``metrics.jsonl`` line per logged step holds at least ``step``, the mean ``reward`` and each
component (``s_num``, ``s_llm``, ``s_mllm``, ``r_tool`` and the judges' raw scores), the judge error
fractions, tool success per source (``tool_success/<source>`` = images made / tags asking for it),
the completion length (tokens and characters), the reward phase's wall time, and the trainer's own
numbers (loss, learning rate, grad norm, ...) under their names.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..protocol import SOURCES
from .reward import BatchRecord

log = logging.getLogger(__name__)

COMPONENTS = ("s_num", "s_llm", "s_mllm", "r_tool", "text", "image", "quality", "task_rel", "text_image_rel")
PLOTTED = ("reward", "s_num", "s_llm", "s_mllm", "r_tool")


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(sum(vals) / len(vals), 6) if vals else None


def step_metrics(batches: Sequence[BatchRecord]) -> dict[str, Any]:
    """Aggregates over every rollout of ``batches`` (the generation batches of one logged step)."""
    rollouts = [r for b in batches for r in b.rollouts]
    n = len(rollouts)
    out: dict[str, Any] = {"rollouts": n}
    if not n:
        return out
    results = [r.result for r in rollouts]
    out["reward"] = _mean(r.score for r in results)
    scores = [r.score for r in results if r.score is not None]
    if len(scores) > 1:
        m = sum(scores) / len(scores)
        out["reward_std"] = round(math.sqrt(sum((s - m) ** 2 for s in scores) / (len(scores) - 1)), 6)
    for key in COMPONENTS:
        out[key] = _mean(getattr(r, key) for r in results)
    out["dropped_frac"] = round(sum(r.dropped for r in results) / n, 6)
    llm_err = sum("llm_judge" in r.errors for r in results) / n
    mllm_err = sum("mllm_judge" in r.errors for r in results) / n
    out["llm_judge_error_frac"] = round(llm_err, 6)
    out["mllm_judge_error_frac"] = round(mllm_err, 6)
    out["judge_error_frac"] = round(sum(("llm_judge" in r.errors) or ("mllm_judge" in r.errors) for r in results) / n, 6)
    out["violations_per_rollout"] = round(sum(len(r.violations) for r in results) / n, 6)
    out["images_per_rollout"] = round(sum(r.n_images or 0 for r in results) / n, 6)
    totals = {s: 0 for s in SOURCES}
    success = {s: 0 for s in SOURCES}
    for r in rollouts:
        for source, st in (r.document.stats if r.document is not None else {}).items():
            totals[source] += st["total"]
            success[source] += st["success"]
    for s in SOURCES:
        out[f"tool_calls/{s}"] = totals[s]
        out[f"tool_success/{s}"] = round(success[s] / totals[s], 6) if totals[s] else None
    tokens = [r.completion_tokens for r in rollouts if r.completion_tokens is not None]
    out["completion_length"] = _mean(tokens) if tokens else None
    out["completion_chars"] = _mean(len(r.completion) for r in rollouts)
    out["reward_time_s"] = round(sum(b.elapsed_s for b in batches), 4)
    out["prompt_rows"] = sorted({r.row for r in rollouts if r.row is not None})
    return out


def trainer_numbers(logs: dict[str, Any]) -> dict[str, Any]:
    """The trainer's logged numbers, kept under their own names (ours win on a clash, e.g. ``reward``)."""
    out = {}
    for k, v in logs.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v if not (isinstance(v, float) and math.isnan(v)) else None
    return out


class MetricsLog:
    """``metrics.jsonl``: appended one line per logged step, flushed at once.

    :meth:`truncate_after` drops lines past a checkpoint's step, so a resumed run does not log a step
    twice (a crash may have logged steps after the last checkpoint).
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, line: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
            fh.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        log.warning("skipping a broken line in %s", self.path)
        return out

    def truncate_after(self, step: int) -> int:
        lines = self.read()
        keep = [l for l in lines if int(l.get("step", 0)) <= step]
        if len(keep) != len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                for l in keep:
                    fh.write(json.dumps(l, ensure_ascii=False, default=str) + "\n")
            os.replace(tmp, self.path)
        return len(lines) - len(keep)


def plot(lines: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """A PNG of the reward and its components over steps; ``None`` (logged) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no plot: matplotlib is not installed (pip install 'llmi[train]')")
        return None
    steps = [l["step"] for l in lines]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key in PLOTTED:
        pts = [(s, l.get(key)) for s, l in zip(steps, lines) if l.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                    linewidth=2.2 if key == "reward" else 1.2, label=key)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("value (all in [0, 1])")
    ax.set_title("llmi train: reward and components")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
