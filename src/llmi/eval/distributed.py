"""Scale-out: ``llmi eval ... --ray ADDRESS`` spreads the items over Ray actors.

The driver (the ``llmi eval`` process) keeps the one append-only ``results.jsonl`` through the batch runner;
each actor is a Ray async actor holding its own :class:`~llmi.eval.runner.ItemWorker` — its own engine, LLM
client and judge client — and writes the documents, the benchmark's own files and the judge answers into
the same run folder. The run folder must therefore be on a filesystem every Ray node sees (one machine, or
a shared mount), and so must the data file's images. Killing the driver or an actor loses nothing that
finished: the run folder is the state, as in a local run.

Concurrency caps (``--concurrency``, ``[eval_judge] concurrency``) apply per actor. ``ADDRESS`` is anything
``ray.init`` accepts (``auto``, ``ray://head:10001``); ``local`` starts a private local Ray on this machine
(the tests use it, on CPU). Ray is optional: ``pip install 'llmi[eval]'``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)


class _EvalActor:
    """One Ray actor: an :class:`ItemWorker` opened on first use (async methods: Ray runs them concurrently)."""

    def __init__(self, settings: Any, cfg: Any, config_dir: Any = None):
        self.settings = settings
        if config_dir is not None:
            self.settings._config_dir = config_dir
        self.cfg = cfg
        self.worker: Any = None
        self._lock = asyncio.Lock()
        self._stack: Any = None

    async def _open(self) -> Any:
        async with self._lock:
            if self.worker is None:
                from . import registry
                from .runner import ItemWorker
                from .store import RunFolder

                bench = registry.get(self.cfg.benchmark)(self.cfg.data, options=self.cfg.options, settings=self.settings)
                worker = ItemWorker(self.settings, self.cfg, bench, RunFolder(self.cfg.out), {})
                await worker.__aenter__()
                self.worker = worker
            return self.worker

    async def process(self, item: Any, output: Any = None) -> dict[str, Any]:
        worker = await self._open()
        if output is not None:
            worker.imported[item.id] = output
        try:
            return await worker.process(item)
        finally:
            worker.imported.pop(item.id, None)

    async def cost(self) -> dict[str, Any]:
        w = self.worker
        if w is None:
            return {"generated": 0, "judge": None, "judge_reused": 0}
        return {"generated": w.generated, "judge": w.judge.stats.as_dict() if w.judge is not None else None,
                "judge_reused": w.judge_reused}

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.__aexit__(None, None, None)
            self.worker.run.close()
            self.worker = None


class RayItems:
    """``async with RayItems(settings, cfg) as pool: row = await pool.process(item)``."""

    def __init__(self, settings: Any, cfg: Any, *, workers: int | None = None, imported: dict | None = None):
        self.settings = settings
        self.cfg = cfg
        self.workers = workers
        self.imported = imported or {}
        self.actors: list[Any] = []
        self._started_ray = False
        self._next = None
        self._costs: list[dict[str, Any]] = []

    async def __aenter__(self) -> "RayItems":
        try:
            import ray
        except ImportError:
            raise ConfigError("--ray needs Ray: pip install 'llmi[eval]' (or pip install ray)") from None
        address = self.cfg.ray
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
            if address in ("local", "", None):
                kw["num_cpus"] = max(1, self.workers or 2)
            else:
                kw["address"] = address
            try:
                ray.init(**kw)
            except Exception as exc:  # noqa: BLE001 - Ray raises many kinds for an unreachable cluster
                raise ConfigError(f"cannot connect to Ray at {address!r}: {type(exc).__name__}: {exc}") from None
            self._started_ray = True
        n = self.workers or max(1, min(8, int(ray.cluster_resources().get("CPU", 2))))
        actor_cls = ray.remote(num_cpus=0)(_EvalActor)
        config_dir = getattr(self.settings, "_config_dir", None)
        self.actors = [actor_cls.remote(self.settings, self.cfg, config_dir) for _ in range(n)]
        self._next = itertools.cycle(range(n))
        self._load = [0] * n
        return self

    @property
    def in_flight(self) -> int:
        from .runner import eval_judge_settings

        judge_cap = eval_judge_settings(self.settings).concurrency if self.cfg.judge else 0
        return len(self.actors) * (max(1, self.cfg.concurrency) + judge_cap)

    async def process(self, item: Any) -> dict[str, Any]:
        k = min(range(len(self.actors)), key=lambda i: self._load[i])  # the least busy actor
        self._load[k] += 1
        try:
            return await self.actors[k].process.remote(item, self.imported.get(item.id))
        finally:
            self._load[k] -= 1

    def cost(self) -> dict[str, Any]:
        total: dict[str, Any] = {"generated": 0, "judge_reused": 0, "judge": {"requests": 0, "retries": 0, "ok": 0,
                                                                              "failed": 0}, "workers": len(self.actors)}
        for c in self._costs:
            total["generated"] += c.get("generated", 0)
            total["judge_reused"] += c.get("judge_reused", 0)
            for k in ("requests", "retries", "ok", "failed"):
                total["judge"][k] += (c.get("judge") or {}).get(k, 0)
        return total

    async def __aexit__(self, *exc: Any) -> None:
        import ray

        try:
            if self.actors:
                self._costs = list(await asyncio.gather(*(a.cost.remote() for a in self.actors), return_exceptions=False))
                await asyncio.gather(*(a.close.remote() for a in self.actors), return_exceptions=True)
        except Exception as e:  # noqa: BLE001 - closing must not hide the run's own error
            log.warning("closing the Ray actors failed: %s", e)
        finally:
            for a in self.actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001
                    pass
            if self._started_ray:
                ray.shutdown()
