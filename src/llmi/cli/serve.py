"""``llmi serve``: the OpenAI-compatible illustrated-answer endpoint, the native API and the page.

Exit codes: 2 for a setup that must not start (a non-loopback address without API keys, a bad keys file,
a missing ``server`` extra, an address in use); otherwise it runs until Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import errors_as_exit, fail, info, load, setup_logging


@app.command("serve")
def serve_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config file (TOML)"),
    host: Optional[str] = typer.Option(None, "--host", help="address to bind ([server] host, default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="port ([server] port, default 8080)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="documents and the run index ([server] data_dir)"),
    keys_file: Optional[Path] = typer.Option(None, "--keys-file", help="API keys, one per line ([server] keys_file)"),
    allow_no_auth: bool = typer.Option(False, "--allow-no-auth", help="serve a non-loopback address without API keys"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="log requests, runs and tool calls"),
) -> None:
    """Serve illustrated answers: OpenAI-compatible /v1 (model 'llmi'), the native /api, and a page at /.

    API keys come from LLMI_SERVER_KEYS (comma-separated) or the keys file. Without keys the server only
    binds to loopback; --allow-no-auth lifts that for a network you trust.
    """
    setup_logging(verbose)
    with errors_as_exit():
        try:
            import fastapi  # noqa: F401
            import uvicorn
        except ImportError:
            fail("llmi serve needs the server extra: pip install 'llmi[server]'")
        from ..server.app import create_app, redact_access_log
        from ..server.auth import check_bind, load_keys

        overrides: dict = {}
        srv: dict = {}
        if host is not None:
            srv["host"] = host
        if port is not None:
            srv["port"] = port
        if data_dir is not None:
            srv["data_dir"] = str(data_dir.expanduser().resolve())
        if keys_file is not None:
            srv["keys_file"] = str(keys_file.expanduser().resolve())
        if allow_no_auth:
            srv["allow_no_auth"] = True
        if srv:
            overrides["server"] = srv
        settings = load(config, overrides or None)
        server = settings.server
        keys = load_keys(settings.resolve_path(server.keys_file) if server.keys_file else None)
        refused = check_bind(server.host, keys=keys, allow_no_auth=server.allow_no_auth)
        if refused:
            fail(refused)
        app_ = create_app(settings, keys=keys)
        shown = f"[{server.host}]" if ":" in server.host else server.host
        url = f"http://{'127.0.0.1' if server.host in ('0.0.0.0', '::') else shown}:{server.port}"
        auth = f"{len(keys)} API key(s)" if keys.enabled else "no API keys (loopback only)" if not server.allow_no_auth else "NO API KEYS"
        info(f"llmi serve: page {url}/ · OpenAI base URL {url}/v1 (model {server.model_name!r}) · {auth}")
        sock = _bind(server.host, server.port)
        config_ = uvicorn_config(app_, server, verbose=verbose)
        redact_access_log()  # after Config: it sets up uvicorn's loggers
        uvicorn.Server(config_).run(sockets=[sock])


def uvicorn_config(app_, server, *, verbose: bool = False):
    """uvicorn's settings for ``llmi serve``: a cap on connections, and the h11 protocol with a deadline
    for reading each request (:mod:`llmi.server.conn`; uvicorn alone never closes a connection that
    sends nothing)."""
    import uvicorn

    from ..server.conn import protocol_class

    return uvicorn.Config(app_, host=server.host, port=server.port, log_level="info" if verbose else "warning",
                          timeout_graceful_shutdown=5, limit_concurrency=server.max_connections,
                          http=protocol_class(server.request_timeout_s))


def _bind(host: str, port: int):
    """The listening socket, bound here so that an address in use is one clear line (exit 2)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the listening socket
    # says it is TCP; without it each streamed chunk after the first waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}")
    sock.set_inheritable(True)
    return sock
