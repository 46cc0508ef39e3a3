"""Checks that run before any model loads: the judges answer, the tools the data needs exist.

A training step costs minutes of GPU time; a judge that is not configured, not reachable or serving an
unexpected set of models would otherwise surface only at the first reward call, after the weights are
loaded. Each check raises a typed error naming what to fix.
"""

from __future__ import annotations

import logging
from typing import Sequence

import httpx

from ..config import Settings
from .errors import JudgeUnreachable

log = logging.getLogger(__name__)

SECTIONS = ("llm_judge", "mllm_judge")


async def check_judges(settings: Settings, *, timeout_s: float = 8.0) -> dict[str, str]:
    """Ask each judge endpoint for ``/models``; returns ``{section: model}`` (the model it will use).

    Raises :class:`JudgeUnreachable` for a judge without ``base_url``, one that does not answer in
    ``timeout_s``, rejects the key, or serves several models when none is configured.
    """
    from ..reward.judges import resolve_api_key

    models: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for name in SECTIONS:
            js = getattr(settings, name)
            if not js.base_url:
                raise JudgeUnreachable(
                    f"[{name}] base_url is not set: training needs both judges (an OpenAI-compatible endpoint, "
                    f"e.g. vllm serve); set it in the config or with --{name.replace('_', '-')}-url"
                )
            url = js.base_url.rstrip("/") + "/models"
            key = resolve_api_key(js, name)
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            try:
                resp = await client.get(url, headers=headers)
            except httpx.HTTPError as exc:
                raise JudgeUnreachable(
                    f"the {name.replace('_', ' ')} at {js.base_url} is unreachable ({type(exc).__name__}: {exc}); "
                    "start it or fix [" + name + "] base_url"
                ) from exc
            if resp.status_code in (401, 403):
                raise JudgeUnreachable(f"the {name.replace('_', ' ')} at {js.base_url} refused the key "
                                       f"(HTTP {resp.status_code}); check [{name}] api_key / api_key_env")
            if resp.status_code >= 400:
                if js.model:  # some servers do not list models; the configured one is tried at the first call
                    log.warning("%s: GET %s answered HTTP %d; using the configured model %s", name, url,
                                resp.status_code, js.model)
                    models[name] = js.model
                    continue
                raise JudgeUnreachable(f"the {name.replace('_', ' ')} at {js.base_url} answered HTTP "
                                       f"{resp.status_code} to GET /models; is base_url right (it ends in /v1)?")
            try:
                served = [m["id"] for m in resp.json().get("data", [])]
            except (ValueError, AttributeError, KeyError, TypeError):
                served = []
            if js.model:
                if served and js.model not in served:
                    raise JudgeUnreachable(f"the {name.replace('_', ' ')} at {js.base_url} does not serve "
                                           f"{js.model!r} (it serves {', '.join(served)})")
                models[name] = js.model
            elif len(served) == 1:
                models[name] = served[0]
            else:
                raise JudgeUnreachable(
                    f"the {name.replace('_', ' ')} at {js.base_url} serves {len(served)} models; choose one with "
                    f"[{name}] model"
                )
    return models


async def usable_tools(settings: Settings) -> list[str]:
    """The tools this configuration can run (what llmi's system prompt advertises)."""
    from ..engine import Engine

    async with Engine(settings, cache=False) as engine:
        return engine.usable_tools()


def missing_tools(needed: Sequence[str], usable: Sequence[str]) -> list[str]:
    return sorted(set(needed) - set(usable))
