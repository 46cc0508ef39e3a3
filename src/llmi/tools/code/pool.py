"""A small pool of warm chart workers, usable from any event loop.

Workers are started lazily (the first chart pays about a second and a half of imports; later ones do
not), recycled after ``max_jobs_per_worker`` charts, and replaced when they die. Each call runs in one of
the pool's own threads (one per worker), which talks to a worker over its pipes with blocking I/O and
deadlines; :meth:`WorkerPool.run` wraps that for asyncio. Because no asyncio transport is involved, one
pool serves any number of event loops in turn (tests, CLI, a server).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ...errors import WorkerDied, WorkerStartError  # noqa: F401 - in the llmi.errors tree
from .worker import MAX_HEADER, _HEADER

log = logging.getLogger(__name__)

#: Environment the worker starts with: nothing secret, one thread per math library.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "PYTHONHASHSEED")
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class PoolConfig:
    layers: tuple[str, ...]
    #: Layers the worker must refuse to start without (the required ones, unless allow_weaker).
    required: tuple[str, ...] = ()
    landlock_abi: int = 0
    workers: int = 2
    memory_mb: int = 1536
    cpu_s: int = 20
    wall_s: float = 30.0
    max_output_bytes: int = 16 * 1024 * 1024
    dpi: int = 150
    max_pixels: int = 64_000_000
    max_jobs_per_worker: int = 500
    uid: int = 65534
    gid: int = 65534
    nproc: int = 64
    tmpfs_mb: int = 64
    #: Seconds a worker may take to import and warm up.
    start_timeout_s: float = 120.0
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChartOutcome:
    ok: bool
    png: bytes = b""
    kind: str = ""
    reason: str = ""
    layers: tuple[str, ...] = ()
    font: str = ""
    warnings: tuple[str, ...] = ()


class _Worker:
    def __init__(self, cfg: PoolConfig):
        self.cfg = cfg
        self.jobs = 0
        self.base_dir = tempfile.mkdtemp(prefix="llmi-sandbox-")
        os.chmod(self.base_dir, 0o711)
        wcfg = {
            "layers": list(cfg.layers), "landlock_abi": cfg.landlock_abi, "memory_mb": cfg.memory_mb,
            "cpu_s": cfg.cpu_s, "wall_s": cfg.wall_s, "max_output_bytes": cfg.max_output_bytes, "dpi": cfg.dpi,
            "max_pixels": cfg.max_pixels, "uid": cfg.uid, "gid": cfg.gid, "nproc": cfg.nproc,
            "fsize_bytes": max(cfg.max_output_bytes, 1 << 20), "tmpfs_bytes": cfg.tmpfs_mb << 20,
            "base_dir": self.base_dir, "required": list(cfg.required),
        }
        env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
        env.update({k: "1" for k in _THREAD_VARS})
        env.update(cfg.extra_env)
        # -I: no PYTHON* variables, no user site, no cwd on sys.path; llmi's own location is passed in.
        import llmi

        root = os.path.dirname(os.path.dirname(os.path.abspath(llmi.__file__)))
        boot = f"import sys; sys.path.insert(0, {root!r}); from llmi.tools.code.worker import main; main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", boot, json.dumps(wcfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env, close_fds=True,
            start_new_session=True,
        )
        self.info: dict[str, Any] = {}
        try:
            header, _ = self._read(time.monotonic() + cfg.start_timeout_s)
        except WorkerDied as exc:
            self.kill()
            raise WorkerStartError(f"the chart worker did not start: {exc}") from exc
        if header.get("type") != "ready":
            self.kill()
            raise WorkerStartError(f"the chart worker did not start: {header.get('reason', header)}")
        self.info = header
        if header.get("failed"):
            log.warning("chart worker: layers not set up: %s", header["failed"])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_exact(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerDied("the worker did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise WorkerDied(f"the worker exited (status {self.proc.poll()})")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read(self, deadline: float) -> tuple[dict[str, Any], bytes]:
        (n,) = _HEADER.unpack(self._read_exact(_HEADER.size, deadline))
        if n > MAX_HEADER:
            raise WorkerDied("protocol error from the worker")
        try:
            header = json.loads(self._read_exact(n, deadline))
        except ValueError as exc:
            raise WorkerDied("protocol error from the worker") from exc
        size = int(header.get("size", 0))
        if size > self.cfg.max_output_bytes:
            raise WorkerDied("protocol error from the worker")
        return header, self._read_exact(size, deadline) if size else b""

    def call(self, code: str) -> tuple[dict[str, Any], bytes]:
        self.jobs += 1
        raw = json.dumps({"type": "job", "id": self.jobs, "code": code, "size": 0}).encode()
        try:
            self.proc.stdin.write(_HEADER.pack(len(raw)) + raw)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise WorkerDied(f"the worker is gone: {exc}") from exc
        # The worker enforces wall_s itself; the margin only catches a worker that hangs.
        return self._read(time.monotonic() + self.cfg.wall_s + 15)

    def stop(self, timeout: float = 2.0) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.kill()
        self._cleanup()

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.base_dir, ignore_errors=True)


class WorkerPool:
    """Up to ``cfg.workers`` warm workers; :meth:`run` renders one chart."""

    def __init__(self, cfg: PoolConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._closed = False
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, cfg.workers),
                                                               thread_name_prefix="llmi-chart")
        self.restarts = 0

    # -- blocking side (pool threads) --------------------------------------------------------------------
    def _checkout(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise WorkerStartError("the chart pool is closed")
            if self._idle:
                return self._idle.pop()
        worker = _Worker(self.cfg)  # at most one per pool thread, so never more than cfg.workers
        with self._lock:
            if self._closed:
                worker.kill()
                raise WorkerStartError("the chart pool is closed")
            self._all.add(worker)
        return worker

    def _checkin(self, worker: _Worker, healthy: bool) -> None:
        with self._lock:
            keep = healthy and not self._closed and worker.jobs < self.cfg.max_jobs_per_worker
            if keep:
                self._idle.append(worker)
                return
            self._all.discard(worker)
        worker.stop() if healthy else worker.kill()

    def run_blocking(self, code: str) -> ChartOutcome:
        last: Exception | None = None
        for attempt in range(2):  # a dead worker is replaced and the chart tried once more
            worker = self._checkout()
            try:
                header, payload = worker.call(code)
            except WorkerDied as exc:
                if self._closed:  # shutting down (e.g. Ctrl-C): the worker was stopped on purpose
                    self._checkin(worker, healthy=False)
                    return ChartOutcome(ok=False, kind="cancelled", reason="the chart pool was shut down")
                log.warning("chart worker %s died (%s); restarting it", worker.pid, exc)
                self.restarts += 1
                self._checkin(worker, healthy=False)
                last = exc
                continue
            self._checkin(worker, healthy=True)
            return ChartOutcome(
                ok=bool(header.get("ok")), png=payload, kind=str(header.get("kind", "")),
                reason=str(header.get("reason", "")), layers=tuple(worker.info.get("layers", ())),
                font=str(worker.info.get("font", "")), warnings=tuple(header.get("warnings", ())),
            )
        return ChartOutcome(ok=False, kind="worker_crashed",
                            reason=f"the chart worker died twice running this chart ({last})")

    # -- async side ----------------------------------------------------------------------------------------
    async def run(self, code: str) -> ChartOutcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_blocking, code)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._all]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
        for w in workers:
            w.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        self.close()
