"""``/v1``: the OpenAI chat-completions wire, so any OpenAI client or chat front-end gets illustrated answers.

The conversation goes to the configured LLM with llmi's system prompt (a client's own system message is
appended to it). The answer's ``content`` is Markdown: the model's text as it streams, and at each tag an
image link to this server, sent the moment the tag closes — the text never waits for a tool. The link's
URL answers once the image is ready (it blocks until then, up to ``[server] image_wait_s``); a failed
tool's URL answers with a small PNG stating the reason. In a non-streamed answer the alt text of a failed
image is that reason too (a streamed link is sent before the outcome is known, so its alt text is the
description). The stream ends — finish chunk, usage chunk if asked for, ``[DONE]`` — when the document is
complete, so a client that hangs up early cancels the run and its tool calls.

``image_url`` parts (``data:`` URIs, or http(s) URLs fetched through the safe fetcher) in user messages
become the run's input images, numbered in order across the conversation; edits address them.
Reasoning is streamed as ``delta.reasoning_content`` (as vLLM and SGLang do). ``usage`` is the writing
LLM's token counts, reported as the OpenAI wire does: in the response, or in a final ``choices: []``
chunk when ``stream_options.include_usage`` is set. An ``llmi`` object in the response (and in the final
chunk) names the run and its document.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..document import Document, FailureBlock
from .auth import Principal
from .deps import principal, public_base, reservation, run_slot, services, wait_or_disconnect
from .inputs import ApiError, chat_to_parts, links_to_tags, tag_text
from .manager import Run, image_name
from .runs import TTSOptions, _tts_options
from .view import image_alt, image_link

router = APIRouter(prefix="/v1", tags=["openai"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str = Field(description="a data: URI (base64) or an http(s) URL (fetched through the safe fetcher)")
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(description="system, developer, user or assistant")
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class LlmiChatOptions(BaseModel):
    """llmi's own request options (an extension field; OpenAI clients pass it as ``extra_body``)."""

    model_config = ConfigDict(extra="forbid")
    image_num: int | None = Field(None, description="how many images the answer should have (a request constraint)")
    tools: list[str] | None = Field(None, description="the tools the system prompt advertises (subset of the usable ones)")
    tts: bool | TTSOptions | None = Field(None, description="test-time scaling (see POST /api/runs)")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(description="'llmi' (see GET /v1/models)")
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    n: int | None = Field(1, description="only 1 is supported")
    llmi: LlmiChatOptions | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    llmi: dict[str, Any] | None = Field(None, description="run_id, document (HTML link) of this answer")


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmi"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


@router.get("/models", response_model=ModelList, summary="The one model this server serves")
async def list_models(request: Request, who: Principal = Depends(principal)) -> ModelList:
    name = services(request).server.model_name
    return ModelList(data=[Model(id=name, created=0)])


@router.get("/models/{model_id}", response_model=Model, summary="One model")
async def get_model(model_id: str, request: Request, who: Principal = Depends(principal)) -> Model:
    name = services(request).server.model_name
    if model_id != name:
        raise ApiError(404, f"the model {model_id!r} does not exist; this server serves {name!r}", code="model_not_found")
    return Model(id=name, created=0)


class ChatTranslator:
    """The run's events as chat content: text as is, each tag as an image link (pure bookkeeping)."""

    def __init__(self, run: Run, base: str, image_path):
        self.run = run
        self.base = base
        self.image_path = image_path
        self.tail = ""  # the end of the content so far (decides the newlines around an image)

    def delta(self, ev: dict[str, Any], *, final: bool = False) -> dict[str, str] | None:
        t = ev.get("type")
        if t == "text":
            text = ev.get("text") or ""
            if not text:
                return None
            self.tail = (self.tail + text)[-2:]
            return {"content": text}
        if t == "think":
            return {"reasoning_content": ev.get("text") or ""} if ev.get("text") else None
        if t == "tool_started":
            slot = int(ev["index"])
            failure = None
            if final:
                fut = self.run.slots.get(slot)
                block = fut.result() if fut is not None and fut.done() else None
                failure = block if isinstance(block, FailureBlock) else None
            alt = image_alt(str(ev.get("description") or ""), failure=failure)
            url = self.base + self.image_path(self.run.id, image_name(slot))
            if not self.tail or self.tail.endswith("\n\n"):
                lead = ""
            else:
                lead = "\n" if self.tail.endswith("\n") else "\n\n"
            piece = f"{lead}{image_link(alt, url)}\n\n"
            self.tail = "\n\n"
            return {"content": piece}
        return None


def stored_tag(block: dict[str, Any]) -> str | None:
    """The tag a stored slot (its JSON) was written as: its call, or the payload of an invalid tag."""
    call = block.get("call")
    if isinstance(call, dict) and call.get("source"):
        return tag_text(str(call["source"]), str(call.get("description") or ""), dict(call.get("params") or {}))
    if block.get("raw"):
        return f"<imgen>{block['raw']}</imgen>"
    if block.get("tool"):
        return tag_text(str(block["tool"]), str(block.get("description") or ""), dict(block.get("params") or {}))
    return None


def _usage(run: Run) -> dict[str, int] | None:
    usage = run.usage if run.usage is not None else getattr(run.trace, "usage", None)
    if not isinstance(usage, dict):
        return None
    try:
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return None
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": int(usage.get("total_tokens") or p + c)}


def _finish_reason(run: Run) -> str:
    return run.finish_reason or getattr(run.trace, "finish_reason", None) or "stop"


def _llmi_info(run: Run, base: str) -> dict[str, Any]:
    return {"run_id": run.id, "document": f"{base}/api/runs/{run.id}/document.html?sig={run.token}"}


def _restorer(request: Request):
    """Our image links in earlier answers back to the tags the model wrote (links signed by this server)."""
    svc = services(request)
    stored: dict[str, list[dict[str, Any]]] = {}  # run id -> its stored slots, read once per request

    def tag_for(run_id: str, slot: int, sig: str) -> str | None:
        if not svc.manager.image_token_ok(run_id, image_name(slot), sig):
            return None
        run = svc.manager.find(run_id)
        if run is not None and slot in run.slots and run.slots[slot].done():
            return Document(blocks=[run.slots[slot].result()]).to_response()
        if run is not None and slot in run.calls:
            c = run.calls[slot]
            params = c.get("params") or {}
            if (c.get("source") in (None, "unknown")) and "raw" in params:
                return f"<imgen>{params['raw']}</imgen>"
            return tag_text(c.get("source") or "unknown", c.get("description") or "", params)
        slots = stored.get(run_id)
        if slots is None:
            try:
                slots = stored[run_id] = svc.store.slot_json(run_id) or []
            except (OSError, ValueError):  # an unreadable old document: keep the link as written
                slots = stored[run_id] = []
        if slot >= len(slots):
            return None
        return stored_tag(slots[slot])

    return lambda text: links_to_tags(text, tag_for)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    summary="Chat completion with illustrated Markdown content (streaming or not)",
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                     "description": "JSON, or server-sent chat.completion.chunk events when stream is true"},
               401: {"description": "missing or invalid API key"}, 413: {"description": "request too large"},
               429: {"description": "rate or concurrency limit; see Retry-After"}},
)
async def chat_completions(body: ChatCompletionRequest, request: Request, who: Principal = Depends(run_slot)):
    from ..prompting import build_system_prompt
    from ..request import Request as RunRequest, Sampling

    svc = services(request)
    srv = svc.server
    if body.model != srv.model_name:
        raise ApiError(404, f"the model {body.model!r} does not exist; this server serves {srv.model_name!r}",
                       code="model_not_found")
    if body.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", code="unsupported_parameter", param="n")
    extra = body.model_extra or {}
    for name in ("tools", "functions"):  # silently ignoring them would answer a tool call with prose
        if extra.get(name) and extra.get("tool_choice", extra.get("function_call")) != "none":
            raise ApiError(400, f"{name} (function calling) is not supported by llmi; the answer's images come "
                                "from its own tags", code="unsupported_parameter", param=name)
    parts = chat_to_parts([m.model_dump(exclude_none=True) for m in body.messages], restore=_restorer(request))
    if len(parts.prompt) + sum(len(m["content"]) for m in parts.history) > srv.max_prompt_chars:
        raise ApiError(413, f"the conversation is longer than {srv.max_prompt_chars} characters", code="request_too_large")
    images = await svc.load_images(parts.images)
    opts = body.llmi or LlmiChatOptions()
    system = None
    if parts.system:
        assert svc.engine is not None
        configured = svc.settings.llm.system_prompt_file
        path = svc.settings.resolve_path(configured) if configured else None
        tools = [t for t in svc.engine.usable_tools() if opts.tools is None or t in opts.tools]
        system = build_system_prompt(tools, path=path).text.rstrip() + "\n\n" + parts.system.strip() + "\n"
    sampling = Sampling(temperature=body.temperature, top_p=body.top_p,
                        max_tokens=body.max_completion_tokens or body.max_tokens, seed=body.seed)
    req = RunRequest(prompt=parts.prompt, images=tuple(images), history=tuple(parts.history), sampling=sampling,
                     system_prompt=system, image_num=opts.image_num,
                     tools=tuple(opts.tools) if opts.tools is not None else None)
    tts = _tts_options(opts.tts, max_n=srv.max_tts_n)
    run = svc.manager.start(req.run_id, svc.generate_source(req, tts=tts), owner=who.id, kind="chat", prompt=parts.prompt,
                            background=False, options={"stream": body.stream, "sampling": sampling.to_dict(), "tts": tts},
                            input_images=images, followed=True,
                            reservation=reservation(request))
    svc.manager.attach(run)
    base = public_base(request)
    created = int(run.created)
    cid = f"chatcmpl-{run.id}"
    model = srv.model_name
    # Wait for the first output, so that an LLM that fails before writing anything is an HTTP error.
    try:
        ready = await wait_or_disconnect(request, run.wait_output())
    except BaseException:
        svc.manager.detach(run, grace=0)
        raise
    if not ready:
        svc.manager.detach(run, grace=0)
        return JSONResponse(error_body_client_gone(), status_code=499)
    if run.finished and run.status != "done" and not _wrote_anything(run):
        svc.manager.detach(run, grace=0)
        err = run.error or {"kind": "error", "message": "the run failed"}
        raise ApiError(502, err["message"], type_="server_error", code=err["kind"])

    if not body.stream:
        try:
            if not await wait_or_disconnect(request, run.ended.wait()):
                return JSONResponse(error_body_client_gone(), status_code=499)
        finally:
            svc.manager.detach(run, grace=0)
        if run.status != "done" and not _wrote_anything(run):
            err = run.error or {"kind": "error", "message": "the run failed"}
            raise ApiError(502, err["message"], type_="server_error", code=err["kind"])
        tr = ChatTranslator(run, base, svc.manager.image_path)
        content, reasoning = [], []
        for ev in run.events:
            d = tr.delta(ev, final=True)
            if d:
                content.append(d.get("content", ""))
                reasoning.append(d.get("reasoning_content", ""))
        finish = _finish_reason(run) if run.status == "done" else "error"
        return ChatCompletion(
            id=cid, created=created, model=model,
            choices=[Choice(message=AssistantMessage(content="".join(content), reasoning_content="".join(reasoning) or None),
                            finish_reason=finish)],
            usage=_usage(run), llmi={**_llmi_info(run, base), "status": run.status, "error": run.error},
        ).model_dump(exclude_none=True)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        d: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            d["usage"] = None
        d.update(extra)
        return "data: " + json.dumps(d, ensure_ascii=False) + "\n\n"

    async def events():
        tr = ChatTranslator(run, base, svc.manager.image_path)
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for _, ev in run.follow(heartbeat_s=srv.heartbeat_s):
                if ev is None:
                    yield ": keep-alive\n\n"
                    continue
                d = tr.delta(ev)
                if d:
                    yield chunk(d)
            if run.status == "done":
                yield chunk({}, _finish_reason(run), llmi=_llmi_info(run, base))
                if include_usage:
                    yield "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                                 "model": model, "choices": [], "usage": _usage(run)}) + "\n\n"
            else:
                err = run.error or {"kind": "error", "message": f"the run ended: {run.status}"}
                yield "data: " + json.dumps({"error": {"message": err["message"], "type": "server_error",
                                                       "param": None, "code": err["kind"]}}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            svc.manager.detach(run, grace=0)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _wrote_anything(run: Run) -> bool:
    return any(e.get("type") in ("text", "tool_started") for e in run.events)


def error_body_client_gone() -> dict[str, Any]:
    return {"error": {"message": "the client closed the connection", "type": "client_closed", "param": None,
                      "code": None}}

