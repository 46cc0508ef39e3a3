"""Backend registry: the single source of backend names.

Backends are found through the ``llmi.backends`` entry-point group, named ``"<tool>.<name>"``. The
built-in backends are declared in llmi's own ``pyproject.toml`` the same way a plugin declares its own,
so there is one path for both. Modules are imported only when a backend is used, which keeps
``import llmi`` fast. Tests and embedding code can also call :func:`register` directly.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..errors import ConfigError
from .base import Backend
from .spec import SOURCES

_registered: dict[tuple[str, str], type[Backend]] = {}
_entry_points: dict[tuple[str, str], str] | None = None

TOOLS = SOURCES  # the tool names, from the tool table


def _load_entry_points() -> dict[tuple[str, str], str]:
    global _entry_points
    if _entry_points is None:
        found: dict[tuple[str, str], str] = {}
        for ep in entry_points(group="llmi.backends"):
            tool, _, name = ep.name.partition(".")
            if tool in TOOLS and name:
                found[(tool, name)] = ep.value
        _entry_points = found
    return _entry_points


def register(cls: type[Backend]) -> type[Backend]:
    """Register a backend class (usable as a decorator). Replaces one of the same tool and name."""
    if getattr(cls, "tool", None) not in TOOLS or not getattr(cls, "name", None):
        raise ConfigError(f"{cls!r} must set tool (one of {TOOLS}) and name")
    _registered[(cls.tool, cls.name)] = cls
    return cls


def unregister(tool: str, name: str) -> None:
    _registered.pop((tool, name), None)


def names(tool: str) -> list[str]:
    """Every backend name known for ``tool``."""
    keys = set(_registered) | set(_load_entry_points())
    return sorted(n for t, n in keys if t == tool)


def get(tool: str, name: str) -> type[Backend]:
    """The backend class for ``tool``/``name``; a ConfigError naming the alternatives if unknown."""
    if (tool, name) in _registered:
        return _registered[(tool, name)]
    target = _load_entry_points().get((tool, name))
    if target is None:
        raise ConfigError(
            f"unknown {tool} backend {name!r}; known: {', '.join(names(tool)) or 'none'}"
        )
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"{tool} backend {name!r} cannot be imported: {exc}") from exc
    return cls
