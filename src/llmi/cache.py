"""A small content-addressed cache of tool results, in sqlite (WAL).

Two tables: ``blobs`` holds each distinct image once, keyed by its sha256; ``results`` maps a call key
(tool + backend + what changes the backend's output + params + input image hash + the sampling seed of a
generative call) to a blob and its
provenance (JSON). No pickle: only bytes and JSON go in, so a cache file from elsewhere cannot run code.
The same file can be shared by generation, evaluation and reward scoring, across processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .images import ImageData
from .tools.base import ToolResult

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL, mime TEXT NOT NULL,
                                  width INTEGER NOT NULL, height INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL REFERENCES blobs(sha256),
                                    provenance TEXT NOT NULL, created REAL NOT NULL);
"""


def call_key(
    tool: str,
    backend: str,
    params: dict[str, Any],
    identity: dict[str, Any],
    input_sha256: str | None,
    seed: int | None = None,
) -> str:
    """The cache key of one call: a sha256 over a canonical JSON of everything that shapes the output.

    ``seed``: the sampling seed of a generative call (diffusion, edit); ``None`` leaves the key as it was
    before seeds existed, so N unseeded identical calls share one image and N seeds make N images."""
    doc: dict[str, Any] = {"v": 1, "tool": tool, "backend": backend, "identity": identity, "params": params,
                           "input": input_sha256}
    if seed is not None:
        doc["seed"] = seed
    canon = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    # surrogatepass: a lone surrogate (which the protocol replaces, but a library caller may pass) hashes
    # instead of raising
    return hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


class Cache:
    """Thread-safe; calls are short, so the engine calls them directly."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        with self._lock:
            if str(path) != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.commit()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> ToolResult | None:
        with self._lock:
            row = self._db.execute(
                "SELECT b.data, b.mime, b.width, b.height, r.provenance FROM results r "
                "JOIN blobs b ON b.sha256 = r.sha256 WHERE r.key = ?",
                (key,),
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        data, mime, width, height, prov = row
        return ToolResult(ImageData(bytes(data), mime, width, height), json.loads(prov))

    def put(self, key: str, result: ToolResult) -> None:
        img = result.image
        try:
            prov = json.dumps(result.provenance, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            log.warning("provenance is not JSON-serialisable; not caching %s", key[:12])
            return
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO blobs (sha256, data, mime, width, height) VALUES (?, ?, ?, ?, ?)",
                (img.sha256, img.data, img.mime, img.width, img.height),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO results (key, sha256, provenance, created) VALUES (?, ?, ?, ?)",
                (key, img.sha256, prov, time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
