"""Fake tool backends: real Backend subclasses with scripted behaviour, registered through the registry."""

from __future__ import annotations

import asyncio
import hashlib
import io

from llmi.errors import ToolError, TransientToolError
from llmi.images import ImageData
from llmi.tools import registry
from llmi.tools.base import Backend, BackendOptions, ToolRequest, ToolResult


def png_for(text: str, size: int = 16) -> ImageData:
    from PIL import Image

    h = hashlib.sha256(text.encode()).digest()
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (h[0], h[1], h[2])).save(buf, format="PNG")
    return ImageData.from_bytes(buf.getvalue())


class FakeOptions(BackendOptions):
    delay: float = 0.0
    fail_times: int = 0  # transient failures before success
    fail_kind: str = ""  # "", "permanent", "crash"
    retry_after: float | None = None


class Recorder:
    """Shared record of what fake backends were asked, and the peak of concurrent calls."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []
        self.running = 0
        self.peak = 0
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}
        self.attempts: dict[str, int] = {}


RECORD = Recorder()


class _Fake(Backend):
    Options = FakeOptions

    async def run(self, request: ToolRequest) -> ToolResult:
        o: FakeOptions = self.options  # type: ignore[assignment]
        p = request.params
        label = str(p.get("prompt") or p.get("query") or p.get("code"))
        RECORD.calls.append((self.tool, self.name, dict(request.params)))
        n = RECORD.attempts[label] = RECORD.attempts.get(label, 0) + 1
        RECORD.running += 1
        RECORD.peak = max(RECORD.peak, RECORD.running)
        RECORD.starts.setdefault(label, asyncio.get_running_loop().time())
        try:
            await asyncio.sleep(o.delay)
            if n <= o.fail_times:
                raise TransientToolError("service busy", kind="rate_limited", retry_after=o.retry_after)
            if o.fail_kind == "permanent":
                raise ToolError(f"{self.name} refused {label!r}", kind="no_result")
            if o.fail_kind == "crash":
                raise RuntimeError("backend bug")
            if request.input_image is not None:
                img = png_for(request.input_image.sha256 + label)
            else:
                img = png_for(label)
            return ToolResult(img, {"model": f"fake-{self.name}", "label": label})
        finally:
            RECORD.running -= 1
            RECORD.ends[label] = asyncio.get_running_loop().time()


def make(tool: str, name: str) -> type[Backend]:
    cls = type(f"Fake_{tool}_{name}".replace("-", "_"), (_Fake,), {"tool": tool, "name": name})
    return registry.register(cls)


CLASSES = [make(t, n) for t in ("search", "diffusion", "code", "edit") for n in ("fake", "fake2")]


def register_all() -> None:
    """(Re-)register the fakes: other test modules register and remove their own under the same names."""
    for cls in CLASSES:
        registry.register(cls)
