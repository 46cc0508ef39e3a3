"""Benchmark registry: the single source of benchmark names.

Benchmarks are found through the ``llmi.benchmarks`` entry-point group (``"name" = "module:Class"``);
llmi's own four are declared in its ``pyproject.toml`` exactly as a plugin declares its own. A module is
imported only when its benchmark is used. Tests and embedding code may also :func:`register` a class.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..errors import ConfigError
from .base import Benchmark

GROUP = "llmi.benchmarks"

_registered: dict[str, type[Benchmark]] = {}
_entry_points: dict[str, str] | None = None


def _load_entry_points() -> dict[str, str]:
    global _entry_points
    if _entry_points is None:
        _entry_points = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return _entry_points


def register(cls: type[Benchmark]) -> type[Benchmark]:
    """Register a benchmark class (usable as a decorator); replaces one of the same name."""
    if not isinstance(cls, type) or not issubclass(cls, Benchmark) or not getattr(cls, "name", None):
        raise ConfigError(f"{cls!r} must be a Benchmark subclass with a name")
    _registered[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> list[str]:
    """Every benchmark name known."""
    return sorted(set(_registered) | set(_load_entry_points()))


def get(name: str) -> type[Benchmark]:
    """The benchmark class called ``name``; a ConfigError listing the known ones otherwise."""
    if name in _registered:
        return _registered[name]
    target = _load_entry_points().get(name)
    if target is None:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(names()) or 'none'}")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"benchmark {name!r} cannot be imported: {exc}") from exc
    return cls
