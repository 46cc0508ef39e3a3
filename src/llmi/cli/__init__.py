"""The ``llmi`` command. One module per subcommand; this file only assembles them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="llmi",
    help="Tool-augmented interleaved text-image generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain text: config table names such as [llm_judge] must not be read as markup.
    rich_markup_mode=None,
)


def main() -> None:
    app()


# Importing a subcommand module registers it on ``app`` (they import ``app`` from here, defined above).
from . import data, doctor, eval, generate, render, reward, serve, train  # noqa: E402,F401
