"""A live terminal view of tool calls, driven by the engine's event stream (see llmi.events)."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ..events import Event, ToolFinished, ToolStarted


class ToolProgress:
    """One line per tool call: running / done in N s / failed: reason. Use as a context manager and
    pass :meth:`handle` as the engine's ``on_event``."""

    def __init__(self, console: Console, *, enabled: bool = True):
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.lines: dict[int, tuple[str, str, float, str | None]] = {}
        self._live: Live | None = None

    def __enter__(self) -> "ToolProgress":
        if self.enabled:
            self._live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def _render(self) -> Group:
        rows = []
        now = time.monotonic()
        for idx in sorted(self.lines):
            source, desc, t0, outcome = self.lines[idx]
            label = f"[{idx}] {source:<9} {desc[:50]}"
            if outcome is None:
                rows.append(Text(f"⏳ {label}  running {now - t0:.1f} s", style="yellow"))
            elif outcome.startswith("ok"):
                rows.append(Text(f"✔ {label}  {outcome[3:]}", style="green"))
            else:
                rows.append(Text(f"✘ {label}  {outcome}", style="red"))
        return Group(*rows)

    def handle(self, event: Event) -> None:
        if isinstance(event, ToolStarted):
            self.lines[event.index] = (event.source, event.description, time.monotonic(), None)
        elif isinstance(event, ToolFinished):
            source, desc, t0, _ = self.lines.get(event.index, (event.block.tool, "", time.monotonic(), None))
            if event.ok:
                outcome = f"ok done in {event.elapsed_s:.1f} s"
            else:
                outcome = f"failed: {event.block.reason[:160]}"
            self.lines[event.index] = (source, desc, t0, outcome)
            if not self.enabled:
                mark = "✔" if event.ok else "✘"
                self.console.print(f"{mark} [{event.index}] {source} {desc[:50]} — {outcome.removeprefix('ok ')}", highlight=False)
        if self._live is not None:
            self._live.update(self._render())
