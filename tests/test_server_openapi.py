"""docs/openapi.json is the schema FastAPI generates for the server, and it is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from llmi.server.openapi import schema_text  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def test_the_committed_schema_is_current():
    assert DOC.read_text(encoding="utf-8") == schema_text(), (
        "docs/openapi.json is out of date: run  python -m llmi.server.openapi docs/openapi.json")


def test_the_schema_documents_every_endpoint():
    paths = json.loads(DOC.read_text(encoding="utf-8"))["paths"]
    for path in ("/v1/chat/completions", "/v1/models", "/api/runs", "/api/runs/{run_id}/events",
                 "/api/runs/{run_id}/document.{fmt}", "/api/render", "/api/reward", "/images/{run_id}/{name}"):
        assert path in paths, path
    chat = paths["/v1/chat/completions"]["post"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert {"401", "413", "429"} <= set(chat["responses"])
