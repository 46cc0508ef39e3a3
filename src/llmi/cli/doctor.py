"""``llmi doctor``: which tools and backends are configured and usable, and what the sandbox can do.

The output has to stay readable on an 80-column terminal and in a pipe or log file: tables have no
side borders (nothing to break when a long detail wraps), details fold instead of being cut with "…",
and every text that came from a backend or the config is printed as plain text, never as Rich markup.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from . import app
from .common import console, errors_as_exit, info, load, setup_logging, warn

_STYLE = {
    "ok": "green",
    "fallback": "green",
    "missing_key": "yellow",
    "missing_dependency": "yellow",
    "unreachable": "red",
    "misconfigured": "red",
}
#: How long one live probe may take. Probes run concurrently, so --probe finishes in about this long.
PROBE_TIMEOUT_S = 8.0


@app.command("doctor")
def doctor_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="TOML", help="config file"),
    probe: bool = typer.Option(
        False, "--probe", help=f"also contact each service in a chain (at most {PROBE_TIMEOUT_S:.0f} s)"
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="log what the probes do"),
) -> None:
    """Show the configuration: tools, their fallback chains, every backend's state, sandbox layers."""
    setup_logging(verbose)
    with errors_as_exit():
        settings = load(config)
        asyncio.run(_doctor(settings, probe, config))


async def _probe(engine, tool: str, name: str):
    from ..tools.base import BackendStatus

    try:
        return await asyncio.wait_for(engine.backend(tool, name).probe(), PROBE_TIMEOUT_S)
    except asyncio.TimeoutError:
        return BackendStatus("unreachable", f"no answer within {PROBE_TIMEOUT_S:.0f} s")
    except Exception as exc:  # a probe must never take doctor down
        return BackendStatus("unreachable", f"{type(exc).__name__}: {exc}".rstrip(": "))


def cjk_font_status() -> tuple[bool, str, str]:
    """``(ok, line, advice)``: which font Chinese, Japanese and Korean text in charts gets — the same lookup
    the chart worker makes (:func:`llmi.tools.code.worker.find_cjk_font`) — or that it falls back to boxes,
    with how to fix that."""
    try:
        import matplotlib

        from ..tools.code.worker import find_cjk_font
    except ImportError as exc:
        return False, "chart fonts: cannot check (matplotlib is missing)", f"{exc}; pip install 'llmi[code]'"
    found = find_cjk_font()
    if found is not None:
        return True, f"chart fonts: DejaVu Sans; CJK text: {found[0]}", ""
    return False, "no CJK font: Chinese, Japanese, Korean text in charts renders as boxes", (
        "examples/tutorial_zh.txt needs one. Install one (Debian/Ubuntu: apt-get install fonts-noto-cjk; "
        "Fedora: google-noto-sans-cjk-fonts; macOS, Windows: Noto Sans CJK), then delete matplotlib's font "
        f"cache, {matplotlib.get_cachedir()}/fontlist-*.json, so that matplotlib finds it."
    )


def _chart_fonts() -> None:
    ok, line, advice = cjk_font_status()
    (info if ok else warn)(line)
    if advice:
        console.print(Text(advice), overflow="fold")  # wraps at the terminal's width, a path included


def _table(title: str) -> Table:
    """No borders: nothing to break when a detail wraps, and a pipe or log file reads as plain text."""
    return Table(title=title, box=None, title_justify="left", padding=(0, 2, 0, 0), pad_edge=False,
                 header_style="bold underline", title_style="bold")


def _state_cell(state: str) -> Text:
    return Text(state, style=_STYLE.get(state, "white"))


async def _doctor(settings, probe: bool, config: Path | None) -> None:
    from ..config import find_config_file
    from ..engine import Engine
    from ..errors import ConfigError
    from ..protocol import SOURCES
    from ..tools import registry
    from ..tools.base import BackendStatus

    try:
        cfg = find_config_file(config)
    except ConfigError:
        cfg = None
    info(f"config file: {cfg or '(none; built-in defaults)'}")
    where = settings.llm.model_path if settings.llm.backend == "transformers" else settings.llm.base_url
    info(f"LLM: {settings.llm.backend} at {where or '(not set)'}, model {settings.llm.model or '(auto)'}")
    info(f"cache: {'off' if not settings.cache.enabled else settings.cache.resolved_path(settings._config_dir)}")

    async with Engine(settings, cache=False) as engine:
        # Every (tool, backend) to show, in order: the chain first, then the other known backends.
        rows: list[tuple[str, str, int | None, str, str]] = []  # tool, label, position, t, name
        chain_errors: dict[str, str] = {}
        for tool in SOURCES:
            try:
                chain = engine.chain(tool)
            except ConfigError as exc:
                chain_errors[tool] = str(exc)
                continue
            in_chain = set()
            for pos, (t, name) in enumerate(chain, 1):
                label = name if t == tool else f"{t}:{name}"
                rows.append((tool, label, pos, t, name))
                if t == tool:
                    in_chain.add(name)
            for name in registry.names(tool):
                if name not in in_chain:
                    rows.append((tool, name, None, tool, name))

        keys = {(t, n) for _, _, pos, t, n in rows if pos or not probe}
        statuses: dict[tuple[str, str], BackendStatus] = {k: engine.backend_status(*k) for k in keys}
        if probe:
            live = [(t, n) for _, _, pos, t, n in rows if pos and statuses[(t, n)].state != "misconfigured"]
            live = list(dict.fromkeys(live))
            if live:
                info(f"probing {len(live)} backend(s) (at most {PROBE_TIMEOUT_S:.0f} s) ...")
                results = await asyncio.gather(*(_probe(engine, t, n) for t, n in live))
                statuses.update(zip(live, results))
        for _, _, _, t, n in rows:
            statuses.setdefault((t, n), engine.backend_status(t, n))

        table = _table("tools and backends")
        table.add_column("tool", no_wrap=True)
        table.add_column("backend", no_wrap=True)
        table.add_column("chain", justify="right", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("detail", overflow="fold")
        usable: list[str] = []
        for tool in SOURCES:
            if tool in chain_errors:
                table.add_row(tool, "-", "", _state_cell("misconfigured"), Text(chain_errors[tool]))
                continue
            mine = [r for r in rows if r[0] == tool]
            if not mine:
                table.add_row(tool, "-", "", Text("none"), Text("no backend installed"))
                continue
            if any(pos and statuses[(t, n)].usable for _, _, pos, t, n in mine):
                usable.append(tool)
            for i, (_, label, pos, t, n) in enumerate(mine):
                st = statuses[(t, n)]
                detail = st.detail if t == tool else f"served by the {t} tool; {st.detail}".rstrip("; ")
                first = tool if i == 0 else ""
                table.add_row(first, label, str(pos or ""), _state_cell(st.state), Text(detail or ""))
        console.print()
        console.print(table)
        info("chain: position in the tool's fallback chain (empty: installed but not used)")
        info("usable tools: " + (", ".join(usable) or "none")
             + (" (after probing)" if probe else "; --probe also contacts the services"))

    _chart_fonts()
    try:
        from ..tools.code.sandbox import sandbox_report
    except ImportError as exc:
        info(f"chart sandbox: cannot inspect ({exc})")
        return
    layers_off = tuple(settings.backend_options("code", "sandbox").get("layers_off", ()) or ())
    layers = _table("chart sandbox layers on this host")
    layers.add_column("layer", no_wrap=True)
    layers.add_column("active", no_wrap=True)
    layers.add_column("detail", overflow="fold")
    for name, active, detail in sandbox_report(layers_off):
        layers.add_row(name, Text("yes", style="green") if active else Text("no", style="red"), Text(detail))
    console.print()
    console.print(layers)
