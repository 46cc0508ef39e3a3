"""The one batch runner: input rows in, concurrent work, output rows appended to a JSONL as they finish.

A long job is an append-only log keyed by id. :func:`run_batch` reads the output file first: every id
already there is done and is skipped, so a run that was killed — at any moment, ``SIGKILL`` included —
resumes by being started again, and nothing that was written is lost or redone. There is no separate
state file to get out of step with the output.

Why killing is safe:

* each finished row is written with one ``write`` call on a file opened in append mode, so a row is
  either in the file whole or (killed inside the call, or the disk filled) as a torn last line without
  its newline — which the next run cuts off and redoes, since that row never finished;
* the final reordering (:func:`consolidate`) writes a new file next to the output and renames it over
  the output, so the output is always either the old log or the new one;
* a second runner on the same output is refused while the first holds its lock (POSIX ``flock``).

A row whose work raises is not a reason to stop the others: it becomes
``{"id": ..., "error": {"kind": ..., "message": ...}}`` and the batch goes on. Such rows are redone by a
run with ``retry_errors``. :class:`~llmi.errors.ConfigError` (the setup is unusable, every row would
fail the same way) and cancellation stop the batch.

Used by ``llmi reward`` (and ``llmi eval``). A sketch::

    async def work(id, row):
        return {"answer": await solve(row)}

    summary = await run_batch(((str(i), r) for i, r in enumerate(rows)), work, Path("out.jsonl"), concurrency=8)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, TypeVar, Union

from .errors import ConfigError, InputError, LLMIError

try:  # POSIX only; elsewhere a second runner on the same output is not detected
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: A row id: a string, or an integer (``llmi reward`` uses line numbers). Compared after a JSON round trip.
RowId = Union[str, int]
#: ``async work(id, row) -> dict``: the output row's fields (the id field is added by the runner).
Work = Callable[[RowId, Any], Awaitable[dict]]
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchProgress:
    """Sent to ``on_event`` after every row this run finishes (and once at the start, with ``done=0``).

    ``done``: rows finished by this run, errors included; ``failed``: those that became error rows;
    ``total``: rows this run has to do (``None`` while the input has not been read to its end and no
    total was given); ``skipped``: rows already in the output; ``id``: the row that just finished.
    """

    done: int
    total: int | None
    failed: int
    skipped: int = 0
    id: RowId | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "batch_progress", "done": self.done, "total": self.total, "failed": self.failed,
                "skipped": self.skipped, "id": self.id}


@dataclass(frozen=True)
class BatchSummary:
    """What one :func:`run_batch` call did. ``complete`` is true when every input row is in the output."""

    total: int  # input rows
    done: int  # rows finished by this run (errors included)
    failed: int  # of those, error rows
    skipped: int  # rows already in the output before this run
    elapsed_s: float
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "done": self.done, "failed": self.failed, "skipped": self.skipped,
                "elapsed_s": round(self.elapsed_s, 3), "complete": self.complete}


# ------------------------------------------------------------------------------------------------
# The output log
# ------------------------------------------------------------------------------------------------


def _consolidate_tmp(out: Path) -> Path:
    return out.with_name(out.name + ".consolidate.tmp")


def iter_output(out: Path, *, id_key: str = "id", repair: bool = False) -> Iterator[dict]:
    """The rows of an output log, in file order (one id may appear more than once; the last one counts).

    A last line without its newline, or that is not JSON, is a row torn by a kill: it is skipped, and cut
    off the file with ``repair``. A bad line elsewhere (edited by hand) is skipped with a warning; rows
    without ``id_key`` are skipped too.
    """
    if not out.exists():
        return
    torn_at: int | None = None
    with open(out, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        for raw in f:
            start, offset = offset, offset + len(raw)
            row = None
            if raw.endswith(b"\n"):  # only the last line can lack its newline
                try:
                    row = json.loads(raw)
                except ValueError:
                    pass
            if row is None:
                if offset >= size:
                    torn_at = start
                elif raw.strip():
                    log.warning("%s: skipping line at byte %d: not a JSON row", out, start)
                continue
            if isinstance(row, dict) and id_key in row:
                yield row
    if torn_at is not None and repair:
        log.info("%s: cutting off a torn last line (a run was killed while writing it)", out)
        with open(out, "r+b") as f:
            f.truncate(torn_at)


def read_output(out: Path, *, id_key: str = "id") -> dict[RowId, dict]:
    """The last row of each id in an output log (torn or bad lines left out)."""
    rows: dict[RowId, dict] = {}
    for row in iter_output(out, id_key=id_key):
        rows[_key(row[id_key])] = row
    return rows


def _key(value: Any) -> RowId:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return json.dumps(value, sort_keys=True)
    return value


def consolidate(out: Path, order: Iterable[RowId], *, id_key: str = "id") -> None:
    """Rewrite ``out`` with the last row of each id, ids in ``order`` first, then any others as found.

    Atomic: the new file is written beside ``out`` and renamed over it.
    """
    last: dict[RowId, bytes] = {}
    for row in iter_output(out, id_key=id_key):
        last[_key(row[id_key])] = _line(row)
    tmp = _consolidate_tmp(out)
    try:
        with open(tmp, "wb") as f:
            for rid in order:
                line = last.pop(rid, None)
                if line is not None:
                    f.write(line)
            for line in last.values():
                f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _line(row: dict) -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def error_kind(exc: BaseException) -> str:
    """The ``kind`` of an error row: the exception's own ``kind`` when it has one (tool errors, judge
    failures), else a name for its class (``input`` for :class:`~llmi.errors.InputError`)."""
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str) and kind:
        return kind
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, LLMIError):
        return type(exc).__name__
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return "bad_row"
    return "crash"


class _Appender:
    """The output log opened for appending, locked against a second runner; one ``write`` per row."""

    def __init__(self, out: Path):
        self.out = out
        self.fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self.fd)
                raise InputError(f"{out} is being written by another run; wait for it or choose another output")

    def write(self, row: dict) -> None:
        data = _line(row)
        view = memoryview(data)
        while view:  # a regular file takes it in one call; loop only if the kernel wrote part of it
            n = os.write(self.fd, view)
            view = view[n:]

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


# ------------------------------------------------------------------------------------------------
# The runner
# ------------------------------------------------------------------------------------------------


async def bounded_map(work: Callable[[T], Awaitable[R]], items: Iterable[T], limit: int) -> AsyncIterator[R]:
    """``work(item)`` for each item, at most ``limit`` at once; yields the results as they finish.

    ``items`` is read lazily, one item as a place frees up, so a generator over a large file keeps memory
    bounded. Closing the iterator early (``aclosing``), or an error of ``work`` (raised when its result
    comes), cancels the work still in progress and waits for it.
    """
    source = iter(items)
    pending: set[asyncio.Future] = set()
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < limit:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.add(asyncio.ensure_future(work(item)))
            if not pending:
                return
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                yield task.result()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def run_batch(
    rows: Iterable[tuple[RowId, Any]],
    work: Work,
    out: Path | str,
    *,
    concurrency: int,
    retry_errors: bool = False,
    on_event: Callable[[BatchProgress], Any] | None = None,
    total: int | None = None,
    id_key: str = "id",
    redo: Callable[[dict], bool] | None = None,
    ordered: bool = True,
) -> BatchSummary:
    """Run ``work`` on every ``(id, row)`` whose id is not yet in ``out``; append each result as it finishes.

    ``rows`` is read lazily (a generator over a large file keeps memory bounded: at most ``concurrency``
    rows are in progress). Each result ``dict`` is written as ``{id_key: id, **result}``. A row already in
    ``out`` is skipped unless it is an error row and ``retry_errors`` is set, or ``redo(row)`` says so
    (``llmi reward`` redoes rows whose judge failed this way). An id that comes twice in ``rows`` is done
    once. ``on_event`` (sync or async) gets a :class:`BatchProgress` after each row; ``total`` (the number
    of input rows, if known) makes its ``total`` known from the start.

    When every input row is in ``out`` at the end and ``ordered`` is set, ``out`` is rewritten in input
    order with one row per id (atomically). Raises :class:`~llmi.errors.ConfigError` from ``work`` and
    cancellation as they come (the rows written so far stay); any other exception of ``work`` becomes that
    row's error row.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    out = Path(out)
    started = time.monotonic()
    with contextlib.suppress(FileNotFoundError):
        _consolidate_tmp(out).unlink()  # left by a run killed while reordering; the log itself is intact

    appender = _Appender(out)  # lock before reading, so no other run appends between our read and our writes
    try:
        done_ids: set[RowId] = set()
        for row in iter_output(out, id_key=id_key, repair=True):
            rid = _key(row[id_key])
            if (retry_errors and "error" in row) or (redo is not None and redo(row)):
                done_ids.discard(rid)  # a later line of the same id may still make it done
            else:
                done_ids.add(rid)

        order: list[RowId] = []
        seen: set[RowId] = set()
        # rows to do: exact once the input is read; until then estimated from ``total`` and the log
        state = {"done": 0, "failed": 0, "skipped": 0,
                 "todo": None if total is None else max(0, total - len(done_ids))}

        async def emit(rid: RowId | None) -> None:
            if on_event is None:
                return
            ev = BatchProgress(state["done"], state["todo"], state["failed"], state["skipped"], rid)
            result = on_event(ev)
            if inspect.isawaitable(result):
                await result

        async def one(rid: RowId, row: Any) -> tuple[RowId, dict]:
            try:
                result = await work(rid, row)
                if not isinstance(result, dict):
                    raise TypeError(f"work returned {type(result).__name__}, not a dict")
                out_row = {id_key: rid, **{k: v for k, v in result.items() if k != id_key}}
                _line(out_row)  # fail here, as this row's error, if it cannot be written as JSON
                return rid, out_row
            except (ConfigError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - a bad row is a row result, not the batch's end
                log.warning("row %r failed: %s: %s", rid, type(exc).__name__, exc)
                return rid, {id_key: rid, "error": {"kind": error_kind(exc), "message": f"{type(exc).__name__}: {exc}"}}

        def todo() -> Iterator[tuple[RowId, Any]]:
            for rid, row in rows:
                rid = _key(rid)
                if rid in seen:
                    log.warning("id %r comes twice in the input; it is done once", rid)
                    continue
                seen.add(rid)
                order.append(rid)
                if rid in done_ids:
                    state["skipped"] += 1
                    continue
                yield rid, row
            state["todo"] = len(order) - state["skipped"]

        await emit(None)
        async with contextlib.aclosing(bounded_map(lambda item: one(*item), todo(), concurrency)) as finished:
            async for rid, out_row in finished:
                appender.write(out_row)
                done_ids.add(rid)
                state["done"] += 1
                state["failed"] += "error" in out_row
                await emit(rid)
        complete = all(rid in done_ids for rid in order)
        if complete and ordered:
            consolidate(out, order, id_key=id_key)  # still locked: no other run appends meanwhile
    finally:
        appender.close()
    return BatchSummary(
        total=len(order),
        done=state["done"],
        failed=state["failed"],
        skipped=state["skipped"],
        elapsed_s=time.monotonic() - started,
        complete=complete,
    )
