"""Means with 95 % bootstrap intervals (percentile method), pure Python, reproducible by seed.

A benchmark score is the mean over items; its interval says how much that mean would move on another
draw of items of the same kind: resample the items with replacement ``n_boot`` times, take each
resample's mean, and report the 2.5th and 97.5th percentiles of those means. With fewer than two items
there is nothing to resample and the interval is ``None``.

>>> ci = mean_ci([0.0, 1.0, 1.0, 1.0], seed=1)
>>> ci["mean"], ci["n"]
(0.75, 4)
>>> 0.0 <= ci["low"] <= ci["mean"] <= ci["high"] <= 1.0
True
"""

from __future__ import annotations

import math
import random
from typing import Iterable, Sequence

DEFAULT_BOOT = 2000


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi:
        return sorted_values[lo]
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_means(values: Sequence[float], *, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> list[float]:
    """``n_boot`` means of resamples (with replacement) of ``values``, sorted."""
    n = len(values)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with the code extra
        np = None
    if np is not None and n * n_boot > 20_000:
        arr = np.asarray(values, dtype=float)
        gen = np.random.default_rng(seed)
        out_np = []
        for start in range(0, n_boot, 200):
            idx = gen.integers(0, n, size=(min(200, n_boot - start), n))
            out_np.extend(arr[idx].mean(axis=1).tolist())
        return sorted(out_np)
    rng = random.Random(seed)
    rand = rng.random
    out = []
    for _ in range(n_boot):
        s = 0.0
        for _ in range(n):
            s += values[int(rand() * n)]
        out.append(s / n)
    out.sort()
    return out


def mean_ci(values: Iterable[float | None], *, level: float = 0.95, n_boot: int = DEFAULT_BOOT, seed: int = 0,
            scale: float = 1.0) -> dict:
    """``{"mean", "low", "high", "n"}`` for the non-None ``values`` (each multiplied by ``scale``).

    ``mean`` is None when there is no value; ``low``/``high`` are None with fewer than two values.
    """
    vals = [float(v) * scale for v in values if v is not None]
    n = len(vals)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    m = sum(vals) / n
    if n < 2:
        return {"mean": m, "low": None, "high": None, "n": n}
    if min(vals) == max(vals):
        return {"mean": m, "low": m, "high": m, "n": n}
    means = bootstrap_means(vals, n_boot=n_boot, seed=seed)
    alpha = (1.0 - level) / 2
    return {"mean": m, "low": _percentile(means, alpha), "high": _percentile(means, 1 - alpha), "n": n}


def paired_diff_ci(a: Sequence[float], b: Sequence[float], **kw) -> dict:
    """The interval of ``mean(a - b)`` over paired items (same items judged for two runs)."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    return mean_ci([x - y for x, y in zip(a, b)], **kw)


def rounded(ci: dict, digits: int = 4) -> dict:
    """``ci`` with its numbers rounded (for JSON summaries)."""
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in ci.items()}


def fmt_ci(ci: dict | None, digits: int = 2) -> str:
    """``"7.31 [6.90, 7.70] (n=120)"``; ``"–"`` when there is no mean."""
    if not ci or ci.get("mean") is None:
        return "–"
    text = f"{ci['mean']:.{digits}f}"
    if ci.get("low") is not None:
        text += f" [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"
    return text + f" (n={ci['n']})"


def bootstrap_ci(units: Sequence, statistic, *, level: float = 0.95, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> dict:
    """``{"mean", "low", "high", "n"}`` of ``statistic(units)`` with a percentile interval over resamples of
    the units (items) — for scores that are not a plain mean of item scores, such as OpenING's overall
    score (the mean of the criterion means). ``statistic`` returns None when a resample has no value."""
    n = len(units)
    point = statistic(list(units)) if n else None
    if point is None:
        return {"mean": None, "low": None, "high": None, "n": n}
    if n < 2:
        return {"mean": point, "low": None, "high": None, "n": n}
    rng = random.Random(seed)
    stats = []
    for _ in range(n_boot):
        value = statistic([units[int(rng.random() * n)] for _ in range(n)])
        if value is not None:
            stats.append(value)
    if not stats:
        return {"mean": point, "low": None, "high": None, "n": n}
    stats.sort()
    alpha = (1.0 - level) / 2
    return {"mean": point, "low": _percentile(stats, alpha), "high": _percentile(stats, 1 - alpha), "n": n}


def mean_of_means_ci(rows: Sequence[Sequence[float | None]], *, level: float = 0.95, n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """The interval of the mean of column means (each column's mean over the rows where it is not None),
    over resamples of the rows: OpenING's overall score (criteria are columns, items rows)."""

    def stat(sample: Sequence[Sequence[float | None]]) -> float | None:
        if not sample:
            return None
        cols = []
        for j in range(len(sample[0])):
            vals = [r[j] for r in sample if r[j] is not None]
            if vals:
                cols.append(sum(vals) / len(vals))
        return sum(cols) / len(cols) if cols else None

    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with the code extra
        return bootstrap_ci(rows, stat, level=level, n_boot=n_boot, seed=seed)
    n = len(rows)
    point = stat(rows)
    if point is None or n < 2:
        return {"mean": point, "low": None, "high": None, "n": n}
    m = np.array([[np.nan if v is None else float(v) for v in r] for r in rows], dtype=float)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, 100):
        idx = rng.integers(0, n, size=(min(100, n_boot - start), n))
        sample = m[idx]  # (b, n, c)
        ok = np.isfinite(sample)
        counts = ok.sum(axis=1)  # (b, c)
        sums = np.where(ok, sample, 0.0).sum(axis=1)
        col = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
        have = np.isfinite(col)
        ncol = have.sum(axis=1)
        tot = np.where(have, col, 0.0).sum(axis=1)
        out.extend(np.divide(tot, ncol, out=np.full(tot.shape, np.nan), where=ncol > 0).tolist())
    vals = sorted(v for v in out if v == v)
    alpha = (1.0 - level) / 2
    return {"mean": point, "low": _percentile(vals, alpha), "high": _percentile(vals, 1 - alpha), "n": n}
