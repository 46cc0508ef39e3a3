"""FastAPI dependencies: the caller (:func:`principal`), a rate-limited work request (:func:`work`), a
request that starts a run (:func:`run_slot`), and helpers the routers share."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

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


#: Cheap requests (Markdown to HTML for the page) get a bucket this many times the work rate and burst.
LIGHT_FACTOR = 10


def light_work(request: Request, who: Principal = Depends(principal)) -> Principal:
    """A cheap request that still costs CPU (``/api/markdown``): its own, larger bucket per key, so the page
    can convert every text block of a document while a client cannot keep the renderer busy for free."""
    svc = services(request)
    limiter = svc.light_limiter
    wait = limiter.take(who.id) if limiter is not None else None
    if wait is not None:
        after = retry_after_header(wait)
        raise ApiError(429, f"rate limit reached for this key; retry in {after} s", type_="rate_limit_exceeded",
                       code="rate_limit_exceeded", headers={"Retry-After": after})
    return who


async def run_slot(request: Request, who: Principal = Depends(work)) -> AsyncIterator[Principal]:
    """A request that starts a run (or scores rewards): also refused while the caller has too many runs in
    progress. The place is taken at once (:func:`reservation`) and held until the run starts or the request
    ends, so requests that arrive together are counted together."""
    svc = services(request)
    limit = svc.server.max_concurrent_runs
    if svc.manager.active(who.id) >= limit:
        after = str(svc.server.busy_retry_after_s)
        raise ApiError(429, f"this key already has {limit} run(s) in progress; retry when one finishes",
                       type_="rate_limit_exceeded", code="too_many_runs", headers={"Retry-After": after})
    held = svc.manager.reserve(who.id)
    request.state.run_reservation = held
    try:
        yield who
    finally:
        held.release()


def reservation(request: Request):
    """The place :func:`run_slot` holds for this request (handed to ``RunManager.start``)."""
    return getattr(request.state, "run_reservation", None)


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
    """Await ``awaitable``; False (and it cancelled) if the client hung up first. An exception of
    ``awaitable`` is raised here (not swallowed into an empty answer)."""
    task = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
    if task.cancelled():
        return False
    if task.exception() is not None:
        raise task.exception()
    return True
