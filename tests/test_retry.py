"""The one retry helper: delays, Retry-After, the cap, and what is (not) retried."""

from __future__ import annotations

import pytest

from llmi.retry import GaveUp, RetryPolicy, Transient, retry_call


def test_delay_doubles_with_jitter_and_stays_under_the_cap():
    p = RetryPolicy(retries=5, backoff_s=1.0, max_backoff_s=5.0)
    assert p.delay(0, rng=lambda: 0.0) == 0.5 and p.delay(0, rng=lambda: 0.999) < 1.0
    assert p.delay(1, rng=lambda: 0.0) == 1.0 and p.delay(2, rng=lambda: 0.0) == 2.0
    assert p.delay(10, rng=lambda: 0.999) < 5.0  # capped before jitter
    samples = {p.delay(1) for _ in range(50)}
    assert len(samples) > 1 and all(1.0 <= d < 2.0 for d in samples)


def test_retry_after_is_waited_exactly_and_beyond_the_cap_gives_up():
    p = RetryPolicy(retries=3, backoff_s=1.0, max_backoff_s=10.0)
    assert p.delay(0, 7.5) == 7.5
    assert p.give_up(0, 7.5) is None
    assert p.give_up(0, 11.0) == "retry_after"
    assert p.give_up(3) == "exhausted" and p.give_up(3, 11.0) == "exhausted"


class Busy(Exception):
    def __init__(self, wait=None):
        super().__init__("busy")
        self.wait = wait


def _verdict(exc):
    return Transient(exc.wait) if isinstance(exc, Busy) else None


async def test_retries_until_success_and_reports_each_retry():
    calls, waits, told = [], [], []

    async def attempt():
        calls.append(1)
        if len(calls) < 3:
            raise Busy(0.25 if len(calls) == 2 else None)
        return "ok"

    async def sleep(d):
        waits.append(d)

    out = await retry_call(attempt, RetryPolicy(retries=2, backoff_s=0.1), _verdict,
                           on_retry=lambda e, n, d: told.append((n, d)), sleep=sleep)
    assert out == "ok" and len(calls) == 3
    assert 0.05 <= waits[0] < 0.1 and waits[1] == 0.25
    assert told == [(0, waits[0]), (1, 0.25)]


async def test_gives_up_with_the_last_error_and_the_count():
    async def attempt():
        raise Busy()

    async def sleep(d):
        pass

    with pytest.raises(GaveUp) as info:
        await retry_call(attempt, RetryPolicy(retries=2, backoff_s=0.0), _verdict, sleep=sleep)
    assert isinstance(info.value.error, Busy) and info.value.attempts == 3 and info.value.why == "exhausted"


async def test_a_retry_after_beyond_the_cap_stops_at_once_without_sleeping():
    slept = []

    async def attempt():
        raise Busy(60)

    async def sleep(d):
        slept.append(d)

    with pytest.raises(GaveUp) as info:
        await retry_call(attempt, RetryPolicy(retries=5, max_backoff_s=30), _verdict, sleep=sleep)
    assert info.value.why == "retry_after" and info.value.retry_after == 60 and info.value.attempts == 1
    assert slept == []


async def test_a_permanent_error_propagates_unchanged_after_one_attempt():
    calls = []

    async def attempt():
        calls.append(1)
        raise KeyError("nope")

    with pytest.raises(KeyError):
        await retry_call(attempt, RetryPolicy(retries=5), _verdict)
    assert calls == [1]
