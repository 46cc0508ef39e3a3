"""Test-time scaling: sample N candidates, check their tags, select one, improve its tool calls, polish.

::

    result = await llmi.tts(request, n=4, budget="calls=40,seconds=120")
    result.document          # the final document
    result.trace             # what each stage did and why
    result.cost              # calls, tokens, tool calls and seconds per stage

Stages (each one module, each switchable): :mod:`.sample`, :mod:`.check`, :mod:`.select`,
:mod:`.enhance`, :mod:`.polish`; :mod:`.pipeline` runs them under a :class:`~.budget.Budget` and
reports every stage's :class:`~.cost.Cost`. The package is callable: ``llmi.tts(...)`` is
:func:`llmi.tts.pipeline.tts`. Defaults live in the ``[tts]`` table
(:class:`~.config.TTSSettings`). Importing this package is cheap: the names load on first use (and
:mod:`llmi.config` imports :mod:`.config` without pulling in the rest).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

_LAZY = {
    "tts": "llmi.tts.pipeline",
    "TTSResult": "llmi.tts.pipeline",
    "STAGES": "llmi.tts.pipeline",
    "stage_table": "llmi.tts.pipeline",
    "Budget": "llmi.tts.budget",
    "BudgetExhausted": "llmi.tts.budget",
    "Cost": "llmi.tts.cost",
    "TTSSettings": "llmi.tts.config",
}

__all__ = ["STAGES", "Budget", "BudgetExhausted", "Cost", "TTSResult", "TTSSettings", "stage_table", "tts"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmi.tts' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _CallablePackage(types.ModuleType):
    """``llmi.tts(...)`` is :func:`llmi.tts.pipeline.tts` while ``llmi.tts.Budget`` etc. stay reachable:
    the package is the function's name, so the package itself is callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .pipeline import tts

        return tts(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

if TYPE_CHECKING:  # pragma: no cover
    from .budget import Budget, BudgetExhausted
    from .config import TTSSettings
    from .cost import Cost
    from .pipeline import STAGES, TTSResult, stage_table, tts
