"""Turning what clients send into llmi values, with the checks an open endpoint needs.

* :class:`ApiError` — an HTTP error in the OpenAI wire shape (status, message, type, code, headers); the
  app turns it into the response.
* :func:`decode_image` — an uploaded image (a ``data:`` URI or bare base64): size checked before and after
  decoding, type from the magic bytes (PNG, JPEG, GIF, WEBP, BMP), pixels bounded, else 413 / 415 / 400.
* :func:`chat_to_parts` — an OpenAI ``messages`` list to (prompt, history, image references, client
  system text). Images are collected from every user message in order, so they are numbered 0, 1, ...
  as edits address them. Assistant messages written by this server carry image links; they are turned
  back into the tags the model wrote (:func:`links_to_tags`), so the model sees its own protocol again.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LLMIError, ToolError
from ..images import ImageData, sniff_mime

ALLOWED_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")


class ApiError(LLMIError):
    """An error answer: ``status``, OpenAI-style ``type``/``code``, optional headers (Retry-After)."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}
        self.param = param


def too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, f"{what} is too large (the limit is {limit} bytes)", code="request_too_large")


def decode_image(value: str, *, max_bytes: int, max_pixels: int, what: str = "image",
                 max_size: tuple[int, int] | None = None) -> ImageData:
    """A ``data:image/...;base64,...`` URI or bare base64 to a checked :class:`ImageData`."""
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{what} must be a data URI or base64 text")
    payload = value
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or ";base64" not in header:
            raise ApiError(400, f"{what}: a data URI image must be base64-encoded (data:image/png;base64,...)")
        declared = header[5:].split(";", 1)[0].strip().lower()
        if declared and declared not in ALLOWED_MIMES:
            raise ApiError(415, f"{what}: type {declared!r} is not accepted; send PNG, JPEG, GIF, WEBP or BMP",
                           code="unsupported_media_type")
    if len(payload) > max_bytes * 4 // 3 + 8:
        raise too_large(what, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{what}: invalid base64 ({exc})") from None
    if len(data) > max_bytes:
        raise too_large(what, max_bytes)
    return checked_image(data, max_pixels=max_pixels, what=what, max_size=max_size)


def checked_image(data: bytes, *, max_pixels: int, what: str = "image",
                  max_size: tuple[int, int] | None = None) -> ImageData:
    if not data:
        raise ApiError(400, f"{what} is empty")
    mime = sniff_mime(data)
    if mime is None:
        raise ApiError(415, f"{what} is not a PNG, JPEG, GIF, WEBP or BMP image", code="unsupported_media_type")
    try:
        return ImageData.from_bytes(data, max_pixels=max_pixels, max_size=max_size)
    except ToolError as exc:
        if exc.kind == "image_too_large":
            raise ApiError(413, f"{what} is too large: {exc}", code="image_too_large") from None
        raise ApiError(400, f"{what} is not usable: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Chat messages
# ------------------------------------------------------------------------------------------------


@dataclass
class ChatParts:
    prompt: str
    history: list[dict[str, str]] = field(default_factory=list)
    #: In order over all user messages: ("data", data-URI-or-base64) or ("url", http URL).
    images: list[tuple[str, str]] = field(default_factory=list)
    system: str = ""


def _content_text(content: Any, images: list[tuple[str, str]] | None, where: str) -> str:
    """A message's text; image parts are appended to ``images`` (or refused when None)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise ApiError(400, f"{where}.content[{j}] must be an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{where}.content[{j}].text must be a string")
            texts.append(text)
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str) or not url:
                raise ApiError(400, f"{where}.content[{j}].image_url.url must be a string")
            if images is None:
                raise ApiError(400, f"{where}: images are only accepted in user messages")
            if url.startswith("data:"):
                images.append(("data", url))
            elif url.startswith(("http://", "https://")):
                images.append(("url", url))
            else:
                raise ApiError(400, f"{where}.content[{j}]: an image URL must be a data: URI or http(s) URL")
        else:
            raise ApiError(400, f"{where}.content[{j}]: part type {kind!r} is not supported (text, image_url)")
    return "\n".join(texts)


def chat_to_parts(messages: list[dict[str, Any]], *, restore: Callable[[str], str] | None = None) -> ChatParts:
    """Split an OpenAI ``messages`` list; the last message must be the user's."""
    if not messages:
        raise ApiError(400, "messages must not be empty")
    images: list[tuple[str, str]] = []
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object")
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_content_text(m.get("content"), None, where))
        elif role == "user":
            turns.append({"role": "user", "content": _content_text(m.get("content"), images, where)})
        elif role == "assistant":
            text = _content_text(m.get("content"), None, where)
            turns.append({"role": "assistant", "content": restore(text) if restore else text})
        elif role in ("tool", "function"):
            raise ApiError(400, f"{where}: function calling is not supported by llmi")
        else:
            raise ApiError(400, f"{where}: unknown role {role!r}")
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's")
    prompt = turns[-1]["content"]
    if not prompt.strip() and not images:
        raise ApiError(400, "the last user message is empty")
    return ChatParts(prompt=prompt, history=turns[:-1], images=images, system="\n\n".join(s for s in system if s.strip()))


#: The part of an image link this server wrote after its base URL (the base and alt text are found by
#: looking back from here, within bounds, so hostile text cannot make the scan quadratic).
_OUR_PATH = re.compile(r"/images/([A-Za-z0-9_-]{1,64})/slot-(\d{1,6})\?sig=([0-9a-f]{1,64})\)")
_MAX_URL_BASE = 300
_MAX_ALT = 1200


def links_to_tags(text: str, tag_for: Callable[[str, int, str], str | None]) -> str:
    """Our image links (``![alt](BASE/images/<run>/slot-<n>?sig=...)``) in an earlier answer back to the
    tags the model wrote. ``tag_for(run_id, slot, sig)`` gives the tag, or None to keep the link as
    written (unknown run, bad signature)."""
    out: list[str] = []
    done = 0
    pos = text.find("/images/")
    while pos >= 0:
        m = _OUR_PATH.match(text, pos)
        if m is not None:
            paren = text.rfind("](", max(done, pos - _MAX_URL_BASE), pos + 1)
            base = text[paren + 2:pos] if paren >= 0 else ""
            if paren >= 0 and not any(c.isspace() or c in "()" for c in base):
                bang = text.rfind("![", max(done, paren - _MAX_ALT), paren)
                tag = tag_for(m.group(1), int(m.group(2)), m.group(3)) if bang >= 0 else None
                if tag is not None:
                    out.append(text[done:bang])
                    out.append(tag)
                    done = m.end()
                    pos = text.find("/images/", done)
                    continue
        pos = text.find("/images/", pos + 1)
    out.append(text[done:])
    return "".join(out)


def tag_text(source: str, description: str, params: dict[str, Any]) -> str:
    """The ``<imgen>`` tag of one call."""
    payload = json.dumps({"source": source, "description": description, "params": params}, ensure_ascii=False)
    return "<imgen>" + payload.replace("<", "\\u003c") + "</imgen>"  # "</imgen>" inside must not end it
