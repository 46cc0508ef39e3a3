"""Self-hosted Qwen-Image servers, as deployed by the LLM-I recipe (``examples/qwen_image_deployment``).

The recipe runs one FastAPI process per GPU, each on its own port, and the client spreads prompts over
them. The wire format, which these clients follow:

- ``POST {server}/generate/`` with JSON ``{"prompt", "negative_prompt", "height", "width",
  "num_inference_steps", "guidance_scale", "num_images_per_prompt"}`` (all but ``prompt`` optional);
- ``POST {server}/edit/`` with JSON ``{"image_b64", "prompt", "negative_prompt", "num_inference_steps"}``;
- both answer ``{"status": "success", "images": ["<base64 PNG>", ...]}``, or FastAPI's
  ``{"detail": "..."}`` with HTTP 400 (wrong mode), 422 (bad request) or 500 (the pipeline failed);
- ``GET {server}/health`` answers ``{"status": "ok", "mode": "generation" | "edit"}``.

Several servers are load-balanced by :class:`~llmi.tools.imagegen.ServerPool`; a server that refuses the
connection (or answers 503) is skipped at once for the next one and set aside for ``cooldown_s``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field

from ...errors import ToolError, TransientToolError
from ...images import ImageData
from .. import imagegen
from ..base import Backend, BackendOptions, BackendStatus, ToolRequest, ToolResult

log = logging.getLogger(__name__)


class QwenServerOptions(BackendOptions):
    """What the generation and edit server backends share; the generation one adds the image size."""

    #: Base URLs of the servers, e.g. ["http://gpu1:8000", "http://gpu1:8001"].
    servers: list[str] = Field(default_factory=list)
    #: least_busy: fewest calls in flight first; round_robin: strict rotation.
    balance: Literal["least_busy", "round_robin"] = "least_busy"
    #: How long a server that refused a connection is tried last.
    cooldown_s: float = 30.0
    timeout_s: float = 300.0
    #: A label for provenance and the cache key (the servers do not say which weights they run).
    model: str = "Qwen-Image"
    negative_prompt: str | None = None
    #: None: the server's default (25 for generation, 50 for edits in the recipe).
    num_inference_steps: int | None = None
    #: More request fields passed through as they are.
    extra_body: dict[str, Any] = Field(default_factory=dict)


class QwenImageServerOptions(QwenServerOptions):
    """``[backends.diffusion.qwen-server]``."""

    height: int | None = None
    width: int | None = None
    guidance_scale: float | None = None


class QwenServerBase(Backend):
    """The pool, the call with fail-over, the answer and the health probe; subclasses add the body."""

    options: QwenServerOptions
    endpoint: ClassVar[str] = "generate/"
    mode: ClassVar[str] = "generation"
    #: Option fields the endpoint takes.
    knobs: ClassVar[tuple[str, ...]] = ("negative_prompt", "num_inference_steps")

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.pool = imagegen.ServerPool(self.options.servers, strategy=self.options.balance,
                                        cooldown_s=self.options.cooldown_s)

    def status(self) -> BackendStatus:
        if not self.options.servers:
            return BackendStatus("misconfigured", f"no servers: set servers = [...] in [backends.{self.tool}.{self.name}]")
        bad = [s for s in self.options.servers if not s.startswith(("http://", "https://"))]
        if bad:
            return BackendStatus("misconfigured", f"server URLs must start with http:// or https://: {bad}")
        return BackendStatus("ok", f"{len(self.options.servers)} server(s)")

    async def probe(self) -> BackendStatus:
        status = self.status()
        if not status.usable:
            return status
        healthy, problems = 0, []
        for server in self.pool.servers:
            try:
                resp = await self.ctx.http.get(imagegen.join_url(server, "health"), timeout=10.0)
                body = resp.json() if resp.status_code == 200 else None
            except (httpx.TransportError, ValueError) as exc:
                problems.append(f"{server}: {type(exc).__name__}")
                continue
            if not isinstance(body, dict):
                problems.append(f"{server}: HTTP {resp.status_code}")
            elif body.get("mode") not in (None, self.mode):
                return BackendStatus("misconfigured", f"{server} runs in {body.get('mode')!r} mode, not {self.mode!r}")
            else:
                healthy += 1
        if not healthy:
            return BackendStatus("unreachable", "; ".join(problems))
        detail = f"{healthy}/{len(self.pool.servers)} server(s) healthy"
        return BackendStatus("ok", detail + (f" ({'; '.join(problems)})" if problems else ""))

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {"model": o.model, **{k: getattr(o, k) for k in self.knobs}, "extra_body": o.extra_body}

    def payload(self, prompt: str) -> dict[str, Any]:
        o = self.options
        return {"prompt": prompt, **imagegen.given_fields(o, self.knobs), **o.extra_body}

    async def call(self, payload: dict[str, Any], provenance: dict[str, Any]) -> ToolResult:
        order = self.pool.order()
        if not order:
            raise ToolError(f"{self.tool}.{self.name}: no servers configured", kind="misconfigured")
        failures: list[str] = []
        last: ToolError | None = None
        for server in order:
            service = f"Qwen-Image server {server}"
            self.pool.acquire(server)
            try:
                resp = await imagegen.send(self.ctx.http, "POST", imagegen.join_url(server, self.endpoint),
                                           service=service, json=payload, timeout=self.options.timeout_s)
            except ToolError as exc:
                if not imagegen.is_failover_error(exc):
                    raise
                log.warning("%s failed (%s); trying the next server", service, exc.kind)
                self.pool.mark_down(server)
                failures.append(str(exc))
                last = exc
                continue
            finally:
                self.pool.release(server)
            self.pool.mark_up(server)
            image = self.decode(resp, service)
            return ToolResult(image=image, provenance={
                "backend": f"{self.tool}.{self.name}", "model": self.options.model, "server": server, **provenance})
        assert last is not None
        raise TransientToolError(
            f"all {len(order)} Qwen-Image server(s) failed: " + " | ".join(failures),
            kind=last.kind, retry_after=last.retry_after,
        ) from last

    def decode(self, resp: httpx.Response, service: str) -> ImageData:
        """The first image of a ``{"status": "success", "images": [...]}`` answer."""
        body = imagegen.json_object(resp, service)
        images = body.get("images")
        if body.get("status") != "success" or not isinstance(images, list) or not images:
            detail = body.get("detail") or body.get("message") or body.get("status") or "no images"
            raise ToolError(f"{service} returned no image: {str(detail)[:200]}", kind="no_result")
        return imagegen.decode_b64_image(images[0], service=service,
                                         max_pixels=self.ctx.settings.images.max_pixels)


class QwenImageServer(QwenServerBase):
    """``diffusion.qwen-server``: ``POST {server}/generate/``."""

    tool = "diffusion"
    name = "qwen-server"
    Options = QwenImageServerOptions
    knobs = ("negative_prompt", "num_inference_steps", "height", "width", "guidance_scale")

    async def run(self, request: ToolRequest) -> ToolResult:
        prompt = imagegen.require_prompt(request)
        payload = self.payload(prompt)
        if request.seed is not None:
            payload["seed"] = request.seed
        return await self.call(payload, {"prompt": prompt})
