"""``llmi data``: convert training data between the LLM-I schema, llmi reward rows and verl's parquet
layout, and summarise a dataset (rows, image-count rule mix, tools mix, prompt-length percentiles)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import List, Optional

import typer

from . import app
from .common import errors_as_exit, fail, info, load, setup_logging

data_app = typer.Typer(help="Training data: convert between layouts, summarise.", no_args_is_help=True)
app.add_typer(data_app, name="data")

FORMATS = ("llmi", "reward", "verl")


def _system(choice: str, config: Optional[Path]) -> Optional[str]:
    from ..train.preflight import usable_tools
    from ..train.runner import _system_prompt

    settings = load(config)
    usable = asyncio.run(usable_tools(settings))
    return _system_prompt(choice, usable, settings)


@data_app.command("convert")
def convert(
    inputs: List[str] = typer.Argument(..., help="input files (.parquet, .jsonl, .json) or hf://datasets/..."),
    output: Path = typer.Option(..., "--output", "-o", help="output file (.parquet or .jsonl)"),
    to: str = typer.Option(..., "--to", help="llmi (the release's schema), reward (llmi reward rows) or verl"),
    system_prompt: Optional[str] = typer.Option(
        None, "--system-prompt", help="llmi (llmi's prompt for the configured tools), keep, or a file; "
        "default: llmi for verl (verl 0.9.1 cannot replace it), keep otherwise"),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", help="scale larger input images down"),
    config: Optional[Path] = typer.Option(None, "--config", help="llmi TOML (the tools the system prompt advertises)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Convert training data; every row is checked first (a bad row names its file and line)."""
    setup_logging(verbose)
    from ..train.data import format_summary, read_rows, summarize, to_llmi_record, to_reward_row, to_verl_record
    from ..train.data import write_records
    from ..train.prepare import apply_system_prompt

    with errors_as_exit():
        if to not in FORMATS:
            fail(f"--to must be one of {', '.join(FORMATS)}")
        if output.suffix not in (".parquet", ".jsonl"):
            fail("the output must be a .parquet or .jsonl file")
        if not output.parent.is_dir():
            fail(f"the folder of {output} does not exist")
        if any(Path(i).resolve() == output.resolve() for i in inputs if not i.startswith("hf://")):
            fail("the output must differ from the inputs")
        rows = read_rows(inputs)
        choice = system_prompt or ("llmi" if to == "verl" else "keep")
        rows = apply_system_prompt(rows, _system(choice, config) if choice != "keep" else None)
        if to == "verl":
            records = [to_verl_record(r, max_pixels=max_image_pixels) for r in rows]
        elif to == "llmi":
            records = [to_llmi_record(r, max_pixels=max_image_pixels) for r in rows]
        else:
            image_dir = output.parent / (output.stem + "_images") if output.suffix == ".jsonl" else None
            records = [to_reward_row(r, image_dir=image_dir, stem=f"row{k}", max_pixels=max_image_pixels)
                       for k, r in enumerate(rows)]
        n = write_records(records, output)
        summary = summarize(rows)
        if as_json:
            typer.echo(json.dumps({"written": n, "output": str(output), **summary}, indent=2))
        else:
            info(f"wrote {n} rows to {output} ({to} layout)")
            typer.echo(format_summary(summary))


@data_app.command("summary")
def summary(
    inputs: List[str] = typer.Argument(..., help="input files (.parquet, .jsonl, .json) or hf://datasets/..."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="count prompt tokens with this model's chat template"),
    system_prompt: str = typer.Option(
        "keep", "--system-prompt", help="keep (the prompts as stored), llmi (with llmi's built-in prompt for the "
        "configured tools, which llmi train puts in by default and its max_prompt_length counts) or a file"),
    config: Optional[Path] = typer.Option(None, "--config", help="llmi TOML (the tools the system prompt advertises)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Rows, the image-count rule mix, the tools mix, splits and prompt-length percentiles."""
    setup_logging(verbose)
    from ..train.data import format_summary, read_rows, summarize
    from ..train.prepare import apply_system_prompt

    with errors_as_exit():
        rows = read_rows(inputs)
        if system_prompt != "keep":
            rows = apply_system_prompt(rows, _system(system_prompt, config))
        count = None
        if tokenizer:
            from ..train.prepare import token_counter
            from ..train.runner import load_processing_class

            count = token_counter(load_processing_class(tokenizer, multimodal=any(r.images for r in rows)))
        s = summarize(rows, count_tokens=count)
        typer.echo(json.dumps(s, indent=2) if as_json else format_summary(s))
