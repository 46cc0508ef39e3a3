"""``llmi reward``: the JSONL contract, rules-only mode, judges over HTTP, resume after interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llmi.cli.reward  # noqa: F401 - registers the command
from llmi.cli import app
from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.images import ImageData
from tests.helpers import make_png

REWARD_KEYS = {"score", "s_num", "s_llm", "s_mllm", "r_tool", "text", "image", "quality", "task_rel", "text_image_rel", "errors", "violations"}
PNG = ImageData.from_bytes(make_png(6, 6))


def tag(source: str, **params) -> str:
    return "<imgen>" + json.dumps({"source": source, "description": f"a {source}", "params": params}) + "</imgen>"


def reply(body, n):
    if "Image Quality" in body["messages"][0]["content"]:
        return "Image Quality: 4\nTask Relevance: 4\nText-Image Relevance: 4"
    return "Text: 5\nImage: 5"


def invoke(args: list[str]):
    return CliRunner().invoke(app, ["reward", *args], catch_exceptions=False)


def row_with_document(i: int, ok: bool = True) -> dict:
    response = f"Paragraph {i}.\n" + tag("search", query=f"q{i}")
    block = ImageBlock(PNG, "search", "a search") if ok else FailureBlock("search", "no result", "no_result")
    doc = Document(blocks=[TextBlock(f"Paragraph {i}.\n"), block])
    return {"prompt": f"Question {i}", "response": response, "image_num": 1, "tools": ["search"], "document": doc.to_dict()}


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_rules_only(tmp_path):
    rows = [
        row_with_document(0),
        row_with_document(1, ok=False),
        {"prompt": "Q", "response": "Plain prose.", "image_num": -1, "tools": [], "split": "test"},
        "this line is not json",
        {"prompt": "Q", "response": "x", "image_num": "two", "tools": []},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke([str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--no-judges", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["_line"] for r in out] == [0, 1, 2, 3, 4]  # consolidated in input order
    for r in out:
        assert REWARD_KEYS <= set(r["reward"])
        assert r["reward"]["score"] is None
    assert out[0]["reward"]["s_num"] == 1.0 and out[0]["reward"]["r_tool"] == 1.0
    assert out[0]["prompt"] == "Question 0"  # the input row is kept
    assert out[1]["reward"]["s_num"] == 0.0 and out[1]["reward"]["r_tool"] == 0.5
    assert out[2]["reward"]["s_num"] == 1.0
    assert "not JSON" in out[3]["reward"]["errors"]["input"]
    assert "image_num" in out[4]["reward"]["errors"]["input"]


def test_with_judges_over_http(tmp_path, judge_server):
    write_jsonl(tmp_path / "in.jsonl", [row_with_document(i) for i in range(4)])
    with judge_server(reply) as (url, server):
        result = invoke([
            str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
            "--llm-judge-url", url, "--llm-judge-model", "judge-1",
            "--mllm-judge-url", url, "--mllm-judge-model", "judge-1", "--no-progress",
        ])
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == 4 and len(server.requests) == 8
    expected = 0.2 * 1 + 0.3 * 0.75 + 0.5 * 1.0
    assert all(r["reward"]["score"] == pytest.approx(expected) for r in out)
    assert out[0]["reward"]["text"] == 5 and out[0]["reward"]["quality"] == 4
    assert "4 row(s) scored" in result.output


def test_missing_judge_url_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no llmi.toml around
    monkeypatch.setenv("LLMI_CONFIG", "")
    write_jsonl(tmp_path / "in.jsonl", [row_with_document(0)])
    result = invoke([str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--no-progress"])
    assert result.exit_code == 2
    assert "--llm-judge-url" in result.output


def test_judge_outage_marks_rows_and_retry_errors_redoes_them(tmp_path, monkeypatch, judge_server):
    monkeypatch.setenv("LLMI_LLM_JUDGE__RETRIES", "1")  # settings from the environment reach the judges
    monkeypatch.setenv("LLMI_MLLM_JUDGE__RETRIES", "1")
    write_jsonl(tmp_path / "in.jsonl", [row_with_document(i) for i in range(3)])
    args = [str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--no-progress"]
    with judge_server(lambda b, n: (503, b"down", {"Content-Type": "text/plain"})) as (url, _):
        result = invoke(args + ["--llm-judge-url", url, "--mllm-judge-url", url, "--llm-judge-model", "m", "--mllm-judge-model", "m"])
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "out.jsonl")
    assert all(r["reward"]["score"] is None and "llm_judge" in r["reward"]["errors"] for r in out)
    assert "3 dropped" in result.output
    with judge_server(reply) as (url, server):
        urls = ["--llm-judge-url", url, "--mllm-judge-url", url, "--llm-judge-model", "m", "--mllm-judge-model", "m"]
        invoke(args + urls)  # without --retry-errors nothing is redone
        assert server.requests == []
        invoke(args + urls + ["--retry-errors"])
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == 3 and all(r["reward"]["score"] is not None for r in out)


def test_resume_skips_done_rows_and_repairs_a_torn_line(tmp_path, judge_server):
    rows = [row_with_document(i) for i in range(5)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    done = dict(rows[1], reward={"score": 0.5, "errors": {}}, _line=1)
    (tmp_path / "out.jsonl").write_text(json.dumps(done) + "\n" + '{"prompt": "Question 3", "resp', encoding="utf-8")
    with judge_server(reply) as (url, server):
        result = invoke([
            str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--no-progress",
            "--llm-judge-url", url, "--mllm-judge-url", url, "--llm-judge-model", "m", "--mllm-judge-model", "m",
        ])
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 8  # 4 rows x 2 judges: row 1 was not redone
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["_line"] for r in out] == [0, 1, 2, 3, 4]
    assert out[1]["reward"]["score"] == 0.5  # kept as it was


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupt_then_resume_loses_nothing(tmp_path, judge_server, sig):
    """A real SIGINT or SIGKILL to a real ``llmi reward`` process part-way, then the same command again."""
    n_rows = 12
    write_jsonl(tmp_path / "in.jsonl", [row_with_document(i) for i in range(n_rows)])
    out_path = tmp_path / "out.jsonl"

    def slow(body, n):
        time.sleep(0.15)
        return reply(body, n)

    with judge_server(slow) as (url, server):
        cmd = [
            sys.executable, "-c", "import sys; from llmi.cli import main; sys.argv[0] = 'llmi'; main()",
            "reward", str(tmp_path / "in.jsonl"), "-o", str(out_path), "--no-progress", "--judge-concurrency", "2",
            "--llm-judge-url", url, "--mllm-judge-url", url, "--llm-judge-model", "m", "--mllm-judge-model", "m",
        ]
        env = dict(os.environ, LLMI_CONFIG="", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out_path.exists() and out_path.read_text().count("\n") >= 3:
                break
            time.sleep(0.02)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=30)
        if sig == signal.SIGINT:
            assert proc.returncode == 130, output
            assert b"run the same command again" in output
        else:
            assert proc.returncode == -signal.SIGKILL
        first = read_jsonl(out_path)
        assert 3 <= len(first) < n_rows, output
        first_lines = {r["_line"] for r in first}
        requests_before = len(server.requests)

        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    out = read_jsonl(out_path)
    assert [r["_line"] for r in out] == list(range(n_rows))  # every row exactly once, in order
    assert all(r["reward"]["score"] is not None for r in out)
    # the second run scored only the rows that were missing
    assert len(server.requests) - requests_before == 2 * (n_rows - len(first_lines))


def test_rows_from_a_no_judges_run_are_scored_by_a_judged_run(tmp_path, judge_server):
    # --no-judges rows have score null and no error: they are not "done" for a run with judges
    write_jsonl(tmp_path / "in.jsonl", [row_with_document(i) for i in range(2)])
    out_path = tmp_path / "out.jsonl"
    assert invoke([str(tmp_path / "in.jsonl"), "-o", str(out_path), "--no-judges", "--no-progress"]).exit_code == 0
    assert all(r["reward"]["score"] is None and r["reward"]["mllm"] == "off" for r in read_jsonl(out_path))
    # another rules-only run has nothing left to do
    again = invoke([str(tmp_path / "in.jsonl"), "-o", str(out_path), "--no-judges", "--no-progress"])
    assert "2 already done" in " ".join(again.output.split())
    with judge_server(reply) as (url, server):
        result = invoke([
            str(tmp_path / "in.jsonl"), "-o", str(out_path), "--llm-judge-url", url, "--llm-judge-model", "judge-1",
            "--mllm-judge-url", url, "--mllm-judge-model", "judge-1", "--no-progress",
        ])
    assert result.exit_code == 0, result.output
    out = read_jsonl(out_path)
    assert [r["_line"] for r in out] == [0, 1] and all(r["reward"]["score"] is not None for r in out)
    assert len(server.requests) == 4


def test_reward_table_of_the_config_is_used_and_flags_win(tmp_path, judge_server):
    # the task needs search and code; only search was used: r_tool = 0.2 / (0.2 + 0.4) = 1/3, S_num = 1
    write_jsonl(tmp_path / "in.jsonl", [dict(row_with_document(0), tools=["search", "code"])])
    cfg = tmp_path / "llmi.toml"
    cfg.write_text("[reward]\nw_num = 1.0\nw_mllm = 0.0\nw_llm = 0.0\nw_tool = 1.0\n", encoding="utf-8")
    with judge_server(reply) as (url, _):
        urls = ["--llm-judge-url", url, "--mllm-judge-url", url, "--llm-judge-model", "m", "--mllm-judge-model", "m"]
        base = [str(tmp_path / "in.jsonl"), "--config", str(cfg), "--no-progress", *urls]
        assert invoke([*base, "-o", str(tmp_path / "a.jsonl")]).exit_code == 0
        assert invoke([*base, "-o", str(tmp_path / "b.jsonl"), "--tool-weight", "0"]).exit_code == 0
    (a,), (b,) = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    assert a["reward"]["r_tool"] == pytest.approx(1 / 3)
    assert a["reward"]["score"] == pytest.approx((1 + 1 / 3) / 2)  # (w_num·S_num + w_tool·r_tool) / Σw
    assert b["reward"]["score"] == pytest.approx(1.0)  # --tool-weight 0 overrides the file's w_tool
    cfg.write_text("[reward]\nw_num = 0.0\nw_mllm = 1.0\nw_llm = 0.0\n", encoding="utf-8")
    with judge_server(reply) as (url, _):
        urls = ["--llm-judge-url", url, "--mllm-judge-url", url, "--llm-judge-model", "m", "--mllm-judge-model", "m"]
        result = invoke([str(tmp_path / "in.jsonl"), "--config", str(cfg), "--no-progress", *urls, "-o", str(tmp_path / "c.jsonl")])
    assert result.exit_code == 0, result.output
    (c,) = read_jsonl(tmp_path / "c.jsonl")
    assert c["reward"]["score"] == pytest.approx(0.75)  # S_mllm·S_num alone


def test_a_bad_reward_table_is_a_clear_error(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [row_with_document(0)])
    cfg = tmp_path / "llmi.toml"
    cfg.write_text("[reward]\nw_num = -1\n", encoding="utf-8")
    result = invoke([str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--config", str(cfg), "--no-judges"])
    assert result.exit_code == 2 and "w_num" in result.output


def test_a_row_with_unusable_input_is_done_and_not_redone_by_a_rerun(tmp_path, judge_server):
    # a line that is not JSON and a row without a response: their rows hold the input error (mllm "off",
    # like a --no-judges row) but are done — a rerun with judges repeats nothing
    (tmp_path / "in.jsonl").write_text(
        json.dumps(row_with_document(0)) + "\nnot json {\n" + json.dumps({"prompt": "Q"}) + "\n", encoding="utf-8")
    out_path = tmp_path / "out.jsonl"
    with judge_server(reply) as (url, server):
        args = [str(tmp_path / "in.jsonl"), "-o", str(out_path), "--llm-judge-url", url, "--llm-judge-model", "judge-1",
                "--mllm-judge-url", url, "--mllm-judge-model", "judge-1", "--no-progress"]
        assert invoke(args).exit_code == 0
        first = read_jsonl(out_path)
        requests = len(server.requests)
        again = invoke(args)
    assert again.exit_code == 0, again.output
    assert "3 already done" in " ".join(again.output.split())
    assert read_jsonl(out_path) == first and len(server.requests) == requests
    assert [sorted(r["reward"]["errors"]) for r in first] == [[], ["input"], ["input"]]


def test_a_line_that_is_not_utf8_is_that_rows_error_and_a_bom_is_allowed(tmp_path):
    good = json.dumps(row_with_document(0)).encode()
    (tmp_path / "in.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b'\n{"prompt": "x\xff", "response": "y"}\n' + good + b"\n")
    out_path = tmp_path / "out.jsonl"
    result = invoke([str(tmp_path / "in.jsonl"), "-o", str(out_path), "--no-judges", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = read_jsonl(out_path)
    assert [r["_line"] for r in out] == [0, 1, 2]
    assert out[0]["reward"]["errors"] == {} and out[2]["reward"]["errors"] == {}
    assert out[1]["reward"]["errors"]["input"] == "line 2 is not UTF-8 text (invalid byte at column 14)"
