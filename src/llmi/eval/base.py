"""The benchmark interface: one small class per benchmark, registered like the tool backends.

A benchmark does five things, and nothing else:

1. :meth:`Benchmark.load` reads its data file into :class:`Item` values (the rows as the benchmark's own
   files hold them, plus what llmi needs: a prompt, input images, a category);
2. :meth:`Benchmark.request` builds the generation request for one item;
3. :meth:`Benchmark.judge` judges one finished document through a :class:`JudgeCalls` (which stores every
   judge answer in the run folder, so a resumed run never asks the same question twice) and returns a
   :class:`Judged` — scores, the judge's justifications, what was excluded and why;
4. :meth:`Benchmark.aggregate` turns the per-item rows into the summary (scores with 95 % bootstrap
   intervals, per-category breakdowns) — a pure function, tested on hand-computed cases;
5. :meth:`Benchmark.write_item` / :meth:`Benchmark.finalize` write the benchmark's own output format, so the
   benchmark's official scripts run on llmi's outputs; :meth:`Benchmark.read_outputs` reads that format back
   for judge-only runs (``llmi eval NAME --outputs ...``) of documents produced elsewhere.

The runner (:mod:`llmi.eval.runner`) does the rest: resuming, concurrency caps, generation, the run folder,
cost accounting and the report. A new benchmark is one file with one subclass, registered under the
``llmi.benchmarks`` entry-point group (``name = "module:Class"``), the way llmi registers its own four.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, Iterable, Sequence, TypeVar

from ..errors import InputError
from ..images import ImageData, load_image

if TYPE_CHECKING:  # pragma: no cover
    from ..document import Document
    from .judge import EvalJudge
    from .store import RunFolder

T = TypeVar("T")

#: An input image as a benchmark row refers to it: a file path, raw bytes, or an already decoded image.
ImageRef = Any


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One benchmark item.

    ``id``: the benchmark's own identifier (OpenING's ``total_uid``, ISG's ``id``, LLMI-Bench's 1-based
    index). ``prompt``: what the writing model is asked, with ``[image k]`` where input image ``k`` stands.
    ``images``: the input images (paths are read when needed, so loading 5,000 items stays cheap).
    ``image_num``: how many images the item asks for, when it says (used for the image-count rule
    compliance in the summary; -1 none, 0 any, 99 at least one, N exactly N). ``raw``: the row as read.
    """

    id: str
    prompt: str
    images: Sequence[ImageRef] = ()
    category: str = ""
    subcategory: str = ""
    image_num: int | None = None
    tools: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)

    def input_images(self, *, missing_ok: bool = False) -> list[ImageData]:
        """The input images, decoded. A missing or unusable one is an :class:`InputError` (or skipped)."""
        out = []
        for ref in self.images:
            try:
                out.append(load_image(ref))
            except InputError:
                if not missing_ok:
                    raise
        return out


@dataclass
class Verdict:
    """One judged criterion (or question) of one item.

    ``score`` is None when the judge failed or its answer was unusable after the retries: the criterion is
    *excluded* (it counts neither for nor against the item), and ``error`` says why.
    """

    key: str
    score: float | None
    justification: str = ""
    error: str | None = None
    #: The judge's answer as parsed (the benchmark's own output format is written from it).
    answer: Any = None
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "score": self.score, "justification": self.justification}
        if self.label:
            d["label"] = self.label
        if self.error:
            d["error"] = self.error
        if self.answer is not None:
            d["answer"] = self.answer
        return d


@dataclass
class Judged:
    """What :meth:`Benchmark.judge` returns for one item.

    ``score``: the item's headline score (None when nothing could be judged); ``scores``: named sub-scores
    (criteria, levels) for the breakdowns; ``verdicts``: every judge answer with its justification.
    """

    score: float | None
    scores: dict[str, float | None] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def excluded(self) -> int:
        return sum(1 for v in self.verdicts if v.score is None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "scores": self.scores,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "excluded": self.excluded,
            **self.extra,
        }


class JudgeCalls:
    """The judge, as one item's :meth:`Benchmark.judge` sees it: ``await calls.ask(key, messages, parse)``.

    Every answer (or final failure) is stored in the run folder under ``key`` plus a hash of the messages,
    so a resumed run — or a re-judged item whose document did not change — asks nothing twice. A failure
    comes back as a :class:`CallFailed` value, never as a made-up answer.
    """

    def __init__(self, item_id: str, judge: "EvalJudge", log: Any = None, *, retry_errors: bool = False,
                 response: str = ""):
        self.item_id = item_id
        #: The raw response (with its tags) the document was made from, when known.
        self.response = response
        self.judge = judge
        self.log = log
        self.retry_errors = retry_errors
        self.asked = 0  # calls sent to the judge by this run
        self.reused = 0  # answers found in the run folder

    async def ask(self, key: str, messages: list[dict[str, Any]], parse: Callable[[str], T]) -> "T | CallFailed":
        from .judge import messages_digest

        digest = messages_digest(messages)
        if self.log is not None:
            hit = self.log.get(self.item_id, key, digest)
            if hit is not None and (hit.get("ok") or not self.retry_errors):
                self.reused += 1
                return hit["value"] if hit.get("ok") else CallFailed(hit.get("error") or "judge failed")
        self.asked += 1
        try:
            value = await self.judge.ask(messages, parse)
        except _judge_failure() as exc:
            error = f"{getattr(exc, 'kind', 'error')}: {exc}"
            if self.log is not None:
                self.log.put(self.item_id, key, digest, ok=False, error=error)
            return CallFailed(error)
        if self.log is not None:
            self.log.put(self.item_id, key, digest, ok=True, value=value)
        return value


def _judge_failure() -> type[Exception]:
    from ..reward.judges import JudgeFailure

    return JudgeFailure


@dataclass(frozen=True)
class CallFailed:
    """A judge call that failed after its retries (or answered unusably every time)."""

    error: str


@dataclass
class Output:
    """A document produced elsewhere, read for a judge-only run: the item it answers and the document."""

    item: Item
    document: "Document"
    #: The raw response with its tags, when known.
    response: str = ""
    model: str = ""


# ------------------------------------------------------------------------------------------------
# The interface
# ------------------------------------------------------------------------------------------------


class Benchmark(ABC):
    """One benchmark. Subclasses set the class attributes and implement the abstract methods."""

    #: The name on the command line (``llmi eval NAME``) and in the registry.
    name: ClassVar[str]
    #: A human title for reports.
    title: ClassVar[str] = ""
    #: The headline score's range, for plots and reports.
    scale: ClassVar[tuple[float, float]] = (0.0, 1.0)
    #: An item's score times this is on the headline scale (LLMI-Bench: item 0–1, benchmark mean × 10).
    item_scale: ClassVar[float] = 1.0
    #: The judge model the published numbers used (scores are only comparable under the same judge).
    published_judge: ClassVar[str] = ""
    #: Whether :meth:`Benchmark.judge` needs a judge at all (the in-domain test set's rules need none
    #: when its judges are off).
    needs_judge: ClassVar[bool] = True

    def __init__(self, data: Path | None = None, *, options: dict[str, Any] | None = None, settings: Any = None):
        self.data = Path(data) if data is not None else None
        self.options = dict(options or {})
        self.settings = settings

    # -- data -------------------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> list[Item]:
        """Every item of the data file, in file order. Raises :class:`InputError` for an unusable file."""

    def request(self, item: Item, *, sampling: Any = None) -> Any:
        """The generation request for ``item`` (an :class:`llmi.request.Request`)."""
        return make_request(item.prompt, images=item.images, sampling=sampling, image_num=item.image_num,
                            tools=item.tools or None)

    # -- judging ----------------------------------------------------------------------------------
    @abstractmethod
    async def judge(self, item: Item, document: "Document", calls: JudgeCalls) -> Judged:
        """Judge one finished document."""

    @abstractmethod
    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The summary's ``scores`` section from the result rows (pure; rows with ``error`` are skipped)."""

    # -- the benchmark's own files ----------------------------------------------------------------
    def write_item(self, run: "RunFolder", item: Item, document: "Document", judged: Judged | None = None) -> None:
        """Write ``item``'s output in the benchmark's own format (idempotent). Default: nothing."""

    def finalize(self, run: "RunFolder", items: list[Item], rows: dict[str, dict[str, Any]]) -> list[Path]:
        """Write the benchmark's own aggregate files once a run ends; returns the paths written."""
        return []

    def read_outputs(self, path: Path, items: list[Item] | None) -> Iterable[Output]:
        """Outputs produced elsewhere, in this benchmark's own format (for ``--outputs``)."""
        raise InputError(f"{self.name} cannot read outputs in its own format; give an llmi eval run folder")

    def describe_score(self) -> str:
        """One line saying what the headline score is, for reports."""
        return ""


# ------------------------------------------------------------------------------------------------
# Helpers shared by the benchmarks
# ------------------------------------------------------------------------------------------------


def resolve_path(ref: str | os.PathLike, data: Path | None) -> Path:
    """A path from a data file: absolute, else relative to the data file's folder (then its parent, then
    the current directory) — the first that exists, else the first candidate."""
    p = Path(ref).expanduser()
    if p.is_absolute():
        return p
    candidates = []
    if data is not None:
        candidates += [data.parent / p, data.parent.parent / p]
    candidates.append(Path.cwd() / p)
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def resolve_image_ref(ref: ImageRef, data: Path | None) -> ImageRef:
    """An image reference from a data file with a relative path resolved as :func:`resolve_path` does
    (``data:`` URIs, bytes and ``{"bytes"}`` entries are left as they are)."""
    if isinstance(ref, str) and not ref.startswith("data:") and ref.strip():
        return resolve_path(ref, data)
    if isinstance(ref, dict) and not ref.get("bytes") and isinstance(ref.get("path"), str) and ref["path"]:
        return {**ref, "path": str(resolve_path(ref["path"], data))}
    return ref


# ------------------------------------------------------------------------------------------------
# Reading data files
# ------------------------------------------------------------------------------------------------

_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def read_text(path: Path) -> str:
    """A data file's text: UTF-8 (a BOM allowed), or UTF-16/32 when a BOM says so (as Windows tools write).
    A missing file or bytes that are not text are an :class:`InputError` naming the file and the line."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a data file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    encoding = "utf-8"
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            raw, encoding = raw[len(bom):], enc
            break
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{path} is not {encoding.upper()} text (line {line}: byte 0x{raw[exc.start]:02x}); "
                         "save it as UTF-8") from None


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a JSON Lines file (see :func:`read_text`). A file
    holding one JSON array (or one pretty-printed object) is read as well. A line that is not JSON is an
    :class:`InputError` naming it."""
    import json

    text = read_text(path)
    stripped = text.strip()
    if stripped[:1] in ("[", "{") and "\n" in stripped:
        try:  # one JSON value spread over lines (a list, or a pretty-printed object)
            whole = json.loads(stripped)
        except ValueError:
            whole = None
        if isinstance(whole, list):
            return [(n + 1, v) for n, v in enumerate(whole)]
        if isinstance(whole, dict):
            return [(1, whole)]
    out = []
    for n, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                out.append((n + 1, json.loads(line)))
            except ValueError as exc:
                raise InputError(f"{path} line {n + 1} is not JSON: {exc}") from None
    return out


def image_markers(text: str, start: int, placeholder: str = "<image>") -> tuple[str, int]:
    """Replace each ``placeholder`` in ``text`` by ``[image k]`` (k counting from ``start``)."""
    out, k = [], start
    parts = text.split(placeholder)
    for i, part in enumerate(parts):
        out.append(part)
        if i < len(parts) - 1:
            out.append(f"[image {k}]")
            k += 1
    return "".join(out), k


_MARKER = re.compile(r"\[image (\d+)\]")


def split_at_markers(text: str) -> list[str | int]:
    """``"a [image 0] b"`` -> ``["a ", 0, " b"]`` (what the judge messages interleave)."""
    out: list[str | int] = []
    pos = 0
    for m in _MARKER.finditer(text):
        out.append(text[pos : m.start()])
        out.append(int(m.group(1)))
        pos = m.end()
    out.append(text[pos:])
    return [p for p in out if p != ""]


def make_request(prompt: str, *, images: Sequence[ImageRef] = (), sampling: Any = None, image_num: int | None = None,
                 tools: Sequence[str] | None = None, system_prompt: str | None = None) -> Any:
    """A :class:`llmi.request.Request` (input images decoded; ``sampling`` a :class:`~llmi.request.Sampling`
    or a dict of its fields)."""
    from ..request import Request, Sampling

    kw: dict[str, Any] = {"prompt": prompt, "images": tuple(load_image(r) for r in images), "system_prompt": system_prompt,
                          "image_num": image_num, "tools": tuple(tools) if tools is not None else None}
    if sampling is not None:
        kw["sampling"] = sampling if isinstance(sampling, Sampling) else Sampling(**dict(sampling))
    return Request(**kw)


def safe_name(item_id: str) -> str:
    """A file name for an item id: the id itself when it is plain, else a readable prefix plus a hash."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", item_id) and not item_id.endswith("."):
        return item_id
    import hashlib

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id)[:40].strip("._") or "item"
    return f"{stem}-{hashlib.sha256(item_id.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


async def gather_calls(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run judge calls of one item together (the judge client's semaphore caps them)."""
    import asyncio

    return list(await asyncio.gather(*coros))


def mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
