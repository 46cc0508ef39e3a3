"""What the subcommands share: loading settings and inputs, and turning errors into one-line exits.

Every message that may contain text we did not write (a path, a model's description, an exception's
text) is printed with Rich markup off: ``[backends.search.local]`` or ``llmi[local]`` would otherwise be
taken for style tags and silently vanish, and an unbalanced ``[/x]`` would crash the command.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.text import Text

from ..errors import ConfigError, InputError, LLMIError
from ..files import read_capped

#: Progress, tool lines and errors go to stderr; stdout stays free for the document text.
console = Console(stderr=True)

#: A response larger than this is refused: no LLM writes 64 MiB, and reading /dev/zero must not eat memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: User images larger than this are refused before they are read (fetched images stop at 20 MB).
MAX_IMAGE_BYTES = 64 * 1024 * 1024


def one_line(message: str) -> str:
    """Collapse a multi-line message (pydantic lists its errors on several lines) into one line."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    parts = [p for p in parts if not p.startswith("For further information visit")]
    return " ".join(parts)


def describe_error(exc: BaseException) -> str:
    """One line for an llmi error; a wrapped pydantic ValidationError is shown as ``where: what`` pairs."""
    from pydantic import ValidationError

    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        head = str(exc).split("\n", 1)[0].rstrip(":")
        items = []
        for err in cause.errors():
            where = ".".join(str(x) for x in err.get("loc", ())) or "(top level)"
            what = "unknown key (misspelt?)" if err.get("type") == "extra_forbidden" else err.get("msg", "")
            items.append(f"{where}: {what}")
        return f"{head}: " + "; ".join(items)
    return one_line(str(exc))


def fail(message: str, code: int = 2) -> None:
    line = Text("error: ", style="bold red")
    line.append(one_line(message))
    console.print(line, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    line = Text("warning: ", style="yellow")
    line.append(one_line(message))
    console.print(line, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """A plain status line (markup off, never wrapped: a piped log keeps one line per message)."""
    console.print(message, highlight=False, markup=False, soft_wrap=True)


@contextlib.contextmanager
def errors_as_exit() -> Iterator[None]:
    """Run a command body; llmi's own errors become a one-line message and exit code 2."""
    try:
        yield
    except (ConfigError, InputError, LLMIError) as exc:
        fail(describe_error(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, markup=False)],
    )


def load(config: Path | None, overrides: dict[str, Any] | None = None):
    from ..config import load_settings

    return load_settings(config, overrides=overrides)


def given(**options: Any) -> dict[str, Any]:
    """The options the user set, as the keys of one settings section: ``None`` and ``""`` (not given)
    are left out; ``0`` and ``False`` are kept."""
    return {k: v for k, v in options.items() if v is not None and v != ""}


def sections(**overrides: dict[str, Any]) -> dict[str, Any]:
    """Settings overrides with the empty sections left out (``{}`` when no option was set)."""
    return {name: section for name, section in overrides.items() if section}


def llm_options(*, model_path: Path | None = None, **options: Any) -> dict[str, Any]:
    """The ``[llm]`` section from the writing model's options (:func:`given`); ``--model-path`` implies
    the transformers backend unless ``backend`` is given too."""
    section: dict[str, Any] = {"backend": "transformers", "model_path": str(model_path)} if model_path else {}
    section.update(given(**options))
    return section


def read_images(paths: list[Path] | None) -> list:
    """Read and validate the user's input images (an unreadable one is an InputError): the one loader,
    :func:`llmi.images.load_image`, with the CLI's size cap."""
    from ..images import load_image

    return [load_image(p, max_bytes=MAX_IMAGE_BYTES) for p in paths or []]


def read_text(path: Path) -> str:
    """The response text from a file or, for ``-``, from stdin (both capped at MAX_RESPONSE_BYTES)."""
    if str(path) == "-":
        if sys.stdin.isatty():
            info("reading the response from stdin; end it with Ctrl-D")
        data = sys.stdin.buffer.read(MAX_RESPONSE_BYTES + 1)
        where = "the response on stdin"
        if len(data) > MAX_RESPONSE_BYTES:
            raise InputError(f"{where} is too large (the limit is {MAX_RESPONSE_BYTES // 2**20} MiB)")
    else:
        data = read_capped(path, f"response file {path}", MAX_RESPONSE_BYTES)
        where = f"response file {path}"
    if b"\x00" in data:
        raise InputError(f"{where} is binary, not text (it contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 text (invalid byte at offset {exc.start})") from None


OUTPUT_FORMATS = (".html", ".htm", ".md", ".json")


def check_output_path(path: Path) -> None:
    """Fail before any work is done if the output format is unknown or its folder is missing."""
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise InputError(f"cannot tell the output format of {path}: use one of {', '.join(OUTPUT_FORMATS)}")
    if path.is_dir():
        raise InputError(f"the output {path} is a folder")
    if not path.parent.exists():
        raise InputError(f"the folder of {path} does not exist")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent} is not a folder")
