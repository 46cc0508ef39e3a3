"""Live runs: each run's event log, its image slots, who follows it, and when it is cancelled.

A :class:`Run` is driven by one task that consumes the run's event stream (:func:`llmi.generation.stream`
for a prompt, the engine's session for an already-written response, test-time scaling when asked) and
appends each event, in its JSON form, to the run's log. Followers — a chat completion being streamed, a
page reading ``/api/runs/{id}/events`` — read that log from any position and wait for more. Image URLs
wait on the run's slot futures, which resolve when the slot's ``tool_finished`` event arrives.

Cancellation: a run that is not a *background* run is cancelled when its last follower goes away (after
``detach_grace_s``, so a page that reconnects keeps it; at once for the request that created it), or when
nobody follows it within that grace. Cancelling the task closes the event stream, which cancels the LLM
stream and the pending tool calls. Finished runs are written to the :class:`~.store.Store` and kept in
memory for a while (``keep_in_memory``) so their images answer without a disk read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections import OrderedDict
from contextlib import aclosing
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from ..document import Document, FailureBlock, ImageBlock, TextBlock
from ..errors import LLMError, LLMIError
from ..images import ImageData
from .store import RunRecord, Store, slot_blocks

if TYPE_CHECKING:  # pragma: no cover
    from .settings import ServerSettings

log = logging.getLogger(__name__)

FINISHED = ("done", "failed", "cancelled", "interrupted")
#: Events that mean the run has produced something a client can show (ends the wait before answering).
_OUTPUT = ("text", "think", "tool_started", "tool_finished", "done", "stage")


def image_name(slot: int) -> str:
    return f"slot-{slot}"


def input_name(i: int) -> str:
    return f"input-{i}"


def block_json(block: ImageBlock | FailureBlock, url: str) -> dict[str, Any]:
    """A slot's block in the document's JSON contract, the image as a link instead of base64 bytes
    (for a failure, the link is a small PNG stating the reason)."""
    from ..document import block_to_dict

    d = block_to_dict(block, image_data=False)
    d["url"] = url
    return d


def _plain(value: Any) -> Any:
    """A dataclass event's field as JSON (used only when the event has no ``to_dict``)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return None
    return value


def title_of(doc: Document | None, prompt: str) -> str:
    """The first Markdown heading of the document, else the prompt's first line (short)."""
    if doc is not None:
        for b in doc.blocks:
            if isinstance(b, TextBlock):
                for line in b.text.splitlines():
                    m = re.match(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", line)
                    if m:
                        return m.group(1)[:120]
    first = " ".join(prompt.split())
    return first[:80] + ("…" if len(first) > 80 else "")


class Run:
    """One live run. Its ``events`` are JSON dicts; ``seq`` of an event is its index."""

    def __init__(self, run_id: str, *, owner: str, kind: str, prompt: str, background: bool,
                 options: dict[str, Any], token: str, input_images: list[ImageData]):
        self.id = run_id
        self.owner = owner
        self.kind = kind
        self.prompt = prompt
        self.background = background
        self.options = options
        self.token = token
        self.input_images = input_images
        self.created = time.time()
        self.finished_at: float | None = None
        self.status = "running"
        self.events: list[dict[str, Any]] = []
        self.document: Document | None = None
        self.error: dict[str, str] | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.trace: Any = None
        self.slots: dict[int, asyncio.Future] = {}
        self.calls: dict[int, dict[str, Any]] = {}
        self.task: asyncio.Task | None = None
        self.followers = 0
        self._cancel_handle: asyncio.TimerHandle | None = None
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self.ended = asyncio.Event()
        self.has_output = asyncio.Event()
        self.saved = False  # its files are written (or writing them failed): it may leave memory
        self.save_task: asyncio.Task | None = None
        self.deleted = False
        self.nbytes = 0  # image bytes it holds once finished (inputs and slots)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    # -- the log ----------------------------------------------------------------------------------
    def append(self, event: dict[str, Any]) -> None:
        event.setdefault("run_id", self.id)
        self.events.append(event)
        if event.get("type") in _OUTPUT:
            self.has_output.set()
        self.notify()

    def notify(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    async def wait_output(self) -> None:
        """Until the run has produced output (text, a tool, a stage, the document) or has ended."""
        if self.has_output.is_set() or self.ended.is_set():
            return
        waits = [asyncio.ensure_future(self.has_output.wait()), asyncio.ensure_future(self.ended.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def follow(self, after: int = 0, *, heartbeat_s: float | None = None) -> AsyncIterator[tuple[int, dict | None]]:
        """``(seq, event)`` from ``after`` on, waiting for new ones until the run ends. With
        ``heartbeat_s``, ``(-1, None)`` is yielded after that long without an event (keep-alive)."""
        i = max(0, after)
        while True:
            while i < len(self.events):
                yield i, self.events[i]
                i += 1
            if self.finished:
                return
            changed = self._changed
            if heartbeat_s is None:
                await changed.wait()
                continue
            try:
                await asyncio.wait_for(changed.wait(), heartbeat_s)
            except asyncio.TimeoutError:
                yield -1, None

    # -- slots ------------------------------------------------------------------------------------
    def slot_future(self, slot: int) -> asyncio.Future:
        fut = self.slots.get(slot)
        if fut is None:
            fut = self.slots[slot] = asyncio.get_running_loop().create_future()
        return fut

    def set_slot(self, slot: int, block: ImageBlock | FailureBlock) -> None:
        fut = self.slots.get(slot)
        if fut is None or fut.done():
            fut = self.slots[slot] = asyncio.get_running_loop().create_future()
        fut.set_result(block)

    def record(self) -> RunRecord:
        doc = self.document
        return RunRecord(
            id=self.id, owner=self.owner, kind=self.kind, status=self.status, created=self.created,
            background=self.background, finished=self.finished_at, prompt=self.prompt[:4000],
            title=title_of(doc, self.prompt),
            n_images=len(doc.images) if doc else 0, n_failures=len(doc.failures) if doc else 0,
            stats=doc.stats if doc else None, usage=self.usage,
            error=self.error["message"] if self.error else None,
            options={k: v for k, v in self.options.items() if k != "sampling" or v},
        )

    def summary(self) -> dict[str, Any]:
        d = self.record().to_dict()
        d.update(events=len(self.events), token=self.token, followers=self.followers,
                 finish_reason=self.finish_reason, model=self.model)
        return d


EventSource = Callable[[Run], AsyncIterator[Any]]


class RunTooLong(LLMIError):
    """A run's event log passed ``[server] max_run_events`` (a model that does not stop)."""


class Reservation:
    """A place among a caller's runs in progress, taken when a request that starts a run is admitted and
    held until its run is started (or the request fails), so that requests arriving together cannot all
    pass the ``max_concurrent_runs`` check while their images are still being read."""

    def __init__(self, manager: "RunManager", owner: str):
        self.manager = manager
        self.owner = owner
        self.held = True
        manager._reserved[owner] = manager._reserved.get(owner, 0) + 1

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        left = self.manager._reserved.get(self.owner, 0) - 1
        if left > 0:
            self.manager._reserved[self.owner] = left
        else:
            self.manager._reserved.pop(self.owner, None)


class RunManager:
    """Starts runs, keeps the live ones, and lets the rest be read back from the store."""

    def __init__(self, store: Store, server: "ServerSettings"):
        self.store = store
        self.server = server
        self.live: dict[str, Run] = {}
        self._recent: OrderedDict[str, Run] = OrderedDict()
        self._pending_saves: set[asyncio.Task] = set()
        self._reserved: dict[str, int] = {}

    # -- identities and links ---------------------------------------------------------------------
    def token_for(self, run_id: str) -> str:
        return hmac.new(self.store.secret, run_id.encode(), hashlib.sha256).hexdigest()[:32]

    def token_ok(self, run_id: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.token_for(run_id), token)

    def image_token(self, run_id: str, name: str) -> str:
        """Signs one image link: it opens that image only, not the run's document or its other images (an
        image link travels — a chat front-end's page, a shared conversation — the run's token does not)."""
        return hmac.new(self.store.secret, f"image:{run_id}/{name}".encode(), hashlib.sha256).hexdigest()[:32]

    def image_token_ok(self, run_id: str, name: str, token: str | None) -> bool:
        return bool(token) and (hmac.compare_digest(self.image_token(run_id, name), token)
                                or self.token_ok(run_id, token))

    def image_path(self, run_id: str, name: str) -> str:
        return f"/images/{run_id}/{name}?sig={self.image_token(run_id, name)}"

    # -- starting ---------------------------------------------------------------------------------
    def active(self, owner: str) -> int:
        """Runs of ``owner`` in progress, counting the places held by requests still being admitted."""
        live = sum(1 for r in self.live.values() if r.owner == owner and not r.finished)
        return live + self._reserved.get(owner, 0)

    def reserve(self, owner: str) -> Reservation:
        return Reservation(self, owner)

    def start(self, run_id: str, source: EventSource, *, owner: str, kind: str, prompt: str, background: bool,
              options: dict[str, Any], input_images: list[ImageData], followed: bool,
              reservation: Reservation | None = None) -> Run:
        """Create the run and its driving task. ``followed``: the creating request follows it at once
        (otherwise nobody following it within ``detach_grace_s`` cancels a non-background run). The
        ``reservation`` the request held passes to the run."""
        run = Run(run_id, owner=owner, kind=kind, prompt=prompt, background=background, options=options,
                  token=self.token_for(run_id), input_images=input_images)
        self.live[run.id] = run
        if reservation is not None:
            reservation.release()  # the run itself counts from now on
        self.store.put(run.record())  # indexed at once: a restart marks it interrupted
        run.task = asyncio.ensure_future(self._drive(run, source))
        limit = self.server.max_run_s
        run._deadline_handle = asyncio.get_running_loop().call_later(
            limit, lambda: self.cancel(run, f"the run passed the time limit ({limit:g} s)", kind="time_limit"))
        if not followed and not background:
            self._schedule_cancel(run, self.server.detach_grace_s)
        return run

    # -- following --------------------------------------------------------------------------------
    def attach(self, run: Run) -> None:
        run.followers += 1
        if run._cancel_handle is not None:
            run._cancel_handle.cancel()
            run._cancel_handle = None

    def detach(self, run: Run, *, grace: float | None = None) -> None:
        run.followers = max(0, run.followers - 1)
        if run.followers == 0 and not run.finished and not run.background:
            self._schedule_cancel(run, self.server.detach_grace_s if grace is None else grace)

    def _schedule_cancel(self, run: Run, delay: float) -> None:
        if run._cancel_handle is not None:
            run._cancel_handle.cancel()
        if delay <= 0:
            run._cancel_handle = None
            self.cancel(run, "the client disconnected")
            return
        loop = asyncio.get_running_loop()
        run._cancel_handle = loop.call_later(delay, lambda: run.followers == 0 and self.cancel(run, "nobody followed the run"))

    def cancel(self, run: Run, reason: str = "cancelled", *, kind: str = "cancelled") -> bool:
        if run.finished or run.task is None or run.task.done():
            return False
        log.info("cancelling run %s: %s", run.id, reason)
        run.error = {"kind": kind, "message": reason}
        run.task.cancel()
        return True

    # -- driving ----------------------------------------------------------------------------------
    async def _drive(self, run: Run, source: EventSource) -> None:
        status = "done"
        partial: Document | None = None
        try:
            async with aclosing(source(run)) as events:
                async for ev in events:
                    self._push(run, ev)
        except asyncio.CancelledError:
            status = "cancelled"
            error = run.error or {}
            run.error = {"kind": error.get("kind") or "cancelled", "message": error.get("message") or "cancelled"}
        except LLMIError as exc:
            status = "failed"
            partial = getattr(exc, "document", None)
            if run.error is None:  # the stream's own error event (llm_cut, llm_unreachable, ...) says it best
                kind = "llm_error" if isinstance(exc, LLMError) else type(exc).__name__
                run.error = {"kind": kind, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug must end the run with a reason, not hang it
            log.exception("run %s crashed", run.id)
            status = "failed"
            run.error = {"kind": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            if run.document is None and partial is not None:
                run.document = partial
            self._end(run, status)
            save = run.save_task = asyncio.ensure_future(self._save(run))
            self._pending_saves.add(save)
            save.add_done_callback(self._pending_saves.discard)

    def _end(self, run: Run, status: str) -> None:
        for slot, fut in run.slots.items():
            if not fut.done():
                call = run.calls.get(slot, {})
                fut.set_result(FailureBlock(call.get("source") or "unknown", "the run ended before this tool finished",
                                            "cancelled", call.get("description", "")))
        if run.error is not None and not any(e.get("type") == "error" for e in run.events):
            run.append({"type": "error", "kind": run.error["kind"], "message": run.error["message"]})
        if run._deadline_handle is not None:
            run._deadline_handle.cancel()
            run._deadline_handle = None
        run.finished_at = time.time()
        run.status = status
        run.ended.set()
        run.notify()  # followers waiting for more see that the run is over
        self.live.pop(run.id, None)
        run.nbytes = sum(len(im.data) for im in run.input_images) + sum(
            len(f.result().data) for f in run.slots.values() if f.done() and isinstance(f.result(), ImageBlock))
        self._recent[run.id] = run
        self._evict()

    def _evict(self) -> None:
        """Finished runs leave memory, oldest first, past ``keep_in_memory`` runs or ``keep_in_memory_mb``
        of images — only once stored, so that their links never answer 404 in between."""
        budget = self.server.keep_in_memory_mb * 2**20
        total = sum(r.nbytes for r in self._recent.values())
        for run_id in list(self._recent):
            if len(self._recent) <= self.server.keep_in_memory and total <= budget:
                break
            run = self._recent[run_id]
            if run.saved:
                total -= run.nbytes
                del self._recent[run_id]

    async def _save(self, run: Run) -> None:
        if run.deleted:
            run.saved = True
            return
        try:
            if run.input_images:
                await asyncio.to_thread(self.store.save_inputs, run.id, run.input_images)
            if run.document is not None:
                await asyncio.to_thread(self.store.save_document, run.id, run.document, events=run.events)
            else:
                await asyncio.to_thread(self.store.save_events, run.id, run.events)
            await asyncio.to_thread(self.store.put, run.record())
        except Exception:  # noqa: BLE001
            log.exception("could not store run %s", run.id)
        finally:
            run.saved = True
            self._evict()

    def _push(self, run: Run, ev: Any) -> None:
        """One event from the source into the run's log (and its slots)."""
        limit = self.server.max_run_events
        if len(run.events) >= limit:
            message = f"the run produced more than {limit} events and was stopped"
            run.error = {"kind": "too_many_events", "message": message}
            raise RunTooLong(message)
        if isinstance(ev, dict):
            d = dict(ev)
        elif getattr(ev, "type", None) in ("tool_finished", "done"):
            d = ev.to_dict(image_data=False)  # the images go out as links, not base64
        else:
            to_dict = getattr(ev, "to_dict", None)
            d = to_dict() if callable(to_dict) else {k: _plain(v) for k, v in asdict(ev).items()}
        t = d.get("type")
        if d.get("run_id") and d["run_id"] != run.id:  # a sub-run's event (a candidate of test-time scaling)
            d["source_run_id"] = d["run_id"]
        d["run_id"] = run.id
        block = getattr(ev, "block", None) if not isinstance(ev, dict) else None
        if t == "tool_started":
            slot = int(d["index"])
            run.calls[slot] = {"source": d.get("source"), "description": d.get("description", ""),
                               "params": d.get("params") or {}}
            run.slot_future(slot)
        elif t in ("tool_finished", "tag_amended") and block is not None:
            slot = int(d["index"])
            run.set_slot(slot, block)
            d["block"] = block_json(block, self.image_path(run.id, image_name(slot)))
        elif t == "usage":
            run.usage = d.get("usage")
            run.finish_reason = d.get("finish_reason")
            run.model = d.get("model")
        elif t == "error":
            run.error = {"kind": str(d.get("kind") or "error"), "message": str(d.get("message") or "")}
        elif t == "done":
            doc = ev.document if not isinstance(ev, dict) else ev.get("document_obj")
            d.pop("document_obj", None)
            if isinstance(doc, Document):
                run.document = doc
                for slot, b in enumerate(slot_blocks(doc)):
                    run.set_slot(slot, b)
                d["document"] = self.document_json(run.id, doc)
        run.append(d)

    def document_json(self, run_id: str, doc: Document) -> dict[str, Any]:
        """The document's JSON contract with images as signed links (not base64)."""
        urls = [self.image_path(run_id, image_name(s)) for s, b in enumerate(slot_blocks(doc))
                if isinstance(b, ImageBlock)]
        d = doc.to_dict(image_paths=urls)
        for b in d["blocks"]:
            if "path" in b:
                b["url"] = b.pop("path")
        d["input_images"] = [
            {"mime": im.mime, "width": im.width, "height": im.height, "url": self.image_path(run_id, input_name(i))}
            for i, im in enumerate(doc.input_images)
        ]
        return d

    # -- looking up -------------------------------------------------------------------------------
    def find(self, run_id: str) -> Run | None:
        return self.live.get(run_id) or self._recent.get(run_id)

    def forget(self, run_id: str) -> None:
        self._recent.pop(run_id, None)

    async def settle_for_delete(self, run: Run) -> None:
        """Before a run's files are removed: stop it, and let a save under way finish (a save that ran
        after the delete would write the run back — its index row and its files)."""
        run.deleted = True
        if not run.finished:
            self.cancel(run, "deleted by the client")
        await run.ended.wait()
        if run.save_task is not None:
            await asyncio.gather(asyncio.shield(run.save_task), return_exceptions=True)

    async def shutdown(self) -> None:
        for run in list(self.live.values()):
            self.cancel(run, "the server is shutting down")
        tasks = [r.task for r in list(self.live.values()) if r.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._pending_saves:
            await asyncio.gather(*list(self._pending_saves), return_exceptions=True)
