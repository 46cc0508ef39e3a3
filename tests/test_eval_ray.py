"""``llmi eval --ray``: items spread over Ray actors (a local Ray on CPU), each with its own engine, LLM and
judge client, all writing into the same run folder; resuming works as in a local run. Skipped when Ray is
not installed (``pip install ray``)."""

from __future__ import annotations

import json

import pytest

from llmi.config import load_settings
from llmi.eval.runner import EvalConfig, run_eval
from tests.conftest import _judge_server
from tests.helpers import make_png
from tests.sse_server import Script, SSEServer

pytestmark = pytest.mark.slow


def _text(body):
    c = body["messages"][-1]["content"]
    return c if isinstance(c, str) else "".join(p.get("text", "") for p in c if p["type"] == "text")


async def test_items_spread_over_ray_actors_and_resume(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install ray)")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "moon.png").write_bytes(make_png(32, 32))
    data = tmp_path / "b.json"
    data.write_text(json.dumps([{"prompt": f"Topic number {i}", "r1": "is clear", "r2": "shows the moon"} for i in range(6)]))
    tag = '<imgen>{"source": "search", "description": "moon", "params": {"query": "moon"}}</imgen>'

    def policy(n, body):
        return Script(content=["Moon facts. ", tag, " Done."], delay_s=0.05)

    def grade(body, n):
        return json.dumps({"score": 2 if "is clear" in _text(body) else 1, "justification": "ok"})

    with SSEServer(policy) as llm, _judge_server(grade) as (jurl, judge):
        settings = load_settings(None, environ={}, overrides={
            "llm": {"base_url": llm.base_url, "model": "test-model"},
            "eval_judge": {"base_url": jurl, "model": "judge-1"},
            "tools": {"search": {"backends": ["local"]}},
            "backends": {"search": {"local": {"root": str(lib)}}},
            "images": {"min_width": 8, "min_height": 8},
            "cache": {"enabled": False},
        })
        cfg = EvalConfig("llmi-bench", tmp_path / "run", data=data, ray="local", ray_workers=2, concurrency=2)
        summary = await run_eval(settings, cfg)
        assert (len(llm.requests), len(judge.requests)) == (6, 12)
        again = await run_eval(settings, cfg)
        assert (len(llm.requests), len(judge.requests)) == (6, 12)  # resumed: nothing repeated
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    import os

    workers = {r["worker"] for r in rows}
    assert len(rows) == 6 and len(workers) == 2  # both actors got items
    assert all(not w.endswith(f":{os.getpid()}") for w in workers)  # none was done in the driver
    assert summary["scores"]["score"]["mean"] == pytest.approx(7.5) and again["scores"] == summary["scores"]
    assert summary["cost"]["this_run"]["workers"] == 2 and summary["cost"]["this_run"]["generated"] == 6
    assert summary["tools"]["per_tool"]["search"]["success"] == 6
    assert len(list((tmp_path / "run" / "documents").glob("*.json"))) == 6
