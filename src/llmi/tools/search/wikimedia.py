"""Wikimedia Commons through the MediaWiki Action API — no key needed, freely licensed images.

Wire format: ``GET {base_url}/api.php?action=query&format=json&generator=search&gsrsearch=...
&gsrnamespace=6&gsrlimit=N&prop=imageinfo&iiprop=url|size|mime|extmetadata&iiurlwidth=W`` answers
``{"query": {"pages": {"<pageid>": {"title": "File:...", "index": <rank>, "imageinfo": [{"url",
"descriptionurl", "width", "height", "mime", "thumburl", "thumbwidth", "thumbheight", "extmetadata":
{"LicenseShortName": {"value"}, "Artist": {"value": "<html>"}, "ImageDescription": {...},
"ObjectName": {...}, "LicenseUrl": {...}}}]}}}}``; pages come keyed by id, so the search rank is the
page's ``index``. No hit: no ``query`` key at all. API errors are HTTP 200 with ``{"error": {"code",
"info"}}`` (``maxlag`` comes with ``Retry-After``). Wikimedia requires a descriptive User-Agent.

``iiurlwidth`` asks for a rendition of at most that width (a standard thumbnail step, 1280 by default),
which keeps downloads small and turns SVG/TIFF originals into PNG/JPEG; 0 fetches originals.
"""

from __future__ import annotations

from ...errors import ToolError, TransientToolError
from ..base import BackendStatus, HTTPBackendOptions
from .candidates import Candidate, CandidateOptions, WebSearchBackend, get_json, probe_http, strip_html, to_int

DEFAULT_BASE_URL = "https://commons.wikimedia.org/w"
_DIRECT_MIMES = ("image/jpeg", "image/png", "image/gif", "image/webp")


class WikimediaOptions(HTTPBackendOptions, CandidateOptions):
    base_url: str = DEFAULT_BASE_URL
    timeout_s: float = 30.0
    #: How many search hits to ask for.
    limit: int = 10
    #: Width of the rendition to download (0: the original file).
    thumb_width: int = 1280
    #: Empty: ``[fetch] user_agent``. Wikimedia asks for a name and a way to contact you.
    user_agent: str = ""
    #: Only bitmaps and drawings (not audio, video, PDFs) — Commons search syntax.
    search_prefix: str = "filetype:bitmap|drawing"


def _meta(ext: dict, key: str) -> str:
    v = ext.get(key)
    if isinstance(v, dict):
        v = v.get("value")
    return strip_html(str(v)) if v not in (None, "") else ""


class WikimediaSearch(WebSearchBackend):
    name = "wikimedia"
    Options = WikimediaOptions

    @property
    def _endpoint(self) -> str:
        return self.options.base_url.rstrip("/") + "/api.php"

    def _headers(self) -> dict[str, str]:
        ua = self.options.user_agent or self.ctx.settings.fetch.user_agent
        return {"User-Agent": ua, "Accept": "application/json"}

    async def candidates(self, query: str) -> list[Candidate]:
        opts: WikimediaOptions = self.options  # type: ignore[assignment]
        params = {
            "action": "query",
            "format": "json",
            "formatversion": "1",
            "generator": "search",
            "gsrsearch": f"{opts.search_prefix} {query}".strip(),
            "gsrnamespace": "6",
            "gsrlimit": str(opts.limit),
            "prop": "imageinfo",
            "iiprop": "url|size|mime|extmetadata",
        }
        if opts.thumb_width > 0:
            params["iiurlwidth"] = str(opts.thumb_width)
        body = await get_json(
            self.ctx.http, self._endpoint, service="Wikimedia Commons", params=params,
            headers=self._headers(), timeout=opts.timeout_s,
        )
        if not isinstance(body, dict):
            raise ToolError("Wikimedia Commons sent an unexpected JSON document", kind="bad_response")
        if isinstance(body.get("error"), dict):
            err = body["error"]
            msg = f"Wikimedia Commons API error {err.get('code')}: {str(err.get('info', ''))[:200]}"
            if err.get("code") in ("maxlag", "ratelimited", "readonly"):
                raise TransientToolError(msg, kind="unavailable", retry_after=5.0)
            raise ToolError(msg, kind="api_error")
        pages = (body.get("query") or {}).get("pages") or {}
        if isinstance(pages, dict):
            pages = list(pages.values())
        pages = [p for p in pages if isinstance(p, dict)]
        pages.sort(key=lambda p: p.get("index", 1 << 30))
        out: list[Candidate] = []
        for page in pages:
            infos = page.get("imageinfo") or []
            if not infos or not isinstance(infos[0], dict):
                continue
            info = infos[0]
            mime = str(info.get("mime") or "")
            thumb = info.get("thumburl")
            if thumb and (opts.thumb_width > 0):
                url, w, h = thumb, info.get("thumbwidth"), info.get("thumbheight")
            elif mime in _DIRECT_MIMES and info.get("url"):
                url, w, h = info["url"], info.get("width"), info.get("height")
            else:
                continue  # audio, video, PDF, or SVG without a raster rendition
            ext = info.get("extmetadata") if isinstance(info.get("extmetadata"), dict) else {}
            file_title = str(page.get("title") or "").removeprefix("File:")
            title = _meta(ext, "ObjectName") or file_title.rsplit(".", 1)[0]
            extra = {
                "license_url": _meta(ext, "LicenseUrl"),
                "original_url": info.get("url") if info.get("url") != url else None,
                "credit": _meta(ext, "Credit")[:300],
            }
            out.append(
                Candidate(
                    image_url=str(url),
                    page_url=str(info.get("descriptionurl") or ""),
                    title=title,
                    license=_meta(ext, "LicenseShortName"),
                    author=_meta(ext, "Artist")[:300],
                    width=to_int(w),
                    height=to_int(h),
                    extra=extra,
                    text=_meta(ext, "ImageDescription")[:1000],
                )
            )
        return out

    def status(self) -> BackendStatus:
        if not self.options.base_url.startswith(("http://", "https://")):
            return BackendStatus("misconfigured", f"base_url {self.options.base_url!r} is not an http(s) URL")
        return BackendStatus("ok")

    async def probe(self) -> BackendStatus:
        st = self.status()
        if not st.usable:
            return st
        return await probe_http(
            self.ctx.http, self._endpoint, service="Wikimedia Commons",
            params={"action": "query", "meta": "siteinfo", "format": "json"}, headers=self._headers(),
        )
