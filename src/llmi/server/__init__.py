"""``llmi serve``: an OpenAI-compatible illustrated-answer endpoint, native run endpoints and a web page.

Modules: :mod:`.settings` (the ``[server]`` section, no web imports), :mod:`.auth` (API keys, rate and
concurrency limits, body size limit), :mod:`.store` (sqlite index + files), :mod:`.runs` (live runs,
their event logs, the native ``/api`` routes), :mod:`.openai_api` (``/v1``), :mod:`.view` (sanitised HTML
for the page, failure images), :mod:`.app` (:func:`create_app`). Needs the ``server`` extra
(``pip install 'llmi[server]'``); importing this package alone does not import FastAPI.
"""

from __future__ import annotations

from typing import Any

from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
