"""Named training presets with the LLM-I release's settings, and how a run's options are resolved.

Each recipe is a value: trainer options under TRL ``GRPOConfig`` names, llmi's own data/sample options
(:class:`~llmi.train.settings.TrainSettings` fields), reward weights (:class:`~llmi.reward.RewardConfig`
fields) and the verl-only knobs of the release's ``recipe/llmi/*.sh`` (parallelism, micro batches).
:func:`resolve` merges a recipe with the ``[train]`` table and the command-line flags (later wins) and
checks every name; :func:`verl_overrides` maps the resolved options onto verl 0.9.1's Hydra keys.

The values were read from the release (``ByteDance-BandAI/LLM-I``, ``recipe/llmi/llmi_grpo.sh``,
``llmi_gspo.sh``, ``mllmi_grpo.sh``). Where TRL has no exact counterpart the recipe's ``notes`` say so
(they are printed by ``llmi train --show-recipe`` and listed in docs/train.md).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping

from .errors import RecipeError
from .settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    #: The model the release trained with this recipe (a suggestion; ``--model`` decides).
    model: str
    source: str
    trainer: Mapping[str, Any]
    llmi: Mapping[str, Any]
    reward: Mapping[str, Any]
    #: verl keys with no TRL counterpart (parallelism, micro batches, memory), as the release set them.
    verl: Mapping[str, Any]
    notes: tuple[str, ...] = ()


_COMMON_TRAINER: dict[str, Any] = {
    # verl: actor.optim.lr=1e-6, warmup_style=cosine, min_lr_ratio=0.01, num_cycles=0.5
    "learning_rate": 1e-6,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.01, "num_cycles": 0.5},
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,  # actor.grad_clip
    "beta": 0.0,  # use_kl_loss=false, kl_coef=0: no reference model
    "num_generations": 8,  # rollout.n
    "num_iterations": 1,  # one update per rollout batch (ppo_mini_batch_size == train_batch_size)
    "num_train_epochs": 1,  # total_epochs
    "temperature": 1.0,
    "top_p": 1.0,
    "scale_rewards": "group",  # verl GRPO normalises advantages by the group std
    "save_strategy": "steps",
    "save_steps": 10,  # save_freq
    "gradient_checkpointing": True,  # enable_gradient_checkpointing
}

_COMMON_REWARD: dict[str, Any] = {
    "w_num": 0.2, "w_mllm": 0.3, "w_llm": 0.5,  # img_num_factor, mllm_factor, llm_factor
    "quality_weight": 1.0, "task_weight": 1.0, "text_image_weight": 1.0,
}

_COMMON_VERL: dict[str, Any] = {
    "actor_rollout_ref.rollout.name": "vllm",
    "actor_rollout_ref.rollout.gpu_memory_utilization": 0.8,
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
    "actor_rollout_ref.rollout.val_kwargs.n": 1,
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size": 2,
    "actor_rollout_ref.ref.ulysses_sequence_parallel_size": 2,
    "actor_rollout_ref.actor.use_dynamic_bsz": False,
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz": False,
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz": False,
    "actor_rollout_ref.actor.entropy_coeff": 0,
    "actor_rollout_ref.actor.fsdp_config.param_offload": False,
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,
    "actor_rollout_ref.actor.fsdp_config.fsdp_size": -1,
    "actor_rollout_ref.ref.fsdp_config.param_offload": False,
    "actor_rollout_ref.model.use_remove_padding": True,
    "algorithm.adv_estimator": "grpo",
    "algorithm.use_kl_in_reward": False,
    "algorithm.kl_ctrl.kl_coef": 0.0,
    "data.shuffle": True,
    "data.filter_overlong_prompts": False,
    "data.truncation": "error",
    "data.prompt_key": "prompt",
    "trainer.val_before_train": True,
    "trainer.test_freq": 10,
    "trainer.log_val_generations": 8,
    "trainer.project_name": "LLMI",
}

_TRUNCATION_NOTE = (
    "max_prompt_length is applied in data preparation (TRL 1.16 GRPOConfig has no prompt-length option); "
    "prompt_overflow='error' fails like the release's data.truncation=error"
)
_LOSS_NOTE = (
    "loss_type='dapo' (tokens of the whole accumulated batch) stands for verl's token-mean over a mini-batch: "
    "the same normaliser when one optimizer step sees the whole prompt batch, as here"
)
_DELTA_NOTE = (
    "clip_ratio_c=10 (verl's dual clip for negative advantages) maps to TRL's delta=10, which caps the ratio "
    "of negative-advantage tokens the same way"
)
_SP_NOTE = "the training system prompt is llmi's own built-in prompt (system_prompt='llmi'), not the release's llmi.txt"
_BATCH_NOTE = (
    "prompt_batch prompts x num_generations completions make one optimizer step: gradient_accumulation_steps "
    "is derived from per_device_train_batch_size and the number of processes"
)

RECIPES: dict[str, Recipe] = {}


def _add(recipe: Recipe) -> None:
    RECIPES[recipe.name] = recipe


_add(Recipe(
    name="llmi-grpo",
    summary="GRPO on a text LLM (the release: Qwen3-4B-Instruct-2507, 2x8 GPUs)",
    model="Qwen/Qwen3-4B-Instruct-2507",
    source="recipe/llmi/llmi_grpo.sh",
    trainer={
        **_COMMON_TRAINER,
        "per_device_train_batch_size": 4,  # train_micro_bsz_per_gpu
        "max_completion_length": 24 * 1024,  # max_response_length
        "warmup_steps": 5,
        "loss_type": "dapo",  # loss_agg_mode=token-mean
        "epsilon": 0.2,  # verl's default clip_ratio
        "delta": 10.0,  # clip_ratio_c
    },
    llmi={"prompt_batch": 32, "max_prompt_length": 8 * 1024, "system_prompt": "llmi",
          "samples_every": 20, "samples_per_page": 8},
    reward={**_COMMON_REWARD, "text_weight": 1.4, "image_weight": 0.6},
    verl={**_COMMON_VERL,
          "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 8,
          "trainer.experiment_name": "Qwen3-4B-main"},
    notes=(_TRUNCATION_NOTE, _LOSS_NOTE, _DELTA_NOTE, _SP_NOTE, _BATCH_NOTE),
))

_add(Recipe(
    name="llmi-gspo",
    summary="GSPO (sequence-level importance ratio) on an MoE LLM (the release: Qwen3-30B-A3B-Instruct-2507)",
    model="Qwen/Qwen3-30B-A3B-Instruct-2507",
    source="recipe/llmi/llmi_gspo.sh",
    trainer={
        **_COMMON_TRAINER,
        "per_device_train_batch_size": 1,
        "max_completion_length": 24 * 1024,
        "warmup_steps": 6,
        "importance_sampling_level": "sequence",  # policy_loss.loss_mode=gspo
        "loss_type": "grpo",  # loss_agg_mode=seq-mean-token-mean
        "epsilon": 3e-4,  # clip_ratio_low
        "epsilon_high": 4e-4,  # clip_ratio_high
    },
    llmi={"prompt_batch": 16, "max_prompt_length": 8 * 1024, "system_prompt": "llmi",
          "samples_every": 20, "samples_per_page": 8},
    reward={**_COMMON_REWARD, "text_weight": 1.4, "image_weight": 0.6},
    verl={**_COMMON_VERL,
          "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 1,
          "trainer.experiment_name": "Qwen3-30B-Instruct-gspo"},
    notes=(
        _TRUNCATION_NOTE,
        "loss_type='grpo' (mean over sequences of each sequence's token mean) is verl's seq-mean-token-mean",
        _SP_NOTE, _BATCH_NOTE,
    ),
))

_add(Recipe(
    name="mllmi-grpo",
    summary="GRPO on a vision-language model with input images (the release: Qwen2.5-VL-7B-Instruct)",
    model="Qwen/Qwen2.5-VL-7B-Instruct",
    source="recipe/llmi/mllmi_grpo.sh",
    trainer={
        **_COMMON_TRAINER,
        "per_device_train_batch_size": 2,
        "max_completion_length": 16 * 1024,
        "warmup_steps": 4,
        "loss_type": "dapo",
        "epsilon": 0.2,
        "delta": 10.0,
    },
    llmi={"prompt_batch": 32, "max_prompt_length": 16 * 1024, "system_prompt": "llmi",
          "max_image_pixels": 1024 * 1024, "samples_every": 10, "samples_per_page": 6},
    reward={**_COMMON_REWARD, "text_weight": 1.5, "image_weight": 0.5},
    verl={**_COMMON_VERL,
          "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 2,
          "trainer.experiment_name": "QwenVL-7B-mm"},
    notes=(
        _TRUNCATION_NOTE, _LOSS_NOTE, _DELTA_NOTE, _SP_NOTE, _BATCH_NOTE,
        "max_image_pixels=1024*1024 (the release's max_image_resolution) resizes input images in data "
        "preparation; prompt lengths are counted on the text only (image tokens are not)",
        "the release mixed text and multimodal parquet files (allow_heterogeneous_schemas); llmi writes one "
        "schema for both, so no such option is needed",
    ),
))


# Options llmi sets itself: they come from flags, not from a recipe or [train].
RESERVED = {"output_dir": "--output-dir", "max_steps": "--max-steps", "resume_from_checkpoint": "--resume"}


@dataclass
class Resolved:
    """A run's options after merging recipe, ``[train]`` and flags."""

    recipe: Recipe
    trainer: dict[str, Any]
    llmi: TrainSettings
    reward: dict[str, Any]
    verl: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.name,
            "trainer": self.trainer,
            "llmi": self.llmi.model_dump(exclude={"verl"}),
            "reward": self.reward,
            "verl": self.verl,
            "notes": list(self.recipe.notes),
        }


def get(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; the recipes are {', '.join(RECIPES)}") from None


def trainer_fields() -> set[str] | None:
    """The option names TRL's ``GRPOConfig`` accepts, or ``None`` when TRL is not installed."""
    try:
        from trl import GRPOConfig
    except ImportError:
        return None
    return {f.name for f in fields(GRPOConfig) if f.init}


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve(
    name: str | None = None,
    settings: TrainSettings | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    known_trainer: set[str] | None = None,
    reward: Mapping[str, Any] | None = None,
) -> Resolved:
    """Merge recipe ``name`` (default: the table's ``recipe``), the ``[train]`` table and ``flags``.

    ``flags`` may hold llmi fields and trainer options alike. ``known_trainer``: the trainer's option
    names (TRL's ``GRPOConfig`` fields); an option outside them and outside llmi's fields is a
    :class:`RecipeError` naming it. ``reward``: explicitly configured reward fields, over the recipe's.
    """
    settings = settings or TrainSettings()
    recipe = get(name or settings.recipe)
    flags = dict(flags or {})
    llmi_names = set(TrainSettings.model_fields)

    trainer = dict(recipe.trainer)
    sources: dict[str, str] = {k: f"recipe {recipe.name}" for k in trainer}
    for key, value in settings.trainer_options().items():
        trainer[key], sources[key] = value, "[train]"
    llmi: dict[str, Any] = dict(recipe.llmi)
    llmi.update(settings.explicit())
    for key, value in flags.items():  # a None here is an explicit "unset" (callers drop flags not given)
        if key in llmi_names:
            llmi[key] = value
        else:
            trainer[key], sources[key] = value, "a flag"

    for key in trainer:
        if key in RESERVED:
            raise RecipeError(f"{key} is set by llmi train ({RESERVED[key]}), not in {sources[key]}")
    if known_trainer is not None:
        unknown = [k for k in trainer if k not in known_trainer]
        if unknown:
            k = unknown[0]
            raise RecipeError(
                f"unknown recipe field {k!r} (from {sources[k]}): neither an llmi [train] field nor a TRL "
                f"GRPOConfig option{_suggest(k, set(known_trainer) | llmi_names)}"
            )
        trainer = check_trainer_values(trainer, sources)
    try:
        merged = TrainSettings.model_validate({**settings.model_dump(exclude=set(settings.trainer_options())), **llmi,
                                               "recipe": recipe.name})
    except Exception as exc:  # pydantic's message names the field
        raise RecipeError(f"invalid [train] value: {exc}") from exc
    merged = TrainSettings.model_validate({k: getattr(merged, k) for k in llmi_names})  # drop extras

    reward_cfg = dict(recipe.reward)
    reward_cfg.update(reward or {})
    _check_reward(reward_cfg)
    verl = dict(recipe.verl)
    verl.update(settings.verl)
    return Resolved(recipe=recipe, trainer=trainer, llmi=merged, reward=reward_cfg, verl=verl)


_NO = object()


def _accepts(kind: Any, value: Any) -> bool:
    import enum
    import typing

    origin = typing.get_origin(kind)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind is list or origin is list:
        args = typing.get_args(kind)
        return isinstance(value, list) and (not args or all(_accepts(args[0], v) for v in value))
    if kind is dict or origin is dict:
        return isinstance(value, dict)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return isinstance(value, kind) or value in {m.value for m in kind}
    return True  # a type llmi does not check: the trainer decides


def _from_text(kind: Any, value: str) -> Any:
    try:
        if kind is float:
            return float(value)
        if kind is int:
            return int(value)
    except ValueError:
        return _NO
    if kind is bool and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return _NO


def _kind_name(kinds: tuple[Any, ...]) -> str:
    return " or ".join("None" if k is type(None) else getattr(k, "__name__", None) or str(k) for k in kinds)


def check_trainer_values(trainer: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The trainer options checked against the types of TRL's ``GRPOConfig`` fields (a value of the wrong
    type reached the optimizer after the model had loaded: ``'<=' not supported between float and str``).
    A number or boolean written as text (``learning_rate = "1e-6"``) is read as one; anything else of the
    wrong type is a :class:`RecipeError` naming the option. Without TRL the options pass unchecked."""
    import types
    import typing

    try:
        from trl import GRPOConfig

        hints = typing.get_type_hints(GRPOConfig)
    except Exception:  # noqa: BLE001 - no TRL, or annotations it cannot resolve
        return dict(trainer)
    out: dict[str, Any] = {}
    for key, value in trainer.items():
        hint = hints.get(key)
        if hint is None:
            out[key] = value
            continue
        kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if any(_accepts(k, value) for k in kinds):
            out[key] = value
            continue
        converted = _NO
        if isinstance(value, str):
            converted = next((c for c in (_from_text(k, value) for k in kinds) if c is not _NO), _NO)
        elif isinstance(value, float) and value.is_integer() and int in kinds:
            converted = int(value)
        if converted is _NO:
            where = f" (from {sources[key]})" if sources and key in sources else ""
            raise RecipeError(f"{key} = {value!r}{where}: TRL's GRPOConfig wants {_kind_name(kinds)}")
        out[key] = converted
    return out


def _check_reward(values: Mapping[str, Any]) -> None:
    from ..reward.rules import RewardConfig

    known = {f.name for f in fields(RewardConfig)}
    for key in values:
        if key not in known:
            raise RecipeError(f"unknown reward field {key!r}{_suggest(key, known)}")
    try:
        RewardConfig(**values)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"invalid reward settings: {exc}") from exc


def reward_config(resolved: Resolved, settings: Any = None):
    """The :class:`~llmi.reward.RewardConfig` of a run: the recipe's weights, then the fields set
    explicitly in the config's ``[reward]`` table (when llmi's settings have one)."""
    from ..reward.rules import RewardConfig

    values = dict(resolved.reward)
    values.update(explicit_reward_fields(settings))
    _check_reward(values)
    return RewardConfig(**values)


def explicit_reward_fields(settings: Any) -> dict[str, Any]:
    """Fields of ``settings.reward`` that were set on purpose (not defaults), limited to RewardConfig's."""
    from ..reward.rules import RewardConfig

    section = getattr(settings, "reward", None) if settings is not None else None
    if section is None:
        return {}
    known = {f.name for f in fields(RewardConfig)}
    chosen = getattr(section, "model_fields_set", None)
    data = section.model_dump() if hasattr(section, "model_dump") else dict(section)
    return {k: v for k, v in data.items() if k in known and (chosen is None or k in chosen)}


# ------------------------------------------------------------------------------------------------
# verl 0.9.1: TRL option names -> Hydra keys
# ------------------------------------------------------------------------------------------------

_A = "actor_rollout_ref.actor"
_LOSS_AGG = {"dapo": "token-mean", "grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm"}
_SCHEDULERS = {"cosine": "cosine", "cosine_with_min_lr": "cosine", "constant": "constant",
               "constant_with_warmup": "constant"}

#: TRL options that mean nothing on verl (one-machine mechanics); ignored there.
VERL_IGNORED = frozenset({
    "gradient_accumulation_steps", "generation_batch_size", "steps_per_generation", "logging_steps",
    "save_strategy", "bf16", "fp16", "use_cpu", "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size", "vllm_server_base_url", "vllm_server_host", "vllm_server_port",
    "dataloader_num_workers", "disable_tqdm", "seed", "shuffle_dataset", "generation_kwargs",
    "log_completions", "num_completions_to_print", "chat_template_kwargs", "remove_unused_columns",
    "max_steps", "model_init_kwargs", "run_name", "logging_dir",
})


def verl_overrides(resolved: Resolved, *, max_steps: int | None = None) -> dict[str, Any]:
    """verl 0.9.1 Hydra overrides for the resolved run (without data paths, model and reward manager).

    Every trainer option must have a mapping or be in :data:`VERL_IGNORED`; otherwise a
    :class:`RecipeError` says to set the verl key itself under ``[train.verl]``.
    """
    t = dict(resolved.trainer)
    s = resolved.llmi
    out: dict[str, Any] = {}

    def take(key: str, target: str, convert=lambda v: v) -> None:
        if key in t:
            out[target] = convert(t.pop(key))

    take("num_generations", "actor_rollout_ref.rollout.n")
    take("per_device_train_batch_size", f"{_A}.ppo_micro_batch_size_per_gpu")
    take("max_completion_length", "data.max_response_length")
    take("learning_rate", f"{_A}.optim.lr")
    take("warmup_steps", f"{_A}.optim.lr_warmup_steps")
    take("weight_decay", f"{_A}.optim.weight_decay")
    take("max_grad_norm", f"{_A}.optim.clip_grad")
    take("num_iterations", f"{_A}.ppo_epochs")
    take("num_train_epochs", "trainer.total_epochs")
    take("save_steps", "trainer.save_freq")
    take("gradient_checkpointing", "actor_rollout_ref.model.enable_gradient_checkpointing")
    take("temperature", "actor_rollout_ref.rollout.temperature")
    take("top_p", "actor_rollout_ref.rollout.top_p")
    take("epsilon", f"{_A}.clip_ratio_low")
    take("delta", f"{_A}.clip_ratio_c")
    if "epsilon_high" in t:
        out[f"{_A}.clip_ratio_high"] = t.pop("epsilon_high")
    elif f"{_A}.clip_ratio_low" in out:
        out[f"{_A}.clip_ratio_high"] = out[f"{_A}.clip_ratio_low"]
    if "lr_scheduler_type" in t:
        kind = t.pop("lr_scheduler_type")
        if kind not in _SCHEDULERS:
            raise RecipeError(f"lr_scheduler_type {kind!r} has no verl counterpart (verl: constant or cosine)")
        out[f"{_A}.optim.lr_scheduler_type"] = _SCHEDULERS[kind]
    kwargs = dict(t.pop("lr_scheduler_kwargs", None) or {})
    if "min_lr_rate" in kwargs:
        out[f"{_A}.optim.min_lr_ratio"] = kwargs.pop("min_lr_rate")
    if "num_cycles" in kwargs:
        out[f"{_A}.optim.num_cycles"] = kwargs.pop("num_cycles")
    if kwargs:
        raise RecipeError(f"lr_scheduler_kwargs {sorted(kwargs)} have no verl counterpart")
    if "beta" in t:
        beta = float(t.pop("beta"))
        out[f"{_A}.use_kl_loss"] = beta > 0
        out[f"{_A}.kl_loss_coef"] = beta
    if "loss_type" in t:
        loss = t.pop("loss_type")
        if loss not in _LOSS_AGG:
            raise RecipeError(f"loss_type {loss!r} has no verl loss_agg_mode; use one of {', '.join(_LOSS_AGG)}")
        out[f"{_A}.loss_agg_mode"] = _LOSS_AGG[loss]
    if "importance_sampling_level" in t:
        level = t.pop("importance_sampling_level")
        out[f"{_A}.policy_loss.loss_mode"] = "gspo" if level == "sequence" else "vanilla"
    if "scale_rewards" in t:
        scale = t.pop("scale_rewards")
        out["algorithm.norm_adv_by_std_in_grpo"] = scale not in ("none", False)
    if "report_to" in t:
        targets = t.pop("report_to")
        targets = [targets] if isinstance(targets, str) else list(targets or [])
        out["trainer.logger"] = ["console"] + [x for x in targets if x in ("wandb", "tensorboard", "mlflow", "swanlab")]
    for key in list(t):
        if key in VERL_IGNORED:
            t.pop(key)
    if t:
        key = sorted(t)[0]
        raise RecipeError(
            f"trainer option {key!r} has no verl mapping in llmi; set the verl key itself under [train.verl]"
        )
    if s.prompt_batch:
        out["data.train_batch_size"] = s.prompt_batch
        out[f"{_A}.ppo_mini_batch_size"] = s.prompt_batch
    if s.max_prompt_length:
        out["data.max_prompt_length"] = s.max_prompt_length
    prompt = int(out.get("data.max_prompt_length", 1024))
    response = int(out.get("data.max_response_length", 1024))
    out.setdefault(f"{_A}.ppo_max_token_len_per_gpu", prompt + response)
    out.setdefault("actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu", prompt + response)
    out.setdefault("actor_rollout_ref.ref.log_prob_max_token_len_per_gpu", prompt + response)
    out.setdefault("actor_rollout_ref.rollout.max_num_batched_tokens", prompt + response)
    if max_steps is not None:
        out["trainer.total_training_steps"] = max_steps
    out.update(resolved.verl)
    return out
