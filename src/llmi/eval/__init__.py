"""``llmi eval``: the LLM-I paper's benchmarks (LLMI-Bench, OpenING, ISG-Bench, the in-domain test set) for
any model llmi can drive and any OpenAI-compatible judge — resumable, with reports.

One module per benchmark behind one interface (:class:`~llmi.eval.base.Benchmark`), registered under the
``llmi.benchmarks`` entry-point group (:mod:`llmi.eval.registry`); :func:`~llmi.eval.runner.run_eval` runs
one, :func:`~llmi.eval.compare.run_compare` compares two runs. Importing this package is cheap (the config
module imports :mod:`.settings` from it); the names below load on first use.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Benchmark": "llmi.eval.base",
    "Item": "llmi.eval.base",
    "Judged": "llmi.eval.base",
    "Verdict": "llmi.eval.base",
    "JudgeCalls": "llmi.eval.base",
    "EvalJudgeSettings": "llmi.eval.settings",
    "EvalJudge": "llmi.eval.judge",
    "EvalConfig": "llmi.eval.runner",
    "run_eval": "llmi.eval.runner",
    "generate_item": "llmi.eval.generate",
    "run_compare": "llmi.eval.compare",
    "win_rates": "llmi.eval.compare",
    "mean_ci": "llmi.eval.stats",
    "write_report": "llmi.eval.report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmi.eval' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
