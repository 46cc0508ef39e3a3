"""A local image library: a folder of images searched by their names, captions and embedded titles.

Useful offline, in tests, and for an organisation that wants documents illustrated with its own assets.
Each image (``.png .jpg .jpeg .webp .gif``) is described by:

* its file name (``red-apple_on_table.jpg``: words split on non-alphanumerics and camelCase) and the names
  of the folders it sits in below ``root``;
* sidecar files next to it with the same stem (``photo.jpg`` ↔ ``photo.txt`` / ``photo.caption`` —
  the whole file is the caption — and ``photo.json``; ``photo.jpg.json`` etc. also work): the JSON object
  may hold ``title``, ``alt``, ``caption``, ``description``, ``keywords`` (list or comma string) — all
  searched — and ``license``, ``author``, ``source_url`` — recorded as provenance;
* text embedded in the file: EXIF ``ImageDescription``, ``XPTitle``, ``XPSubject``, ``XPKeywords``,
  ``XPComment`` (and ``Artist``/``Copyright`` as author/licence), IPTC object name, headline, caption and
  keywords (and by-line/copyright notice), and PNG text chunks ``Title``/``Description``/``Author``.

A query matches an image by the share of its words found in that text (after lower-casing, dropping a
few stop words, simple plural stripping; CJK text counts by character). Images scoring at least
``min_score`` are tried best first; below it the search fails with ``no_result`` rather than returning an
unrelated picture.

The index is built in a worker thread, kept in memory, and rebuilt when the modification time of any
folder in the library changes (adding, removing or renaming a file does that; editing a sidecar in place
does not — touch the folder). Nothing outside ``root`` is read: symlinks that resolve outside it are
skipped, and each file is checked again when it is read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ToolError, UnsafeURLError
from ...fetch import check_image_bytes
from ...images import ImageData
from ..base import Backend, BackendOptions, BackendStatus, ToolRequest, ToolResult
from .candidates import Candidate, CandidateOptions, choose, overlap, query_of, tokens

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
_SIDECAR_TEXT = (".txt", ".caption")
_SIDECAR_MAX = 64 * 1024
_JSON_TEXT_KEYS = ("title", "alt", "caption", "description")


class LocalLibraryOptions(BackendOptions, CandidateOptions):
    #: The folder of images ("~" is expanded).
    root: str = ""
    #: Also index sub-folders.
    recursive: bool = True
    #: The least share of query words an image's text must contain (0..1).
    min_score: float = 0.34
    #: Read EXIF/IPTC/PNG text from the files (opens every image's header when indexing).
    read_embedded: bool = True


@dataclass(frozen=True)
class Entry:
    """One image of the library and what is known about it."""

    rel: str
    path: Path
    title: str = ""
    caption: str = ""
    license: str = ""
    author: str = ""
    source_url: str = ""
    words: frozenset[str] = frozenset()
    #: Words of the file name and title (a match there breaks ties).
    name_words: frozenset[str] = frozenset()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _read_small(path: Path, root: Path) -> str | None:
    """A sidecar's text, if it is a regular file inside ``root`` and not too large."""
    try:
        real = path.resolve()
        if not _inside(real, root) or not real.is_file() or real.stat().st_size > _SIDECAR_MAX:
            return None
        return real.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _decode(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        for enc in ("utf-8", "latin-1"):
            try:
                return raw.decode(enc).strip("\x00 ").strip()
            except UnicodeDecodeError:
                continue
    if isinstance(value, (list, tuple)):
        return ", ".join(_decode(v) for v in value if _decode(v))
    return str(value).strip("\x00 ").strip() if value is not None else ""


def _xp(value: Any) -> str:
    """EXIF XP* tags are UTF-16LE bytes (sometimes a tuple of ints)."""
    if isinstance(value, tuple):
        value = bytes(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-16-le", errors="replace").strip("\x00 ").strip()
    return _decode(value)


def embedded_text(path: Path) -> dict[str, str]:
    """Titles, captions, keywords, author and licence stored in the image file itself."""
    from PIL import Image, IptcImagePlugin

    out: dict[str, list[str]] = {"title": [], "caption": [], "keywords": [], "author": [], "license": []}
    try:
        with Image.open(path) as im:
            try:
                exif = im.getexif()
            except Exception:
                exif = {}
            for tag, slot in ((0x9C9B, "title"), (0x9C9F, "caption"), (0x9C9C, "caption"), (0x9C9E, "keywords")):
                if exif.get(tag):
                    out[slot].append(_xp(exif[tag]))
            for tag, slot in ((270, "caption"), (315, "author"), (33432, "license")):
                if exif.get(tag):
                    out[slot].append(_decode(exif[tag]))
            try:
                iptc = IptcImagePlugin.getiptcinfo(im) or {}
            except Exception:
                iptc = {}
            for key, slot in (((2, 5), "title"), ((2, 105), "title"), ((2, 120), "caption"),
                              ((2, 25), "keywords"), ((2, 80), "author"), ((2, 116), "license")):
                if iptc.get(key):
                    out[slot].append(_decode(iptc[key]))
            info = getattr(im, "info", {}) or {}
            for key, slot in (("Title", "title"), ("Description", "caption"), ("Comment", "caption"),
                              ("Author", "author"), ("Copyright", "license")):
                if isinstance(info.get(key), str) and info[key].strip():
                    out[slot].append(info[key].strip())
    except Exception as exc:  # unreadable file: index it by name only; validation rejects it later
        log.debug("cannot read embedded metadata of %s: %s", path, exc)
    return {k: " ".join(dict.fromkeys(v for v in vals if v)) for k, vals in out.items() if vals}


def _sidecars(image: Path, root: Path, present: frozenset[str] | set[str]) -> dict[str, str]:
    """Caption text and fields from the sidecar files of ``image`` (``present``: the names in its folder,
    so that absent sidecars cost no system call)."""
    found: dict[str, str] = {}
    stems = [image.with_suffix(""), image]  # photo.txt and photo.jpg.txt
    captions: list[str] = []
    for stem in stems:
        for ext in _SIDECAR_TEXT:
            if stem.name + ext not in present:
                continue
            text = _read_small(stem.with_name(stem.name + ext), root)
            if text and text.strip():
                captions.append(" ".join(text.split()))
        if stem.name + ".json" not in present:
            continue
        raw = _read_small(stem.with_name(stem.name + ".json"), root)
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                log.warning("ignoring %s.json: not valid JSON", stem)
                data = None
            if isinstance(data, dict):
                for key in (*_JSON_TEXT_KEYS, "license", "author", "source_url"):
                    if isinstance(data.get(key), str) and data[key].strip() and key not in found:
                        found[key] = data[key].strip()
                kw = data.get("keywords")
                if isinstance(kw, list):
                    found["keywords"] = ", ".join(str(k) for k in kw)
                elif isinstance(kw, str):
                    found["keywords"] = kw
    if captions:
        found["caption"] = " ".join([found.get("caption", ""), *captions]).strip()
    return found


def build_index(root: Path, *, recursive: bool, read_embedded: bool) -> list[Entry]:
    """Scan ``root`` (already resolved) and describe every image in it. Blocking; run it in a thread."""
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        here = Path(dirpath)
        present = set(filenames)
        for fn in sorted(filenames):
            p = here / fn
            if p.suffix.lower() not in IMAGE_EXTS or fn.startswith("."):
                continue
            if p.is_symlink():  # only links need resolving; the walk itself never leaves root
                try:
                    real = p.resolve()
                except OSError:
                    continue
                if not _inside(real, root):
                    log.warning("skipping %s: it links outside the library", p)
                    continue
            else:
                real = p
            if not real.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            meta = _sidecars(p, root, present)
            emb = embedded_text(real) if read_embedded else {}
            title = meta.get("title") or emb.get("title", "")
            caption = " ".join(
                v for v in (meta.get("alt"), meta.get("caption"), meta.get("description"), emb.get("caption")) if v
            )
            keywords = " ".join(v for v in (meta.get("keywords"), emb.get("keywords")) if v)
            folder_words = " ".join(Path(rel).parent.parts)
            name_words = tokens(p.stem) + tokens(title)
            all_words = name_words + tokens(" ".join((caption, keywords, folder_words)))
            entries.append(
                Entry(
                    rel=rel,
                    path=real,
                    title=title or " ".join(p.stem.replace("_", " ").replace("-", " ").split()),
                    caption=caption,
                    license=meta.get("license") or emb.get("license", ""),
                    author=meta.get("author") or emb.get("author", ""),
                    source_url=meta.get("source_url", ""),
                    words=frozenset(all_words),
                    name_words=frozenset(name_words),
                )
            )
    return entries


def library_signature(root: Path, *, recursive: bool) -> tuple[tuple[str, int], ...]:
    """Modification times of every folder in the library: changes when files are added or removed."""
    sig: list[tuple[str, int]] = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        try:
            sig.append((dirpath, os.stat(dirpath).st_mtime_ns))
        except OSError:
            continue
    return tuple(sig)


def search_index(entries: list[Entry], query: str, *, min_score: float) -> list[tuple[float, Entry]]:
    """Entries scoring at least ``min_score`` for ``query``, best first (name/title matches break ties)."""
    q = tokens(query)
    if not q:
        return []
    scored = []
    for e in entries:
        s = overlap(q, e.words)
        if s >= min_score and s > 0:
            scored.append((s, overlap(q, e.name_words), -len(e.words), e.rel, e))
    scored.sort(key=lambda t: (-t[0], -t[1], -t[2], t[3]))
    return [(s, e) for s, _, _, _, e in scored]


class LocalLibrarySearch(Backend):
    tool = "search"
    name = "local"
    Options = LocalLibraryOptions

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self._index: tuple[tuple, list[Entry]] | None = None
        self._lock = asyncio.Lock()

    # -- configuration --------------------------------------------------------------------------------
    def _root(self) -> Path:
        opts: LocalLibraryOptions = self.options  # type: ignore[assignment]
        if not opts.root:
            raise ToolError(
                "the local image library has no folder: set root in [backends.search.local]", kind="misconfigured"
            )
        root = self.ctx.settings.resolve_path(opts.root)
        if not root.is_dir():
            raise ToolError(f"the local image library folder {root} does not exist", kind="misconfigured")
        return root.resolve()

    def status(self) -> BackendStatus:
        try:
            root = self._root()
        except ToolError as exc:
            return BackendStatus("misconfigured", str(exc))
        walker = os.walk(root) if self.options.recursive else [next(os.walk(root), (str(root), [], []))]
        for _, _, files in walker:
            if any(Path(f).suffix.lower() in IMAGE_EXTS for f in files):
                return BackendStatus("ok", f"images under {root}")
        return BackendStatus("misconfigured", f"no images (png, jpg, jpeg, webp, gif) under {root}")

    def cache_identity(self) -> dict[str, Any]:
        opts: LocalLibraryOptions = self.options  # type: ignore[assignment]
        return {"root": opts.root, "recursive": opts.recursive, "min_score": opts.min_score,
                "max_candidates": opts.max_candidates}

    # -- index ----------------------------------------------------------------------------------------
    async def entries(self) -> list[Entry]:
        """The library index, rebuilt if a folder changed since it was built."""
        opts: LocalLibraryOptions = self.options  # type: ignore[assignment]
        root = self._root()
        async with self._lock:
            sig = await asyncio.to_thread(library_signature, root, recursive=opts.recursive)
            if self._index is None or self._index[0] != sig:
                entries = await asyncio.to_thread(
                    build_index, root, recursive=opts.recursive, read_embedded=opts.read_embedded
                )
                log.info("indexed %d images under %s", len(entries), root)
                self._index = (sig, entries)
            return self._index[1]

    def _read(self, entry: Entry, root: Path) -> ImageData:
        """Read and validate one file, checking again that it is still inside the library."""
        real = entry.path.resolve()
        if not _inside(real, root):
            raise UnsafeURLError(f"{entry.rel} now points outside the library", kind="unsafe_url")
        cap = self.ctx.settings.fetch.max_bytes
        try:
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(real, flags)
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(cap + 1)
        except OSError as exc:
            raise ToolError(f"cannot read {entry.rel}: {exc.strerror or exc}", kind="io_error") from exc
        if len(data) > cap:
            raise UnsafeURLError(f"{entry.rel} is larger than the {cap}-byte limit", kind="too_large")
        return check_image_bytes(data, self.ctx.settings.images)

    # -- run ------------------------------------------------------------------------------------------
    async def run(self, request: ToolRequest) -> ToolResult:
        query = query_of(request)
        opts: LocalLibraryOptions = self.options  # type: ignore[assignment]
        entries = await self.entries()
        root = self._root()
        matches = search_index(entries, query, min_score=opts.min_score)
        if not matches:
            raise ToolError(
                f"no image in the local library matches {query!r} "
                f"({len(entries)} images, none with at least {opts.min_score:.0%} of the query words)",
                kind="no_result",
            )
        by_rel = {e.rel: (s, e) for s, e in matches}
        candidates = [
            Candidate(
                image_url=e.rel,
                page_url="",
                title=e.title,
                license=e.license,
                author=e.author,
                extra={"path": e.rel, "score": round(s, 3), "caption": e.caption[:300] or None,
                       "library_source_url": e.source_url or None},
            )
            for s, e in matches
        ]

        async def load(c: Candidate) -> tuple[ImageData, str]:
            _, entry = by_rel[c.image_url]
            return await asyncio.to_thread(self._read, entry, root), ""

        limits = self.ctx.settings.images
        # The library's own order is already by score; title re-ranking would only undo it.
        ranked_opts = opts.model_copy(update={"prefer_title_match": False})
        result = await choose(
            candidates, backend=self.name, query=query, options=ranked_opts,
            min_size=(limits.min_width, limits.min_height), load=load,
        )
        prov = dict(result.provenance)
        # A library file has no URL; a source_url given in its sidecar is where it originally came from.
        prov["source_url"] = prov.pop("library_source_url", None)
        return ToolResult(image=result.image, provenance=prov)
