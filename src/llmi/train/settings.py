"""``[train]``: the training settings section (only pydantic here, so loading settings stays cheap).

The table holds two kinds of keys:

* llmi's own fields, declared below with their help text (data preparation, samples, LoRA, ...);
* any option of the trainer under the trainer's own name (TRL ``GRPOConfig``: ``num_generations``,
  ``per_device_train_batch_size``, ``max_completion_length``, ``learning_rate``, ...). They are kept
  as extra keys here and checked against the trainer when a run is set up
  (:func:`llmi.train.recipes.resolve`), where an unknown name is a :class:`~llmi.train.errors.RecipeError`.

Precedence, later winning: the recipe, this table, command-line flags.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainSettings(BaseModel):
    """How ``llmi train`` prepares data and runs GRPO (``[train]`` in the config file)."""

    # Extra keys are trainer options, validated against the trainer in recipes.resolve().
    model_config = ConfigDict(extra="allow")

    recipe: str = Field("llmi-grpo", description="named preset: llmi-grpo, llmi-gspo, mllmi-grpo")
    backend: Literal["trl", "verl"] = Field(
        "trl", description="'trl' (one machine, GRPOTrainer) or 'verl' (a Ray cluster; writes a launch script)"
    )
    prompt_batch: int | None = Field(
        None, ge=1, description="prompts per optimizer step (the release's train_batch_size); sets "
        "gradient_accumulation_steps unless that is given"
    )
    max_prompt_length: int | None = Field(
        None, ge=1, description="prompt token limit, applied in data preparation (TRL has no such option)"
    )
    prompt_overflow: Literal["error", "truncate", "drop"] = Field(
        "error", description="a prompt over max_prompt_length: 'error' (as the release), 'truncate' the user "
        "text, or 'drop' the row"
    )
    system_prompt: str = Field(
        "llmi", description="'llmi': llmi's built-in prompt for the usable tools replaces the dataset's; "
        "'keep': the dataset's own; or a path to a prompt file"
    )
    max_image_pixels: int | None = Field(
        None, ge=1, description="input images larger than this many pixels are scaled down in data preparation"
    )
    samples_every: int = Field(10, ge=1, description="write samples/step-N.html every this many steps")
    samples_per_page: int = Field(4, ge=1, description="rollouts shown on one samples page")
    check_judges: bool = Field(True, description="contact both judges before loading the model")
    impute: Literal["none", "group_mean"] = Field(
        "none", description="a dropped rollout (judge failure): 'none' (TRL masks it) or its group's mean"
    )
    stop_after_failed_steps: int = Field(
        3, ge=0, description="stop training after this many logged steps in a row in which every rollout was "
        "dropped (the judges are down: such steps teach nothing and are not checkpointed); 0: never stop"
    )
    drop_score: float = Field(
        0.0, description="verl only: the reward a dropped rollout gets (verl cannot mask a sample)"
    )
    lora: bool = Field(False, description="train LoRA adapters (peft) instead of all weights")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha")
    lora_dropout: float = Field(0.05, ge=0, le=1, description="LoRA dropout")
    lora_target_modules: list[str] | str = Field("all-linear", description="modules that get adapters")
    verl: dict[str, Any] = Field(
        default_factory=dict, description="verl backend: extra Hydra overrides (key = value), over the recipe's"
    )
    nnodes: int = Field(2, ge=1, description="verl backend: nodes in the Ray cluster")
    gpus_per_node: int = Field(8, ge=1, description="verl backend: GPUs per node")

    def trainer_options(self) -> dict[str, Any]:
        """The trainer options given in the table (the keys that are not llmi fields)."""
        return dict(self.model_extra or {})

    def explicit(self) -> dict[str, Any]:
        """llmi fields set in the table (not defaults), so a recipe's value is overridden only on purpose."""
        return {k: getattr(self, k) for k in self.model_fields_set if k in type(self).model_fields}
