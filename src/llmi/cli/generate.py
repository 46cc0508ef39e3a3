"""``llmi generate``: an LLM writes the document and the tools run while it is still writing.

Where things go: the model's text streams to **stdout** (piece by piece when stdout is a pipe or a file;
line by line above the tool lines when stdout and stderr share a terminal); the live tool lines
(running / done in N s / failed: reason), warnings and the final summary go to **stderr**.

Exit codes: 0 once the document is written (tool failures show as failure notes in it); 1 when the LLM
failed part-way — the partial document is still written, with the message saying so; 2 when nothing
could be produced (no reachable LLM, bad key, bad configuration or input).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Optional, TextIO

import typer

from . import app
from .common import check_output_path, console, errors_as_exit, fail, llm_options, load, sections, setup_logging
from .progress import ToolProgress


@app.command("generate")
def generate_cmd(
    prompt: str = typer.Argument(..., help="what to write ('-' reads it from stdin)"),
    output: Path = typer.Option(..., "-o", "--output", help="OUT.html, OUT.md or OUT.json"),
    image: Optional[list[Path]] = typer.Option(None, "--image", "-i", metavar="IMAGE", help="a user image (repeatable; index 0, 1, ...)"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible base URL (env LLMI_BASE_URL)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model id (env LLMI_MODEL); default: the only one served"),
    backend: Optional[str] = typer.Option(None, "--backend", help="'openai' (any compatible server) or 'transformers'"),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help="local model folder (implies --backend transformers)"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="sampling temperature ([llm] temperature, default 0.7)"),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="nucleus sampling ([llm] top_p)"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="cap on the reply's tokens ([llm] max_tokens, default 4096)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="sampling seed, sent to the LLM server and to the diffusion/edit tools (a seed is part of their cache key)"),
    no_think: bool = typer.Option(False, "--no-think", help="ask a Qwen3-style chat template to skip reasoning (chat_template_kwargs.enable_thinking=false)"),
    extra_body: Optional[str] = typer.Option(None, "--extra-body", metavar="JSON", help="a JSON object merged into the request body (over [llm] extra_body)"),
    no_vision: bool = typer.Option(False, "--no-vision", help="the model is text-only: do not send it the images"),
    system_prompt: Optional[Path] = typer.Option(None, "--system-prompt", help="replace the built-in system prompt"),
    trace: bool = typer.Option(False, "--trace", help="save OUT.trace.json beside the output"),
    trace_file: Optional[Path] = typer.Option(None, "--trace-file", help="save the trace here"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config file (TOML)"),
    title: Optional[str] = typer.Option(None, help="document title (HTML)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the result cache"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="do not echo the model's text"),
    show_think: bool = typer.Option(False, "--show-think", help="echo the model's reasoning too (dimmed, stderr)"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="log what the LLM client and tools do"),
    tts_n: Optional[int] = typer.Option(None, "--tts", metavar="N", help="test-time scaling: sample N candidates, select, enhance, polish (docs/tts.md)"),
    tts_stages: Optional[str] = typer.Option(None, "--tts-stages", metavar="LIST", help="stages to run, e.g. sample,check,select,enhance,polish ([tts] stages)"),
    tts_budget: Optional[str] = typer.Option(None, "--tts-budget", metavar="SPEC", help="limits never exceeded, e.g. calls=40,tool_calls=30,tokens=200k,seconds=120"),
) -> None:
    """Write an illustrated document for PROMPT: any LLM writes, tools run as soon as each tag closes.

    The LLM is any OpenAI-compatible server (vLLM, SGLang, Ollama, LM Studio, OpenAI, ...) at --base-url or LLMI_BASE_URL (API key from LLMI_API_KEY or the config file), or a local transformers model (--model-path).

    The text streams to stdout; tool progress and the summary go to stderr. Exit 0: written; 1: the LLM failed part-way (partial document written); 2: nothing produced.
    """
    setup_logging(verbose)
    from ..generation import GenerationError, Trace, agenerate, trace_path_for

    with errors_as_exit():
        from ..render import write_document

        check_output_path(output)
        text = sys.stdin.read() if prompt == "-" else prompt
        if not text.strip():
            fail("the prompt is empty")
        llm = llm_options(base_url=base_url, model=model, model_path=model_path, backend=backend,
                          temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                          extra_body=_extra_body(extra_body, no_think) or None, vision=False if no_vision else None)
        overrides = sections(llm=llm, cache={"enabled": False} if no_cache else {})
        settings = load(config, overrides or None)
        images = list(image or [])
        tpath = trace_file or (trace_path_for(output) if trace else None)
        if tts_n is not None or tts_stages or tts_budget:
            from .tts_run import generate_with_tts

            if system_prompt is not None:
                settings.llm.system_prompt_file = str(system_prompt.resolve())
            return generate_with_tts(text, images, settings, output, n=tts_n, stages=tts_stages, budget=tts_budget,
                                     trace_path=tpath, title=title, quiet=quiet, seed=seed, temperature=temperature)

        run_trace = Trace()
        t0 = time.perf_counter()
        status = 0
        try:
            from ..request import Request, Sampling

            request = Request(text, sampling=Sampling(seed=seed))
            doc = asyncio.run(
                _run(agenerate, request, images, settings, system_prompt, run_trace, quiet=quiet, show_think=show_think)
            )
        except GenerationError as exc:
            doc, status = exc.document, 1
            message = str(exc)
        finally:
            if tpath is not None and run_trace.started:
                run_trace.save(tpath)
        path = write_document(doc, output, prompt=text, title=title)

    n_img, n_fail = len(doc.images), len(doc.failures)
    stats = doc.stats
    summary = (
        f"wrote {path}: {n_img} image(s), {n_fail} failure(s), {len(doc.violations)} format violation(s) "
        f"in {time.perf_counter() - t0:.1f} s"
        + (" — " + ", ".join(f"{t} {s['success']}/{s['total']}" for t, s in stats.items()) if stats else "")
    )
    console.print(summary, highlight=False)
    if tpath is not None:
        console.print(f"trace: {tpath}", highlight=False)
    if not quiet and _began_in_reasoning(run_trace.raw_response, settings):
        console.print("hint: the reply began inside reasoning without an opening <think> (the server's chat "
                      "template opens it): the reasoning streamed above as text, but is not in the document. "
                      "Set [llm] starts_in_think = true (or LLMI_LLM__STARTS_IN_THINK=1) to read such replies "
                      "as reasoning from the start", highlight=False, markup=False, soft_wrap=True)
    elif settings.llm.starts_in_think and "</think>" not in run_trace.raw_response and not doc.text.strip():
        console.print("warning: the whole reply was read as reasoning ([llm] starts_in_think = true) and it never "
                      "closed it with </think>: the document has no text. Unset starts_in_think for a server or "
                      "model (or --no-think) whose replies do not begin inside reasoning",
                      highlight=False, markup=False, soft_wrap=True)
    if run_trace.finish_reason == "length":
        console.print(f"[yellow]warning:[/] the model stopped at max_tokens ({settings.llm.max_tokens}); the document "
                      "may be cut — raise --max-tokens", highlight=False, soft_wrap=True)
    if status:
        console.print(f"[bold red]error:[/] {message} (partial document written)", highlight=False, soft_wrap=True)
        raise typer.Exit(status)


def _began_in_reasoning(raw_response: str, settings: Any) -> bool:
    """Whether the reply was re-read as starting inside reasoning (a first bare ``</think>``) while nothing
    said so beforehand — so its reasoning was echoed as text before the re-read."""
    from ..protocol import starts_in_think

    return (settings.llm.backend == "openai" and settings.llm.starts_in_think is None
            and starts_in_think(raw_response))


def _extra_body(raw: str | None, no_think: bool) -> dict[str, Any]:
    """``--extra-body`` parsed (a JSON object, else exit 2 with the reason), plus what ``--no-think`` adds."""
    import json

    extra: dict[str, Any] = {}
    if raw:
        try:
            extra = json.loads(raw)
        except ValueError as exc:
            fail(f"--extra-body is not valid JSON: {exc}")
        if not isinstance(extra, dict):
            fail(f"--extra-body must be a JSON object, not {type(extra).__name__}")
    if no_think:
        kwargs = extra.get("chat_template_kwargs")
        extra["chat_template_kwargs"] = {**(kwargs if isinstance(kwargs, dict) else {}), "enable_thinking": False}
    return extra


class _TextEcho:
    """Writes the model's text as it streams. Chooses the stream at start, before the live display
    takes over ``sys.stdout``: a pipe or file gets every piece at once, a terminal gets lines through
    the live display so they appear above the tool lines."""

    def __init__(self, *, quiet: bool, show_think: bool):
        self.quiet = quiet
        self.show_think = show_think
        self.raw: TextIO = sys.stdout
        self.via_live = sys.stdout.isatty() and console.is_terminal
        self.wrote_any = False
        self.last = ""

    def text(self, s: str) -> None:
        if self.quiet or not s:
            return
        out = sys.stdout if self.via_live else self.raw
        out.write(s)
        if not self.via_live:
            out.flush()
        self.wrote_any, self.last = True, s

    def think(self, s: str) -> None:
        if self.show_think and not self.quiet and s:
            console.print(s, style="dim", end="", highlight=False, markup=False)

    def close(self) -> None:
        if self.wrote_any and not self.last.endswith("\n"):
            self.text("\n")
        if not self.via_live:
            self.raw.flush()


async def _run(agenerate, request, images, settings, system_prompt, trace, *, quiet: bool, show_think: bool):
    from ..events import TagAmended, TextEvent, ThinkEvent, ToolFinished, ToolStarted

    echo = _TextEcho(quiet=quiet, show_think=show_think)
    with ToolProgress(console, n_inputs=len(images)) as progress:

        def on_event(ev) -> None:
            if isinstance(ev, TextEvent):
                echo.text(ev.text)
            elif isinstance(ev, ThinkEvent):
                echo.think(ev.text)
            elif isinstance(ev, (ToolStarted, ToolFinished, TagAmended)):
                progress.handle(ev)

        try:
            return await agenerate(request, images=images, settings=settings, system_prompt_file=system_prompt,
                                   on_event=on_event, trace=trace)
        finally:
            echo.close()
