"""``/api``: llmi's own endpoints — runs and their events, documents, render, reward — and ``/images``.

* ``POST /api/runs`` starts a document run from a prompt (with images, earlier turns, sampling, options:
  ``background``, ``tts``); ``"stream": true`` answers with the run's events at once, else with the run.
* ``POST /api/render`` starts a run that executes the tags of an already-written response.
* ``GET /api/runs/{id}/events`` follows a run as server-sent events: ``id: <seq>``, ``event: <type>``,
  ``data: <the event's JSON form>`` (images as signed links instead of base64). ``Last-Event-ID`` or
  ``?after=`` resumes. A finished run's events are replayed from the store.
* ``GET /api/runs/{id}/document.{html,md,zip,json}`` — the finished document (``?sig=`` from the run
  works without a key, so a link can be downloaded as is); ``/fragment`` — sanitised HTML for the page.
* ``POST /api/reward`` scores rows with the LLM-I reward (rule parts; judges when configured).
* ``GET /images/{id}/slot-<n>`` blocks until slot ``n``'s tool has finished and answers with its image
  (or a PNG stating why it failed); ``input-<i>`` is the user's image ``i``. Signed (``?sig=``) so that
  an ``<img>`` or a chat client's Markdown renderer can load it without the API key.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import zipfile
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..document import Document, FailureBlock, ImageBlock
from ..render.html import linked_slot_html, render_html_fragment, text_html
from .auth import Principal, bearer
from .deps import light_work, principal, public_base, reservation, run_slot, services, wait_or_disconnect
from .inputs import ApiError
from .manager import Run, image_name, input_name
from .services import Services
from .store import RunRecord, slot_blocks, valid_run_id
from .view import failure_png, notice_png

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["runs"])
images_router = APIRouter(tags=["images"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ------------------------------------------------------------------------------------------------
# Bodies
# ------------------------------------------------------------------------------------------------


class SamplingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None


class TTSOptions(BaseModel):
    """Test-time scaling for this run (unset fields: the ``[tts]`` table)."""

    model_config = ConfigDict(extra="forbid")
    n: int | None = Field(None, ge=1, le=64, description="candidates sampled in parallel")
    stages: list[str] | str | None = Field(None, description="stages to run: sample, check, select, enhance, polish")
    budget: str | dict[str, Any] | None = Field(None, description="e.g. 'calls=40,tool_calls=30,seconds=120'")


class RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    background: bool = Field(False, description="keep running when nobody follows the run (else cancelled)")
    tts: bool | TTSOptions | None = Field(None, description="test-time scaling: true for the [tts] defaults, or options")


class HistoryMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    images: list[str] = Field(default_factory=list, description="data: URIs, base64, or http(s) URLs (fetched through "
                                                                "the safe fetcher); PNG, JPEG, GIF, WEBP, BMP")
    history: list[HistoryMessage] = Field(default_factory=list, description="earlier turns")
    sampling: SamplingBody | None = None
    image_num: int | None = None
    tools: list[str] | None = Field(None, description="advertise only these tools")
    options: RunOptions = Field(default_factory=RunOptions)
    stream: bool = Field(False, description="answer with the run's events (text/event-stream) at once")


class RenderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response: str = Field(min_length=1, description="an already-written response with <imgen> tags")
    images: list[str] = Field(default_factory=list, description="the user's images (data: URIs or base64)")
    options: RunOptions = Field(default_factory=RunOptions)
    stream: bool = False
    prompt: str = Field("", description="the prompt it answered (shown with the document)")


class RunInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    kind: str
    status: str = Field(description="running, done, failed, cancelled, interrupted")
    created: float
    finished: float | None = None
    background: bool = False
    prompt: str = ""
    title: str = ""
    n_images: int = 0
    n_failures: int = 0
    stats: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    token: str = Field(description="signs this run's image and document links (?sig=)")
    links: dict[str, str] = Field(default_factory=dict)


class RunList(BaseModel):
    runs: list[RunInfo]


class MarkdownBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class HtmlPart(BaseModel):
    html: str


class RewardBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Any]] = Field(description="rows as for `llmi reward`: prompt, response, image_num, tools, "
                                                   "split?, images? (data: URIs only)")
    judges: bool | None = Field(None, description="use the judges (default: when [llm_judge] base_url is set)")


class RewardOut(BaseModel):
    results: list[dict[str, Any]]


class ServerInfo(BaseModel):
    model: str
    auth_required: bool
    tools: list[str]
    tts_available: bool
    limits: dict[str, Any]


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _info(svc: Services, rec: RunRecord | Run) -> RunInfo:
    d = rec.record().to_dict() if isinstance(rec, Run) else rec.to_dict()
    d.pop("options", None)
    token = svc.manager.token_for(d["id"])
    base = f"/api/runs/{d['id']}"
    links = {"self": base, "events": f"{base}/events",
             **{f: f"{base}/document.{f}?sig={token}" for f in ("html", "md", "zip", "json")}}
    return RunInfo(**d, token=token, links=links)


def _owned(svc: Services, run_id: str, who: Principal) -> Run | RunRecord:
    """The live run or stored record ``run_id`` of ``who`` (404 for anyone else's: no existence leak)."""
    if not valid_run_id(run_id):
        raise ApiError(404, "no such run", code="not_found")
    run = svc.manager.find(run_id)
    if run is not None:
        if run.owner != who.id:
            raise ApiError(404, "no such run", code="not_found")
        return run
    rec = svc.store.get(run_id)
    if rec is None or rec.owner != who.id:
        raise ApiError(404, "no such run", code="not_found")
    return rec


def _readable(request: Request, run_id: str, sig: str | None, *, image: str | None = None) -> Run | RunRecord:
    """A run readable with its signature (for ``image``, that image's own signature also does), or else
    with the owner's key."""
    svc = services(request)
    if not valid_run_id(run_id):
        raise ApiError(404, "no such run", code="not_found")
    m = svc.manager
    if sig is not None and (m.image_token_ok(run_id, image, sig) if image is not None else m.token_ok(run_id, sig)):
        run = svc.manager.find(run_id)
        if run is not None:
            return run
        rec = svc.store.get(run_id)
        if rec is None:
            raise ApiError(404, "no such run", code="not_found")
        return rec
    if sig is not None and not bearer(request.headers.get("authorization")):
        raise ApiError(403, "the link's signature is not valid", code="bad_signature")
    return _owned(svc, run_id, principal(request))


async def _document(svc: Services, rec: Run | RunRecord) -> Document:
    if isinstance(rec, Run):
        if rec.document is not None:
            return rec.document
        if not rec.finished:
            raise ApiError(409, "the run is still running; its document is not finished", code="not_finished")
        raise ApiError(404, f"the run has no document ({rec.status}: {rec.error['message'] if rec.error else ''})",
                       code="no_document")
    doc = await asyncio.to_thread(svc.store.load_document, rec.id)
    if doc is None:
        raise ApiError(404, f"the run has no document ({rec.status})", code="no_document")
    return doc


def _last_event_id(value: str | None) -> int:
    """The ``Last-Event-ID`` a reconnecting client sends (an event's ``id``), else -1 (from the start)."""
    m = re.fullmatch(r"\s*(-?[0-9]{1,12})\s*", value or "")
    return int(m.group(1)) if m else -1


def _sse(seq: int, event: dict[str, Any]) -> str:
    data = json.dumps(event, ensure_ascii=False)
    return f"id: {seq}\nevent: {event.get('type', 'message')}\ndata: {data}\n\n"


def _tts_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("llmi.tts.pipeline") is not None
    except (ImportError, ValueError):
        return False


def _tts_options(value: "bool | TTSOptions | None", *, max_n: int | None = None) -> dict[str, Any] | None:
    if not value:
        return None
    if not _tts_available():
        raise ApiError(400, "test-time scaling (options.tts) is not available in this llmi build: the llmi.tts "
                            "pipeline is not installed", code="tts_unavailable")
    if isinstance(value, TTSOptions) and max_n is not None and value.n is not None and value.n > max_n:
        # each candidate is a whole answer (an LLM stream and its tool calls), all in one run's place
        raise ApiError(400, f"options.tts.n is {value.n}; this server allows at most {max_n} candidates",
                       code="too_many_candidates", param="tts.n")
    return value.model_dump(exclude_none=True) if isinstance(value, TTSOptions) else {}


async def _start_response(request: Request, svc: Services, run: Run, stream: bool):
    """Either the run's events now (``stream``), or the run's description (201)."""
    if stream:
        return _event_stream(request, svc, run, after=0, grace=0)
    return JSONResponse(_info(svc, run).model_dump(), status_code=201,
                        headers={"Location": f"/api/runs/{run.id}"})


def _event_stream(request: Request, svc: Services, run: Run, *, after: int, grace: float | None) -> StreamingResponse:
    svc.manager.attach(run)

    async def body():
        try:
            async for seq, ev in run.follow(after, heartbeat_s=svc.server.heartbeat_s):
                yield ": keep-alive\n\n" if ev is None else _sse(seq, ev)
        finally:
            svc.manager.detach(run, grace=grace)

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


# ------------------------------------------------------------------------------------------------
# Routes
# ------------------------------------------------------------------------------------------------


@router.get("/config", response_model=ServerInfo, summary="What this server offers (no key needed)")
async def config(request: Request) -> ServerInfo:
    svc = services(request)
    srv = svc.server
    return ServerInfo(
        model=srv.model_name, auth_required=svc.keys.enabled,
        tools=list(svc.engine.usable_tools()) if svc.engine is not None else [],
        tts_available=_tts_available(),
        limits={"max_request_bytes": srv.max_request_bytes, "max_image_bytes": srv.max_image_bytes,
                "max_images": srv.max_images, "max_prompt_chars": srv.max_prompt_chars,
                "max_concurrent_runs": srv.max_concurrent_runs, "rate_per_minute": srv.rate_per_minute},
    )


@router.post("/runs", status_code=201, response_model=RunInfo, summary="Start a document run from a prompt",
             responses={200: {"content": {"text/event-stream": {}}, "description": "the events, with stream=true"}})
async def create_run(body: RunCreate, request: Request, who: Principal = Depends(run_slot)):
    from ..request import Request as RunRequest, Sampling

    svc = services(request)
    srv = svc.server
    if len(body.prompt) + sum(len(m.content) for m in body.history) > srv.max_prompt_chars:
        raise ApiError(413, f"the prompt is longer than {srv.max_prompt_chars} characters", code="request_too_large")
    tts = _tts_options(body.options.tts, max_n=srv.max_tts_n)
    images = await svc.load_images([("url" if v.startswith(("http://", "https://")) else "data", v)
                                    for v in body.images])
    sampling = Sampling(**body.sampling.model_dump()) if body.sampling else Sampling()
    req = RunRequest(prompt=body.prompt, images=tuple(images), history=tuple(m.model_dump() for m in body.history),
                     sampling=sampling, image_num=body.image_num,
                     tools=tuple(body.tools) if body.tools is not None else None)
    options = {"background": body.options.background, "tts": tts, "sampling": sampling.to_dict()}
    run = svc.manager.start(req.run_id, svc.generate_source(req, tts=tts), owner=who.id,
                            kind="tts" if tts is not None else "generate", prompt=body.prompt,
                            background=body.options.background, options=options, input_images=images,
                            followed=body.stream, reservation=reservation(request))
    return await _start_response(request, svc, run, body.stream)


@router.post("/render", status_code=201, response_model=RunInfo, summary="Run the tags of a written response",
             responses={200: {"content": {"text/event-stream": {}}, "description": "the events, with stream=true"}})
async def create_render(body: RenderCreate, request: Request, who: Principal = Depends(run_slot)):
    from ..request import new_run_id

    svc = services(request)
    if len(body.response) > svc.server.max_prompt_chars:
        raise ApiError(413, f"the response is longer than {svc.server.max_prompt_chars} characters",
                       code="request_too_large")
    _check_tags(svc, body.response, "the response")
    images = await svc.load_images([("data", v) for v in body.images])
    run_id = new_run_id()
    run = svc.manager.start(run_id, svc.render_source(body.response, images, prompt=body.prompt), owner=who.id, kind="render",
                            prompt=body.prompt, background=body.options.background,
                            options={"background": body.options.background}, input_images=images,
                            followed=body.stream, reservation=reservation(request))
    return await _start_response(request, svc, run, body.stream)


@router.get("/runs", response_model=RunList, summary="This key's runs, newest first")
async def list_runs(request: Request, who: Principal = Depends(principal),
                    limit: int = Query(50, ge=1, le=500), before: float | None = Query(None)) -> RunList:
    svc = services(request)
    records = await asyncio.to_thread(svc.store.list, who.id, limit=limit, before=before)
    out = []
    for rec in records:
        live = svc.manager.find(rec.id)
        out.append(_info(svc, live if live is not None else rec))
    return RunList(runs=out)


@router.get("/runs/{run_id}", response_model=RunInfo, summary="One run")
async def get_run(run_id: str, request: Request, who: Principal = Depends(principal)) -> RunInfo:
    svc = services(request)
    return _info(svc, _owned(svc, run_id, who))


@router.get("/runs/{run_id}/events", summary="The run's events as server-sent events",
            responses={200: {"content": {"text/event-stream": {}}}})
async def run_events(run_id: str, request: Request, who: Principal = Depends(principal),
                     after: int | None = Query(None, ge=-1, description="resume after this event id")):
    svc = services(request)
    rec = _owned(svc, run_id, who)
    start = max(0, (after if after is not None else _last_event_id(request.headers.get("last-event-id"))) + 1)
    if isinstance(rec, Run) and not rec.finished:
        return _event_stream(request, svc, rec, after=start, grace=None)
    events = rec.events if isinstance(rec, Run) else await asyncio.to_thread(svc.store.load_events, rec.id)

    async def replay():
        for seq in range(start, len(events)):
            yield _sse(seq, events[seq])

    return StreamingResponse(replay(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/runs/{run_id}/cancel", response_model=RunInfo, summary="Cancel a running run")
async def cancel_run(run_id: str, request: Request, who: Principal = Depends(principal)) -> RunInfo:
    svc = services(request)
    rec = _owned(svc, run_id, who)
    if isinstance(rec, Run) and not rec.finished:
        svc.manager.cancel(rec, "cancelled by the client")
        await rec.ended.wait()
    return _info(svc, svc.manager.find(run_id) or rec)


@router.delete("/runs/{run_id}", status_code=204, summary="Delete a run and its files")
async def delete_run(run_id: str, request: Request, who: Principal = Depends(principal)) -> Response:
    svc = services(request)
    rec = _owned(svc, run_id, who)
    if isinstance(rec, Run):
        await svc.manager.settle_for_delete(rec)
    svc.manager.forget(run_id)
    await asyncio.to_thread(svc.store.delete, run_id)
    return Response(status_code=204)


@router.get("/runs/{run_id}/document.{fmt}", summary="The finished document as HTML, Markdown, a zip, or JSON",
            responses={200: {"content": {"text/html": {}, "text/markdown": {}, "application/zip": {},
                                         "application/json": {}}}})
async def get_document(run_id: str, fmt: Literal["html", "md", "zip", "json"], request: Request,
                       sig: str | None = Query(None), download: bool = Query(False)) -> Response:
    from ..render import render_html, render_json, render_markdown
    from ..render.html import CONTENT_SECURITY_POLICY

    svc = services(request)
    rec = _readable(request, run_id, sig)
    doc = await _document(svc, rec)
    prompt = rec.prompt or None
    name = f"llmi-{run_id}.{fmt}"
    headers = {"Content-Disposition": f'{"attachment" if download or fmt == "zip" else "inline"}; filename="{name}"'}
    if fmt == "html":
        text = await asyncio.to_thread(render_html, doc, prompt=prompt)
        # The renderer's no-script policy, and more since the page is served from the API's own origin:
        # sandboxed (an opaque origin, should anything ever run) and never framed by another page.
        headers["Content-Security-Policy"] = f"{CONTENT_SECURITY_POLICY}; frame-ancestors 'none'; sandbox"
        return Response(text.encode("utf-8", "replace"), media_type="text/html; charset=utf-8", headers=headers)
    if fmt == "json":
        text = await asyncio.to_thread(render_json, doc)
        return Response(text.encode("utf-8", "replace"), media_type="application/json", headers=headers)
    assets = f"llmi-{run_id}_assets"
    text, files = await asyncio.to_thread(render_markdown, doc, assets_dir=assets, prompt=prompt)
    if fmt == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"llmi-{run_id}.md", text.encode("utf-8", "replace"))
            for rel, data in files.items():
                z.writestr(rel, data)
        return Response(buf.getvalue(), media_type="application/zip", headers=headers)
    # .md on its own: the images as links to this server (the zip has them as files)
    base = public_base(request)
    image_slots = [s for s, b in enumerate(slot_blocks(doc)) if isinstance(b, ImageBlock)]
    for n, slot in enumerate(image_slots, 1):
        for rel in [r for r in files if re.search(rf"/image-{n}\.[a-z]+$", r)]:
            text = text.replace(f"]({rel})", f"]({base}{svc.manager.image_path(run_id, image_name(slot))})")
    return Response(text.encode("utf-8", "replace"), media_type="text/markdown; charset=utf-8", headers=headers)


@router.get("/runs/{run_id}/fragment", response_model=HtmlPart, summary="The document as sanitised HTML for a page")
async def get_fragment(run_id: str, request: Request, who: Principal = Depends(principal)) -> HtmlPart:
    svc = services(request)
    rec = _owned(svc, run_id, who)
    doc = await _document(svc, rec)
    m = svc.manager
    html = await asyncio.to_thread(
        render_html_fragment, doc, prompt=rec.prompt or None, format_notes=False,
        slot_url=lambda s: m.image_path(run_id, image_name(s)), input_url=lambda i: m.image_path(run_id, input_name(i)))
    return HtmlPart(html=html)


@router.get("/runs/{run_id}/slots/{slot}", response_model=HtmlPart, summary="One finished slot as sanitised HTML")
async def get_slot(run_id: str, request: Request, slot: int = Path(ge=0, le=999_999),
                   who: Principal = Depends(principal)) -> HtmlPart:
    svc = services(request)
    rec = _owned(svc, run_id, who)
    block = await _slot_block(svc, rec, slot, wait=False)
    if block is None:
        raise ApiError(409, "the slot's tool has not finished", code="not_finished")
    n_inputs = len(rec.input_images) if isinstance(rec, Run) else svc.store.count_inputs(run_id)
    return HtmlPart(html=linked_slot_html(block, svc.manager.image_path(run_id, image_name(slot)),
                                   index=n_inputs + slot if n_inputs or block.tool == "edit" else None))


@router.post("/markdown", response_model=HtmlPart, summary="Model Markdown as sanitised HTML (as the HTML renderer)")
async def markdown(body: MarkdownBody, request: Request, who: Principal = Depends(light_work)) -> HtmlPart:
    if len(body.text) > services(request).server.max_prompt_chars:
        raise ApiError(413, "the text is too long", code="request_too_large")
    return HtmlPart(html=await asyncio.to_thread(text_html, body.text))


@router.post("/reward", response_model=RewardOut, summary="Score rows with the LLM-I reward")
async def reward(body: RewardBody, request: Request, who: Principal = Depends(run_slot)) -> RewardOut:
    # run_slot: scoring runs the rows' tags, so it holds one of the key's places for runs in progress.
    from ..errors import ConfigError
    from ..reward import RewardScorer, sample_from_row

    svc = services(request)
    if len(body.rows) > svc.server.max_reward_rows:
        raise ApiError(413, f"too many rows ({len(body.rows)}; the limit is {svc.server.max_reward_rows})",
                       code="too_many_rows")
    for i, row in enumerate(body.rows):
        for ref in row.get("images") or []:
            if not (isinstance(ref, str) and ref.startswith("data:")):
                raise ApiError(400, f"rows[{i}].images: only data: URIs are accepted here (no file paths)")
        if row.get("document") is not None and "\"path\"" in json.dumps(row["document"]):
            raise ApiError(400, f"rows[{i}].document: images must be inline (data_base64), not paths")
        if len(str(row.get("response", ""))) > svc.server.max_prompt_chars:
            raise ApiError(413, f"rows[{i}].response is too long", code="request_too_large")
        if isinstance(row.get("response"), str) and row.get("document") is None:
            _check_tags(svc, row["response"], f"rows[{i}].response")
    judges = body.judges if body.judges is not None else bool(svc.settings.llm_judge.base_url)
    if judges and not svc.settings.llm_judge.base_url:
        raise ApiError(400, "judges were asked for, but this server has no judge ([llm_judge] base_url)",
                       code="judges_unavailable", param="judges")
    engine = svc.engine
    assert engine is not None

    async def execute(response: str, images: list) -> Document:
        return await engine.run_response(response, input_images=images)

    config = _reward_config(svc)
    kwargs: dict[str, Any] = {"judges": judges, "execute": execute}
    if config is not None:
        kwargs["config"] = config
    samples = [sample_from_row(row) for row in body.rows]
    results: list[dict[str, Any]] = []

    async def score_all() -> None:
        async with RewardScorer(svc.settings, **kwargs) as scorer:
            results.extend(r.to_dict() for r in await scorer.score_batch(samples))

    try:
        scored = await wait_or_disconnect(request, score_all())
    except ConfigError as exc:  # what the request asked for cannot be done with this server's settings
        raise ApiError(400, str(exc), code="unavailable") from None
    if not scored:  # a client that left frees the tools and judges
        return JSONResponse({"error": {"message": "the client closed the connection", "type": "client_closed",
                                       "param": None, "code": None}}, status_code=499)
    return RewardOut(results=results)


def _check_tags(svc: Services, response: str, what: str) -> None:
    """A written response runs one tool call per tag: at most ``[server] max_tags`` of them."""
    from ..protocol import count_tags

    limit = svc.server.max_tags
    n = count_tags(response)
    if n > limit:
        raise ApiError(413, f"{what} has {n} image tags; the limit is {limit}", code="too_many_tags")


def _reward_config(svc: Services):
    section = getattr(svc.settings, "reward", None)
    if section is None:
        return None
    to_config = getattr(section, "to_config", None) or getattr(section, "config", None)
    return to_config() if callable(to_config) else None


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


async def _slot_block(svc: Services, rec: Run | RunRecord, slot: int, *, wait: bool) -> ImageBlock | FailureBlock | None:
    if isinstance(rec, Run):
        fut = rec.slots.get(slot)
        if fut is None:
            if rec.finished and rec.document is None:
                raise ApiError(404, "no such image", code="not_found")
            if rec.finished:
                slots = slot_blocks(rec.document)
                if slot < len(slots):
                    return slots[slot]
            raise ApiError(404, "no such image", code="not_found")
        if fut.done():
            return fut.result()
        if not wait:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(fut), svc.server.image_wait_s)
        except asyncio.TimeoutError:
            return None
    slots = await asyncio.to_thread(svc.store.slot_json, rec.id) or []
    if slot >= len(slots):
        raise ApiError(404, "no such image", code="not_found")
    b = slots[slot]
    if b.get("type") == "image":  # read the image only when it is asked for
        doc = await asyncio.to_thread(svc.store.load_document, rec.id)
        return slot_blocks(doc)[slot] if doc is not None else None
    return FailureBlock(str(b.get("tool") or "unknown"), str(b.get("reason") or ""), str(b.get("kind") or "tool_error"),
                        str(b.get("description") or ""))


@images_router.get("/images/{run_id}/{name}", summary="An image of a run (waits until it is ready)",
                   responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "image/gif": {}}},
                              503: {"description": "not ready within image_wait_s (a PNG saying so; Retry-After)"}})
async def image(run_id: str, name: str, request: Request, sig: str | None = Query(None)) -> Response:
    svc = services(request)
    rec = _readable(request, run_id, sig, image=name)
    m = re.match(r"^(slot|input)-(\d{1,6})$", name)
    if m is None:
        raise ApiError(404, "no such image", code="not_found")
    n = int(m.group(2))
    cache = {"Cache-Control": "private, max-age=86400"}
    if m.group(1) == "input":
        if isinstance(rec, Run):
            if n >= len(rec.input_images):
                raise ApiError(404, "no such image", code="not_found")
            return Response(rec.input_images[n].data, media_type=rec.input_images[n].mime, headers=cache)
        # A stored input is served as its file, never decoded: one request costs one read, not a decode of
        # every image of the run (they were checked when they came in).
        path = await asyncio.to_thread(svc.store.image_file, run_id, input_name(n))
        if path is None:
            raise ApiError(404, "no such image", code="not_found")
        data = await asyncio.to_thread(path.read_bytes)
        from ..images import sniff_mime

        return Response(data, media_type=sniff_mime(data) or "application/octet-stream", headers=cache)
    if not isinstance(rec, Run):
        path = await asyncio.to_thread(svc.store.image_file, run_id, image_name(n))
        if path is not None:
            from ..images import sniff_mime

            data = await asyncio.to_thread(path.read_bytes)
            return Response(data, media_type=sniff_mime(data) or "application/octet-stream", headers=cache)
    block = await _slot_block(svc, rec, n, wait=True)
    if block is None:
        png = notice_png("Image not ready yet", f"the tool is still running after {svc.server.image_wait_s:g} s; "
                                                "reload to try again")
        return Response(png, status_code=503, media_type="image/png",
                        headers={"Cache-Control": "no-store", "Retry-After": "5"})
    if isinstance(block, ImageBlock):
        return Response(block.data, media_type=block.mime, headers=cache)
    return Response(failure_png(block), media_type="image/png",
                    headers={**cache, "X-Llmi-Failure": re.sub(r"[^\x20-\x7e]", "?", block.kind)[:60]})
