"""A budget the pipeline never exceeds: LLM calls, tool calls, tokens, seconds.

:class:`Budget` is the limit (a value; ``Budget.parse("calls=40,seconds=120")``), :class:`Meter` keeps
the account for one run. Every model request and every tool call asks the meter first and is refused
with :class:`BudgetExhausted` when it would go over — so the limits hold by construction, not by
checking afterwards:

* **calls** and **tool calls** are counted when they are granted (a request that then fails still
  counts: it was sent);
* **tokens** are reserved before a call — the prompt's estimated size (:func:`~.cost.estimate_tokens`, a
  deliberate over-estimate) plus the call's ``max_tokens``, which the meter lowers to what is left — and
  settled with the server's reported usage afterwards. A server that ignores ``max_tokens``, or a prompt
  that tokenizes larger than estimated (images are taken as ``IMAGE_TOKENS`` each), can push the count
  past the limit by that call's excess; the next call is then refused;
* **seconds** run from the meter's creation; the pipeline runs each stage with the time that is left
  as its deadline and cuts it there.

When something is refused the pipeline stops that stage and returns the best document so far, naming
the stages that were cut and the resource that ran out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError, LLMIError
from .cost import charge_call, charge_tool

#: Budget keys in ``--tts-budget`` / ``[tts] budget``; ``tools`` is accepted for ``tool_calls``.
RESOURCES = ("calls", "tool_calls", "tokens", "seconds")
_ALIASES = {"tools": "tool_calls", "llm_calls": "calls", "s": "seconds", "time": "seconds"}

#: A call is refused when fewer reply tokens than this would be left for it.
MIN_REPLY_TOKENS = 16


class BudgetExhausted(LLMIError):
    """A call would go over the budget. ``resource`` is ``calls``, ``tool_calls``, ``tokens`` or ``seconds``."""

    def __init__(self, resource: str, message: str):
        super().__init__(message)
        self.resource = resource


@dataclass(frozen=True)
class Budget:
    """Limits for one run; ``None`` is no limit."""

    calls: int | None = None
    tool_calls: int | None = None
    tokens: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or math.isnan(v)):
                raise ConfigError(f"budget {f.name} must be a number >= 0, got {v!r}")

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    @classmethod
    def parse(cls, spec: Budget | str | Mapping[str, Any] | None) -> Budget:
        """``"calls=40,seconds=120"`` (also ``tools=``, ``tokens=``, ``20k``), a mapping, a Budget, or
        None / ``""`` for no limit. Raises :class:`~llmi.errors.ConfigError` naming the bad part."""
        if spec is None or isinstance(spec, Budget):
            return spec or cls()
        if isinstance(spec, Mapping):
            items = list(spec.items())
        elif isinstance(spec, str):
            items = []
            for part in spec.replace(";", ",").split(","):
                part = part.strip()
                if not part:
                    continue
                key, sep, value = part.partition("=")
                if not sep:
                    raise ConfigError(f"budget part {part!r} is not key=value (keys: {', '.join(RESOURCES)})")
                items.append((key.strip(), value.strip()))
        else:
            raise ConfigError(f"a budget is a string such as 'calls=40,seconds=120', not {type(spec).__name__}")
        out: dict[str, Any] = {}
        for key, value in items:
            name = _ALIASES.get(str(key).lower(), str(key).lower())
            if name not in RESOURCES:
                raise ConfigError(f"unknown budget key {key!r}; the keys are {', '.join(RESOURCES)}")
            out[name] = _number(name, value)
        return cls(**out)

    def __str__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name) is not None]
        return ",".join(parts) or "unlimited"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def _number(name: str, value: Any) -> int | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n: float = value
    else:
        text = str(value).strip().lower()
        scale = 1
        if name == "seconds" and text.endswith("s"):
            text = text[:-1]
        elif name == "seconds" and text.endswith("m"):
            text, scale = text[:-1], 60
        elif text.endswith("k"):
            text, scale = text[:-1], 1000
        try:
            n = float(text) * scale
        except ValueError:
            raise ConfigError(f"budget {name}={value!r} is not a number") from None
    if n < 0 or math.isnan(n):
        raise ConfigError(f"budget {name} must be >= 0, got {value!r}")
    if name == "seconds":
        return float(n)
    if n != int(n):
        raise ConfigError(f"budget {name} must be a whole number, got {value!r}")
    return int(n)


class Reservation:
    """A granted model call: settle it with the server's usage when the call is over (or failed)."""

    def __init__(self, meter: Meter, est_in: int, max_out: int | None, reserved: int):
        self.meter = meter
        self.est_in = est_in
        #: The reply cap to send (``None``: no cap — only when no token budget and none requested).
        self.max_out = max_out
        self._reserved = reserved
        self._settled = False

    def settle(self, usage: Mapping[str, Any] | None, *, est_out: int = 0) -> None:
        """Record the call's tokens (``usage`` from the server, else the estimates) in the meter and in
        the costs being charged. Idempotent."""
        if self._settled:
            return
        self._settled = True
        tin = usage.get("prompt_tokens") if usage else None
        tout = usage.get("completion_tokens") if usage else None
        if not isinstance(tin, int) and not isinstance(tout, int):
            used = self.est_in + est_out
        else:
            used = (tin if isinstance(tin, int) else 0) + (tout if isinstance(tout, int) else 0)
        self.meter._tokens_reserved -= self._reserved
        self.meter.tokens_used += used
        charge_call(usage, est_in=self.est_in, est_out=est_out)


class Meter:
    """The account of one run against a :class:`Budget`. Not thread-safe (one event loop)."""

    def __init__(self, budget: Budget | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.budget = budget or Budget()
        self.clock = clock
        self.started = clock()
        self.calls_made = 0
        self.tool_calls_made = 0
        self.tokens_used = 0
        self._tokens_reserved = 0
        #: Resources that refused something, in the order they ran out.
        self.exhausted: list[str] = []

    # -- what is left ------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.clock() - self.started

    def seconds_left(self) -> float | None:
        if self.budget.seconds is None:
            return None
        return max(0.0, self.budget.seconds - self.elapsed())

    def calls_left(self) -> int | None:
        return None if self.budget.calls is None else max(0, self.budget.calls - self.calls_made)

    def tool_calls_left(self) -> int | None:
        return None if self.budget.tool_calls is None else max(0, self.budget.tool_calls - self.tool_calls_made)

    def tokens_left(self) -> int | None:
        if self.budget.tokens is None:
            return None
        return max(0, self.budget.tokens - self.tokens_used - self._tokens_reserved)

    def affordable(self, n: int, *, tools: bool = False) -> int:
        """How many of ``n`` calls (tool calls with ``tools``) the budget still allows."""
        if self._out_of_time():
            return 0
        left = self.tool_calls_left() if tools else self.calls_left()
        return n if left is None else min(n, left)

    def _out_of_time(self) -> bool:
        left = self.seconds_left()
        return left is not None and left <= 0

    def note(self, resource: str) -> str:
        """Record that ``resource`` ran out (when something was held back without a refusal); returns it."""
        if resource not in self.exhausted:
            self.exhausted.append(resource)
        return resource

    def _refuse(self, resource: str, message: str) -> BudgetExhausted:
        self.note(resource)
        return BudgetExhausted(resource, f"budget exhausted ({resource}): {message}")

    # -- granting -----------------------------------------------------------------------------------
    def reserve_call(self, est_in: int, max_out: int | None, *, min_out: int = MIN_REPLY_TOKENS) -> Reservation:
        """Grant one model call whose prompt is about ``est_in`` tokens and whose reply may be
        ``max_out`` tokens (``None``: the server's default). The returned reservation's ``max_out`` is
        what to send: lowered to what the token budget leaves. Raises :class:`BudgetExhausted`."""
        if self._out_of_time():
            raise self._refuse("seconds", f"{self.budget.seconds:g} s have passed")
        if self.budget.calls is not None and self.calls_made >= self.budget.calls:
            raise self._refuse("calls", f"all {self.budget.calls} LLM calls are used")
        left = self.tokens_left()
        if left is not None:
            room = left - est_in
            if room < min_out:
                raise self._refuse(
                    "tokens", f"{left} of {self.budget.tokens} tokens left, a call needs about {est_in + min_out}"
                )
            max_out = room if max_out is None else min(max_out, room)
        reserved = est_in + (max_out or 0)
        self.calls_made += 1
        self._tokens_reserved += reserved
        return Reservation(self, est_in, max_out, reserved)

    def reserve_tool(self, source: str, n: int = 1) -> None:
        """Grant ``n`` tool calls of ``source`` (charged to the current costs). Raises :class:`BudgetExhausted`."""
        if self._out_of_time():
            raise self._refuse("seconds", f"{self.budget.seconds:g} s have passed")
        if self.budget.tool_calls is not None and self.tool_calls_made + n > self.budget.tool_calls:
            raise self._refuse("tool_calls", f"{self.tool_calls_made} of {self.budget.tool_calls} tool calls are used")
        self.tool_calls_made += n
        charge_tool(source, n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.to_dict(),
            "used": {
                "calls": self.calls_made,
                "tool_calls": self.tool_calls_made,
                "tokens": self.tokens_used,
                "seconds": round(self.elapsed(), 3),
            },
            "exhausted": list(self.exhausted),
        }
