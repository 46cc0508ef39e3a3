"""A live terminal view of tool calls, driven by the engine's event stream (see llmi.events)."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ..events import Event, TagAmended, ToolFinished, ToolStarted


class ToolProgress:
    """One line per tool call: running / done in N s / failed: reason. Use as a context manager and
    pass :meth:`handle` as the engine's ``on_event`` (it reads ``tool_started``, ``tool_finished`` and
    ``tag_amended``, which corrects a failure's reason at the end of the response; others are ignored).

    Lines are numbered like the images an ``edit`` refers to (``n_inputs`` user images first, then one
    per tag), so "[2] edit ... failed" points at the same ``img_index`` the model wrote. Descriptions and
    reasons come from the model and the tools: they are shown as plain text, never as Rich markup. In a
    terminal the lines update in place; into a pipe or file each finished call is one unwrapped line.
    """

    def __init__(self, console: Console, *, enabled: bool = True, n_inputs: int = 0):
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.n_inputs = n_inputs
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

    def _label(self, idx: int, source: str, desc: str) -> str:
        desc = " ".join(desc.split())
        if len(desc) > 50:
            desc = desc[:49] + "…"
        return f"[{idx + self.n_inputs}] {source:<9} {desc}"

    def _render(self) -> Group:
        rows = []
        now = time.monotonic()
        for idx in sorted(self.lines):
            source, desc, t0, outcome = self.lines[idx]
            label = self._label(idx, source, desc)
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
        elif isinstance(event, (ToolFinished, TagAmended)):
            source, desc, t0, _ = self.lines.get(event.index, (event.block.tool, "", time.monotonic(), None))
            if isinstance(event, ToolFinished) and event.ok:
                outcome = f"ok done in {event.elapsed_s:.1f} s"
            else:
                reason = " ".join(event.block.reason.split())
                outcome = "failed: " + (reason if len(reason) <= 160 else reason[:159] + "…")
            self.lines[event.index] = (source, desc, t0, outcome)
            if not self.enabled:
                mark = "✔" if outcome.startswith("ok") else "✘"
                self.console.print(
                    f"{mark} {self._label(event.index, source, desc)} — {outcome.removeprefix('ok ')}",
                    highlight=False, markup=False, soft_wrap=True,
                )
        if self._live is not None:
            self._live.update(self._render())
