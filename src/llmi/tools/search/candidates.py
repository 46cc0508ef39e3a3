"""What every search backend does after its API answered: pick the first candidate that is a usable image.

A search API returns *candidates* — URLs it believes are images. Many are not usable: thumbnails, dead
links, HTML pages, hot-link protection, images far too large. So the backend turns its answer into a list
of :class:`Candidate`, and :func:`choose` tries them in order (optionally re-ranked by how well the title
matches the query) until one downloads and validates, recording why each one before it was rejected.

Also here: the small text normaliser shared by title ranking and the local library, and the helper that
calls a search API and maps its failures to tool errors without ever letting an API key into a message.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Awaitable, Callable, Iterable, Sequence

import httpx
from pydantic import BaseModel, Field

from ...errors import ToolError, TransientToolError, UnsafeURLError
from ...images import ImageData
from ..base import Backend, BackendStatus, ToolRequest, ToolResult
from ..http import check_response, json_body, send

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One image a search backend could return, with what is known about where it came from."""

    image_url: str
    page_url: str = ""
    title: str = ""
    license: str = ""
    author: str = ""
    width: int | None = None
    height: int | None = None
    #: Backend-specific provenance (``path`` for the local library, ``license_url``, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Extra text used for title matching only (descriptions, captions); not recorded.
    text: str = ""


class CandidateOptions(BaseModel):
    """Options every search backend shares (mixed into each backend's Options)."""

    #: Download and validate at most this many candidates per query before giving up.
    max_candidates: int = Field(5, ge=1, le=50)
    #: Re-rank the API's results by how many query words their title contains (stable: ties keep API order).
    prefer_title_match: bool = False


# -- text normalisation --------------------------------------------------------------------------------

_STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or the this that to with without "
    "photo photograph picture image img pic jpg jpeg png webp gif".split()
)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _singular(word: str) -> str:
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokens(text: str, *, keep_stopwords: bool = False) -> list[str]:
    """Normalised words of ``text``: NFKC, camelCase and non-alphanumerics split, lower case, simple
    plural stripping; CJK scripts (which do not separate words with spaces) become one token per
    character."""
    if not text:
        return []
    text = unicodedata.normalize("NFKC", text)
    text = _CAMEL.sub(" ", text).lower()
    out: list[str] = []
    for m in _WORD.finditer(text):
        word = m.group(0)
        if _CJK.search(word):
            buf = ""
            for ch in word:
                if _CJK.match(ch):
                    if buf:
                        out.append(_singular(buf))
                        buf = ""
                    out.append(ch)
                else:
                    buf += ch
            if buf:
                out.append(_singular(buf))
        else:
            out.append(_singular(word))
    if not keep_stopwords:
        kept = [t for t in out if t not in _STOPWORDS]
        if kept:
            return kept
    return out


def overlap(query_tokens: Iterable[str], doc_tokens: Iterable[str]) -> float:
    """The share of distinct query words present in the document (0..1)."""
    q = set(query_tokens)
    if not q:
        return 0.0
    return len(q & set(doc_tokens)) / len(q)


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(value: str) -> str:
    """Plain text of an HTML fragment (Wikimedia's Artist/ImageDescription are HTML)."""
    if not value:
        return ""
    parser = _TextOnly()
    try:
        parser.feed(value)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # malformed markup: fall back to a crude strip
        text = html.unescape(re.sub(r"<[^>]*>", " ", value))
    return " ".join(text.split())


def to_int(value: Any) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


# -- choosing ------------------------------------------------------------------------------------------

Loader = Callable[[Candidate], Awaitable[tuple[ImageData, str]]]


def rank_by_title(candidates: Sequence[Candidate], query: str) -> list[Candidate]:
    """Candidates ordered by title/text match with ``query``, best first; ties keep their order."""
    q = tokens(query)
    scored = [(overlap(q, tokens(c.title + " " + c.text)), i, c) for i, c in enumerate(candidates)]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [c for _, _, c in scored]


def query_of(request: ToolRequest) -> str:
    query = request.params.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ToolError("search needs a non-empty 'query' string", kind="bad_request")
    return " ".join(query.split())


async def choose(
    candidates: Sequence[Candidate],
    *,
    backend: str,
    query: str,
    options: CandidateOptions,
    min_size: tuple[int, int],
    load: Loader,
) -> ToolResult:
    """Try ``candidates`` in order with ``load`` until one validates; its provenance goes on the result.

    Candidates whose reported size is already below ``min_size`` are skipped without a download and do
    not use up ``max_candidates``. If every candidate fails, the error says why each one was rejected; it
    is a :class:`TransientToolError` (worth retrying later) only when every download failed transiently,
    and an :class:`UnsafeURLError` when the safe fetcher refused every one — with the refusals' kind
    (``unsafe_url`` for internal addresses), the kind the same refusal has anywhere else.
    """
    seen: set[str] = set()
    unique = []
    for c in candidates:
        if c.image_url and c.image_url not in seen:
            seen.add(c.image_url)
            unique.append(c)
    if options.prefer_title_match:
        unique = rank_by_title(unique, query)
    if not unique:
        raise ToolError(f"{backend} found no images for {query!r}", kind="no_result")

    reasons: list[str] = []
    transient: list[TransientToolError] = []
    refused: list[UnsafeURLError] = []
    tried = 0
    for c in unique:
        if tried >= options.max_candidates:
            break
        label = f"{_clip(c.image_url)}"
        if c.width and c.height and (c.width < min_size[0] or c.height < min_size[1]):
            reasons.append(f"{label}: reported {c.width}x{c.height}, below {min_size[0]}x{min_size[1]}")
            continue
        tried += 1
        try:
            image, final_url = await load(c)
        except TransientToolError as exc:
            transient.append(exc)
            reasons.append(f"{label}: {exc}")
            continue
        except UnsafeURLError as exc:
            refused.append(exc)
            reasons.append(f"{label}: {exc}")
            continue
        except ToolError as exc:
            reasons.append(f"{label}: {exc}")
            continue
        log.debug("%s: candidate %s accepted after %d rejected", backend, label, len(reasons))
        provenance: dict[str, Any] = {
            "backend": backend,
            "source_url": final_url or None,
            "page_url": c.page_url or None,
            "title": c.title or None,
            "license": c.license or None,
            "author": c.author or None,
            "query": query,
        }
        if final_url and final_url != c.image_url:
            provenance["requested_url"] = c.image_url
        for k, v in c.extra.items():
            if v not in (None, ""):
                provenance.setdefault(k, v)
        return ToolResult(image=image, provenance=provenance)

    summary = f"{backend}: none of {len(reasons)} candidate(s) for {query!r} was usable: " + "; ".join(
        f"[{i + 1}] {r}" for i, r in enumerate(reasons)
    )
    if transient and len(transient) == tried:
        retry = max((e.retry_after for e in transient if e.retry_after is not None), default=None)
        raise TransientToolError(summary, kind="no_result", retry_after=retry)
    if refused and len(refused) == len(reasons):  # nothing else went wrong: the fetcher said no to each
        kinds = {e.kind for e in refused}
        raise UnsafeURLError(summary, kind=kinds.pop() if len(kinds) == 1 else "unsafe_url")
    raise ToolError(summary, kind="no_result")


def _clip(s: str, limit: int = 120) -> str:
    return s if len(s) <= limit else s[:limit] + "…"


# -- calling search APIs -------------------------------------------------------------------------------


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


def _rescrub(exc: ToolError, secrets: Sequence[str | None]) -> ToolError:
    msg = scrub(str(exc), secrets)
    cls = type(exc)
    if isinstance(exc, TransientToolError):
        return cls(msg, kind=exc.kind, retry_after=exc.retry_after)
    return ToolError(msg, kind=exc.kind, retry_after=exc.retry_after)


async def get_json(
    client: httpx.AsyncClient,
    url: str,
    *,
    service: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
    secrets: Sequence[str | None] = (),
    retry_after_hint: Callable[[httpx.Response], float | None] | None = None,
) -> Any:
    """GET a JSON API; HTTP, transport and body failures become tool errors free of ``secrets``.

    Errors are raised ``from None`` so that the httpx exception (whose request carries the URL and
    headers, i.e. possibly the key) is not chained into tracebacks.
    """
    try:
        resp = await send(client, "GET", url, service=service, params=params, headers=headers, timeout=timeout)
        try:
            check_response(resp, service)
        except TransientToolError as exc:
            if exc.retry_after is None and retry_after_hint is not None:
                exc.retry_after = retry_after_hint(resp)
            raise
        return json_body(resp, service)
    except ToolError as exc:
        raise _rescrub(exc, secrets) from None


async def probe_http(
    client: httpx.AsyncClient,
    url: str,
    *,
    service: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    secrets: Sequence[str | None] = (),
) -> BackendStatus:
    """A cheap live request for ``llmi doctor --probe``: ok / unreachable / misconfigured (key refused)."""
    try:
        resp = await client.get(url, params=params, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return BackendStatus("unreachable", scrub(f"{service}: {type(exc).__name__}: {exc}", secrets))
    if resp.status_code in (401, 403, 422):
        return BackendStatus(
            "misconfigured", f"{service} refused the request (HTTP {resp.status_code}); check the API key"
        )
    if resp.status_code >= 500:
        return BackendStatus("unreachable", f"{service} answered HTTP {resp.status_code}")
    if resp.status_code in (404, 405, 410):
        return BackendStatus("misconfigured", f"{service} answered HTTP {resp.status_code}: check base_url")
    return BackendStatus("ok", f"{service} answered HTTP {resp.status_code}")


class _RedactQueryKeys(logging.Filter):
    """Redacts ``api_key=...`` in log records (httpx logs every request URL at INFO level)."""

    _PAT = re.compile(r"((?:api_key|apikey|key|token)=)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(self._PAT.sub(r"\1***", str(a)) if self._PAT.search(str(a)) else a for a in args)
        if isinstance(record.msg, str) and self._PAT.search(record.msg):
            record.msg = self._PAT.sub(r"\1***", record.msg)
        return True


_redaction_installed = False


def redact_keys_in_http_logs() -> None:
    """Install the redacting filter on the httpx/httpcore loggers (idempotent)."""
    global _redaction_installed
    if _redaction_installed:
        return
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).addFilter(_RedactQueryKeys())
    _redaction_installed = True


# -- the shape shared by web search backends -----------------------------------------------------------


class WebSearchBackend(Backend):
    """Base of the backends that ask a web API for candidates and download them with the safe fetcher.

    Subclasses implement :meth:`candidates` (one API call, its wire format turned into
    :class:`Candidate` values); everything after that is shared.
    """

    tool = "search"

    async def candidates(self, query: str) -> list[Candidate]:  # pragma: no cover - interface
        raise NotImplementedError

    async def run(self, request: ToolRequest) -> ToolResult:
        query = query_of(request)
        found = await self.candidates(query)
        limits = self.ctx.settings.images

        async def load(c: Candidate) -> tuple[ImageData, str]:
            return await self.ctx.fetcher.fetch_image(c.image_url, limits=limits)

        return await choose(
            found,
            backend=self.name,
            query=query,
            options=self.options,  # type: ignore[arg-type]
            min_size=(limits.min_width, limits.min_height),
            load=load,
        )

    #: Services that need an API key: ``status`` reports a missing one, ``probe`` checks it live.
    needs_key: bool = False

    def status(self) -> BackendStatus:
        return self.key_status() if self.needs_key else super().status()

    async def probe(self) -> BackendStatus:
        st = self.status()
        if not st.usable or not self.needs_key:
            return st
        return await self.probe_key(self.api_key())

    async def probe_key(self, key: str) -> BackendStatus:  # pragma: no cover - interface
        """One cheap live request with ``key`` (for services with ``needs_key``)."""
        raise NotImplementedError

    def cache_identity(self) -> dict[str, Any]:
        opts = self.options
        return {
            "base_url": getattr(opts, "base_url", ""),
            "max_candidates": getattr(opts, "max_candidates", None),
            "prefer_title_match": getattr(opts, "prefer_title_match", None),
        }
