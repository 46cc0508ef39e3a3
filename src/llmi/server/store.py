"""Finished documents on disk: one sqlite index plus one folder per run, so they survive a restart.

Layout under the data folder::

    server.sqlite                 the index: one row per run (owner, status, title, stats, usage, ...)
    secret                        the key that signs image and download links (created once, mode 0600)
    runs/<id>/document.json       the document's JSON contract, images as relative paths
    runs/<id>/images/slot-<n>.<ext>
    runs/<id>/inputs/input-<i>.<ext>
    runs/<id>/events.jsonl        the run's event stream in its JSON form (images as links, not bytes)

A run is indexed when it starts (status ``running``); a run still ``running`` when the server starts
again was cut by the restart and becomes ``interrupted``. Files are written to a temporary name and
renamed, so a crash leaves no half file. All methods are synchronous and thread-safe; the server calls
them through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..document import Document, FailureBlock, ImageBlock, TextBlock
from ..files import atomic_write
from ..images import ImageData, file_extension

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    background INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    finished REAL,
    prompt TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL DEFAULT '',
    n_images INTEGER NOT NULL DEFAULT 0,
    n_failures INTEGER NOT NULL DEFAULT 0,
    stats TEXT,
    usage TEXT,
    error TEXT,
    options TEXT
);
CREATE INDEX IF NOT EXISTS runs_owner_created ON runs (owner, created DESC);
"""

_COLUMNS = ("id", "owner", "kind", "status", "background", "created", "finished", "prompt", "title",
            "n_images", "n_failures", "stats", "usage", "error", "options")
_JSON_COLUMNS = ("stats", "usage", "options")


@dataclass
class RunRecord:
    """One row of the index."""

    id: str
    owner: str
    kind: str
    status: str
    created: float
    background: bool = False
    finished: float | None = None
    prompt: str = ""
    title: str = ""
    n_images: int = 0
    n_failures: int = 0
    stats: dict | None = None
    usage: dict | None = None
    error: str | None = None
    options: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in _COLUMNS if c != "owner"}


def valid_run_id(run_id: str) -> bool:
    return bool(_RUN_ID.match(run_id))


def slot_blocks(doc: Document) -> list[ImageBlock | FailureBlock]:
    """The document's slots in order (one per tag)."""
    return [b for b in doc.blocks if not isinstance(b, TextBlock)]


class Store:
    """The sqlite index and the run folders under ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        # Prompts and documents are private: the folders this creates, and the index, are the owner's only
        # (files under runs/ are written 0600 by atomic_write).
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "runs").mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.root / "runs", 0o700)
        index = self.root / "server.sqlite"
        if not index.exists():
            os.close(os.open(index, os.O_WRONLY | os.O_CREAT, 0o600))  # sqlite's -wal / -shm files follow its mode
        self._lock = threading.Lock()
        self._db = sqlite3.connect(index, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.secret = self._load_secret()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _load_secret(self) -> bytes:
        path = self.root / "secret"
        try:
            data = path.read_bytes()
            if len(data) >= 32:
                return data
        except FileNotFoundError:
            pass
        data = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return data

    def run_dir(self, run_id: str) -> Path:
        if not valid_run_id(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        return self.root / "runs" / run_id

    # -- index ------------------------------------------------------------------------------------
    def mark_interrupted(self) -> int:
        """Runs left ``running`` by an earlier process: they were cut by its end."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE runs SET status='interrupted', finished=?, error=COALESCE(error, 'the server stopped during the run') "
                "WHERE status='running'",
                (time.time(),),
            )
            return cur.rowcount

    def put(self, rec: RunRecord) -> None:
        values = []
        for c in _COLUMNS:
            v = getattr(rec, c)
            if c in _JSON_COLUMNS and v is not None:
                v = json.dumps(v, ensure_ascii=False)
            elif c == "background":
                v = int(bool(v))
            values.append(v)
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                values,
            )

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else self._record(row)

    def list(self, owner: str, *, limit: int = 50, before: float | None = None) -> list[RunRecord]:
        q = f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE owner=?"
        args: list[Any] = [owner]
        if before is not None:
            q += " AND created < ?"
            args.append(before)
        q += " ORDER BY created DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return [self._record(r) for r in rows]

    def delete(self, run_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM runs WHERE id=?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    @staticmethod
    def _record(row: tuple) -> RunRecord:
        d = dict(zip(_COLUMNS, row))
        for c in _JSON_COLUMNS:
            if d[c] is not None:
                d[c] = json.loads(d[c])
        d["background"] = bool(d["background"])
        return RunRecord(**d)

    # -- files ------------------------------------------------------------------------------------
    def save_inputs(self, run_id: str, images: list[ImageData]) -> None:
        folder = self.run_dir(run_id) / "inputs"
        for i, img in enumerate(images):
            atomic_write(folder / f"input-{i}.{file_extension(img.mime)}", img.data, mode=0o600)

    def save_document(self, run_id: str, doc: Document, *, events: list[dict] | None = None,
                      extra: dict[str, Any] | None = None) -> None:
        """The document (images as files) and, if given, its event log."""
        folder = self.run_dir(run_id)
        paths = []
        for slot, block in enumerate(slot_blocks(doc)):
            if isinstance(block, ImageBlock):
                rel = f"images/slot-{slot}.{file_extension(block.mime)}"
                atomic_write(folder / rel, block.data, mode=0o600)
                paths.append(rel)
        d = doc.to_dict(image_paths=paths)
        d.pop("input_images", None)  # kept as files under inputs/
        if extra:
            d["llmi_server"] = extra
        atomic_write(folder / "document.json", json.dumps(d, ensure_ascii=False), mode=0o600)
        if events is not None:
            self.save_events(run_id, events)

    def save_events(self, run_id: str, events: list[dict]) -> None:
        lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
        atomic_write(self.run_dir(run_id) / "events.jsonl", lines, mode=0o600)

    def load_events(self, run_id: str) -> list[dict]:
        try:
            text = (self.run_dir(run_id) / "events.jsonl").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def load_inputs(self, run_id: str) -> list[ImageData]:
        folder = self.run_dir(run_id) / "inputs"
        if not folder.is_dir():
            return []
        found = []
        for p in folder.iterdir():
            m = re.match(r"^input-(\d+)\.[a-z]+$", p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [ImageData.from_file(p) for _, p in sorted(found)]

    def load_document(self, run_id: str) -> Document | None:
        folder = self.run_dir(run_id)
        try:
            d = json.loads((folder / "document.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        d.pop("llmi_server", None)
        doc = Document.from_dict(d, base_dir=str(folder))
        doc.input_images = self.load_inputs(run_id)
        return doc

    def slot_json(self, run_id: str) -> list[dict[str, Any]] | None:
        """The JSON of the stored document's slots (no image is decoded), or None without a document."""
        try:
            d = json.loads((self.run_dir(run_id) / "document.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return [b for b in d.get("blocks", []) if isinstance(b, dict) and b.get("type") != "text"]

    def count_inputs(self, run_id: str) -> int:
        folder = self.run_dir(run_id) / "inputs"
        return sum(1 for p in folder.iterdir() if p.name.startswith("input-")) if folder.is_dir() else 0

    def image_file(self, run_id: str, name: str) -> Path | None:
        """``slot-<n>`` or ``input-<i>``: the stored file, whatever its extension."""
        if not re.match(r"^(slot|input)-\d+$", name):
            return None
        folder = self.run_dir(run_id) / ("images" if name.startswith("slot") else "inputs")
        if not folder.is_dir():
            return None
        for p in folder.iterdir():
            if p.stem == name:
                return p
        return None
