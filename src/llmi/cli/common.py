"""What the subcommands share: loading settings and inputs, and turning errors into one-line exits."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console

from ..errors import ConfigError, InputError, LLMIError

#: Progress, tool lines and errors go to stderr; stdout stays free for the document text.
console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def errors_as_exit() -> Iterator[None]:
    """Run a command body; llmi's own errors become a one-line message and exit code 2."""
    try:
        yield
    except (ConfigError, InputError, LLMIError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def load(config: Path | None, overrides: dict[str, Any] | None = None):
    from ..config import load_settings

    return load_settings(config, overrides=overrides)


def read_images(paths: list[Path] | None) -> list:
    """Read and validate the user's input images (an unreadable one is an InputError)."""
    from ..images import ImageData
    from ..errors import ToolError

    out = []
    for p in paths or []:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read input image {p}: {exc.strerror or exc}") from exc
        try:
            out.append(ImageData.from_bytes(data))
        except ToolError as exc:
            raise InputError(f"input image {p} is not usable: {exc}") from exc
    return out


def read_text(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"response file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"response file {path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot read response file {path}: {exc.strerror or exc}") from None


OUTPUT_FORMATS = (".html", ".htm", ".md", ".json")


def check_output_path(path: Path) -> None:
    """Fail before any work is done if the output format is unknown or its folder is missing."""
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise InputError(f"cannot tell the output format of {path}: use one of {', '.join(OUTPUT_FORMATS)}")
    if not path.parent.exists():
        raise InputError(f"the folder of {path} does not exist")
