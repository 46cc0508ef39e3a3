"""One way to retry: exponential backoff with jitter, ``Retry-After`` honoured, a cap beyond which it stops.

Every caller that talks to a service which can say "not now" (the engine's tool calls, the writing LLM
before its first token, the judges) retries through :func:`retry_call` with a :class:`RetryPolicy`.
The caller decides *what* is worth retrying (its ``transient`` function maps an exception to a
:class:`Transient` verdict, or ``None`` for "raise it now"); this module decides *when*:

* attempt ``n`` (0-based) waits ``min(max_backoff_s, backoff_s * 2**n)`` scaled by a random factor in
  ``[0.5, 1.0)`` — jitter, so many clients refused at once do not come back at once;
* a ``Retry-After`` the service sent is waited exactly, instead of the computed delay;
* a ``Retry-After`` longer than ``max_backoff_s`` ends the retries: retrying sooner than the service asked
  only earns another refusal, and waiting longer than the cap is what the cap forbids.

When the retries end, :class:`GaveUp` is raised carrying the last error, the number of attempts and why;
each caller turns it into its own typed error (a failure block, an ``LLMError``, a ``JudgeFailure``).
The delay arithmetic (:meth:`RetryPolicy.delay`) is pure, so it is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. ``retries`` counts the attempts after the first."""

    retries: int = 2
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None, *, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based) before the next one."""
        if retry_after is not None:
            return max(0.0, retry_after)
        base = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        return base * (0.5 + 0.5 * rng())

    def give_up(self, attempt: int, retry_after: float | None = None) -> str | None:
        """Why no further attempt follows failed attempt ``attempt``: ``"exhausted"``, ``"retry_after"``
        (the service asks for a longer wait than the cap), or ``None`` to retry."""
        if attempt >= self.retries:
            return "exhausted"
        if retry_after is not None and retry_after > self.max_backoff_s:
            return "retry_after"
        return None


@dataclass(frozen=True)
class Transient:
    """The verdict on a failed attempt that may succeed later; ``retry_after`` is the service's wish."""

    retry_after: float | None = None


class GaveUp(Exception):
    """The retries ended. ``error`` is the last attempt's exception, ``attempts`` how many were made,
    ``why`` ``"exhausted"`` or ``"retry_after"`` (with ``retry_after`` the wait the service asked for)."""

    def __init__(self, error: BaseException, *, attempts: int, why: str, retry_after: float | None = None):
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.why = why
        self.retry_after = retry_after


async def retry_call(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    transient: Callable[[Exception], Transient | None],
    *,
    on_retry: Callable[[Exception, int, float], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await ``attempt()`` until it returns, retrying what ``transient`` calls transient.

    An exception ``transient`` answers ``None`` for propagates at once, unchanged. When a transient one
    cannot be retried (see :meth:`RetryPolicy.give_up`), :class:`GaveUp` is raised from it.
    ``on_retry(error, attempt, delay)`` is told about each retry before the wait (for logs and counters).
    Cancellation is never retried.
    """
    n = 0
    while True:
        try:
            return await attempt()
        except Exception as exc:
            verdict = transient(exc)
            if verdict is None:
                raise
            why = policy.give_up(n, verdict.retry_after)
            if why is not None:
                raise GaveUp(exc, attempts=n + 1, why=why, retry_after=verdict.retry_after) from exc
            delay = policy.delay(n, verdict.retry_after)
            if on_retry is not None:
                on_retry(exc, n, delay)
            else:
                log.info("%s; retrying in %.1f s", exc, delay)
            await sleep(delay)
            n += 1


__all__ = ["GaveUp", "RetryPolicy", "Transient", "retry_call"]
