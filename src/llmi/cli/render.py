"""``llmi render``: execute the tags of an already-written response and write the document."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import (
    check_output_path, console, errors_as_exit, info, load, read_images, read_text, setup_logging, warn,
)
from .progress import ToolProgress

#: Failure kinds that mean "this machine is not set up for that backend", not "this tag was bad".
SETUP_KINDS = {"missing_key", "missing_dependency", "misconfigured", "no_backend", "sandbox_unavailable"}


@app.command("render")
def render_cmd(
    response_file: Path = typer.Argument(
        ..., metavar="RESPONSE", help="the response text with <imgen> tags ('-' reads it from stdin)"
    ),
    output: Path = typer.Option(..., "-o", "--output", metavar="OUT", help="OUT.html, OUT.md or OUT.json"),
    image: Optional[list[Path]] = typer.Option(
        None, "--image", "-i", metavar="IMAGE", help="a user image (repeatable; images 0, 1, ...)"
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="TOML", help="config file"),
    title: Optional[str] = typer.Option(None, help="document title (HTML)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the result cache"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="log what the tools do"),
) -> None:
    """Run the tool calls of RESPONSE and write an illustrated document.

    Exits 0 once the document is written, even if some tags failed (they
    show as failure notes in the document); exits 2 with a one-line message
    if an input or the configuration is unusable.
    """
    setup_logging(verbose)
    with errors_as_exit():
        from ..render import write_document

        check_output_path(output)
        text = read_text(response_file)
        images = read_images(image)
        settings = load(config, {"cache": {"enabled": False}} if no_cache else None)
        if not text.strip():
            where = "on stdin" if str(response_file) == "-" else f"file {response_file}"
            warn(f"the response {where} is empty")
        doc = asyncio.run(_run(settings, text, images))
        path = write_document(doc, output, title=title)
    stats = doc.stats
    n_img, n_fail = len(doc.images), len(doc.failures)
    info(
        f"wrote {path}: {n_img} image(s), {n_fail} failure(s), {len(doc.violations)} format violation(s)"
        + (" — " + ", ".join(f"{t} {s['success']}/{s['total']}" for t, s in stats.items()) if stats else "")
    )
    setup = sorted({f.tool for f in doc.failures if f.kind in SETUP_KINDS})
    if setup:
        info(f"hint: {', '.join(setup)} tags failed because no backend is set up for them; "
             "`llmi doctor` shows why")
    boxes = missing_glyph_charts(doc)
    if boxes:
        info(f"hint: {boxes} chart(s) use characters the chart fonts lack (drawn as boxes; Chinese, Japanese "
             "or Korean text needs a CJK font); `llmi doctor` says which to install")


def missing_glyph_charts(doc) -> int:
    """How many charts matplotlib drew with glyphs missing from every font (its warnings, which the
    sandbox passes on in the provenance)."""
    return sum(
        1 for b in doc.images
        if b.tool == "code" and any(isinstance(w, str) and "missing from font" in w
                                    for w in b.provenance.get("warnings") or ())
    )


def check_configuration(engine) -> None:
    """Fail before running anything if a fallback chain names an unknown backend or a backend's table
    does not validate: that is a typo in the config, not something a document should be rendered around.
    (A missing key or dependency is not checked here: those tags fail visibly and the run goes on.)"""
    from ..errors import ConfigError
    from ..protocol import SOURCES

    for tool in SOURCES:
        chain = engine.chain(tool)
        for t, name in chain:
            try:
                engine.backend(t, name)
            except ConfigError as exc:
                if str(exc).startswith("unknown"):
                    raise ConfigError(f"tools.{tool}.backends: {exc}") from None
                raise


async def _run(settings, text, images):
    from ..engine import Engine

    async with Engine(settings) as engine:
        check_configuration(engine)
        with ToolProgress(console, n_inputs=len(images)) as progress:
            return await engine.run_response(text, images, on_event=progress.handle)
