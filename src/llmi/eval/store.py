"""The run folder: everything a run has finished, on disk, so that a killed run loses nothing.

::

    runs/X/
      run.json               what was run (benchmark, data, options) — a resumed run must match it
      documents/<id>.json    each item's document (JSON contract of llmi.document) + response, usage, timing
      documents/<id>/        its images as files
      judge_calls.jsonl      every judge answer (or final failure), keyed by item, question and a digest
                             of the exact request: a resumed run asks no question twice
      results.jsonl          one row per finished item (the batch runner's append-only log)
      summary.json           scores with intervals, breakdowns, tool statistics, cost
      report.html            one self-contained page
      plots/*.png            the report's plots as files
      ...                    the benchmark's own output format (gen_outputs/, isg_output.jsonl, ...)

Writes are ordered so that a kill at any moment leaves either the old state or the new one: a document's
images are written before its JSON, and the JSON by an atomic rename; the logs are appended one row per
``write`` call (a torn last line is cut off when the log is next opened).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import atomic_write
from ..images import file_extension
from .base import safe_name


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


class AppendLog:
    """A JSONL file appended one row per ``write`` call (safe across processes with ``O_APPEND``)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def append(self, row: dict[str, Any]) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8", "replace")
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class JudgeLog:
    """``judge_calls.jsonl``: stored judge answers, looked up by ``(item, key, digest)``."""

    def __init__(self, path: Path):
        from ..batch import iter_output

        self.path = path
        self._rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for row in iter_output(path, id_key="item", repair=True):
            self._rows[(str(row["item"]), str(row.get("key")), str(row.get("digest")))] = row
        self._log = AppendLog(path)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, item: str, key: str, digest: str) -> dict[str, Any] | None:
        return self._rows.get((item, key, digest))

    def put(self, item: str, key: str, digest: str, *, ok: bool, value: Any = None, error: str | None = None) -> None:
        row: dict[str, Any] = {"item": item, "key": key, "digest": digest, "ok": ok, "t": round(time.time(), 3)}
        if ok:
            row["value"] = value
        else:
            row["error"] = error
        self._rows[(item, key, digest)] = row
        self._log.append(row)

    def close(self) -> None:
        self._log.close()


class RunFolder:
    """One run's folder (see the module docstring). Created on first use."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.documents = self.root / "documents"
        self.results = self.root / "results.jsonl"
        self.summary = self.root / "summary.json"
        self.report = self.root / "report.html"
        self.plots = self.root / "plots"
        self.meta_path = self.root / "run.json"
        self._judge_log: JudgeLog | None = None

    # -- metadata ---------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.meta_path} is unreadable ({exc}); is {self.root} an llmi eval run?") from None

    def start(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Create the folder or check that it holds the same run: a different benchmark or data file would
        mix two runs' items in one summary."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root} is a file, not a run folder")
        old = self.meta()
        if old is not None:
            for key in ("benchmark", "data", "outputs"):
                if old.get(key) != meta.get(key):
                    raise InputError(
                        f"{self.root} holds a run of {key} {old.get(key)!r}, not {meta.get(key)!r}; "
                        "choose another output folder (or remove it to start again)"
                    )
            merged = {**old, "resumed": old.get("resumed", 0) + 1, "last_started": meta.get("created")}
            write_json(self.meta_path, merged)
            return merged
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.meta_path, meta)
        return meta

    # -- judge answers ----------------------------------------------------------------------------
    @property
    def judge_log(self) -> JudgeLog:
        if self._judge_log is None:
            self._judge_log = JudgeLog(self.root / "judge_calls.jsonl")
        return self._judge_log

    def close(self) -> None:
        if self._judge_log is not None:
            self._judge_log.close()
            self._judge_log = None

    # -- documents --------------------------------------------------------------------------------
    def document_path(self, item_id: str) -> Path:
        return self.documents / f"{safe_name(item_id)}.json"

    def save_document(self, item_id: str, document: Any, **info: Any) -> Path:
        """Store ``document`` with its images as files (images first, the JSON last and atomically)."""
        name = safe_name(item_id)
        paths = []
        for k, block in enumerate(document.images):
            rel = f"{name}/image-{k}.{file_extension(block.mime)}"
            dest = self.documents / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not (dest.exists() and dest.stat().st_size == len(block.data) and dest.read_bytes() == block.data):
                atomic_write(dest, block.data)  # a retried item's new picture replaces the old one
            paths.append(rel)
        record = {"id": item_id, "document": document.to_dict(image_paths=paths), **info}
        path = self.document_path(item_id)
        write_json(path, record)
        return path

    def load_document(self, item_id: str) -> tuple[Any, dict[str, Any]] | None:
        """``(document, record)`` stored for ``item_id``, or None (also for an unreadable one, which is redone)."""
        from ..document import Document
        from ..errors import ToolError

        path = self.document_path(item_id)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            doc = Document.from_dict(record["document"], base_dir=str(self.documents))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ToolError):
            return None
        return doc, record

    def image_path(self, item_id: str, k: int, mime: str) -> Path:
        return self.documents / safe_name(item_id) / f"image-{k}.{file_extension(mime)}"
