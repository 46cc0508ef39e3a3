"""TRL adapter: the hybrid reward as a TRL reward function.

TRL reward functions are ``fn(prompts, completions, **columns) -> list[float | None]``, sync or async.
:func:`reward_function` builds one around a :class:`~llmi.reward.RewardScorer` that is created lazily on
the event loop TRL runs it on. TRL itself is not imported here: the adapter only speaks its contract.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, Sequence

from ..config import Settings
from ..errors import InputError
from ..reward.rules import RewardConfig, RewardResult
from ..reward.scoring import Executor, RewardScorer, Sample, completion_text, load_image


def impute_group_mean(rewards: Sequence[float | None], groups: Sequence[Any]) -> list[float | None]:
    """Replace each ``None`` by the mean of the scored rewards of its group (same prompt).

    Why: TRL turns ``None`` into NaN and *nan-sums* over reward functions. Older TRL releases gave a
    rollout for which every function returned ``None`` reward 0 — the very poisoning a dropped sample
    should avoid. With the group mean its advantage is 0 and it teaches nothing, which is what
    dropping means. (TRL 1.16 masks such rows itself — NaN reward, left out of the group mean and std,
    advantage 0 — so there ``impute="none"`` is exact and the group mean only narrows the group's std a
    little.) A group with no scored rollout keeps ``None``.

    >>> impute_group_mean([0.5, None, 1.0, None], ["a", "a", "a", "b"])
    [0.5, 0.75, 1.0, None]
    """
    sums: dict[Any, list[float]] = {}
    for r, g in zip(rewards, groups):
        if r is not None:
            sums.setdefault(g, []).append(r)
    return [r if r is not None else (sum(sums[g]) / len(sums[g]) if g in sums else None) for r, g in zip(rewards, groups)]


def _column(values: Any, i: int, default: Any) -> Any:
    if values is None:
        return default
    v = values[i]
    return default if v is None else v


def reward_function(
    settings: Settings | None = None,
    *,
    config: RewardConfig | None = None,
    impute: str | None = None,
    execute: Executor | None = None,
    cache: Any = None,
    scorer_kwargs: dict[str, Any] | None = None,
) -> Callable[..., Awaitable[list[float | None]]]:
    """A TRL reward function (async) computing the hybrid reward.

    Use with ``GRPOTrainer(reward_funcs=[reward_function(load_settings())], ...)``. The dataset needs
    the columns ``image_num`` and ``tools``, optionally ``split`` and ``images`` (input images: PIL
    images, paths or data URIs)::

        fn = reward_function(settings)
        await fn(prompts=["Explain tides."], completions=["Tides ... <imgen>{...}</imgen>"],
                 image_num=[1], tools=[["diffusion"]])          # -> [0.73]

    A dropped sample returns ``None``. TRL nan-sums reward functions; before TRL masked them itself
    (it does in 1.16), a row where *every* function returned ``None`` became reward 0, so for those
    versions use ``impute="group_mean"``: the row gets the mean of its group (advantage 0); ``impute=None``
    takes it from the ``[reward]`` table (default ``"none"``), as ``config=None`` takes the reward's knobs. A missing
    ``image_num`` column is an error (its default would be "any count"); a bad cell (``None``, a
    string of tools) makes that row an input error. The judges are required: ``judges=False`` is
    refused because every reward would be ``None``. Component scores go to ``log_metric``
    (``llmi/...``) when TRL passes it.

    The scorer (judge clients, engine) is created on the first call, on the event loop TRL runs async
    reward functions on, and lives as long as that loop; ``await fn.aclose()`` releases it.
    """
    if impute is None:
        impute = (settings.reward.impute if settings is not None else "none")  # the [reward] table
    if impute not in ("none", "group_mean"):
        raise ValueError("impute must be 'none' or 'group_mean'")
    if (scorer_kwargs or {}).get("judges", True) is False:
        raise ValueError(
            "reward_function needs the judges: without them every reward is None (R needs S_llm and "
            "S_mllm) and the trainer would learn nothing; use RewardScorer(judges=False) to log rule parts"
        )
    state: dict[str, Any] = {"scorer": None, "loop": None}

    async def scorer() -> RewardScorer:
        loop = asyncio.get_running_loop()
        if state["scorer"] is None or state["loop"] is not loop:
            s = RewardScorer(settings, config=config, execute=execute, cache=cache, **(scorer_kwargs or {}))
            await s.__aenter__()
            state["scorer"], state["loop"] = s, loop
        return state["scorer"]

    async def llmi_reward(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        image_num: Sequence[int] | None = None,
        tools: Sequence[Sequence[str]] | None = None,
        split: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float | None]:
        if image_num is None:
            # image_num 0 means "any count": defaulting to it would hide a dataset without the column
            raise ValueError(
                "the dataset has no image_num column (-1 no image, 0 any, 99 at least one, N exactly N); "
                "llmi's reward needs it, and tools, as dataset columns"
            )
        samples = []
        for i, completion in enumerate(completions):
            refs = _column(images, i, [])
            if not isinstance(refs, (list, tuple)):
                refs = [refs]
            try:
                imgs = [load_image(r) for r in refs]
            except InputError as exc:
                samples.append(Sample.invalid(str(exc)))
                continue
            samples.append(
                Sample(
                    prompt=prompts[i],
                    response=completion_text(completion),
                    image_num=image_num[i],  # None or junk → an input error for this row only
                    tools=_column(tools, i, []),
                    split=_column(split, i, "train"),
                    input_images=imgs,
                )
            )
        s = await scorer()
        results = await s.score_batch(samples)
        rewards = [r.score for r in results]
        if impute == "group_mean":
            rewards = impute_group_mean(rewards, [json.dumps(p, sort_keys=True, default=str) for p in prompts])
        if log_metric is not None:
            _log_batch(results, log_metric)
        return rewards

    async def aclose() -> None:
        if state["scorer"] is not None:
            await state["scorer"].aclose()
            state["scorer"] = None

    llmi_reward.aclose = aclose  # type: ignore[attr-defined]
    llmi_reward.stats = lambda: state["scorer"].stats if state["scorer"] else None  # type: ignore[attr-defined]
    return llmi_reward


def _log_batch(results: Sequence[RewardResult], log_metric: Callable[[str, float], None]) -> None:
    n = len(results) or 1
    log_metric("llmi/dropped_frac", sum(r.dropped for r in results) / n)
    log_metric("llmi/llm_judge_error_frac", sum("llm_judge" in r.errors for r in results) / n)
    log_metric("llmi/mllm_judge_error_frac", sum("mllm_judge" in r.errors for r in results) / n)
    log_metric("llmi/violations_per_sample", sum(len(r.violations) for r in results) / n)
    for key in ("s_num", "s_llm", "s_mllm", "r_tool"):
        values = [getattr(r, key) for r in results if getattr(r, key) is not None]
        if values:
            log_metric(f"llmi/{key}", sum(values) / len(values))
