"""The evaluation judge: any OpenAI-compatible chat endpoint, asked for JSON, shown images where the
benchmark's protocol shows them.

Transport, retries, ``Retry-After``, the per-endpoint concurrency cap and failure kinds are the reward
judges' :class:`~llmi.reward.judges.JudgeClient` — one client implementation in llmi. This module adds
what evaluation needs on top: the ``[eval_judge]`` settings (temperature 0, JSON mode), a builder for
interleaved text/image messages, tolerant JSON extraction from judge replies, and a digest of a request
so that stored answers can be matched to the exact question they answer.

A reply that is not the JSON a benchmark asked for — or holds a score outside the benchmark's scale — raises
:class:`~llmi.reward.judges.ScoreParseError` inside the parse function; the client retries it like a
transient failure and, when the retries are spent, the call fails: the criterion is excluded, never scored.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any, Callable, Sequence, TypeVar

from ..config import JudgeSettings
from ..images import ImageData
from ..reward.judges import JudgeClient, ScoreParseError, marker_code, strip_reasoning
from .settings import EvalJudgeSettings

T = TypeVar("T")

__all__ = ["EvalJudge", "Parts", "ScoreParseError", "extract_json", "judge_settings", "marker_code",
           "messages_digest", "number_in", "image_part"]


def judge_settings(s: EvalJudgeSettings) -> JudgeSettings:
    """The reward judges' settings type for an ``[eval_judge]`` table (JSON mode and temperature go into
    the request body)."""
    return JudgeSettings(
        base_url=s.base_url,
        model=s.model,
        api_key=s.api_key,
        api_key_env=s.api_key_env,
        concurrency=s.concurrency,
        timeout_s=s.timeout_s,
        retries=s.retries,
        backoff_s=s.backoff_s,
        max_backoff_s=s.max_backoff_s,
        extra_body=s.request_body(),
    )


class EvalJudge:
    """One judge endpoint for a run. ``async with EvalJudge(settings) as judge: await judge.ask(msgs, parse)``."""

    def __init__(self, settings: EvalJudgeSettings, *, client: Any = None, backoff_s: float | None = None,
                 max_backoff_s: float | None = None):
        self.settings = settings
        self.client = JudgeClient(judge_settings(settings), name="eval_judge", client=client,
                                  backoff_s=backoff_s, max_backoff_s=max_backoff_s)

    @property
    def stats(self):
        return self.client.stats

    async def model(self) -> str:
        return await self.client.model()

    async def ask(self, messages: list[dict[str, Any]], parse: Callable[[str], T]) -> T:
        return await self.client.ask(messages, parse)

    async def __aenter__(self) -> "EvalJudge":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


# ------------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------------

_SAFE_MIMES = ("image/png", "image/jpeg", "image/webp")


def image_part(image: ImageData, *, resize: tuple[int, int] | None = None, max_side: int | None = None,
               detail: str | None = None, jpeg: bool = False) -> dict[str, Any]:
    """An ``image_url`` content part with the image inline.

    ``resize`` scales to exactly that size (OpenING's scorer shows the judge 512×512 JPEGs); ``max_side``
    shrinks larger images keeping the aspect ratio; ``jpeg`` re-encodes as JPEG (LLMI-Bench's scripts do);
    ``detail`` sets OpenAI's ``detail`` hint (ISG's scripts ask for ``"low"``).
    """
    data, mime = image.data, image.mime
    if resize or (max_side and max(image.width, image.height) > max_side) or jpeg or mime not in _SAFE_MIMES:
        im = image.to_pil()
        if resize:
            im = im.resize(resize)
        elif max_side and max(im.width, im.height) > max_side:
            im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        if jpeg or resize:
            im.convert("RGB").save(buf, format="JPEG", quality=90)
            mime = "image/jpeg"
        else:
            im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB").save(buf, format="PNG")
            mime = "image/png"
        data = buf.getvalue()
    import base64

    url: dict[str, Any] = {"url": f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"}
    if detail:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


class Parts:
    """An interleaved user message under construction: adjacent text is merged, images kept in place."""

    def __init__(self, **image_options: Any):
        self.parts: list[dict[str, Any]] = []
        self.image_options = image_options

    def text(self, text: str) -> "Parts":
        if text:
            if self.parts and self.parts[-1]["type"] == "text":
                self.parts[-1] = {"type": "text", "text": self.parts[-1]["text"] + text}
            else:
                self.parts.append({"type": "text", "text": text})
        return self

    def image(self, image: ImageData) -> "Parts":
        self.parts.append(image_part(image, **self.image_options))
        return self

    @property
    def n_images(self) -> int:
        return sum(1 for p in self.parts if p["type"] == "image_url")

    def messages(self, system: str | None = None) -> list[dict[str, Any]]:
        user: Any = self.parts
        if all(p["type"] == "text" for p in self.parts):
            user = "".join(p["text"] for p in self.parts)
        out: list[dict[str, Any]] = []
        if system:
            out.append({"role": "system", "content": system})
        out.append({"role": "user", "content": user})
        return out


def messages_digest(messages: list[dict[str, Any]]) -> str:
    """A short hash of a judge request (system prompt, text and image bytes): a stored answer is reused
    only for exactly the same question."""
    raw = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Replies
# ------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def extract_json(reply: str) -> dict[str, Any]:
    """The JSON object in a judge reply: reasoning stripped, Markdown fences tolerated, the first complete
    object taken. Raises :class:`ScoreParseError` when there is none."""
    if not isinstance(reply, str) or not reply.strip():
        raise ScoreParseError("the judge returned an empty reply")
    text = strip_reasoning(reply).strip()
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for cand in candidates:
        start = cand.find("{")
        while start >= 0:
            try:
                obj, _ = decoder.raw_decode(cand, start)
            except ValueError:
                start = cand.find("{", start + 1)
                continue
            if isinstance(obj, dict):
                return obj
            start = cand.find("{", start + 1)
    excerpt = " ".join(text.split())[:160]
    raise ScoreParseError(f"no JSON object in the judge reply: {excerpt!r}")


def number_in(value: Any, lo: float, hi: float, *, integer: bool = False, what: str = "score") -> float:
    """``value`` as a number within ``[lo, hi]`` (``"7"``, ``7``, ``"7/10"`` accepted), else
    :class:`ScoreParseError`. With ``integer``, 1.5 is refused rather than truncated."""
    if isinstance(value, bool):
        raise ScoreParseError(f"{what} {value!r} is not a number")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?\s*", value)
        if not m:
            raise ScoreParseError(f"{what} {value!r} is not a number")
        if m.group(2) and float(m.group(2)) != hi:
            raise ScoreParseError(f"{what} {value!r} is on another scale; expected {lo:g}-{hi:g}")
        value = float(m.group(1))
    if not isinstance(value, (int, float)) or value != value:  # NaN
        raise ScoreParseError(f"{what} {value!r} is not a number")
    if integer and float(value) != int(value):
        raise ScoreParseError(f"{what} {value!r} is not a whole number")
    if not lo <= value <= hi:
        raise ScoreParseError(f"{what} {value:g} is outside {lo:g}-{hi:g}")
    return float(value)


def first_key(obj: dict[str, Any], names: Sequence[str]) -> Any:
    """The value of the first of ``names`` present in ``obj`` (case- and separator-insensitive)."""
    norm = {re.sub(r"[\s_\-]+", "", str(k)).lower(): v for k, v in obj.items()}
    for n in names:
        k = re.sub(r"[\s_\-]+", "", n).lower()
        if k in norm:
            return norm[k]
    return None
