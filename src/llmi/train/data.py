"""Training data: the LLM-I dataset schema and llmi's reward rows, read into one training-row form.

Two input layouts are accepted, per row (a file may not mix them):

* **LLM-I** (the release's parquet files, also verl's layout): ``data_source`` (``interleaved`` or
  ``interleaved_mm``), ``prompt`` (a string, or a chat list whose user text holds one ``<image>``
  placeholder per input image), ``images`` (a list of ``{"bytes", "path"}`` structs, paths or PIL
  images), ``extra_info`` with ``image_num``, ``tools``, ``split``, ``question`` and ``index``;
  verl's files add ``ability`` and ``reward_model``.
* **llmi reward rows** (``llmi reward`` input JSONL): ``prompt``, ``image_num``, ``tools``, optional
  ``split``, ``images`` (paths relative to the file, or data URIs), ``question``, ``index``, ``response``.

:func:`read_rows` returns :class:`TrainRow` values (pure data), having checked every row: a row without
``image_num`` or ``tools``, with unknown tools, a bad ``image_num`` or ``split``, or with a number of
images that differs from its ``<image>`` placeholders is a problem, and any problem raises one
:class:`~llmi.train.errors.TrainDataError` listing the first few with file and row number — before any
model is loaded. The ``to_*`` functions write each layout back; :func:`summarize` describes a dataset.
"""

from __future__ import annotations

import base64
import difflib
import io
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..protocol import SOURCES
from ..reward.rules import EVAL_SPLITS, TRAIN_SPLITS, check_image_num
from .errors import TrainDataError

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
TEXT_SOURCE, MM_SOURCE = "interleaved", "interleaved_mm"
MAX_LISTED = 8


@dataclass(frozen=True)
class TrainRow:
    """One training prompt. ``prompt`` is a chat (a list of ``{"role", "content": str}``); the user text
    carries one ``<image>`` per entry of ``images`` (raw references: bytes, ``{"bytes", "path"}``,
    paths, data URIs or PIL images; decoded only when needed)."""

    prompt: tuple[dict[str, str], ...]
    image_num: int
    tools: tuple[str, ...]
    split: str = "train"
    question: str = ""
    index: Any = None
    data_source: str = TEXT_SOURCE
    images: tuple[Any, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    #: Where the row came from (``file:row``), for messages.
    origin: str = ""

    @property
    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.prompt if m.get("role") == "user")


# ------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------


def _is_hf(path: str) -> bool:
    return path.startswith("hf://")


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row_number, record)`` from a parquet, JSONL or JSON file, or an ``hf://datasets/...`` path.

    JSONL is read line by line (a bad line is a problem of that row, not of the file); parquet and
    ``hf://`` go through ``datasets`` (its parquet reader and the Hub file system)."""
    p = str(path)
    if p.endswith((".jsonl", ".ndjson")) and not _is_hf(p):
        try:
            fh = open(p, encoding="utf-8")
        except OSError as exc:
            raise TrainDataError(f"cannot read {p}: {exc.strerror or exc}") from exc
        with fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except ValueError as exc:
                    yield n, {"__error__": f"not JSON: {exc}"}
        return
    if p.endswith(".json") and not _is_hf(p):
        try:
            data = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrainDataError(f"cannot read {p}: {exc}") from exc
        if not isinstance(data, list):
            raise TrainDataError(f"{p}: a JSON dataset must be a list of rows")
        yield from enumerate(data, 1)
        return
    if not _is_hf(p) and not os.path.exists(p):
        raise TrainDataError(f"{p} does not exist")
    if not p.endswith(".parquet") and not _is_hf(p):
        raise TrainDataError(f"{p}: unknown data format (use .parquet, .jsonl or .json, or an hf:// path)")
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - the train extra installs it
        raise TrainDataError("reading parquet needs the 'datasets' package: pip install 'llmi[train]'") from exc
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # "Generating train split" bars for every file are noise here
    try:
        ds = datasets.load_dataset("parquet", data_files=p, split="train")
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
        raise TrainDataError(f"cannot read {p}: {type(exc).__name__}: {exc}") from exc
    finally:
        if bars:
            datasets.enable_progress_bars()
    for n, record in enumerate(ds, 1):
        yield n, record


def read_rows(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> list[TrainRow]:
    """Every row of ``paths``, checked. Raises :class:`TrainDataError` listing the problems found."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rows: list[TrainRow] = []
    problems: list[str] = []
    for path in paths:
        base = None if _is_hf(str(path)) else os.path.dirname(os.path.abspath(path))
        for n, record in read_records(path):
            where = f"{path}:{n}"
            try:
                rows.append(parse_record(record, base_dir=base, origin=where))
            except TrainDataError as exc:
                problems.append(f"{where}: {exc}")
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise TrainDataError(
            f"{len(problems)} of {len(problems) + len(rows)} rows cannot be trained on:\n  {shown}{more}",
            problems=problems,
        )
    if not rows:
        raise TrainDataError(f"no rows in {', '.join(map(str, paths))}")
    return rows


# ------------------------------------------------------------------------------------------------
# One record -> TrainRow
# ------------------------------------------------------------------------------------------------


def _content_text(content: Any) -> tuple[str, int]:
    """A message content as text with ``<image>`` placeholders, and its number of structured image parts."""
    if isinstance(content, str):
        return content, 0
    if isinstance(content, (list, tuple)):
        out, images = [], 0
        for part in content:
            if not isinstance(part, dict):
                raise TrainDataError(f"a content part must be an object, got {type(part).__name__}")
            kind = part.get("type")
            if kind == "text":
                out.append(part.get("text") or "")
            elif kind == "image":
                out.append(IMAGE_PLACEHOLDER)
                images += 1
            else:
                raise TrainDataError(f"unsupported content part type {kind!r}")
        return "".join(out), images
    if content is None:
        return "", 0
    raise TrainDataError(f"a message content must be text, got {type(content).__name__}")


def _chat(prompt: Any) -> tuple[dict[str, str], ...]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise TrainDataError("the prompt's user text is empty: there is nothing to answer")
        return ({"role": "user", "content": prompt},)
    if hasattr(prompt, "tolist"):  # numpy arrays from pandas/pyarrow
        prompt = prompt.tolist()
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise TrainDataError("prompt must be a string or a non-empty list of chat messages")
    out = []
    for m in prompt:
        if not isinstance(m, dict) or "role" not in m:
            raise TrainDataError("each prompt message needs a role and a content")
        role = m["role"]
        if role not in ("system", "user", "assistant"):
            raise TrainDataError(f"unknown message role {role!r}")
        text, _ = _content_text(m.get("content"))
        out.append({"role": role, "content": text})
    if not any(m["role"] == "user" for m in out):
        raise TrainDataError("the prompt has no user message")
    if not any(m["content"].strip() for m in out if m["role"] == "user"):
        raise TrainDataError("the prompt's user text is empty: there is nothing to answer")
    return tuple(out)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TrainDataError(f"{what} must be a list, got {type(value).__name__}: {str(value)[:60]!r}")
    return list(value)


def _tools(value: Any, *, missing: bool) -> tuple[str, ...]:
    if missing:
        raise TrainDataError("no 'tools' (the tools the task needs; [] for none): the reward's r_tool needs it")
    tools = _list(value, "tools")
    bad = [t for t in tools if t not in SOURCES]
    if bad:
        raise TrainDataError(f"unknown tool(s) {bad}; the tools are {', '.join(SOURCES)}")
    return tuple(tools)


def _image_num(value: Any, *, missing: bool) -> int:
    if missing or value is None:
        raise TrainDataError(
            "no 'image_num' (-1 no image, 0 any, 99 at least one, N exactly N): the reward's image-count rule needs it"
        )
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return check_image_num(value)
    except ValueError as exc:
        raise TrainDataError(str(exc)) from exc


def _split(value: Any) -> str:
    split = "train" if value in (None, "") else str(value)
    if split not in TRAIN_SPLITS | EVAL_SPLITS:
        raise TrainDataError(f"unknown split {split!r}; use train, or one of {', '.join(sorted(EVAL_SPLITS))}")
    return split


def question_of(prompt: Sequence[dict[str, str]]) -> str:
    """What the judges are asked about: the last user text without image placeholders."""
    for m in reversed(prompt):
        if m["role"] == "user":
            return re.sub(r"\s*<image>\s*", " ", m["content"]).strip()
    return ""


def _resolve_image(ref: Any, base_dir: str | None) -> Any:
    """Relative paths become absolute (relative to the data file), so rows stay usable anywhere."""
    if isinstance(ref, dict):
        if ref.get("bytes") is None and ref.get("path"):
            return _resolve_image(ref["path"], base_dir)
        if ref.get("bytes") is not None:
            return {"bytes": ref["bytes"], "path": ref.get("path")}
        raise TrainDataError("an image struct has neither bytes nor path")
    if isinstance(ref, str) and not ref.startswith("data:") and base_dir and not os.path.isabs(ref):
        return os.path.join(base_dir, ref)
    if ref is None:
        raise TrainDataError("an image is null")
    return ref


def _check_image(ref: Any, k: int) -> None:
    """Image ``k`` of a row exists and has an image header (read lazily: nothing is decoded here)."""
    if hasattr(ref, "convert") and hasattr(ref, "size"):
        return  # already a PIL image (datasets decodes Image features)
    from PIL import Image

    where = f"image {k}"
    try:
        if isinstance(ref, str) and not ref.startswith("data:"):
            where = f"image {k} ({ref})"
            if not os.path.isfile(ref):
                raise TrainDataError(f"{where} does not exist")
            with Image.open(ref):
                return
        with Image.open(io.BytesIO(image_bytes(ref))):
            return
    except TrainDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        reason = "not an image file" if "cannot identify" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise TrainDataError(f"{where} cannot be read: {reason}") from None


def parse_record(record: Any, *, base_dir: str | None = None, origin: str = "") -> TrainRow:
    """One record of either layout as a checked :class:`TrainRow` (raises :class:`TrainDataError`)."""
    if not isinstance(record, dict):
        raise TrainDataError(f"a row must be an object, got {type(record).__name__}")
    if "__error__" in record:
        raise TrainDataError(record["__error__"])
    if "prompt" not in record:
        raise TrainDataError("no 'prompt'" + _columns_hint("prompt", record))
    extra_info = record.get("extra_info")
    if isinstance(extra_info, dict) and ("image_num" in extra_info or "tools" in extra_info):
        meta, layout = dict(extra_info), "llmi-i"
    elif "image_num" in record or "tools" in record:
        meta, layout = record, "reward"
    else:
        where = "extra_info" if isinstance(extra_info, dict) else "the row (or its extra_info)"
        hint = _columns_hint("extra_info", record) if not isinstance(extra_info, dict) else \
            _columns_hint("image_num", extra_info)
        raise TrainDataError(f"no 'image_num' and no 'tools' in {where}: this is not LLM-I training data{hint}")
    prompt = _chat(record["prompt"])
    structured = 0
    if not isinstance(record["prompt"], str):
        structured = sum(_content_text(m.get("content"))[1] for m in _list(record["prompt"], "prompt"))
    try:
        image_num = _image_num(meta.get("image_num"), missing="image_num" not in meta)
        tools = _tools(meta.get("tools"), missing="tools" not in meta)
    except TrainDataError as exc:
        missing = "image_num" if "image_num" not in meta else "tools" if "tools" not in meta else None
        raise TrainDataError(str(exc) + (_columns_hint(missing, meta) if missing else "")) from None
    split = _split(meta.get("split"))
    images = tuple(_resolve_image(r, base_dir) for r in _list(record.get("images"), "images"))
    for k, ref in enumerate(images):
        _check_image(ref, k)
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in prompt if m["role"] == "user")
    if placeholders and not images and record.get("images") is None:
        other = [k for k in ("image", "imgs", "input_images", "image_paths") if record.get(k) is not None]
        if other:
            raise TrainDataError(f"{placeholders} <image> placeholder(s) but no 'images' column (the row has "
                                 f"{other[0]!r}; the input images go in 'images')")
    in_other = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in prompt if m["role"] != "user")
    if in_other:
        raise TrainDataError("an <image> placeholder outside a user message")
    if placeholders != len(images):
        if placeholders == 0 and images and not structured:
            raise TrainDataError(
                f"{len(images)} image(s) but no <image> placeholder in the prompt; put one <image> where each "
                "image belongs"
            )
        raise TrainDataError(f"{len(images)} image(s) but {placeholders} <image> placeholder(s) in the prompt")
    question = meta.get("question")
    if not isinstance(question, str) or not question.strip():
        question = question_of(prompt)
    data_source = record.get("data_source") or (MM_SOURCE if images else TEXT_SOURCE)
    known = {"image_num", "tools", "split", "question", "index"}
    if layout == "llmi-i":
        extra = {k: v for k, v in meta.items() if k not in known}
    else:  # reward rows keep the LLM-I extra_info fields they were converted from under extra_info
        extra = dict(extra_info) if isinstance(extra_info, dict) else {}
    # parquet gives every row every struct field of the file (None where a row had none): not data
    extra = {k: v for k, v in extra.items() if v is not None}
    index = meta.get("index")
    return TrainRow(
        prompt=prompt, image_num=image_num, tools=tools, split=split, question=question,
        index=index, data_source=str(data_source), images=images, extra=_plain(extra), origin=origin,
    )


def _columns_hint(wanted: str, record: dict[str, Any]) -> str:
    """`` (the row has: a, b, c; did you mean 'x'?)`` for a field that is missing from ``record``."""
    keys = [str(k) for k in record if not str(k).startswith("__")]
    if not keys:
        return ""
    close = difflib.get_close_matches(wanted, keys, n=1, cutoff=0.6)
    return f" (the row has: {', '.join(keys[:12])}" + (f"; did you mean {close[0]!r}?)" if close else ")")


def _plain(value: Any) -> Any:
    """numpy values (from parquet) as plain Python."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def image_bytes(ref: Any) -> bytes:
    """The encoded bytes of an image reference (PNG for a PIL image)."""
    if isinstance(ref, dict):
        ref = ref.get("bytes") if ref.get("bytes") is not None else ref.get("path")
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if isinstance(ref, str):
        if ref.startswith("data:"):
            return base64.b64decode(ref.partition(",")[2])
        try:
            return Path(ref).read_bytes()
        except OSError as exc:
            raise TrainDataError(f"cannot read image {ref}: {exc.strerror or exc}") from exc
    if hasattr(ref, "save"):
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        return buf.getvalue()
    raise TrainDataError(f"unsupported image reference {type(ref).__name__}")


def open_image(ref: Any, max_pixels: int | None = None):
    """A decoded RGB PIL image, scaled down (aspect kept) to at most ``max_pixels`` pixels."""
    from PIL import Image

    try:
        img = ref if hasattr(ref, "convert") and hasattr(ref, "size") else Image.open(io.BytesIO(image_bytes(ref)))
        img = img.convert("RGB")
    except TrainDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        reason = "not an image file" if "cannot identify" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise TrainDataError(f"an input image cannot be decoded: {reason}") from exc
    if max_pixels and img.width * img.height > max_pixels:
        scale = math.sqrt(max_pixels / (img.width * img.height))
        img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.LANCZOS)
    return img


def _png(ref: Any, max_pixels: int | None) -> bytes:
    """The image's encoded bytes: as stored (any format) unless it must be scaled or is a PIL image (PNG)."""
    if max_pixels is None and not hasattr(ref, "save"):
        return image_bytes(ref)
    if max_pixels is not None and not hasattr(ref, "save"):
        data = image_bytes(ref)
        img = open_image(data)
        if img.width * img.height <= max_pixels:
            return data  # small enough: kept byte for byte
    buf = io.BytesIO()
    open_image(ref, max_pixels).save(buf, format="PNG")
    return buf.getvalue()


_MAGIC = ((b"\x89PNG", "png", "image/png"), (b"\xff\xd8\xff", "jpg", "image/jpeg"), (b"GIF8", "gif", "image/gif"),
          (b"BM", "bmp", "image/bmp"))


def image_kind(data: bytes) -> tuple[str, str]:
    """``(extension, mime type)`` of encoded image bytes (PNG when unknown)."""
    for magic, ext, mime in _MAGIC:
        if data.startswith(magic):
            return ext, mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return "png", "image/png"


def _data_uri(data: bytes) -> str:
    return f"data:{image_kind(data)[1]};base64," + base64.b64encode(data).decode("ascii")


def _image_path(ref: Any) -> str | None:
    """The file name an image struct carried (the release stores one next to the bytes), if any."""
    if isinstance(ref, dict) and isinstance(ref.get("path"), str) and ref.get("bytes") is not None:
        return ref["path"]
    return None


def _image_structs(row: "TrainRow", max_pixels: int | None) -> list[dict[str, Any]]:
    return [{"bytes": _png(r, max_pixels), "path": _image_path(r)} for r in row.images]


# ------------------------------------------------------------------------------------------------
# System prompt
# ------------------------------------------------------------------------------------------------


def with_system_prompt(row: TrainRow, system: str | None) -> TrainRow:
    """The row with its system message replaced by ``system`` (inserted when it has none); ``None``
    keeps the dataset's own."""
    if system is None:
        return row
    rest = tuple(m for m in row.prompt if m["role"] != "system")
    return replace(row, prompt=({"role": "system", "content": system},) + rest)


# ------------------------------------------------------------------------------------------------
# Writing the layouts
# ------------------------------------------------------------------------------------------------


def _extra_info(row: TrainRow) -> dict[str, Any]:
    return {**row.extra, "image_num": row.image_num, "tools": list(row.tools), "split": row.split,
            "question": row.question, "index": row.index}


def to_llmi_record(row: TrainRow, *, max_pixels: int | None = None) -> dict[str, Any]:
    """The LLM-I release's layout: a text row's prompt is a string when it is one user message (the
    release's ``train.parquet``), a row with input images has a chat list (its ``train_mm.parquet``)."""
    text = len(row.prompt) == 1 and row.prompt[0]["role"] == "user" and not row.images
    prompt: Any = row.prompt[0]["content"] if text else [dict(m) for m in row.prompt]
    return {
        "data_source": row.data_source,
        "prompt": prompt,
        "images": _image_structs(row, max_pixels),
        "extra_info": _extra_info(row),
    }


def to_verl_record(row: TrainRow, *, max_pixels: int | None = None) -> dict[str, Any]:
    """verl 0.9.1's RL dataset layout: chat ``prompt`` (with ``<image>`` placeholders), ``images`` as
    ``{"bytes"}`` structs, ``ability``, ``reward_model`` (llmi's manager needs no ground truth) and
    ``extra_info`` (what :mod:`llmi.integrations.verl` reads)."""
    return {
        "data_source": row.data_source,
        "prompt": [dict(m) for m in row.prompt],
        "ability": "interleaved",
        "reward_model": {"style": "llmi", "ground_truth": ""},
        "images": _image_structs(row, max_pixels),
        "extra_info": _extra_info(row),
    }


def to_reward_row(row: TrainRow, *, image_dir: Path | None = None, stem: str = "row",
                  max_pixels: int | None = None) -> dict[str, Any]:
    """An ``llmi reward`` input row (without ``response``). Images are written to ``image_dir`` (named
    by their format) and referred to by a path relative to its parent (the JSONL's folder), or inlined as
    data URIs. The other ``extra_info`` fields of an LLM-I row go under ``extra_info``."""
    images = []
    for k, ref in enumerate(row.images):
        data = _png(ref, max_pixels)
        if image_dir is not None:
            image_dir.mkdir(parents=True, exist_ok=True)
            name = f"{stem}-{k}.{image_kind(data)[0]}"
            (image_dir / name).write_bytes(data)
            images.append(f"{image_dir.name}/{name}")
        else:
            images.append(_data_uri(data))
    prompt: Any = row.prompt[0]["content"] if len(row.prompt) == 1 else [dict(m) for m in row.prompt]
    out = {"prompt": prompt, "image_num": row.image_num, "tools": list(row.tools), "split": row.split,
           "question": row.question, "index": row.index, "images": images}
    if row.data_source:
        out["data_source"] = row.data_source
    if row.extra:
        out["extra_info"] = dict(row.extra)
    return out


def write_records(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write ``records`` as parquet or JSONL (by the extension); returns the number written."""
    path = Path(path)
    records = list(records)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not all(isinstance(r["prompt"], str) for r in records):
            # one schema for every row: a file with any chat prompt holds chats only (the release keeps text
            # rows, with string prompts, and multimodal rows, with chats, in separate files)
            if any(isinstance(r["prompt"], str) for r in records):
                log.info("%s: text and chat prompts in one file; every prompt is written as a chat", path)
            for r in records:
                if isinstance(r["prompt"], str):
                    r["prompt"] = [{"role": "user", "content": r["prompt"]}]
        table = pa.Table.from_pylist(records)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    elif path.suffix in (".jsonl", ".ndjson"):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n")
        os.replace(tmp, path)
    else:
        raise TrainDataError(f"{path}: write .parquet or .jsonl")
    return len(records)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return _data_uri(bytes(value))
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------


def image_rule(image_num: int) -> str:
    return {-1: "no image (-1)", 0: "any (0)", 99: "at least one (99)"}.get(image_num, f"exactly {image_num}")


def _percentiles(values: Sequence[int], qs: Sequence[int] = (50, 90, 99)) -> dict[str, int]:
    if not values:
        return {}
    ordered = sorted(values)
    out = {f"p{q}": ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] for q in qs}
    out["max"] = ordered[-1]
    return out


def summarize(rows: Sequence[TrainRow], *, count_tokens=None) -> dict[str, Any]:
    """Rows, the image-count rule mix, the tools mix, splits, sources, input images and prompt-length
    percentiles (in tokens when ``count_tokens(row) -> int`` is given, else characters)."""
    lengths = [count_tokens(r) if count_tokens else sum(len(m["content"]) for m in r.prompt) for r in rows]
    return {
        "rows": len(rows),
        "image_rule": dict(Counter(image_rule(r.image_num) for r in rows).most_common()),
        "tools": dict(Counter(t for r in rows for t in r.tools).most_common()),
        "tool_sets": dict(Counter("+".join(sorted(r.tools)) or "(none)" for r in rows).most_common(8)),
        "splits": dict(Counter(r.split for r in rows).most_common()),
        "data_sources": dict(Counter(r.data_source for r in rows).most_common()),
        "rows_with_images": sum(bool(r.images) for r in rows),
        "input_images": sum(len(r.images) for r in rows),
        "prompt_length_unit": "tokens" if count_tokens else "chars",
        "prompt_length": _percentiles(lengths),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""

    def mix(d: dict[str, int]) -> str:
        total = sum(d.values()) or 1
        return ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in d.items()) or "-"

    lengths = summary["prompt_length"]
    return "\n".join([
        f"rows: {summary['rows']} ({summary['rows_with_images']} with input images, "
        f"{summary['input_images']} images)",
        f"image-count rule: {mix(summary['image_rule'])}",
        f"tools needed: {mix(summary['tools'])}",
        f"tool sets: {mix(summary['tool_sets'])}",
        f"splits: {mix(summary['splits'])}; sources: {mix(summary['data_sources'])}",
        f"prompt length ({summary['prompt_length_unit']}): "
        + ", ".join(f"{k} {v}" for k, v in lengths.items()),
    ])
