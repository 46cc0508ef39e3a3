"""``llmi reward IN.jsonl -o OUT.jsonl``: the LLM-I hybrid reward for a file of rollouts.

Each input row is ``{"prompt", "response", "image_num", "tools", "split"?, "images"?, "document"?}``;
each output row is ``"_line"`` (the row's 0-based line number in IN, its id), the input row, and
``"reward"`` (see :meth:`llmi.reward.RewardResult.to_dict`).

The loop is :func:`llmi.batch.run_batch`: rows are appended to OUT as they finish, so a crash, Ctrl-C or
``kill -9`` loses nothing that was written; running the same command again skips the rows already in OUT
(``--retry-errors`` also redoes rows whose judge or tool execution failed; a run with judges also redoes
rows that a ``--no-judges`` run left without a score). Once every row is done, OUT is rewritten in input
order.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from . import app
from .common import console, errors_as_exit, fail, given, load, sections, setup_logging

#: Errors that a rerun may fix (as opposed to unusable input).
RETRYABLE_ERRORS = ("llm_judge", "mllm_judge", "execute")
#: The id field of output rows: the row's line number in IN.
ID_KEY = "_line"


def redo_predicate(*, retry_errors: bool, judges: bool):
    """Which rows of OUT are not done: with ``retry_errors``, rows whose judge or tools failed; with
    ``judges``, rows a ``--no-judges`` run left with rule parts only (``mllm == "off"``). A row whose
    input was unusable (``errors.input``: not JSON, a missing key, an unreadable image) is done: running
    it again gives the same error."""

    def redo(row: dict) -> bool:
        reward = row.get("reward") if isinstance(row.get("reward"), dict) else {}
        errors = reward.get("errors") or {}
        if retry_errors and any(k in errors for k in RETRYABLE_ERRORS):
            return True
        return judges and reward.get("mllm") == "off" and "input" not in errors

    return redo


class _BadLine:
    def __init__(self, error: str):
        self.error = error


def iter_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line_number, row)`` for every non-blank line of IN; a line that is not UTF-8 JSON gives a
    ``_BadLine`` (one bad line is that row's error, not the batch's end). A byte-order mark is allowed."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig" if n == 0 else "utf-8")
            except UnicodeDecodeError as exc:
                yield n, _BadLine(f"line {n + 1} is not UTF-8 text (invalid byte at column {exc.start + 1})")
                continue
            try:
                yield n, json.loads(line)
            except ValueError as exc:
                yield n, _BadLine(f"line {n + 1} is not JSON: {exc}")


def count_rows(path: Path) -> int:
    """How many rows :func:`iter_rows` yields (one per non-blank line), without parsing them."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


async def run_reward(
    in_path: Path,
    out_path: Path,
    settings: Any,
    config: Any,
    *,
    judges: bool,
    retry_errors: bool = False,
    progress: bool = True,
    execute: Any = None,
) -> dict[str, Any]:
    """Score IN into OUT (resuming); returns the scorer's stats as a dict, plus the batch's counts."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..batch import BatchProgress, run_batch
    from ..reward.scoring import RewardScorer, Sample, sample_from_row

    base_dir = in_path.parent
    total = count_rows(in_path)
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # The scorer first: a judge that is not configured fails before OUT is touched or a bar is drawn.
    async with RewardScorer(settings, config=config, judges=judges, execute=execute) as scorer:

        async def work(n: Any, row: Any) -> dict:
            sample = Sample.invalid(row.error) if isinstance(row, _BadLine) else sample_from_row(row, base_dir)
            result = await scorer.score(sample)
            out_row = dict(row) if isinstance(row, dict) else {"input": None if isinstance(row, _BadLine) else row}
            out_row["reward"] = result.to_dict()
            return out_row

        with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
            task = bar.add_task("scoring", total=None)

            def on_event(ev: BatchProgress) -> None:
                bar.update(task, completed=ev.done, total=ev.total)

            summary = await run_batch(
                iter_rows(in_path),
                work,
                out_path,
                concurrency=scorer.max_in_flight,
                retry_errors=retry_errors,
                redo=redo_predicate(retry_errors=retry_errors, judges=judges),
                on_event=on_event,
                total=total,
                id_key=ID_KEY,
            )
        stats = scorer.stats.as_dict()
    stats["rows"] = summary.total
    stats["skipped_already_done"] = summary.skipped
    stats["crashed"] = summary.failed
    return stats


@app.command("reward")
def reward_cmd(
    input: Path = typer.Argument(..., help="rollouts, one JSON object per line", exists=True, dir_okay=False),
    output: Path = typer.Option(..., "-o", "--output", help="OUT.jsonl (appended to; rows already there are skipped)"),
    llm_judge_url: Optional[str] = typer.Option(None, "--llm-judge-url", help="OpenAI-compatible base URL of the text judge"),
    llm_judge_model: Optional[str] = typer.Option(None, "--llm-judge-model", help="default: the only model served"),
    mllm_judge_url: Optional[str] = typer.Option(None, "--mllm-judge-url", help="OpenAI-compatible base URL of the image judge"),
    mllm_judge_model: Optional[str] = typer.Option(None, "--mllm-judge-model", help="default: the only model served"),
    no_judges: bool = typer.Option(False, "--no-judges", help="compute the rule parts only (score stays null)"),
    on_judge_error: Optional[str] = typer.Option(
        None, "--on-judge-error", help="'drop' (score null) or 'fallback' (default: [reward] on_judge_error, 'drop')"),
    fallback_score: Optional[float] = typer.Option(
        None, "--fallback-score", help="judge score used by --on-judge-error fallback (default: [reward], 3)"),
    tool_weight: Optional[float] = typer.Option(
        None, "--tool-weight", help="weight of r_tool in the score (default: [reward] w_tool; paper: 0, logged only)"),
    judge_concurrency: Optional[int] = typer.Option(None, "--judge-concurrency", help="requests in flight per judge"),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="also redo rows of OUT whose judge or tools failed"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config file (TOML)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="log what the judges and tools do"),
) -> None:
    """Score rollouts with the LLM-I hybrid reward: image-count rule, tool score, LLM and MLLM judges.

    Judges are any OpenAI-compatible chat endpoints: set them with the flags
    or in the [llm_judge] and [mllm_judge] tables of the config (keys via
    api_key or api_key_env there, never on the command line). Tags are run
    with the configured tools, sharing the generation cache. An interrupted
    run resumes where it stopped.
    """
    setup_logging(verbose)
    with errors_as_exit():
        if on_judge_error is not None and on_judge_error not in ("drop", "fallback"):
            fail("--on-judge-error must be 'drop' or 'fallback'")
        if output.resolve() == input.resolve():
            fail("the output file must differ from the input file")
        if not output.parent.exists():
            fail(f"the folder of {output} does not exist")
        settings = load(config, sections(
            llm_judge=given(base_url=llm_judge_url, model=llm_judge_model, concurrency=judge_concurrency),
            mllm_judge=given(base_url=mllm_judge_url, model=mllm_judge_model, concurrency=judge_concurrency),
        ))
        try:
            flags = {"on_judge_error": on_judge_error, "fallback_score": fallback_score, "w_tool": tool_weight}
            cfg = settings.reward.to_config(**{k: v for k, v in flags.items() if v is not None})
        except ValueError as exc:
            fail(str(exc))
        try:
            stats = asyncio.run(
                run_reward(input, output, settings, cfg, judges=not no_judges, retry_errors=retry_errors, progress=not no_progress)
            )
        except KeyboardInterrupt:
            fail(f"interrupted; the rows in {output} are kept: run the same command again to resume", 130)
        _summary(stats, output)
        if no_judges:
            console.print("(--no-judges: the rule parts are in each row's reward and its score is null; run "
                          "again with the judges, into the same OUT, to score these rows)",
                          highlight=False, markup=False, soft_wrap=True)


def _summary(stats: dict[str, Any], output: Path) -> None:
    mean = stats.get("mean_score")
    parts = [f"{stats['samples']} row(s) scored into {output}"]
    if stats.get("crashed"):
        parts.append(f"[red]{stats['crashed']} row(s) failed[/] (their rows in OUT hold the error; --retry-errors redoes them)")
    if stats.get("skipped_already_done"):
        parts.append(f"{stats['skipped_already_done']} already done")
    if stats["samples"]:
        parts.append(f"{stats['scored']} with a score" + (f" (mean {mean:.3f})" if mean is not None else ""))
    if stats["dropped"]:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(stats["errors"].items()))
        parts.append(f"[yellow]{stats['dropped']} dropped[/] ({errs})")
    if stats["fallbacks"]:
        parts.append("fallback used: " + ", ".join(f"{k} {v}" for k, v in stats["fallbacks"].items()))
    console.print("; ".join(parts), highlight=False)
    for name, js in (stats.get("judges") or {}).items():
        if js["retries"] or js["failed"]:
            console.print(
                f"{name}: {js['requests']} request(s), {js['retries']} retried, {js['failed']} failed "
                f"{js['failures'] or ''}",
                highlight=False,
            )
