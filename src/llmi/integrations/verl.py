"""verl adapter (verl 0.9.1): llmi's hybrid reward as a verl reward manager, or as a ``compute_score``.

**The reward manager** — :class:`LLMIRewardManager`, a ``RewardManagerBase`` of verl's reward loop
(``verl.experimental.reward_loop.reward_manager``), registered as ``"llmi"`` with verl's ``@register``.
verl calls ``await manager.run_single(data)`` with a one-row ``DataProto`` per rollout, concurrently on
each reward-loop worker's event loop; the manager decodes the response, reads ``extra_info``
(``image_num``, ``tools``, ``split``, ``question``) and the input images from ``raw_prompt`` (the image
parts verl's dataset puts there) and scores with one shared :class:`~llmi.reward.scoring.RewardScorer`
per worker, so the judges' and tools' caps hold across that worker's rollouts. Configure it with::

    reward.reward_manager.source=importlib
    reward.reward_manager.name=LLMIRewardManager
    reward.reward_manager.module.path=pkg://llmi.integrations.verl
    +reward.reward_kwargs.llmi_config=llmi.toml          # else $LLMI_CONFIG, else ./llmi.toml
    +reward.reward_kwargs.recipe=llmi-grpo               # the recipe's reward weights
    +reward.reward_kwargs.drop_score=0.0                 # a dropped rollout's reward (see below)

``importlib`` rather than ``register``: verl validates a registered name in the driver process when it
builds the config, before anything would have imported this module there.

**The score function** — :func:`compute_score`, for verl's ``naive``/``dapo`` managers
(``reward.custom_reward_function.path=pkg://llmi.integrations.verl``,
``reward.custom_reward_function.name=compute_score``). It sees only ``solution_str`` and ``extra_info``,
not the prompt's images, so an ``edit`` of an input image cannot be run there: use the manager for
multimodal data.

**A dropped rollout** (a judge that kept failing under ``on_judge_error = "drop"``, tools that could
not run): verl has no way to leave one sample out of a group, so it gets ``drop_score`` and
``reward_extra_info["dropped"] = 1``; set ``[reward] on_judge_error = "fallback"`` to use a declared
neutral judge score instead.

``reward_extra_info`` holds the same keys for every rollout (verl stacks them into arrays): ``score``,
``s_num``, ``s_llm``, ``s_mllm``, ``r_tool``, the judges' raw scores, ``dropped``, ``llm_judge_error``,
``mllm_judge_error``, ``n_images``, ``n_tags`` and ``tool_total/<source>`` / ``tool_success/<source>``;
a value that does not apply (no image to judge) is 0.

verl is not imported at module level when it is missing (it pins transformers < 5.11, which TRL 1.16
does not install with), so this module always imports; the manager class is only usable under verl.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sys
from typing import Any, Mapping

from ..config import Settings, load_settings
from ..protocol import SOURCES
from ..reward.rules import RewardConfig, RewardResult
from ..reward.scoring import RewardScorer, Sample, load_image, question_text

log = logging.getLogger(__name__)

try:  # verl >= 0.7: the reward loop (verl.workers.reward_manager is the older, __call__-based registry)
    from verl.experimental.reward_loop.reward_manager import register as _verl_register
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase as _Base
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER as _REGISTRY

    HAVE_VERL = True

    def _register(name: str):
        """verl's ``@register``, tolerating a re-import of this module (``importlib.reload``, a test that
        imports it afresh): the new class replaces its own earlier version instead of raising."""

        def decorator(cls: type) -> type:
            old = _REGISTRY.get(name)
            if old is not None and old is not cls and (old.__module__, old.__qualname__) == (
                    cls.__module__, cls.__qualname__):
                _REGISTRY[name] = cls
                return cls
            return _verl_register(name)(cls)

        return decorator

except ImportError as _exc:  # verl not installed: keep the module importable (docs, tests, llmi train --backend verl)
    HAVE_VERL = False
    # quiet when verl is simply absent; a missing dependency of verl, or a verl without this reward loop, is said
    if (_exc.name or "").split(".")[0] != "verl" or sys.modules.get("verl") is not None:
        log.warning("verl is installed but its reward loop does not import (%s): LLMIRewardManager is not "
                    "registered with verl (llmi's verl adapter is written for verl 0.9.1)", _exc)

    class _Base:  # type: ignore[no-redef]
        def __init__(self, config: Any, tokenizer: Any, compute_score: Any):
            self.config = config
            self.tokenizer = tokenizer
            self.compute_score = compute_score

    def _register(name: str):  # type: ignore[no-redef]
        return lambda cls: cls


NUMERIC = ("score", "s_num", "s_llm", "s_mllm", "r_tool", "text", "image", "quality", "task_rel", "text_image_rel")


def extra_info_of(result: RewardResult, reward: float, stats: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """The flat, same-keys-every-time ``reward_extra_info`` of one rollout (numbers only)."""
    out: dict[str, float] = {}
    for key in NUMERIC:
        value = getattr(result, key)
        out[key] = float(value) if value is not None else 0.0
    out["score"] = float(reward)
    out["dropped"] = float(result.score is None)
    out["llm_judge_error"] = float("llm_judge" in result.errors)
    out["mllm_judge_error"] = float("mllm_judge" in result.errors)
    out["n_images"] = float(result.n_images or 0)
    out["n_tags"] = float(result.n_tags)
    for s in SOURCES:
        st = stats.get(s, {})
        out[f"tool_total/{s}"] = float(st.get("total", 0))
        out[f"tool_success/{s}"] = float(st.get("success", 0))
    return out


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if hasattr(obj, "get"):
        try:
            return obj.get(key, default)
        except TypeError:
            pass
    return getattr(obj, key, default)


def _plain(value: Any) -> Any:
    """Python lists and dicts from numpy arrays/scalars (verl's non-tensor batch) and OmegaConf nodes."""
    if type(value).__module__.startswith("omegaconf"):  # DictConfig/ListConfig (a missing attribute is None)
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (str, bytes)):
        return value
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Shared:
    """One engine and scorer per event loop and settings: every rollout a worker scores shares its clients
    and caps. The engine's documents report their per-tool counts to the scoring task's sink."""

    def __init__(self) -> None:
        self.scorers: dict[tuple[int, int], tuple[RewardScorer, contextlib.AsyncExitStack]] = {}

    async def scorer(self, settings: Settings, config: RewardConfig) -> RewardScorer:
        loop = asyncio.get_running_loop()
        key = (id(loop), id(settings))
        if key in self.scorers:
            return self.scorers[key][0]
        from ..engine import Engine

        stack = contextlib.AsyncExitStack()
        engine = await stack.enter_async_context(Engine(settings))

        async def execute(response: str, images: list) -> Any:
            doc = await engine.run_response(response, input_images=images)
            sink = _SINK.get()
            if sink is not None:
                sink.update(doc.stats)
            return doc

        scorer = await stack.enter_async_context(RewardScorer(settings, config=config, execute=execute))
        self.scorers[key] = (scorer, stack)
        return scorer

    async def aclose(self) -> None:
        for _, stack in list(self.scorers.values()):
            await stack.aclose()
        self.scorers.clear()


_SINK: contextvars.ContextVar[dict | None] = contextvars.ContextVar("llmi_verl_stats", default=None)
_SHARED = _Shared()


def load_options(reward_kwargs: Mapping[str, Any] | None) -> tuple[Settings, RewardConfig, float]:
    """Settings, reward configuration and drop score from ``reward.reward_kwargs``.

    ``llmi_config``: the TOML file (else ``$LLMI_CONFIG``, else ``./llmi.toml``); ``recipe``: whose
    reward weights to start from; ``reward``: reward fields over the recipe's; ``drop_score``.
    """
    from dataclasses import fields

    from ..train import recipes

    kw = dict(_plain(reward_kwargs or {}))
    settings = load_settings(kw.get("llmi_config") or None)
    values: dict[str, Any] = {}
    if kw.get("recipe"):
        values.update(recipes.get(kw["recipe"]).reward)
    values.update(recipes.explicit_reward_fields(settings))
    values.update(dict(kw.get("reward") or {}))
    known = {f.name for f in fields(RewardConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown reward field(s) in reward_kwargs: {unknown}")
    return settings, RewardConfig(**values), float(kw.get("drop_score", 0.0))


def images_from_prompt(raw_prompt: Any) -> list[Any]:
    """Input images from a verl ``raw_prompt``: the ``{"type": "image", "image": ...}`` parts, in order
    (PIL images, paths, or dicts with ``bytes``)."""
    out = []
    for message in _plain(raw_prompt) or []:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image":
                ref = part.get("image")
                if ref is None and part.get("bytes") is not None:
                    ref = part["bytes"]
                if isinstance(ref, dict):
                    ref = ref.get("bytes") or ref.get("path")
                if isinstance(ref, str) and ref.startswith("file://"):
                    ref = ref[len("file://"):]
                out.append(ref)
    return out


def _question(extra_info: Mapping[str, Any], raw_prompt: Any) -> str:
    q = extra_info.get("question")
    if isinstance(q, str) and q.strip():
        return q
    text = question_text(_plain(raw_prompt)) if raw_prompt is not None else ""
    return text.replace("<image>", " ").strip()


def sample_of(response: str, extra_info: Mapping[str, Any], raw_prompt: Any = None, images: Any = None) -> Sample:
    """A :class:`Sample` from what verl hands a reward manager; a missing ``image_num`` or ``tools`` in
    ``extra_info`` makes it an input error (the data was not prepared with ``llmi data --to verl``)."""
    extra_info = dict(_plain(extra_info) or {})
    # a key that is null counts as missing: parquet gives every row of a mixed file all keys of its struct
    missing = [k for k in ("image_num", "tools") if extra_info.get(k) is None]
    if missing:
        return Sample.invalid(f"extra_info has no {', '.join(missing)}: prepare the data with `llmi data --to verl`")
    image_num, tools = extra_info["image_num"], extra_info["tools"]
    if isinstance(image_num, bool) or not isinstance(image_num, (int, float)) or int(image_num) != image_num:
        return Sample.invalid(f"extra_info image_num must be an integer, got {image_num!r}")
    if isinstance(tools, str) or not isinstance(tools, (list, tuple)) or not all(isinstance(t, str) for t in tools):
        return Sample.invalid(f"extra_info tools must be a list of tool names, got {tools!r}")
    refs = list(images) if images is not None else images_from_prompt(raw_prompt)
    try:
        imgs = [load_image(r) for r in refs]
    except Exception as exc:  # noqa: BLE001 - an unusable image is this row's input error
        return Sample.invalid(f"an input image is unusable: {exc}")
    return Sample(prompt=_question(extra_info, raw_prompt), response=response,
                  image_num=int(image_num), tools=list(tools),
                  split=str(extra_info.get("split") or "train"), input_images=imgs)


async def _score(sample: Sample, settings: Settings, config: RewardConfig, drop_score: float) -> dict[str, Any]:
    scorer = await _SHARED.scorer(settings, config)
    stats: dict[str, dict[str, int]] = {}
    token = _SINK.set(stats)
    try:
        result = await scorer.score(sample)
    finally:
        _SINK.reset(token)
    reward = result.score if result.score is not None else drop_score
    if result.score is None:
        log.warning("llmi reward dropped a rollout (%s); it gets drop_score %s", result.errors, drop_score)
    return {"reward_score": float(reward), "reward_extra_info": extra_info_of(result, reward, stats)}


@_register("llmi")
class LLMIRewardManager(_Base):
    """llmi's hybrid reward as a verl 0.9.1 reward-loop manager (see the module docstring)."""

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any = None, reward_router_address: Any = None,
                 reward_model_tokenizer: Any = None, **_: Any):
        super().__init__(config, tokenizer, compute_score)
        reward_cfg = _get(config, "reward")
        self.settings, self.reward_config, self.drop_score = load_options(_get(reward_cfg, "reward_kwargs", {}))

    def decode(self, item: Any) -> str:
        response_ids = item.batch["responses"]
        length = response_ids.shape[-1]
        valid = int(item.batch["attention_mask"][-length:].sum())
        return self.tokenizer.decode(response_ids[:valid], skip_special_tokens=True)

    async def run_single(self, data: Any) -> dict[str, Any]:
        data = data[-1:]  # multi-turn outputs: the reward is for the last sequence, as verl's managers do
        item = data[0]
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(None, self.decode, item)
        nt = item.non_tensor_batch
        mm = nt.get("multi_modal_data")
        images = _get(_plain(mm), "images") if mm is not None else None
        sample = sample_of(response, nt.get("extra_info") or {}, nt.get("raw_prompt"), images=images)
        return await _score(sample, self.settings, self.reward_config, self.drop_score)


_FN_OPTIONS: dict[str, tuple[Settings, RewardConfig, float]] = {}


async def compute_score(data_source: str, solution_str: str, ground_truth: Any = None, extra_info: Any = None,
                        **kwargs: Any) -> dict[str, Any]:
    """verl ``custom_reward_function`` entry: ``{"score": R, ...components}`` for one rollout.

    Options come from ``reward.custom_reward_function.reward_kwargs`` (merged into ``kwargs`` by verl):
    ``llmi_config``, ``recipe``, ``reward``, ``drop_score``. Input images are not available here.
    """
    key = repr(sorted((k, str(v)) for k, v in kwargs.items() if k in ("llmi_config", "recipe", "reward", "drop_score")))
    if key not in _FN_OPTIONS:
        _FN_OPTIONS[key] = load_options({k: v for k, v in kwargs.items()
                                         if k in ("llmi_config", "recipe", "reward", "drop_score")})
    settings, config, drop = _FN_OPTIONS[key]
    out = await _score(sample_of(solution_str, extra_info or {}, images=[]), settings, config, drop)
    return {**out["reward_extra_info"], "score": out["reward_score"]}
