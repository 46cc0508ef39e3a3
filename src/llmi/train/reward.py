"""The reward during training: exactly ``llmi reward``'s, as a TRL reward function that also keeps
what a researcher wants to see.

:class:`TrainingReward` scores a generation batch with a :class:`~llmi.reward.scoring.RewardScorer`
(the same judges, tools, rules and caps as ``llmi reward``): every rollout's tags and judges run at
once, bounded by the per-judge and per-tool caps of the configuration. Besides the rewards it records,
per batch, the executed documents, the reward results, completion lengths and the wall time of the
reward phase; :mod:`llmi.train.callbacks` turns those into ``metrics.jsonl`` and ``samples/step-N.html``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..config import Settings
from ..document import Document, TextBlock
from ..errors import InputError
from ..images import ImageData
from ..protocol import parse_response
from ..reward.rules import RewardConfig, RewardResult
from ..reward.scoring import Executor, RewardScorer, Sample, completion_text, load_image

log = logging.getLogger(__name__)

_current: contextvars.ContextVar[int] = contextvars.ContextVar("llmi_train_sample", default=-1)


@dataclass
class Rollout:
    """One scored completion, kept for metrics and the samples page."""

    row: int | None
    question: str
    completion: str
    result: RewardResult
    document: Document | None
    completion_tokens: int | None = None
    #: The row's constraints (shown on the samples page).
    image_num: int | None = None
    tools: tuple[str, ...] = ()


@dataclass
class BatchRecord:
    """One call of the reward function (one generation batch)."""

    rollouts: list[Rollout] = field(default_factory=list)
    elapsed_s: float = 0.0
    step: int | None = None


def _impute(rewards: list[float | None], groups: Sequence[Any]) -> list[float | None]:
    from ..integrations.trl import impute_group_mean

    return impute_group_mean(rewards, groups)


class TrainingReward:
    """A TRL reward function (async) computing the hybrid reward, recording each batch.

    Dataset columns used: ``image_num`` and ``tools`` (required), ``split``, ``question`` (what the
    judges are asked about; the prompt's last user text otherwise), ``images`` (input images),
    ``pad_images`` (leading blank images that are not input images) and ``row``. ``execute`` replaces
    the engine (tests); ``config`` is the recipe's reward configuration.
    """

    __name__ = "llmi_reward"  # TRL names its logged reward after the function

    def __init__(
        self,
        settings: Settings,
        config: RewardConfig | None = None,
        *,
        impute: str = "none",
        execute: Executor | None = None,
        keep: int = 64,
    ):
        if impute not in ("none", "group_mean"):
            raise ValueError("impute must be 'none' or 'group_mean'")
        self.settings = settings
        self.config = config or RewardConfig()
        self.impute = impute
        self._execute = execute
        self._keep = keep
        self._stack: contextlib.AsyncExitStack | None = None
        self._scorer: RewardScorer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._docs: dict[int, Document] = {}
        self.pending: list[BatchRecord] = []
        self.last: BatchRecord | None = None
        self.calls = 0

    # -- lifetime ---------------------------------------------------------------------------------
    async def _open(self) -> RewardScorer:
        loop = asyncio.get_running_loop()
        if self._scorer is not None and self._loop is loop:
            return self._scorer
        self._stack = contextlib.AsyncExitStack()
        execute = self._execute
        if execute is None:
            from ..engine import Engine

            engine = await self._stack.enter_async_context(Engine(self.settings))

            async def run(response: str, images: list[ImageData]) -> Document:
                return await engine.run_response(response, input_images=images)

            execute = run
        recorded = self._recording(execute)
        self._scorer = await self._stack.enter_async_context(
            RewardScorer(self.settings, config=self.config, execute=recorded))
        self._loop = loop
        return self._scorer

    def _recording(self, execute: Executor) -> Executor:
        async def run(response: str, images: list[ImageData]) -> Document:
            doc = await execute(response, images)
            index = _current.get()
            if index >= 0:
                self._docs[index] = doc
            return doc

        return run

    async def aclose(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._scorer = self._loop = None

    @property
    def stats(self):
        return self._scorer.stats if self._scorer else None

    # -- the TRL contract -------------------------------------------------------------------------
    async def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        image_num: Sequence[int] | None = None,
        tools: Sequence[Sequence[str]] | None = None,
        split: Sequence[str] | None = None,
        question: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        row: Sequence[int] | None = None,
        pad_images: Sequence[int] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        trainer_state: Any = None,
        **_: Any,
    ) -> list[float | None]:
        if image_num is None or tools is None:
            raise InputError("the training dataset has no image_num/tools columns; prepare it with llmi.train")
        t0 = time.perf_counter()
        scorer = await self._open()
        texts = [completion_text(c) for c in completions]
        samples = []
        for i, text in enumerate(texts):
            refs = images[i] if images is not None and images[i] is not None else []
            if pad_images is not None and pad_images[i]:  # the blank image of a text row (prepare.trl_records)
                refs = list(refs)[int(pad_images[i]):]
            try:
                imgs = [load_image(r) for r in (refs if isinstance(refs, (list, tuple)) else [refs])]
            except InputError as exc:
                samples.append(Sample.invalid(str(exc)))
                continue
            q = question[i] if question is not None and question[i] else prompts[i]
            samples.append(Sample(prompt=q, response=text, image_num=image_num[i], tools=list(tools[i] or []),
                                  split=(split[i] if split is not None and split[i] else "train"),
                                  input_images=imgs))
        self._docs = {}
        limit = asyncio.Semaphore(scorer.max_in_flight)

        async def one(i: int, sample: Sample) -> RewardResult:
            async with limit:
                _current.set(i)
                return await scorer.score(sample)

        results = await asyncio.gather(*(one(i, s) for i, s in enumerate(samples)))
        rewards: list[float | None] = [r.score for r in results]
        if self.impute == "group_mean":
            groups = list(row) if row is not None else [str(p) for p in prompts]
            rewards = _impute(rewards, groups)
        elapsed = time.perf_counter() - t0
        record = BatchRecord(elapsed_s=elapsed, step=getattr(trainer_state, "global_step", None))
        for i, (sample, result) in enumerate(zip(samples, results)):
            doc = self._docs.get(i)
            if doc is None and sample.input_error is None:
                parsed = parse_response(texts[i], len(sample.input_images))
                doc = Document(blocks=[TextBlock(parsed.text)] if parsed.text else [],
                               violations=parsed.violations, input_images=list(sample.input_images))
            record.rollouts.append(Rollout(
                row=int(row[i]) if row is not None else None,
                question=sample.question if sample.input_error is None else "",
                completion=texts[i], result=result, document=doc,
                completion_tokens=len(completion_ids[i]) if completion_ids is not None else None,
                image_num=sample.image_num if sample.input_error is None else None,
                tools=tuple(sample.tools),
            ))
        self.calls += 1
        self.last = record
        self.pending.append(record)
        del self.pending[:-self._keep]
        if log_metric is not None:
            log_metric("llmi/reward_time_s", elapsed)
        log.info("reward phase: %d rollouts in %.2f s", len(samples), elapsed)
        return rewards

    def drain(self) -> list[BatchRecord]:
        """The batches recorded since the last call (for one logged step)."""
        out, self.pending = self.pending, []
        return out
