"""FastAPI dependencies: the caller (:func:`principal`), a rate-limited work request (:func:`work`), a
request that starts a run (:func:`run_slot`), and helpers the routers share."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Depends, Request

from .auth import LOCAL, Principal, bearer, retry_after_header
from .inputs import ApiError
from .services import Services


def services(request: Request) -> Services:
    return request.app.state.services


def principal(request: Request) -> Principal:
    """The caller named by its bearer key (401 without a valid one); everyone is ``local`` without keys."""
    svc = services(request)
    if not svc.keys.enabled:
        return Principal(LOCAL)
    token = bearer(request.headers.get("authorization"))
    ident = svc.keys.identify(token) if token else None
    if ident is None:
        raise ApiError(401, "a valid API key is needed: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return Principal(ident)


def work(request: Request, who: Principal = Depends(principal)) -> Principal:
    """A work request (run, chat, render, reward): counted against the caller's rate."""
    svc = services(request)
    wait = svc.limiter.take(who.id)
    if wait is not None:
        after = retry_after_header(wait)
        raise ApiError(429, f"rate limit reached ({svc.server.rate_per_minute:g} requests per minute for this key); "
                       f"retry in {after} s", type_="rate_limit_exceeded", code="rate_limit_exceeded",
                       headers={"Retry-After": after})
    return who


def run_slot(request: Request, who: Principal = Depends(work)) -> Principal:
    """A request that starts a run: also refused while the caller has too many runs in progress."""
    svc = services(request)
    limit = svc.server.max_concurrent_runs
    if svc.manager.active(who.id) >= limit:
        after = str(svc.server.busy_retry_after_s)
        raise ApiError(429, f"this key already has {limit} run(s) in progress; retry when one finishes",
                       type_="rate_limit_exceeded", code="too_many_runs", headers={"Retry-After": after})
    return who


def public_base(request: Request) -> str:
    """Where clients reach this server: ``[server] public_url``, else the request's own base URL."""
    configured = services(request).server.public_url
    return (configured or str(request.base_url)).rstrip("/")


async def until_disconnected(request: Request) -> None:
    """Returns when the client hangs up (for requests that wait without sending anything)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def wait_or_disconnect(request: Request, awaitable: Any) -> bool:
    """Await ``awaitable``; False (and it cancelled) if the client hung up first."""
    task = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
    return task.done() and not task.cancelled()
