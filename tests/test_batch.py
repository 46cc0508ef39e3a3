"""The batch runner: append as rows finish, resume by id, error rows, progress, and kill -9 at any moment."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmi.batch import BatchProgress, consolidate, iter_output, read_output, run_batch
from llmi.errors import ConfigError, InputError, ToolError


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rows(n: int, start: int = 0):
    return ((f"r{i}", {"x": i}) for i in range(start, start + n))


async def test_rows_are_written_once_each_in_input_order(tmp_path):
    out = tmp_path / "out.jsonl"

    async def work(rid, row):
        await asyncio.sleep(random.random() / 200)  # finish out of order
        return {"y": row["x"] * 2}

    summary = await run_batch(rows(20), work, out, concurrency=5)
    got = read(out)
    assert [r["id"] for r in got] == [f"r{i}" for i in range(20)]
    assert all(r["y"] == 2 * i for i, r in enumerate(got))
    assert (summary.total, summary.done, summary.failed, summary.skipped, summary.complete) == (20, 20, 0, 0, True)


async def test_concurrency_is_capped_and_rows_are_read_lazily(tmp_path):
    running, peak, pulled = 0, 0, []

    def source():
        for i in range(30):
            pulled.append(i)
            yield str(i), i

    async def work(rid, row):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        assert len(pulled) - row <= 4  # never more than the cap ahead of the row being done
        await asyncio.sleep(0.002)
        running -= 1
        return {}

    await run_batch(source(), work, tmp_path / "o.jsonl", concurrency=3)
    assert peak == 3


async def test_a_rerun_skips_done_ids_and_redoes_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "r1", "y": "kept"}) + "\n" + json.dumps({"id": "r3", "y": "kept"}) + "\n")
    seen = []

    async def work(rid, row):
        seen.append(rid)
        return {"y": row["x"]}

    summary = await run_batch(rows(5), work, out, concurrency=2)
    assert sorted(seen) == ["r0", "r2", "r4"]
    got = read(out)
    assert [r["id"] for r in got] == ["r0", "r1", "r2", "r3", "r4"]
    assert got[1]["y"] == "kept" and got[3]["y"] == "kept"
    assert summary.skipped == 2 and summary.done == 3
    seen.clear()
    again = await run_batch(rows(5), work, out, concurrency=2)
    assert seen == [] and again.done == 0 and again.skipped == 5


async def test_a_bad_row_becomes_a_typed_error_line_and_the_batch_goes_on(tmp_path):
    out = tmp_path / "out.jsonl"
    broken = {"r1": ValueError("no x here"), "r3": ToolError("search down", kind="no_result")}

    async def work(rid, row):
        if rid in broken:
            raise broken[rid]
        return {"ok": True}

    summary = await run_batch(rows(5), work, out, concurrency=2)
    got = {r["id"]: r for r in read(out)}
    assert summary.failed == 2 and summary.done == 5 and summary.complete
    assert got["r1"]["error"] == {"kind": "bad_row", "message": "ValueError: no x here"}
    assert got["r3"]["error"]["kind"] == "no_result"
    assert all(got[i]["ok"] for i in ("r0", "r2", "r4"))

    calls = []

    async def fixed(rid, row):
        calls.append(rid)
        return {"ok": True}

    await run_batch(rows(5), fixed, out, concurrency=2)  # errors are kept without retry_errors
    assert calls == []
    await run_batch(rows(5), fixed, out, concurrency=2, retry_errors=True)
    assert sorted(calls) == ["r1", "r3"]
    got = read(out)
    assert [r["id"] for r in got] == [f"r{i}" for i in range(5)] and all(r.get("ok") for r in got)


async def test_unserialisable_result_is_that_rows_error(tmp_path):
    async def work(rid, row):
        return {"value": object()} if rid == "r0" else {"value": 1}

    await run_batch(rows(2), work, tmp_path / "o.jsonl", concurrency=1)
    got = read(tmp_path / "o.jsonl")
    assert got[0]["error"]["kind"] == "bad_row" and got[1]["value"] == 1


async def test_config_error_stops_the_batch_and_keeps_what_was_written(tmp_path):
    out = tmp_path / "out.jsonl"

    async def work(rid, row):
        if rid == "r3":
            raise ConfigError("no judge configured")
        return {"ok": True}

    with pytest.raises(ConfigError):
        await run_batch(rows(6), work, out, concurrency=1)
    assert [r["id"] for r in read(out)] == ["r0", "r1", "r2"]


async def test_a_torn_last_line_is_cut_and_redone(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "r0", "y": 0}\n{"id": "r1", "y"')
    assert [r["id"] for r in iter_output(out)] == ["r0"]
    done = []

    async def work(rid, row):
        done.append(rid)
        return {"y": row["x"]}

    await run_batch(rows(3), work, out, concurrency=1)
    assert sorted(done) == ["r1", "r2"]
    assert [r["id"] for r in read(out)] == ["r0", "r1", "r2"]


async def test_a_valid_last_line_without_newline_counts_as_torn(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "r0", "y": 0}')  # the newline is part of the one write: without it, not finished
    assert list(iter_output(out)) == []


async def test_progress_events(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "r0"}) + "\n")
    events: list[BatchProgress] = []

    async def work(rid, row):
        if rid == "r2":
            raise KeyError("x")
        return {}

    async def on_event(ev):  # async callbacks are awaited
        events.append(ev)

    await run_batch(rows(4), work, out, concurrency=1, on_event=on_event, total=4)
    assert events[0].done == 0 and events[0].total == 3
    assert [e.done for e in events] == [0, 1, 2, 3]
    assert events[-1].failed == 1 and events[-1].skipped == 1 and events[-1].total == 3
    assert {e.id for e in events[1:]} == {"r1", "r2", "r3"}
    assert events[-1].to_dict()["type"] == "batch_progress"


async def test_duplicate_input_ids_are_done_once(tmp_path):
    calls = []

    async def work(rid, row):
        calls.append(rid)
        return {}

    summary = await run_batch([("a", 1), ("b", 2), ("a", 3)], work, tmp_path / "o.jsonl", concurrency=2)
    assert sorted(calls) == ["a", "b"] and summary.total == 2


async def test_integer_ids_and_a_custom_id_key(tmp_path):
    out = tmp_path / "o.jsonl"

    async def work(rid, row):
        return {"_line": "ignored", "v": row}

    await run_batch([(0, "a"), (1, "b")], work, out, concurrency=2, id_key="_line")
    assert read(out) == [{"_line": 0, "v": "a"}, {"_line": 1, "v": "b"}]
    assert set(read_output(out, id_key="_line")) == {0, 1}


async def test_a_second_runner_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "o.jsonl"
    gate = asyncio.Event()

    async def slow(rid, row):
        await gate.wait()
        return {}

    first = asyncio.ensure_future(run_batch(rows(2), slow, out, concurrency=2))
    await asyncio.sleep(0.05)
    with pytest.raises(InputError, match="another run"):
        await run_batch(rows(2), slow, out, concurrency=2)
    gate.set()
    await first
    assert len(read(out)) == 2


def test_consolidate_keeps_the_last_row_per_id(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "b", "v": 1}, {"id": "a"}, {"id": "b", "v": 2}, {"id": "z"}]))
    consolidate(out, ["a", "b"])
    assert read(out) == [{"id": "a"}, {"id": "b", "v": 2}, {"id": "z"}]


# ------------------------------------------------------------------------------------------------
# kill -9 at random moments, then run again: nothing lost, nothing repeated
# ------------------------------------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, random, sys
    from pathlib import Path
    from llmi.batch import run_batch

    out, log, run, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    rng = random.Random(int(run))

    async def work(rid, row):
        os.write(log_fd, f"{run} {rid}\\n".encode())
        await asyncio.sleep(rng.random() * 0.02)
        return {"value": row * 3, "pad": "x" * rng.randrange(0, 20000)}  # some rows span many pages

    asyncio.run(run_batch(((f"id{i}", i) for i in range(n)), work, out, concurrency=6))
    """
)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_loses_and_repeats_nothing(tmp_path):
    n = 400
    out, log, script = tmp_path / "out.jsonl", tmp_path / "starts.log", tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    rng = random.Random(7)
    finished_before: dict[int, set[str]] = {}  # run -> ids finished (in OUT) when that run started
    run = 0
    for run in range(1, 6):
        finished_before[run] = {r["id"] for r in iter_output(out)}
        proc = subprocess.Popen([sys.executable, str(script), str(out), str(log), str(run), str(n)], env=env)
        # kill mid-flight: once this run has started a random number of rows, after a random extra moment
        target = len(_starts(log)) + rng.randint(10, 60)
        deadline = time.monotonic() + 30
        while proc.poll() is None and len(_starts(log)) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.random() * 0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    run += 1
    finished_before[run] = {r["id"] for r in iter_output(out)}
    subprocess.run([sys.executable, str(script), str(out), str(log), str(run), str(n)], env=env, check=True, timeout=120)

    got = read(out)
    ids = [r["id"] for r in got]
    assert ids == [f"id{i}" for i in range(n)]  # every id exactly once, in input order
    assert all(r["value"] == 3 * int(r["id"][2:]) for r in got)
    starts = _starts(log)
    for run_no, rid in starts:
        assert rid not in finished_before[int(run_no)], f"run {run_no} redid {rid}, which was finished"
    # the kills came mid-run: each killed run left rows for the next one, and the last run had work left
    assert all(len(finished_before[k]) < len(finished_before[k + 1]) < n for k in range(1, run))
    assert {int(r) for r, _ in starts} == set(range(1, run + 1))


def _starts(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split() for line in log.read_text().splitlines() if line.count(" ") == 1]
