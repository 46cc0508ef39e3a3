"""Scoring rollouts: run each response's tags, ask the judges, combine with :mod:`llmi.reward.rules`.

:class:`RewardScorer` is the orchestrator. For every sample it parses the response (pure), starts the
LLM judge at once (it reads the raw response, so it overlaps tool execution), executes the tags through
the engine (or an injected ``execute`` callable), then asks the MLLM judge about the finished document.
Concurrency is bounded per judge endpoint (each :class:`~llmi.reward.judges.JudgeClient` has its semaphore),
per tool by the engine, and overall by ``max_in_flight`` so a long input does not hold every document
in memory at once.

A judge that still fails after its retries is an *error*, not a score: the sample's ``errors`` say so
and :attr:`~llmi.reward.rules.RewardConfig.on_judge_error` decides between dropping the sample (score
``None``) and a declared fallback score; both are counted in :class:`ScoringStats`.

:func:`llmi.integrations.trl.reward_function` adapts all this to TRL's reward-function contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Sequence, TypeVar

from ..batch import bounded_map
from ..config import Settings
from ..document import Document, FailureBlock, ImageBlock, TextBlock
from ..errors import ConfigError, InputError, ToolError
from ..images import ImageData
from ..images import load_image as _load_user_image
from ..protocol import ParsedResponse, ToolCall, parse_response
from .judges import JudgeClient, JudgeFailure, JudgeStats, LLMJudge, MLLMJudge
from .rules import (
    RewardConfig,
    RewardResult,
    assemble,
    check_image_num,
    format_violations,
    image_count_score,
    is_eval_split,
    mllm_rule,
    reward_reading,
    tool_score,
    unrewarded_slots,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ``async execute(response, input_images) -> Document``: runs a response's tags.
Executor = Callable[[str, list[ImageData]], Awaitable[Document]]


# ------------------------------------------------------------------------------------------------
# Samples
# ------------------------------------------------------------------------------------------------


def question_text(prompt: Any) -> str:
    """The question a judge sees: a plain prompt, or the text of the last user turn of a chat prompt."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role", "user") == "user":
                return _message_text(message.get("content"))
        return "\n".join(_message_text(m.get("content")) for m in prompt if isinstance(m, dict))
    if isinstance(prompt, dict):
        return _message_text(prompt.get("content"))
    return "" if prompt is None else str(prompt)


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def completion_text(completion: Any) -> str:
    """A TRL completion (a string, or a list of assistant messages) as the response text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(_message_text(m.get("content")) for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return _message_text(completion.get("content"))
    return str(completion)


@dataclass
class Sample:
    """One rollout to score.

    ``image_num``: -1 no image, 0 any, 99 at least one, N exactly N. ``tools``: the tools the task
    needs (for ``r_tool``). ``split``: ``train`` (graded image-count rule) or ``test`` (binary).
    ``input_images``: the user's images (they come first in ``edit`` indices). ``document``: an already
    executed document, to skip running the tags. ``input_error``: why the row could not be used, if so.
    """

    prompt: Any
    response: str
    image_num: int = 0
    tools: Sequence[str] = ()
    split: str = "train"
    input_images: list[ImageData] = field(default_factory=list)
    document: Document | None = None
    input_error: str | None = None
    #: The question the judges see when it is not the prompt's text (the LLM-I schema's
    #: ``extra_info.question``); ``None``: taken from ``prompt``.
    question_override: str | None = None

    @property
    def question(self) -> str:
        return self.question_override if self.question_override else question_text(self.prompt)

    @classmethod
    def invalid(cls, reason: str) -> "Sample":
        return cls(prompt="", response="", input_error=reason)


def load_image(ref: Any, base_dir: str | os.PathLike | None = None) -> ImageData:
    """An input image from a path (relative to ``base_dir``), a ``data:`` URI, bytes, a PIL image or
    an :class:`ImageData`. Raises :class:`InputError` with the reason (:func:`llmi.images.load_image`)."""
    return _load_user_image(ref, base_dir=base_dir)


def sample_from_row(row: Any, base_dir: str | os.PathLike | None = None) -> Sample:
    """A :class:`Sample` from one ``llmi reward`` input row; an unusable row gives ``Sample.invalid``.

    Row keys: ``prompt``, ``response``, ``image_num``, ``tools``, optional ``split``, ``question`` (what
    the judges are asked, when it is not the prompt's text, as in training data) and ``images``
    (paths relative to ``base_dir`` or data URIs), and optional ``document`` (an executed document in
    the JSON contract of :class:`~llmi.document.Document`, to skip running the tags).
    """
    if not isinstance(row, dict):
        return Sample.invalid(f"a row must be a JSON object, got {type(row).__name__}")
    for key in ("prompt", "response"):
        if key not in row:
            return Sample.invalid(f"missing key {key!r}")
    if not isinstance(row["response"], str):
        return Sample.invalid(f"response must be a string, got {type(row['response']).__name__}")
    tools = row.get("tools") or []
    if isinstance(tools, str) or not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        return Sample.invalid(f"tools must be a list of tool names, got {tools!r}")
    if "image_num" not in row:
        return Sample.invalid("missing key 'image_num'")
    refs = row.get("images") or []
    if not isinstance(refs, list):
        return Sample.invalid("images must be a list of paths or data URIs")
    try:
        images = [load_image(ref, base_dir) for ref in refs]
    except InputError as exc:
        return Sample.invalid(str(exc))
    document = None
    if row.get("document") is not None:
        try:
            document = Document.from_dict(row["document"], base_dir=str(base_dir) if base_dir else None)
        except (KeyError, TypeError, ValueError, OSError, ToolError) as exc:
            return Sample.invalid(f"document is not a valid llmi document: {type(exc).__name__}: {exc}")
    split = row.get("split") or "train"
    question = row.get("question")
    if question is not None and not isinstance(question, str):
        return Sample.invalid(f"question must be a string, got {type(question).__name__}")
    return Sample(
        prompt=row["prompt"],
        response=row["response"],
        image_num=row["image_num"],
        tools=tools,
        split=split if isinstance(split, str) else str(split),
        input_images=images,
        document=document,
        question_override=question or None,
    )


# ------------------------------------------------------------------------------------------------
# Stats
# ------------------------------------------------------------------------------------------------


@dataclass
class ScoringStats:
    """Counts over every sample scored by one :class:`RewardScorer`."""

    samples: int = 0
    scored: int = 0
    dropped: int = 0  # score None because something failed
    unscored: int = 0  # score None because judges are off
    errors: Counter = field(default_factory=Counter)  # per component
    fallbacks: Counter = field(default_factory=Counter)  # per judge
    score_sum: float = 0.0
    judges: dict[str, JudgeStats] = field(default_factory=dict)

    def add(self, result: RewardResult) -> None:
        self.samples += 1
        if result.score is not None:
            self.scored += 1
            self.score_sum += result.score
        elif result.errors:
            self.dropped += 1
        else:
            self.unscored += 1
        self.errors.update(result.errors.keys())
        self.fallbacks.update(result.fallback)

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.scored if self.scored else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "scored": self.scored,
            "dropped": self.dropped,
            "unscored": self.unscored,
            "mean_score": None if self.mean_score is None else round(self.mean_score, 6),
            "errors": dict(self.errors),
            "fallbacks": dict(self.fallbacks),
            "judges": {k: v.as_dict() for k, v in self.judges.items()},
        }


# ------------------------------------------------------------------------------------------------
# The scorer
# ------------------------------------------------------------------------------------------------


def judged_response(parsed: ParsedResponse) -> str:
    """What the LLM judge reads: the response without its reasoning, tags kept as written.

    Built from the one reading the scorer makes (the same text as :func:`llmi.protocol.strip_think`, without
    parsing the response again).
    """
    return parsed.tagged_text()


def _without_unrewarded(document: Document, slots: frozenset[int], n_tags: int) -> Document:
    """``document`` with no image in ``slots`` (see :func:`~llmi.reward.rules.unrewarded_slots`).

    Only for documents made elsewhere — a run of the reward reading has none there already. A document
    whose slots do not line up with the tags is left as it is.
    """
    if not slots:
        return document
    tag_slots = [b for b in document.slots if getattr(b, "tool", None) != "input"]
    if len(tag_slots) != n_tags or not any(isinstance(tag_slots[i], ImageBlock) for i in slots):
        return document
    blocks, slot = [], -1
    for b in document.blocks:
        if isinstance(b, (ImageBlock, FailureBlock)) and b.tool != "input":
            slot += 1
            if slot in slots and isinstance(b, ImageBlock):
                b = FailureBlock(
                    b.tool,
                    "not counted: the tag was read only leniently (or edits such an image), which the LLM-I "
                    "release rejects ([reward] lenient_tags = true counts it)",
                    "lenient_reading",
                    b.description,
                    b.params,
                )
        blocks.append(b)
    return dataclasses.replace(document, blocks=blocks)


def _produced(document: Document) -> list[ImageBlock]:
    return [b for b in document.images if b.tool != "input"]


def _succeeded_sources(parsed: Any, document: Document) -> set[str]:
    """Sources of the valid tags whose slot holds an image.

    Slots are matched by position, so a tag whose image came from a fallback backend still counts for
    the tool it asked for. If the document does not have one slot per tag (it came from elsewhere), the
    image blocks' own tool names are used instead.
    """
    slots = [b for b in document.slots if getattr(b, "tool", None) != "input"]
    tags = parsed.slots
    if len(slots) == len(tags):
        return {t.source for t, b in zip(tags, slots) if isinstance(t, ToolCall) and isinstance(b, ImageBlock)}
    log.debug("document has %d slots for %d tags; using block tool names", len(slots), len(tags))
    return {b.tool for b in _produced(document)}


class RewardScorer:
    """Scores samples with the hybrid reward. An async context manager that owns its clients.

    ``settings``: judge endpoints (``llm_judge`` / ``mllm_judge``) and what the engine needs.
    ``judges=False`` computes the rule parts only (score ``None``). ``execute`` replaces the engine
    (tests, benchmarks, or a caller with its own); ``cache`` is handed to the engine so tool results are
    shared with generation. ``llm_judge`` / ``mllm_judge`` may be injected ready-made.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: RewardConfig | None = None,
        judges: bool = True,
        execute: Executor | None = None,
        cache: Any = None,
        llm_judge: LLMJudge | None = None,
        mllm_judge: MLLMJudge | None = None,
        max_in_flight: int | None = None,
    ):
        self.settings = settings or Settings()
        self.config = config or self.settings.reward.to_config()  # the [reward] table
        self.judges = judges
        self.stats = ScoringStats()
        self._execute = execute
        self._cache = cache
        self._llm = llm_judge
        self._mllm = mllm_judge
        if max_in_flight is None:
            caps = self.settings.llm_judge.concurrency + self.settings.mllm_judge.concurrency
            max_in_flight = max(16, 4 * caps)
        self.max_in_flight = max_in_flight
        self._stack = contextlib.AsyncExitStack()
        self._engine_lock = asyncio.Lock()
        self._engine_instance: Any = None

    async def __aenter__(self) -> "RewardScorer":
        try:
            self._open_judges()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    def _open_judges(self) -> None:
        if not self.judges:
            return
        if self._llm is None:
            self._llm = LLMJudge(self._judge_client("llm_judge"))
        if self._mllm is None:
            self._mllm = MLLMJudge(self._judge_client("mllm_judge"))
        self.stats.judges = {"llm_judge": self._llm.client.stats, "mllm_judge": self._mllm.client.stats}

    def _judge_client(self, name: str) -> JudgeClient:
        """A client for the ``[name]`` settings section, closed with the scorer."""
        client = JudgeClient(getattr(self.settings, name), name=name)
        self._stack.push_async_callback(client.aclose)
        return client

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()

    # -- execution --------------------------------------------------------------------------------
    async def _engine(self) -> Any:
        """The engine, opened on first use and closed with the scorer."""
        async with self._engine_lock:
            if self._engine_instance is None:
                try:
                    from ..engine import Engine
                except ImportError as exc:
                    raise ConfigError(f"running the tags needs llmi.engine, which cannot be imported: {exc}") from exc
                self._engine_instance = await self._stack.enter_async_context(Engine(self.settings, cache=self._cache))
        return self._engine_instance

    async def _document(self, sample: Sample, parsed: ParsedResponse) -> Document:
        if sample.document is not None:
            return sample.document
        if not parsed.slots:  # nothing to run: no need for the engine at all
            return Document(blocks=[TextBlock(parsed.text)] if parsed.text else [], violations=parsed.violations)
        if self._execute is not None:
            return await self._execute(sample.response, list(sample.input_images))
        engine = await self._engine()
        return await engine.run_parsed(parsed, list(sample.input_images))  # the reading made in _score

    @staticmethod
    async def _judged(score: Callable[..., Awaitable[T]], *args: Any) -> tuple[T | None, str | None]:
        """``(score(*args), None)``, or ``(None, reason)`` for a judge that failed after its retries."""
        try:
            return await score(*args), None
        except JudgeFailure as exc:
            return None, exc.reason

    # -- scoring ----------------------------------------------------------------------------------
    async def score(self, sample: Sample) -> RewardResult:
        """Score one sample. Never raises for a bad sample or a failing judge/tool — those are recorded
        in the result; raises :class:`~llmi.errors.ConfigError` when the setup itself is unusable."""
        result = await self._score(sample)
        self.stats.add(result)
        return result

    async def _score(self, sample: Sample) -> RewardResult:
        cfg = self.config
        result = RewardResult()
        if sample.input_error is not None:
            result.errors["input"] = sample.input_error
            return result
        try:
            eval_split = is_eval_split(sample.split)
            image_num = check_image_num(sample.image_num)
            if isinstance(sample.tools, (str, bytes)) or not all(isinstance(t, str) for t in sample.tools):
                raise ValueError(f"tools must be a list of tool names, got {sample.tools!r}")
            unknown = [t for t in sample.tools if t not in cfg.tool_weights]
            if unknown:
                raise ValueError(f"unknown tool(s) {unknown}; known: {', '.join(cfg.tool_weights)}")
            if not isinstance(sample.response, str):
                raise ValueError("response must be a string")
        except ValueError as exc:
            result.errors["input"] = str(exc)
            return result

        # the tags as the reward counts them: by default a lenient reading is invalid, as in the LLM-I release
        parsed = reward_reading(parse_response(sample.response, len(sample.input_images)), cfg)
        result.violations = format_violations(parsed)
        result.n_tags = len(parsed.slots)
        result.n_valid_tags = len(parsed.calls)
        question = sample.question

        llm_task = None
        if self.judges:  # the LLM judge needs only the raw response: overlap it with tool execution
            assert self._llm is not None
            response = judged_response(parsed)
            llm_task = asyncio.ensure_future(self._judged(self._llm.score, question, response))
        try:
            try:
                document = _without_unrewarded(
                    await self._document(sample, parsed),
                    unrewarded_slots(parsed, len(sample.input_images)),
                    len(parsed.slots),
                )
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - an infrastructure failure of this sample
                log.warning("executing a sample failed: %s: %s", type(exc).__name__, exc)
                result.errors["execute"] = f"{type(exc).__name__}: {exc}"
                return result

            produced = _produced(document)
            result.n_images = len(produced)
            result.s_num = image_count_score(image_num, len(produced), eval=eval_split, over_penalty=cfg.over_penalty)
            ts = tool_score(
                sample.tools,
                {c.source for c in parsed.calls},
                _succeeded_sources(parsed, document),
                weights=cfg.tool_weights,
                beta=cfg.tool_beta,
            )
            result.r_tool, result.r_attempt, result.r_success = ts.r_tool, ts.r_attempt, ts.r_success
            if llm_task is None:
                return result

            source, fixed = mllm_rule(len(produced), cfg)
            mllm_scores, mllm_error = fixed, None
            if source == "judge":
                assert self._mllm is not None
                mllm_scores, mllm_error = await self._judged(
                    self._mllm.score, question, document, list(sample.input_images))
            llm_scores, llm_error = await llm_task
            llm_task = None
            return assemble(
                result,
                llm=llm_scores,
                llm_error=llm_error,
                mllm=mllm_scores,
                mllm_error=mllm_error,
                mllm_source=source,
                empty_text=not parsed.text.strip(),
                cfg=cfg,
            )
        finally:
            if llm_task is not None and not llm_task.done():
                llm_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await llm_task

    def score_many(self, samples: Iterable[Sample]) -> AsyncIterator[tuple[int, RewardResult]]:
        """Yield ``(index, result)`` as samples finish, with at most ``max_in_flight`` in progress.

        ``samples`` is consumed lazily, so a generator reading a large file keeps memory bounded
        (:func:`llmi.batch.bounded_map`).
        """

        async def one(item: tuple[int, Sample]) -> tuple[int, RewardResult]:
            return item[0], await self.score(item[1])

        return bounded_map(one, enumerate(samples), self.max_in_flight)

    async def score_batch(self, samples: Sequence[Sample]) -> list[RewardResult]:
        """Score every sample; results in input order."""
        out: list[RewardResult | None] = [None] * len(samples)
        async for i, result in self.score_many(samples):
            out[i] = result
        return out  # type: ignore[return-value]


async def score_batch(
    samples: Sequence[Sample],
    settings: Settings | None = None,
    *,
    config: RewardConfig | None = None,
    judges: bool = True,
    execute: Executor | None = None,
    cache: Any = None,
) -> list[RewardResult]:
    """Score ``samples`` with a scorer that lives for this call only (see :class:`RewardScorer`)."""
    async with RewardScorer(settings, config=config, judges=judges, execute=execute, cache=cache) as scorer:
        return await scorer.score_batch(samples)
