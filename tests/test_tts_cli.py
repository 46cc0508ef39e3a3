"""``llmi generate --tts N``: the document, one stderr line per stage and per candidate, the trace, the
budget flags and their errors — against a loopback policy server."""

from __future__ import annotations

import importlib
import json

from typer.testing import CliRunner

from tests.sse_server import SSEServer
from tests.tts_fakes import LIBRARY, graded_by_marker, policy_script, tag

LIGHTHOUSE = "A red and white lighthouse on a rocky coast"
CANDS = {
    0: "OK-ANSWER The coast.\n" + tag("search", LIGHTHOUSE, query="lighthouse") + "\nEnd.",
    1: "BEST-ANSWER The rocky coast.\n" + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\nEnd.",
}
TOML = f"""
[tools.search]
backends = ["local"]
[tools.code]
backends = []
[backends.search.local]
root = "{LIBRARY}"
[cache]
enabled = false
"""


def grade(body):
    return graded_by_marker({"BEST-ANSWER": (5, 5), "OK-ANSWER": (3, 3)})(body, 0)


def _cli(args, tmp_path, monkeypatch):
    from llmi.cli import app

    for mod in ("generate", "render", "doctor", "reward"):
        importlib.import_module(f"llmi.cli.{mod}")
    cfg = tmp_path / "llmi.toml"
    cfg.write_text(TOML, encoding="utf-8")
    for var in ("LLMI_BASE_URL", "LLMI_MODEL", "LLMI_API_KEY", "LLMI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return CliRunner().invoke(app, ["generate", *args, "--config", str(cfg)])


def test_cli_tts_writes_the_document_stage_lines_and_the_trace(tmp_path, monkeypatch):
    out = tmp_path / "coast.json"
    helpers = {"grade": grade, "rewrite": lambda b: "lighthouse rocky coast", "polish": lambda b: "NO CHANGES"}
    with SSEServer(policy_script(CANDS, helpers)) as srv:
        res = _cli(["A coast report", "-o", str(out), "--base-url", srv.base_url, "-m", "test-model",
                    "--tts", "2", "--tts-budget", "calls=20,seconds=60", "--trace"], tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    err = res.stderr
    for line in ("sample   #0 t=0.7 seed=0", "sample   #1 t=0.9 seed=1", "check    #1  kept: clean",
                 "select    winner #1", "execute   1 of 1 image(s)", "enhance  slot 0 search", "polish    no changes needed"):
        assert line in err, line
    assert "tts 2: winner #1" in err and "calls" in err
    assert "BEST-ANSWER The rocky coast." in res.stdout  # the final text, once, at the end
    doc = json.loads(out.read_text())
    assert [b["type"] for b in doc["blocks"]] == ["text", "image", "text"]
    trace = json.loads((tmp_path / "coast.trace.json").read_text())["tts"]
    assert trace["winner"] == 1 and [s["name"] for s in trace["stages"]] == [
        "sample", "check", "select", "execute", "enhance", "polish"]
    assert trace["statistics"]["budget"]["budget"] == {"calls": 20, "seconds": 60.0}
    assert len(trace["candidates"]) == 2 and trace["candidates"][1]["response"].startswith("BEST-ANSWER")


def test_cli_tts_budget_cut_is_a_warning_and_the_best_so_far_is_written(tmp_path, monkeypatch):
    out = tmp_path / "coast.md"
    with SSEServer(policy_script(CANDS, {"grade": grade})) as srv:
        res = _cli(["A coast report", "-o", str(out), "--base-url", srv.base_url, "-m", "test-model",
                    "--tts", "2", "--tts-budget", "calls=3", "--tts-stages", "sample,check,select,polish"],
                   tmp_path, monkeypatch)
        n_requests = len(srv.requests)
    assert res.exit_code == 0, res.output
    assert n_requests == 3
    err = " ".join(res.stderr.split())
    assert "the budget (calls=3) cut: select (calls); polish (calls)" in err
    assert "· enhance skipped: switched off" in err
    assert out.exists() and "The coast." in out.read_text()


def test_cli_tts_bad_flags_exit_2_with_one_message(tmp_path, monkeypatch):
    res = _cli(["p", "-o", str(tmp_path / "o.md"), "--tts", "2", "--tts-budget", "calls=many"], tmp_path, monkeypatch)
    assert res.exit_code == 2 and "calls='many' is not a number" in " ".join(res.stderr.split())
    res = _cli(["p", "-o", str(tmp_path / "o.md"), "--tts-stages", "sample,shine"], tmp_path, monkeypatch)
    assert res.exit_code == 2 and "unknown stage(s) shine" in " ".join(res.stderr.split())
    res = _cli(["p", "-o", str(tmp_path / "o.md"), "--tts", "0"], tmp_path, monkeypatch)
    assert res.exit_code == 2 and ">= 1" in res.stderr
    assert not (tmp_path / "o.md").exists()


def test_cli_tts_seed_and_temperature_reach_every_candidate(tmp_path, monkeypatch):
    with SSEServer(policy_script({10: "First.", 11: "Second."}, {"grade": grade, "polish": lambda b: "NO CHANGES"})) as srv:
        res = _cli(["p", "-o", str(tmp_path / "o.md"), "--base-url", srv.base_url, "-m", "test-model", "--tts", "2",
                    "--seed", "10", "--temperature", "0.3"], tmp_path, monkeypatch)
        sampled = [(r["seed"], r["temperature"]) for r in srv.requests if r.get("seed") is not None]
    assert res.exit_code == 0, res.output
    assert sorted(sampled) == [(10, 0.3), (11, 0.3)]
