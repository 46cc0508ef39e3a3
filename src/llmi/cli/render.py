"""``llmi render``: execute the tags of an already-written response and write the document."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import check_output_path, console, errors_as_exit, load, read_images, read_text, setup_logging
from .progress import ToolProgress


@app.command("render")
def render_cmd(
    response_file: Path = typer.Argument(..., help="the response text with <imgen> tags ('-' for stdin)"),
    output: Path = typer.Option(..., "-o", "--output", help="OUT.html, OUT.md or OUT.json"),
    image: Optional[list[Path]] = typer.Option(None, "--image", "-i", help="a user image (repeatable; index 0, 1, ...)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config file (TOML)"),
    title: Optional[str] = typer.Option(None, help="document title (HTML)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the result cache"),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Run the tool calls of RESPONSE_FILE and write an illustrated document.

    Exits 0 once the document is written, even if some tags failed (they show as failure notes).
    """
    setup_logging(verbose)
    with errors_as_exit():
        from ..render import write_document

        check_output_path(output)
        text = read_text(response_file)
        images = read_images(image)
        settings = load(config, {"cache": {"enabled": False}} if no_cache else None)
        doc = asyncio.run(_run(settings, text, images))
        path = write_document(doc, output, title=title)
    stats = doc.stats
    n_img, n_fail = len(doc.images), len(doc.failures)
    console.print(
        f"wrote {path}: {n_img} image(s), {n_fail} failure(s), {len(doc.violations)} format violation(s)"
        + (" — " + ", ".join(f"{t} {s['success']}/{s['total']}" for t, s in stats.items()) if stats else ""),
        highlight=False,
    )


async def _run(settings, text, images):
    from ..engine import Engine

    async with Engine(settings) as engine:
        with ToolProgress(console) as progress:
            return await engine.run_response(text, images, on_event=progress.handle)
