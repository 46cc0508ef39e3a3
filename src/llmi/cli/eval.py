"""``llmi eval``: run a benchmark into a run folder (resumable), or compare two runs.

::

    llmi eval llmi-bench --data benchmark/text_only.json -o runs/eval-4b --config llmi.toml
    llmi eval opening    --data OpenING-benchmark/test_data.jsonl -o runs/opening-4b --limit 200
    llmi eval isg        --data ISG_Bench.jsonl -o runs/isg-4b
    llmi eval llmi-test  --data test.parquet -o runs/test-4b
    llmi eval opening    --outputs gen_outputs/OtherModel_output -o runs/opening-other   # judge only
    llmi eval compare runs/opening-4b runs/opening-other                                # pairwise

One subcommand per registered benchmark (entry-point group ``llmi.benchmarks``), all with the same
options. Exit codes: 0 the run finished (items that failed are counted in the summary and redone with
``--retry-errors``); 2 unusable setup or input (nothing judged); 130 interrupted (what finished is kept:
run the same command again to resume).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from . import app
from .common import console, errors_as_exit, fail, given, info, llm_options, load, sections, setup_logging

eval_app = typer.Typer(
    name="eval",
    help="Evaluate on the LLM-I paper's benchmarks (resumable runs with reports), or compare two runs.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(eval_app, name="eval")


def _options(values: list[str] | None) -> dict[str, Any]:
    """``--option key=value`` pairs; values are JSON when they parse (``true``, ``3``), else strings."""
    import json

    out: dict[str, Any] = {}
    for v in values or []:
        key, sep, raw = v.partition("=")
        if not sep or not key.strip():
            fail(f"--option wants KEY=VALUE, got {v!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _ids(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [x.strip() for v in values for x in v.split(",") if x.strip()]
    return out or None


class _Bar:
    """A progress bar: items done of total, failures, the running score."""

    def __init__(self, enabled: bool, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[failed]} failed"), TextColumn("score {task.fields[score]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled)
        self.task = None

    def __enter__(self) -> "_Bar":
        self.progress.__enter__()
        self.task = self.progress.add_task("eval", total=None, failed=0, score="–")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, p: Any) -> None:
        score = "–" if p.score is None else f"{p.score:.3f}"
        self.progress.update(self.task, total=p.total, completed=p.done, failed=p.failed, score=score)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    from ..eval.stats import fmt_ci

    scores = summary.get("scores") or {}
    head = scores.get("score")
    items = summary["items"]
    parts = [f"{summary['title'] or summary['benchmark']}: score {fmt_ci(head)}",
             f"{items['finished']}/{items['total']} item(s) finished"]
    if items["failed"]:
        parts.append(f"{items['failed']} failed ({', '.join(f'{k} {v}' for k, v in items['failure_kinds'].items())})")
    if items["pending"]:
        parts.append(f"{items['pending']} pending")
    info("; ".join(parts))
    tools = summary.get("tools") or {}
    if tools.get("calls"):
        per = ", ".join(f"{t} {s['success']}/{s['calls']}" for t, s in tools["per_tool"].items())
        info(f"tools: {tools['success']}/{tools['calls']} images ({per})")
    cost = summary.get("cost") or {}
    info(f"cost: {cost.get('tokens_in', 0)} tokens in, {cost.get('tokens_out', 0)} out; "
         f"{cost.get('judge_calls', 0)} judge call(s) ({cost.get('judge_answers_reused', 0)} answer(s) reused); "
         f"{cost.get('this_run', {}).get('wall_s', 0):.1f} s this run")
    if summary.get("tts_stages"):
        from ..eval.stages import format_stage_summary

        info("test-time scaling, per stage (score after it, gain, extra cost per item):\n"
             + format_stage_summary(summary["tts_stages"]))
    judge = summary.get("judge") or {}
    if judge.get("published_judge") and judge.get("model") and judge["model"] != judge["published_judge"]:
        info(f"note: judged by {judge['model']}; the published numbers used {judge['published_judge']} "
             "(scores are comparable only under the same judge)")
    info(f"written to {out}/ (summary.json, results.jsonl, report.html)")


def _benchmark_command(name: str) -> Callable[..., None]:
    def command(
        data: Optional[Path] = typer.Option(None, "--data", "-d", help="the benchmark's data file"),
        output: Path = typer.Option(..., "-o", "--output", help="the run folder (created; an existing one is resumed)"),
        outputs: Optional[Path] = typer.Option(None, "--outputs", help="judge only: documents produced elsewhere (the benchmark's own format, or another run folder)"),
        limit: Optional[int] = typer.Option(None, "--limit", help="only the first N items"),
        ids: Optional[list[str]] = typer.Option(None, "--ids", help="only these item ids (comma-separated, repeatable)"),
        seed: Optional[int] = typer.Option(None, "--seed", help="sampling seed sent with every generation"),
        concurrency: int = typer.Option(4, "--concurrency", help="generations in flight at once"),
        judge_concurrency: Optional[int] = typer.Option(None, "--judge-concurrency", help="judge requests in flight ([eval_judge] concurrency)"),
        judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL of the judge ([eval_judge] base_url)"),
        judge_model: Optional[str] = typer.Option(None, "--judge-model", help="judge model id (published: gpt-4o; ISG: gpt-4.1)"),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="the writing LLM's model id ([llm] model)"),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="the writing LLM's base URL ([llm] base_url)"),
        model_path: Optional[Path] = typer.Option(None, "--model-path", help="a local transformers model folder to evaluate"),
        model_name: Optional[str] = typer.Option(None, "--model-name", help="the model's name in outputs (OpenING's <name>_output folder)"),
        tts: Optional[int] = typer.Option(None, "--tts", help="test-time scaling: N candidates per item (llmi.tts)"),
        ray: Optional[str] = typer.Option(None, "--ray", help="spread the items over a Ray cluster (ADDRESS, or 'auto'/'local')"),
        ray_workers: Optional[int] = typer.Option(None, "--ray-workers", help="Ray actors (default: the cluster's CPUs, at most 8)"),
        retry_errors: bool = typer.Option(False, "--retry-errors", help="also redo failed items and excluded judge answers"),
        no_judge: bool = typer.Option(False, "--no-judge", help="generate (and write the outputs) only; judge later into the same folder"),
        no_report: bool = typer.Option(False, "--no-report", help="do not write report.html"),
        option: Optional[list[str]] = typer.Option(None, "--option", help="a benchmark option KEY=VALUE (e.g. steps_hint=false)"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="config file (TOML)"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
        verbose: bool = typer.Option(False, "-v", "--verbose", help="log what the LLM, tools and judge do"),
    ) -> None:
        setup_logging(verbose)
        from ..eval.runner import EvalConfig, run_eval

        with errors_as_exit():
            if data is None and outputs is None:
                fail(f"llmi eval {name} needs --data (the benchmark file) or --outputs (documents to judge)")
            settings = load(config, sections(
                eval_judge=given(base_url=judge_url, model=judge_model, concurrency=judge_concurrency),
                llm=llm_options(model=model, base_url=base_url, model_path=model_path),
            ))
            opts = _options(option)
            if model_name:
                opts["model_name"] = model_name
            elif "model_name" not in opts and outputs is None:
                opts["model_name"] = _default_model_name(settings)
            cfg = EvalConfig(benchmark=name, out=output, data=data, outputs=outputs, limit=limit, ids=_ids(ids),
                             seed=seed, concurrency=concurrency, retry_errors=retry_errors, tts=tts, ray=ray,
                             ray_workers=ray_workers, options=opts, report=not no_report, judge=not no_judge)
            try:
                with _Bar(not no_progress, name) as bar:
                    summary = asyncio.run(run_eval(settings, cfg, on_progress=bar.update))
            except KeyboardInterrupt:
                fail(f"interrupted; what finished is kept in {output}: run the same command again to resume", 130)
            _print_summary(summary, output)

    command.__doc__ = (f"Run {name}: generate (or read --outputs), judge, report; re-running resumes.\n\n"
                       f"Writes {name}'s own output format, summary.json, results.jsonl and report.html into the run "
                       "folder. Re-running the same command repeats nothing that finished.")
    return command


def _default_model_name(settings: Any) -> str:
    """A folder-safe model label: the local model's folder name, else the served model id, else 'llmi'."""
    import re

    raw = Path(settings.llm.model_path).name if settings.llm.model_path else (settings.llm.model or "llmi")
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", raw.split("/")[-1]).strip("-") or "llmi"


def _register_benchmarks() -> None:
    from ..eval import registry

    for name in registry.names():
        eval_app.command(name)(_benchmark_command(name))


@eval_app.command("compare")
def compare_cmd(
    run_a: Path = typer.Argument(..., help="run folder A", exists=True, file_okay=False),
    run_b: Path = typer.Argument(..., help="run folder B", exists=True, file_okay=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="the comparison folder (default: beside A, compare_A_vs_B)"),
    pairwise: Optional[bool] = typer.Option(None, "--pairwise/--no-pairwise", help="ask the judge A-vs-B on every shared item, both orders (default: on for opening)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="only the first N shared items"),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL of the judge"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="judge model id"),
    judge_concurrency: Optional[int] = typer.Option(None, "--judge-concurrency", help="judge requests in flight"),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="redo pairs whose judge failed"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config file (TOML)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="log what the judge does"),
) -> None:
    """Compare two runs of the same benchmark side by side: scores, per-item differences with a paired
    95 % interval and, pairwise, the judge's A/B verdicts with the order swapped (OpenING's four win rates).
    Resumable like a run."""
    setup_logging(verbose)
    from ..eval.compare import CompareConfig, run_compare

    with errors_as_exit():
        judge = given(base_url=judge_url, model=judge_model, concurrency=judge_concurrency)
        settings = load(config, sections(eval_judge=judge))
        out = output or run_a.parent / f"compare_{run_a.name}_vs_{run_b.name}"
        cfg = CompareConfig(run_a=run_a, run_b=run_b, out=out, pairwise=pairwise, limit=limit, retry_errors=retry_errors)
        try:
            with _Bar(not no_progress, "compare") as bar:
                summary = asyncio.run(run_compare(settings, cfg, on_progress=bar.update))
        except KeyboardInterrupt:
            fail(f"interrupted; what finished is kept in {out}: run the same command again to resume", 130)
        _print_compare(summary, out)


def _print_compare(summary: dict[str, Any], out: Path) -> None:
    from ..eval.stats import fmt_ci

    a, b = summary["a"], summary["b"]
    info(f"{summary['benchmark']}: A {a['label']} {fmt_ci(a['score'])}  vs  B {b['label']} {fmt_ci(b['score'])}; "
         f"{summary['shared_items']} shared item(s); A - B {fmt_ci(summary.get('difference'))}")
    pw = summary.get("pairwise")
    if pw:
        rates = pw["win_rates"]
        info("pairwise (both orders): " + "; ".join(
            f"{k}: A {v['A']:.1%} / B {v['B']:.1%}" for k, v in rates.items() if v.get("A") is not None))
        info(f"position consistency: {pw['consistency']:.1%} of pairs give the same verdict in both orders"
             if pw.get("consistency") is not None else "position consistency: –")
    info(f"written to {out}/ (compare.json, pairs.jsonl, report.html)")


_register_benchmarks()
