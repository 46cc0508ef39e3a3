"""The ``[server]`` section of the settings: where ``llmi serve`` listens, keeps its data, and its limits.

Kept free of FastAPI imports so that :mod:`llmi.config` can load it without the ``server`` extra.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ServerSettings(BaseModel):
    """``llmi serve``: bind address, storage, API keys and per-key limits."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind; a non-loopback one needs API keys (or allow_no_auth)")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port)")
    data_dir: str = Field("", description="documents, images and the run index; empty: $XDG_DATA_HOME/llmi/server")
    keys_file: str = Field(
        "", description="file of API keys, one per line ('label key' or 'key'; '#' comments); also env LLMI_SERVER_KEYS"
    )
    allow_no_auth: bool = Field(False, description="serve without API keys on a non-loopback address (explicit choice)")
    model_name: str = Field("llmi", description="the model id /v1/models lists and /v1/chat/completions accepts")
    public_url: str = Field("", description="base URL of image links in answers; empty: taken from each request")
    max_request_bytes: int = Field(32 * 2**20, ge=1024, description="largest request body (413 above)")
    max_image_bytes: int = Field(16 * 2**20, ge=1024, description="largest uploaded image, decoded (413 above)")
    max_images: int = Field(8, ge=0, description="most images per request")
    max_prompt_chars: int = Field(200_000, ge=1, description="longest prompt or response text")
    max_concurrent_runs: int = Field(4, ge=1, description="runs in progress per API key (429 above)")
    rate_per_minute: float = Field(60.0, gt=0, description="work requests (runs, chats, renders, rewards) per key per minute")
    burst: int = Field(20, ge=1, description="work requests a key may make at once before the rate applies")
    busy_retry_after_s: int = Field(2, ge=1, description="Retry-After sent when a key has too many runs in progress")
    image_wait_s: float = Field(300.0, gt=0, description="how long an image URL waits for its tool before answering 503")
    detach_grace_s: float = Field(
        10.0, ge=0, description="a non-background run with nobody following its events is cancelled after this"
    )
    heartbeat_s: float = Field(15.0, gt=0, description="seconds between keep-alive comments on event streams")
    keep_in_memory: int = Field(64, ge=1, description="finished runs kept in memory (older ones are read from disk)")
    keep_in_memory_mb: float = Field(256.0, ge=0, description="image bytes those finished runs may hold in memory, "
                                                              "in MiB (older ones are read from disk)")
    max_reward_rows: int = Field(256, ge=1, description="rows per /api/reward request")
    max_tags: int = Field(64, ge=1, description="most image tags one response may run: a written one "
                                                 "(/api/render, each /api/reward row) with more is 413; a generated "
                                                 "one keeps the rest as 'too_many_tags' failures")
    max_tts_n: int = Field(8, ge=1, description="most test-time scaling candidates a request may ask for "
                                                 "(options.tts.n; tts = true uses the [tts] table as configured)")
    max_run_s: float = Field(3600.0, gt=0, description="a run still going after this many seconds is cancelled")
    max_run_events: int = Field(250_000, ge=100, description="a run whose event log grows past this is stopped "
                                                             "(bounds the memory of a model that never stops)")
    max_connections: int = Field(1024, ge=1, description="open connections llmi serve accepts at once (503 above)")
    request_timeout_s: float = Field(
        60.0, gt=0, description="a request (line, headers and body) must arrive within this, else its connection "
                                "is closed (slow senders); streamed answers are not limited"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="extra Host names a server without API keys answers (loopback names, the bound host and "
                    "public_url's host always are); guards against DNS rebinding",
    )

    def resolved_data_dir(self, base: Path | None = None) -> Path:
        if self.data_dir:
            p = Path(self.data_dir).expanduser()
            return p if p.is_absolute() or base is None else base / p
        root = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return Path(root) / "llmi" / "server"
