"""The ``llmi eval`` command: options, one-line errors, and kill -9 at random points followed by the same
command again — nothing that had finished is generated or judged twice (requests counted at the loopback
servers, which live in this process while the command runs in a child)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmi.cli import app
from tests.conftest import _judge_server
from tests.helpers import make_png
from tests.sse_server import Script, SSEServer

runner = CliRunner()


def test_help_lists_every_benchmark_and_compare():
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    for name in ("llmi-bench", "opening", "isg", "llmi-test", "compare"):
        assert name in result.output


def test_needs_data_or_outputs(tmp_path):
    result = runner.invoke(app, ["eval", "opening", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--data" in result.output


def test_missing_judge_is_one_line_before_anything_is_written(tmp_path):
    data = tmp_path / "b.json"
    data.write_text(json.dumps([{"prompt": "x", "r1": "y"}]))
    result = runner.invoke(app, ["eval", "llmi-bench", "--data", str(data), "-o", str(tmp_path / "run"), "--no-progress"],
                           env={"LLMI_CONFIG": ""})
    assert result.exit_code == 2 and "eval_judge: no base_url" in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_ids_and_bad_data_exit_2(tmp_path):
    data = tmp_path / "b.json"
    data.write_text(json.dumps([{"prompt": "x", "r1": "y"}]))
    base = ["eval", "llmi-bench", "--data", str(data), "-o", str(tmp_path / "run"), "--judge-url", "http://127.0.0.1:9/v1",
            "--no-progress"]
    result = runner.invoke(app, base + ["--ids", "7,8"])
    assert result.exit_code == 2 and "unknown item id(s): 7, 8" in result.output
    data.write_text("{not json")
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "is not a JSON file" in result.output


# ------------------------------------------------------------------------------------------------
# kill -9 and resume
# ------------------------------------------------------------------------------------------------

N_ITEMS = 8
CRITERIA = ("is clear", "shows the moon")


def _user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content if p["type"] == "text")


def _topic(text: str) -> int:
    return int(re.search(r"Topic number (\d+)", text).group(1))


def _policy(n: int, body: dict) -> Script:
    i = _topic(_user_text(body))
    tag = '<imgen>{"source": "search", "description": "moon", "params": {"query": "moon"}}</imgen>'
    return Script(content=[f"# Topic {i}\n", "The moon. ", tag, "\nDone."], delay_s=0.12)


def _grade(body: dict, n: int):
    text = _user_text(body)
    return ("sleep", 0.15, json.dumps({"score": 2 if "is clear" in text else 1, "justification": "ok"}))


def _config(tmp_path: Path, llm_url: str, judge_url: str) -> Path:
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "moon.png").write_bytes(make_png(64, 64, (200, 200, 220)))
    cfg = tmp_path / "llmi.toml"
    cfg.write_text(f"""
[llm]
base_url = "{llm_url}"
model = "test-model"

[eval_judge]
base_url = "{judge_url}"
model = "judge-1"
concurrency = 3

[tools.search]
backends = ["local"]

[backends.search.local]
root = "{lib}"

[images]
min_width = 16
min_height = 16

[cache]
enabled = false
""")
    return cfg


def _run(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().split(b"\n"):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a torn last line
    return out


@pytest.mark.slow
def test_kill_at_random_points_and_resume_repeats_nothing_finished(tmp_path):
    data = tmp_path / "text_only.json"
    data.write_text(json.dumps([{"prompt": f"Topic number {i}", "r1": CRITERIA[0], "r2": CRITERIA[1]} for i in range(N_ITEMS)]))
    out = tmp_path / "run"
    rng = random.Random(int(os.environ.get("LLMI_TEST_SEED", "7")))
    with SSEServer(_policy) as llm, _judge_server(_grade) as (jurl, judge):
        cfg = _config(tmp_path, llm.base_url, jurl)
        cmd = [sys.executable, "-c", "from llmi.cli import main; main()", "eval", "llmi-bench", "--data", str(data),
               "-o", str(out), "--config", str(cfg), "--concurrency", "2", "--no-progress"]
        env = {**os.environ, "LLMI_CONFIG": ""}
        docs_done: set[str] = set()
        calls_done: set[tuple[str, str]] = set()
        output = ""
        for attempt in range(3):  # killed, killed, then run to the end
            n_llm, n_judge = len(llm.requests), len(judge.requests)
            proc = _run(cmd, env)
            if attempt < 2:
                # kill once a few more judge answers are stored (mid-item, between its calls) ...
                target = len(_lines(out / "judge_calls.jsonl")) + rng.randint(1, 5)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and proc.poll() is None:
                    if len(_lines(out / "judge_calls.jsonl")) >= target:
                        break
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.25))  # ... or a little later, wherever that falls
                assert proc.poll() is None, "the run ended before it could be killed"
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                assert len({r["id"] for r in _lines(out / "results.jsonl")}) < N_ITEMS
            else:
                output = proc.communicate(timeout=120)[0].decode()
                assert proc.returncode == 0, output
            # nothing that had finished before this run was asked again in it
            for body in llm.requests[n_llm:]:
                item = str(_topic(_user_text(body)) + 1)
                assert item not in docs_done, f"run {attempt + 1}: item {item} was generated again"
            for body in judge.requests[n_judge:]:
                text = _user_text(body)
                item = str(_topic(text) + 1)
                key = "r1" if CRITERIA[0] in text.split("criterion to grade", 1)[-1] else "r2"
                assert (item, key) not in calls_done, f"run {attempt + 1}: judge call {item}/{key} was asked again"
            docs_done = {p.stem for p in (out / "documents").glob("*.json")}
            calls_done = {(c["item"], c["key"]) for c in _lines(out / "judge_calls.jsonl") if c.get("ok")}
    rows = _lines(out / "results.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(str(i + 1) for i in range(N_ITEMS))  # each once, consolidated
    assert all(r["score"] == pytest.approx(0.75) for r in rows)
    assert len(judge.requests) >= 2 * N_ITEMS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"]["finished"] == N_ITEMS and summary["scores"]["score"]["mean"] == pytest.approx(7.5)
    assert "score 7.50" in output and "report.html" in output


def test_options_reach_the_run(tmp_path, monkeypatch):
    import llmi.eval.runner as runner_mod

    seen = {}

    async def fake_run_eval(settings, cfg, on_progress=None, **kw):
        seen.update(settings=settings, cfg=cfg)
        return {"title": "T", "benchmark": "llmi-bench", "items": {"finished": 0, "total": 0, "failed": 0, "pending": 0,
                "failure_kinds": {}}, "scores": {}, "tools": {}, "cost": {}, "judge": {}}

    monkeypatch.setattr(runner_mod, "run_eval", fake_run_eval)
    data = tmp_path / "b.json"
    data.write_text("[]")
    model = tmp_path / "my-4b"
    model.mkdir()
    result = runner.invoke(app, ["eval", "llmi-bench", "--data", str(data), "-o", str(tmp_path / "run"), "--model-path",
                                 str(model), "--judge-url", "http://j/v1", "--judge-model", "gpt-4o", "--judge-concurrency",
                                 "3", "--limit", "5", "--ids", "1,2", "--ids", "3", "--seed", "9", "--concurrency", "6",
                                 "--option", "steps_hint=false", "--retry-errors", "--no-progress"], env={"LLMI_CONFIG": ""})
    assert result.exit_code == 0, result.output
    s, cfg = seen["settings"], seen["cfg"]
    assert s.llm.backend == "transformers" and s.llm.model_path == str(model)
    assert (s.eval_judge.base_url, s.eval_judge.model, s.eval_judge.concurrency) == ("http://j/v1", "gpt-4o", 3)
    assert (cfg.limit, cfg.ids, cfg.seed, cfg.concurrency, cfg.retry_errors) == (5, ["1", "2", "3"], 9, 6, True)
    assert cfg.options == {"steps_hint": False, "model_name": "my-4b"}
