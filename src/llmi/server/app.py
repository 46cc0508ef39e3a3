"""The FastAPI application: :func:`create_app` wires settings, keys, the store and the routes together.

Routes: :mod:`.openai_api` (``/v1``: chat completions, models), :mod:`.runs` (``/api``: runs, their
events, documents, render, reward; ``/images``: image links), the page (``/``, ``/static/*``) and
``/healthz``. Every error is answered in the OpenAI error shape ``{"error": {"message", "type", "param",
"code"}}``. Every response carries ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy
(the page's own policy for the page, ``default-src 'none'`` for everything else).
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import Settings
from .auth import BodyLimit, KeyRing, RateLimiter, RequestGuard, error_body, host_check_for, load_keys
from .deps import LIGHT_FACTOR
from .inputs import ApiError
from .manager import RunManager
from .services import Services
from .store import Store
from .view import PAGE_CSP

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine
    from ..llm import LLMBackend

log = logging.getLogger(__name__)

_API_CSP = "default-src 'none'; frame-ancestors 'none'"
_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("llmi")
    except Exception:  # noqa: BLE001 - not installed (a source checkout): no version to show
        return "0"


def create_app(
    settings: Settings | None = None,
    *,
    keys: KeyRing | None = None,
    data_dir: str | Path | None = None,
    engine: "Engine | None" = None,
    llm: "LLMBackend | None" = None,
) -> FastAPI:
    """The server's ASGI app.

    ``settings`` default to :class:`~llmi.config.Settings` defaults; ``keys`` to the keys from
    ``$LLMI_SERVER_KEYS`` and ``[server] keys_file``; ``data_dir`` to ``[server] data_dir``. ``engine``
    and ``llm`` may be given ready-made (tests, embedding); otherwise they are opened when the app starts
    and closed when it stops. Nothing is opened by this call itself (the OpenAPI schema needs none of it).
    """
    settings = settings if settings is not None else Settings()
    server = settings.server
    if keys is None:
        keys_file = settings.resolve_path(server.keys_file) if server.keys_file else None
        keys = load_keys(keys_file)
    root = Path(data_dir) if data_dir is not None else server.resolved_data_dir(getattr(settings, "_config_dir", None))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = Store(root)
        services = Services(settings=settings, keys=keys, store=store, manager=RunManager(store, server),
                            limiter=RateLimiter(server.rate_per_minute, server.burst),
                            light_limiter=RateLimiter(server.rate_per_minute * LIGHT_FACTOR, server.burst * LIGHT_FACTOR))
        await services.open(engine=engine, llm=llm)
        app.state.services = services
        log.info("llmi server: data in %s, %s", root, f"{len(keys)} API key(s)" if keys.enabled else "no API keys")
        try:
            yield
        finally:
            await services.aclose()

    app = FastAPI(
        title="llmi server",
        version=_version(),
        summary="Illustrated answers from any LLM: an OpenAI-compatible endpoint, native runs, a live page.",
        docs_url=None,  # the interactive docs load script from a CDN; the schema is at /openapi.json
        redoc_url=None,
        lifespan=lifespan,
    )

    from . import openai_api, runs

    app.include_router(openai_api.router)
    app.include_router(runs.router)
    app.include_router(runs.images_router)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name == "document.css":
            from ..render.html import stylesheet

            return Response(stylesheet(), media_type="text/css; charset=utf-8", headers={"Cache-Control": "no-cache"})
        media = _STATIC.get(name)
        if media is None:
            raise ApiError(404, f"no static file {name!r}", code="not_found")
        return Response(_asset(name), media_type=media, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["meta"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.type, exc.code, exc.param), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = []
        for e in errors[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return JSONResponse(error_body("invalid request: " + "; ".join(parts), "invalid_request_error",
                                       "invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind, exc.status_code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # Answered by Starlette's outermost error middleware, outside SecurityHeaders: the headers go here.
        # The traceback goes to the log (by that middleware), never to the client.
        return JSONResponse(error_body("internal server error", "server_error", "internal_error"), status_code=500,
                            headers={k.decode(): v.decode() for k, v in SecurityHeaders._DEFAULTS})

    app.add_middleware(BodyLimit, limit=server.max_request_bytes)
    app.add_middleware(RequestGuard, host_check=host_check_for(
        keys=keys, allow_no_auth=server.allow_no_auth, bind_host=server.host, public_url=server.public_url,
        allowed_hosts=server.allowed_hosts))
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """ASGI middleware (not ``BaseHTTPMiddleware``, which gets in the way of streamed responses and of
    noticing a client that hangs up): the headers every response carries unless it set its own."""

    _DEFAULTS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                 (b"content-security-policy", _API_CSP.encode()))

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend((k, v) for k, v in self._DEFAULTS if k not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RedactSignatures(logging.Filter):
    """Log records (uvicorn's access log) with the ``sig=`` of signed links blanked: a signature opens a
    document or an image without a key, so it does not belong in a log file."""

    _SIG = re.compile(r"([?&]sig=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(self._SIG.sub(r"\1-", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "sig=" in record.msg:
            record.msg = self._SIG.sub(r"\1-", record.msg)
        return True


def redact_access_log() -> None:
    """Install :class:`RedactSignatures` on uvicorn's access and error loggers (``llmi serve`` does)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSignatures) for f in logger.filters):
            logger.addFilter(RedactSignatures())


def _asset(name: str) -> bytes:
    return resources.files("llmi.server").joinpath("static", name).read_bytes()
