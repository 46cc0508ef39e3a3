"""Who may call the server, how often, and how much they may send.

* **Keys.** Bearer keys come from ``$LLMI_SERVER_KEYS`` (separated by commas or whitespace) and from the
  ``[server] keys_file`` (one per line, ``label key`` or just ``key``, ``#`` comments). Keys are compared
  in constant time on their SHA-256; a key's *identity* for limits and ownership of documents is its label
  or a short hash — the key itself is never logged or stored.
* **No keys.** Then the server only binds to loopback; a non-loopback bind without keys is refused unless
  ``allow_no_auth`` says so explicitly (:func:`check_bind`). Every caller is then the one user ``local``.
* **Limits per key.** A token bucket for work requests (``rate_per_minute``, ``burst``) and a cap on runs in
  progress (``max_concurrent_runs``); both answer 429 with ``Retry-After``.
* **Size.** :class:`BodyLimit` is an ASGI middleware that answers 413 to a body over ``max_request_bytes``
  — by its ``Content-Length`` before reading, or while reading a chunked one.
* **Where from.** :class:`RequestGuard` is an ASGI middleware: a server without keys answers only ``Host``
  names that reach this machine (loopback names and addresses, the bound host, ``public_url``'s host,
  ``allowed_hosts``), so a web page that rebinds its own DNS name to 127.0.0.1 cannot read or use it; and a
  browser request that changes something (POST, DELETE, ...) sent by another site's page
  (``Sec-Fetch-Site: cross-site`` / ``same-site``) is refused, with keys or without.

Pure parts (key parsing, the bucket, the bind check) take their inputs as arguments, so they are tested
without a server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ConfigError

LOCAL = "local"


@dataclass(frozen=True)
class Principal:
    """The caller: ``id`` owns documents and carries the limits (a key's label or hash; ``local``)."""

    id: str


@dataclass
class KeyRing:
    """The accepted keys, by SHA-256, with the identity each stands for."""

    _by_digest: dict[bytes, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def add(self, key: str, label: str | None = None) -> None:
        key = key.strip()
        if len(key) < 8:
            raise ConfigError("an API key must be at least 8 characters long")
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        self._by_digest[digest] = label or "key-" + digest.hex()[:10]

    def identify(self, key: str) -> str | None:
        """The identity of ``key``, or None. Constant time per stored key."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        found = None
        for stored, ident in self._by_digest.items():
            if hmac.compare_digest(stored, digest):
                found = ident
        return found

    @classmethod
    def load(cls, *, env_value: str | None, keys_file: Path | None) -> "KeyRing":
        """Keys from an ``LLMI_SERVER_KEYS`` value and a keys file (either may be absent)."""
        ring = cls()
        for key in (env_value or "").replace(",", " ").split():
            ring.add(key)
        if keys_file is not None:
            try:
                text = keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read the keys file {keys_file}: {exc.strerror or exc}") from None
            for n, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) > 2:
                    raise ConfigError(f"{keys_file}:{n}: expected 'label key' or 'key', got {len(parts)} words")
                try:
                    ring.add(parts[-1], parts[0] if len(parts) == 2 else None)
                except ConfigError as exc:
                    raise ConfigError(f"{keys_file}:{n}: {exc}") from None
        return ring


def load_keys(keys_file: str | os.PathLike | None, environ: dict[str, str] | None = None) -> KeyRing:
    env = os.environ if environ is None else environ
    return KeyRing.load(env_value=env.get("LLMI_SERVER_KEYS"), keys_file=Path(keys_file).expanduser() if keys_file else None)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# ------------------------------------------------------------------------------------------------
# The bind check
# ------------------------------------------------------------------------------------------------


def is_loopback_host(host: str, resolve: Callable[[str], Iterable[str]] | None = None) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine. ``0.0.0.0`` and ``::`` do not."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        pass
    try:
        addresses = list((resolve or _resolve)(h))
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)


def _resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def check_bind(host: str, *, keys: KeyRing, allow_no_auth: bool) -> str | None:
    """None when binding ``host`` is allowed, else the reason it is refused."""
    if keys.enabled or allow_no_auth or is_loopback_host(host):
        return None
    return (
        f"refusing to serve on {host} without API keys: anyone who can reach it could use your LLM and tools. "
        "Set LLMI_SERVER_KEYS or [server] keys_file, bind to 127.0.0.1, or pass --allow-no-auth"
    )


# ------------------------------------------------------------------------------------------------
# Rate limit
# ------------------------------------------------------------------------------------------------


class RateLimiter:
    """One token bucket per identity: ``burst`` tokens, refilled at ``rate_per_minute``.

    :meth:`take` returns None when the request may go ahead, else the seconds until it could (for
    ``Retry-After``). ``clock`` is injectable for tests.
    """

    def __init__(self, rate_per_minute: float, burst: int, *, clock: Callable[[], float] = time.monotonic):
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, ident: str) -> float | None:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(ident, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[ident] = (tokens - 1.0, now)
                return None
            self._buckets[ident] = (tokens, now)
            return (1.0 - tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (Retry-After has no fractions)."""
    return str(max(1, math.ceil(seconds)))


# ------------------------------------------------------------------------------------------------
# Body size
# ------------------------------------------------------------------------------------------------


def error_body(message: str, type_: str, code: str | int | None = None, param: str | None = None) -> dict:
    """An error in the OpenAI wire shape, used by every endpoint (the SDK reads ``error.message``)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413, whether announced or chunked.

    An announced ``Content-Length`` over the limit is refused before anything is read. A body without
    one is read (up to the limit) before the app sees it, then replayed.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        if length is not None and length > self.limit:
            await self._too_large(send)
            return
        if length is not None:
            await self.app(scope, receive, send)  # the server stops at Content-Length; the app may read
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                await self._too_large(send)
                return
            chunks.append(body)
            if not message.get("more_body"):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _too_large(self, send) -> None:
        await send_error(send, 413, f"request body too large (the limit is {self.limit} bytes)", "request_too_large",
                         close=True)


async def send_error(send, status: int, message: str, code: str, *, type_: str = "invalid_request_error",
                     close: bool = False) -> None:
    """An error answer straight from a middleware (the OpenAI shape, JSON)."""
    body = json.dumps(error_body(message, type_, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------------
# Host names and cross-site requests
# ------------------------------------------------------------------------------------------------


def host_of(value: str) -> str:
    """The host of a ``Host`` header value or a URL's netloc, lowercased, without port or trailing dot."""
    v = value.strip().lower()
    if "@" in v:
        v = v.rsplit("@", 1)[1]
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else v[1:]
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return v.rstrip(".")


def is_loopback_name(host: str) -> bool:
    """Whether ``host`` (from :func:`host_of`) names this machine without asking DNS: ``localhost``,
    ``*.localhost`` (browsers resolve those themselves) or a loopback address."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostCheck:
    """Which ``Host`` names a server without keys answers: loopback ones, plus the given names."""

    def __init__(self, extra: Iterable[str] = ()):
        self.extra = frozenset(h for h in (host_of(x) for x in extra if x) if h)

    def __call__(self, host: str) -> bool:
        h = host_of(host)
        return is_loopback_name(h) or h in self.extra


def host_check_for(*, keys: "KeyRing", allow_no_auth: bool, bind_host: str, public_url: str,
                   allowed_hosts: Iterable[str]) -> HostCheck | None:
    """The Host rule of a server (None: any Host). With keys, a request needs a key whatever name it used;
    without keys the names are checked (with ``allow_no_auth`` only when ``allowed_hosts`` lists some)."""
    allowed = list(allowed_hosts)
    if keys.enabled or (allow_no_auth and not allowed):
        return None
    extra = [bind_host, *allowed]
    if public_url:
        from urllib.parse import urlsplit

        extra.append(urlsplit(public_url).netloc)
    return HostCheck(extra)


#: Methods that only read: a cross-site page may cause these (images, links in a chat front-end).
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class RequestGuard:
    """ASGI middleware: the Host rule (:func:`host_check_for`) and no state-changing browser requests from
    another site's page (``Sec-Fetch-Site`` is set by browsers; other clients do not send it)."""

    def __init__(self, app, host_check: Callable[[str], bool] | None):
        self.app = app
        self.host_check = host_check

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = site = None
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"sec-fetch-site":
                site = value.decode("latin-1").strip().lower()
        if self.host_check is not None and host is not None and not self.host_check(host):
            await send_error(send, 403, f"this server does not answer to the host name {host_of(host)[:100]!r}; "
                             "without API keys it answers loopback names only (add the name to [server] "
                             "allowed_hosts or set public_url if it is yours)", "host_not_allowed")
            return
        if scope["method"] not in _SAFE_METHODS and site in ("cross-site", "same-site"):
            await send_error(send, 403, "requests from another site's page are refused", "cross_site_request")
            return
        await self.app(scope, receive, send)


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replayed():
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
