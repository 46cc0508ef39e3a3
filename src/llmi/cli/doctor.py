"""``llmi doctor``: which tools and backends are configured and usable, and what the sandbox can do."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from . import app
from .common import console, errors_as_exit, load, setup_logging

_STYLE = {"ok": "green", "missing_key": "yellow", "missing_dependency": "yellow", "unreachable": "red", "misconfigured": "red"}


@app.command("doctor")
def doctor_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config file (TOML)"),
    probe: bool = typer.Option(False, "--probe", help="also contact each configured service"),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Show the configuration: tools, their fallback chains, every backend's state, sandbox layers."""
    setup_logging(verbose)
    with errors_as_exit():
        settings = load(config)
        asyncio.run(_doctor(settings, probe))


async def _doctor(settings, probe: bool) -> None:
    from ..config import find_config_file
    from ..engine import Engine
    from ..protocol import SOURCES
    from ..tools import registry

    cfg = None
    try:
        cfg = find_config_file()
    except Exception:
        pass
    console.print(f"config file: {cfg or '(none; built-in defaults)'}")
    console.print(f"LLM: {settings.llm.backend} at {settings.llm.base_url or settings.llm.model_path} "
                  f"model={settings.llm.model or '(auto)'}", highlight=False)
    console.print(f"cache: {'off' if not settings.cache.enabled else settings.cache.resolved_path()}")

    table = Table(title="tools and backends")
    for col in ("tool", "backend", "in chain", "state", "detail"):
        table.add_column(col)
    async with Engine(settings, cache=False) as engine:
        for tool in SOURCES:
            try:
                chain = engine.chain(tool)
            except Exception as exc:
                table.add_row(tool, "-", "-", "[red]misconfigured[/]", str(exc))
                continue
            chained = [f"{t}:{n}" if t != tool else n for t, n in chain]
            names = [n for t, n in chain if t == tool] + [n for n in registry.names(tool) if n not in [x for _, x in chain]]
            for name in names:
                pos = chained.index(name) + 1 if name in chained else None
                if probe and pos:
                    try:
                        status = await asyncio.wait_for(engine.backend(tool, name).probe(), 20)
                    except Exception as exc:
                        from ..tools.base import BackendStatus

                        status = BackendStatus("unreachable", f"{type(exc).__name__}: {exc}")
                else:
                    status = engine.backend_status(tool, name)
                style = _STYLE.get(status.state, "white")
                table.add_row(tool, name, str(pos) if pos else "", f"[{style}]{status.state}[/]", status.detail)
            for entry in chained:
                if ":" in entry:
                    table.add_row(tool, entry, str(chained.index(entry) + 1), "fallback", "served by another tool")
        console.print(table)
        console.print("usable tools: " + (", ".join(engine.usable_tools()) or "none"))

    try:
        from ..tools.code.sandbox import sandbox_report
    except ImportError as exc:
        console.print(f"[yellow]sandbox: cannot inspect ({exc})[/]")
        return
    layers = Table(title="chart sandbox layers on this host")
    for col in ("layer", "active", "detail"):
        layers.add_column(col)
    for name, active, detail in sandbox_report():
        layers.add_row(name, "[green]yes[/]" if active else "[red]no[/]", detail)
    console.print(layers)
