"""The ``code`` tool's backend: LLM-written matplotlib/pandas/seaborn code rendered to PNG in a sandbox.

The code sees ``plt``, ``pd``, ``sns`` and ``np`` already imported and needs no ``plt.show()`` or
``savefig``: the figure it drew is captured — the current figure when it drew several (or, if it closed
them all, the last one it showed, saved or closed) — as PNG at ``[sandbox] dpi``. Markdown fences around
the code are dropped; the code is otherwise run exactly as the tag protocol decoded it (escapes are not
decoded a second time, so non-ASCII text and ``"\\n"`` inside string literals survive).

Failures raise :class:`~llmi.errors.ToolError` with a kind the engine must not retry: ``code_error``
(reason: exception type, message and the line of the code), ``no_figure``, ``timeout``,
``memory_limit``, ``output_too_large``, ``sandbox_violation``, ``sandbox_unavailable``,
``worker_crashed``. A worker that dies is restarted by the pool and the chart tried once more.

Importing this module is cheap: matplotlib is imported by the worker processes only, which start on the
first chart.
"""

from __future__ import annotations

import logging
import re
import textwrap
from typing import Any

from pydantic import Field

from ...errors import ToolError
from ...images import ImageData
from ..base import Backend, BackendContext, BackendOptions, BackendStatus, ToolRequest, ToolResult
from . import sandbox as sb

log = logging.getLogger(__name__)

_FENCE = re.compile(r"^\s*```[ \t]*[\w+.-]*[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*$", re.DOTALL)
_INNER_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\r?\n(.*?)```", re.DOTALL)
MAX_CODE_CHARS = 100_000


def clean_code(code: str) -> str:
    """Drop Markdown fences around chart code (and common indentation). Pure; nothing is unescaped."""
    m = _FENCE.match(code)
    if m:
        code = m.group(1)
    elif "```" in code:
        blocks = _INNER_FENCE.findall(code)
        if blocks:  # prose with fenced blocks: run the blocks, in order
            code = "\n".join(b.strip("\n") for b in blocks)
    return textwrap.dedent(code).strip("\n")


class SandboxOptions(BackendOptions):
    """``[backends.code.sandbox]``: host-specific knobs of the sandbox (limits live in ``[sandbox]``)."""

    #: The unprivileged ids charts run as when llmi runs as root (65534: nobody/nogroup).
    uid: int = Field(65534, ge=1)
    gid: int = Field(65534, ge=1)
    #: Layers to switch off on purpose (e.g. ["landlock"] on a kernel where it misbehaves). A required
    #: layer switched off still needs ``[sandbox] allow_weaker = true``.
    layers_off: list[str] = Field(default_factory=list)
    #: Size of each worker's private job tmpfs.
    tmpfs_mb: int = Field(64, ge=1)
    #: RLIMIT_NPROC for the chart uid (threads count too).
    max_processes: int = Field(64, ge=1)


class SandboxChartBackend(Backend):
    tool = "code"
    name = "sandbox"
    Options = SandboxOptions
    requires = ("matplotlib", "pandas", "seaborn", "numpy", "pyseccomp")
    extra = "code"

    def __init__(self, options: BackendOptions, ctx: BackendContext):
        super().__init__(options, ctx)
        self._pool = None
        self._warned = False
        unknown = [x for x in self.opts.layers_off if x not in sb.ALL_LAYERS]
        if unknown:
            from ...errors import ConfigError

            raise ConfigError(f"backend code.sandbox: unknown layers_off {unknown}; known: {', '.join(sb.ALL_LAYERS)}")

    @property
    def opts(self) -> SandboxOptions:
        return self.options  # type: ignore[return-value]

    def _plan(self) -> tuple[list[str], list[str], sb.HostSupport]:
        support = sb.detect()
        active, missing = sb.plan_layers(support, tuple(self.opts.layers_off))
        return active, missing, support

    def status(self) -> BackendStatus:
        base = super().status()
        if not base.usable:
            return base
        active, missing, support = self._plan()
        if missing and not self.ctx.settings.sandbox.allow_weaker:
            state = "missing_dependency" if sb.SECCOMP in missing and "pyseccomp" in support.seccomp_detail else "misconfigured"
            return BackendStatus(state, sb.refusal_message(missing, support))
        detail = "layers: " + ", ".join(active)
        if missing:
            detail += f" (WEAKER sandbox accepted by allow_weaker: missing {', '.join(missing)})"
        return BackendStatus("ok", detail)

    def cache_identity(self) -> dict[str, Any]:
        return {"dpi": self.ctx.settings.sandbox.dpi}

    def _get_pool(self):
        if self._pool is not None:
            return self._pool
        active, missing, support = self._plan()
        if missing:
            if not self.ctx.settings.sandbox.allow_weaker:
                raise ToolError(sb.refusal_message(missing, support), kind="sandbox_unavailable")
            if not self._warned:
                log.warning("running LLM chart code with a WEAKER sandbox (allow_weaker=true): missing %s",
                            ", ".join(missing))
                self._warned = True
        from .pool import PoolConfig, WorkerPool  # noqa: PLC0415 - started lazily on the first chart

        s = self.ctx.settings.sandbox
        cfg = PoolConfig(
            layers=tuple(active), required=tuple(n for n in sb.required_layers(support) if n in active),
            landlock_abi=support.landlock_abi, workers=s.workers, memory_mb=s.memory_mb,
            cpu_s=s.cpu_s, wall_s=s.wall_s, max_output_bytes=s.max_output_bytes, dpi=s.dpi,
            max_pixels=self.ctx.settings.images.max_pixels, max_jobs_per_worker=s.max_jobs_per_worker,
            uid=self.opts.uid, gid=self.opts.gid, nproc=self.opts.max_processes, tmpfs_mb=self.opts.tmpfs_mb,
        )
        self._pool = WorkerPool(cfg)
        return self._pool

    async def run(self, request: ToolRequest) -> ToolResult:
        code = request.params.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ToolError("params.code must be a non-empty string of Python code", kind="code_error")
        if len(code) > MAX_CODE_CHARS:
            raise ToolError(f"the code is {len(code)} characters, above the {MAX_CODE_CHARS} limit", kind="code_error")
        code = clean_code(code)
        if not code.strip():
            raise ToolError("the code block is empty", kind="code_error")
        pool = self._get_pool()
        from .pool import WorkerStartError  # noqa: PLC0415

        try:
            outcome = await pool.run(code)
        except WorkerStartError as exc:
            raise ToolError(str(exc), kind="sandbox_unavailable") from exc
        if not outcome.ok:
            raise ToolError(outcome.reason or "the chart failed", kind=outcome.kind or "code_error")
        image = ImageData.from_bytes(outcome.png, max_pixels=self.ctx.settings.images.max_pixels)
        provenance: dict[str, Any] = {
            "backend": "sandbox",
            "dpi": self.ctx.settings.sandbox.dpi,
            "sandbox_layers": list(outcome.layers),
            "font": outcome.font,
        }
        if outcome.warnings:
            provenance["warnings"] = list(outcome.warnings)
        # glyphs no font has (CJK text without a CJK font) are drawn as boxes: not cached, so the chart is
        # drawn again once a font is installed
        boxes = any("missing from font" in w for w in outcome.warnings or ())
        return ToolResult(image=image, provenance=provenance, cacheable=not boxes)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()
