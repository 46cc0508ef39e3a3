"""Setting up and running a training job: :func:`plan` checks everything that can be checked without
the model (recipe, data, judges, tools, prompt lengths, resume state); :func:`run_trl` trains with TRL's
``GRPOTrainer`` on one machine; :mod:`llmi.train.verl_launch` writes a cluster launch instead.

The output folder::

    OUT/checkpoint-N/      Hugging Face checkpoints (model, optimizer, scheduler, RNG, trainer state)
    OUT/config.json, ...   the final model (``from_pretrained(OUT)``) and its tokenizer/processor
    OUT/metrics.jsonl      one line per logged step (see llmi.train.metrics)
    OUT/samples/step-N.html
    OUT/reward.png         reward and components over steps
    OUT/llmi_train.json    what was run: model, data, resolved recipe, data fingerprint
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import Settings
from ..errors import ConfigError, InputError
from ..reward.rules import RewardConfig
from ..reward.scoring import Executor
from . import recipes
from .data import TrainRow, read_rows
from .errors import JudgeUnreachable, RecipeError, TrainDataError
from .prepare import LengthReport, apply_system_prompt, fingerprint, limit_lengths, token_counter

log = logging.getLogger(__name__)

RUN_FILE = "llmi_train.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainRequest:
    """What the user asked for (``llmi train`` flags, or a Python caller)."""

    model: str
    data: Sequence[str]
    output_dir: Path
    settings: Settings
    recipe: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    max_steps: int | None = None
    resume: bool = False
    backend: str | None = None
    #: Replaces the engine that runs the tags (tests, benchmarks).
    execute: Executor | None = None


@dataclass
class Plan:
    request: TrainRequest
    resolved: recipes.Resolved
    reward: RewardConfig
    rows: list[TrainRow]
    system_prompt: str | None
    usable_tools: list[str]
    fingerprint: str
    lengths: LengthReport
    processing_class: Any = None
    judge_models: dict[str, str] = field(default_factory=dict)
    resume_from: Path | None = None

    @property
    def backend(self) -> str:
        return self.request.backend or self.resolved.llmi.backend


def last_checkpoint(output_dir: Path) -> Path | None:
    """The ``checkpoint-N`` folder with the largest N that holds a trainer state."""
    best: tuple[int, Path] | None = None
    if not output_dir.is_dir():
        return None
    for p in output_dir.iterdir():
        m = _CHECKPOINT.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").exists():
            if best is None or int(m.group(1)) > best[0]:
                best = (int(m.group(1)), p)
    return best[1] if best else None


def checkpoint_step(path: Path) -> int:
    m = _CHECKPOINT.match(path.name)
    return int(m.group(1)) if m else 0


def _system_prompt(choice: str, usable: list[str], settings: Settings) -> str | None:
    from ..prompting import build_system_prompt

    if choice == "keep":
        return None
    if choice == "llmi":
        return build_system_prompt(usable).text
    path = settings.resolve_path(choice)
    if not Path(path).is_file():
        raise RecipeError(f"system_prompt {choice!r}: no such file (use 'llmi', 'keep' or a prompt file)")
    return build_system_prompt(usable, path=path).text


def load_processing_class(model: str, *, multimodal: bool):
    """The model's tokenizer (text) or processor (vision-language), as TRL would load it (left padding)."""
    try:
        from transformers import AutoProcessor, AutoTokenizer
    except ImportError as exc:  # pragma: no cover
        raise ConfigError("training needs the train extra: pip install 'llmi[train]'") from exc
    loader = AutoProcessor if multimodal else AutoTokenizer
    try:
        return loader.from_pretrained(model, truncation_side="left", padding_side="left")
    except Exception as exc:  # noqa: BLE001 - hub, file and format errors alike
        raise ConfigError(f"cannot load the tokenizer/processor of {model!r}: {type(exc).__name__}: {exc}") from exc


def plan(req: TrainRequest) -> Plan:
    """Every check that needs no model weights; raises a typed error for the first problem found."""
    backend = req.backend or req.settings.train.backend
    known = recipes.trainer_fields()
    if known is None and backend == "trl":
        raise ConfigError("llmi train needs TRL: pip install 'llmi[train]'")
    resolved = recipes.resolve(req.recipe, req.settings.train, flags=req.flags, known_trainer=known,
                               reward=recipes.explicit_reward_fields(req.settings))
    reward = recipes.reward_config(resolved, req.settings)
    rows = read_rows(list(req.data))
    out = Path(req.output_dir)
    resume_from = None
    if out.exists() and not out.is_dir():
        raise InputError(f"the output {out} is a file, not a folder")
    _check_output_folder(out, req.model)
    if backend == "trl":
        existing = last_checkpoint(out)
        if req.resume:
            if existing is None:
                raise InputError(f"--resume: {out} has no checkpoint-N folder to resume from")
            resume_from = existing
        elif existing is not None:
            raise InputError(f"{out} already holds {existing.name}; pass --resume to continue it, or choose "
                             "another --output-dir")
    if req.settings.train.check_judges and resolved.llmi.check_judges:
        from .preflight import check_judges

        judge_models = asyncio.run(check_judges(req.settings))
    else:
        judge_models = {}
    held_out = sum(r.split != "train" for r in rows)
    if held_out:
        log.warning("%d of %d training rows are not split 'train' (their image-count rule is the binary one of "
                    "evaluation): is a test file among --data?", held_out, len(rows))
    from .preflight import missing_tools, usable_tools

    usable = asyncio.run(usable_tools(req.settings))
    needed = sorted({t for r in rows for t in r.tools})
    missing = missing_tools(needed, usable)
    if missing:
        log.warning("the data asks for %s, which this configuration cannot run: those rollouts cannot "
                    "earn r_tool success (configure their backends in [tools.*])", ", ".join(missing))
    system = _system_prompt(resolved.llmi.system_prompt, usable, req.settings)
    rows = apply_system_prompt(rows, system)
    processing_class = None
    lengths = LengthReport(kept=len(rows))
    multimodal = any(r.images for r in rows)
    if backend == "trl":
        processing_class = load_processing_class(req.model, multimodal=multimodal)
    elif resolved.llmi.max_prompt_length:  # verl tokenizes on the cluster; check here when we can
        try:
            processing_class = load_processing_class(req.model, multimodal=multimodal)
        except ConfigError as exc:
            log.warning("prompt lengths not checked here (%s); verl's data.truncation=error will check them", exc)
    if backend == "trl" and multimodal and getattr(processing_class, "image_processor", None) is None:
        n = sum(bool(r.images) for r in rows)
        raise TrainDataError(
            f"{n} row(s) have input images, but {req.model} has no image processor (a text-only model): train a "
            "vision-language model on them (recipe mllmi-grpo), or leave the interleaved_mm rows out"
        )
    if processing_class is not None:
        rows, lengths = limit_lengths(rows, token_counter(processing_class), resolved.llmi.max_prompt_length,
                                      resolved.llmi.prompt_overflow)
    fp = fingerprint(rows)
    if resume_from is not None:
        _check_same_run(out, fp, req, resolved)
    return Plan(request=req, resolved=resolved, reward=reward, rows=rows, system_prompt=system,
                usable_tools=usable, fingerprint=fp, lengths=lengths, processing_class=processing_class,
                judge_models=judge_models, resume_from=resume_from)


def model_key(model: str) -> str:
    """A model as compared between runs: a local folder by its real path, a hub id as given."""
    return os.path.realpath(model) if os.path.isdir(model) else model


_MODEL_FILES = ("config.json", "adapter_config.json", "model.safetensors", "pytorch_model.bin",
                "model.safetensors.index.json")


def _check_output_folder(out: Path, model: str) -> None:
    """The output folder is new, empty, or an llmi run of the same model: never another model's folder
    (training writes the final weights over it) nor a run of a different model."""
    if not out.is_dir():
        return
    if os.path.isdir(model) and os.path.realpath(model) == os.path.realpath(out):
        raise InputError(f"--output-dir {out} is the --model folder: training would write over the base model")
    try:
        saved = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        saved = None
    except (OSError, ValueError):
        saved = {}
    if saved is None:
        found = [f for f in _MODEL_FILES if (out / f).exists()]
        if found:
            raise InputError(f"{out} holds a model ({found[0]}) that is not an llmi train run: training would "
                             "write over it; choose another --output-dir")
        return
    before = saved.get("model_key") or (model_key(saved["model"]) if isinstance(saved.get("model"), str) else None)
    if before is not None and before != model_key(model):
        raise InputError(f"{out} holds a run of {saved.get('model')}, not of --model {model}; choose another "
                         "--output-dir (or pass the same --model to continue it)")


#: Options that decide which prompts a step sees: a resumed run must keep them, or its data order is another.
ORDER_OPTIONS = {
    "trainer": ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
                "shuffle_dataset", "generation_batch_size", "steps_per_generation"),
    "llmi": ("prompt_batch",),
}


def _check_same_run(out: Path, fp: str, req: TrainRequest, resolved: recipes.Resolved | None = None) -> None:
    try:
        saved = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s has no readable %s; resuming without checking the data", out, RUN_FILE)
        return
    if saved.get("fingerprint") != fp:
        raise TrainDataError(
            f"--resume: the prepared data differs from the run in {out} (fingerprint {fp} vs "
            f"{saved.get('fingerprint')}); the data order would not continue. Use the same --data, recipe "
            "and system prompt, or start a new --output-dir"
        )
    before = saved.get("resolved") or {}
    if resolved is None or not before:
        return
    now = resolved.to_dict()
    for part, keys in ORDER_OPTIONS.items():
        for key in keys:
            old_value, new_value = (before.get(part) or {}).get(key), now[part].get(key)
            if old_value != new_value:
                raise RecipeError(
                    f"--resume: {key} was {old_value!r} in the run in {out}, now {new_value!r}: the steps would see "
                    "other prompts than an uninterrupted run. Keep it, or start a new --output-dir"
                )


def _run_record(p: Plan) -> dict[str, Any]:
    return {
        "model": p.request.model,
        "model_key": model_key(p.request.model),
        "data": [str(d) for d in p.request.data],
        "rows": len(p.rows),
        "fingerprint": p.fingerprint,
        "backend": p.backend,
        "resolved": p.resolved.to_dict(),
        "reward": {k: (dict(v) if hasattr(v, "items") else v) for k, v in p.reward.__dict__.items()},
        "judges": p.judge_models,
        "usable_tools": p.usable_tools,
        "system_prompt_sha256": None if p.system_prompt is None else __import__("hashlib").sha256(
            p.system_prompt.encode()).hexdigest(),
        "prompt_lengths": p.lengths.__dict__,
    }


def _impute(p: Plan) -> str:
    """``[train] impute`` (or its flag) when given, else ``[reward] impute`` when that was set, else the default."""
    req = p.request
    if "impute" in req.settings.train.model_fields_set or "impute" in req.flags:
        return p.resolved.llmi.impute
    section = getattr(req.settings, "reward", None)
    if section is not None and "impute" in getattr(section, "model_fields_set", ()):
        return str(section.impute)
    return p.resolved.llmi.impute


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def grpo_args(p: Plan) -> dict[str, Any]:
    """The ``GRPOConfig`` keyword arguments of the run (llmi's additions over the resolved options)."""
    t = dict(p.resolved.trainer)
    s = p.resolved.llmi
    req = p.request
    t["output_dir"] = str(req.output_dir)
    if req.max_steps is not None:
        t["max_steps"] = req.max_steps
    t.setdefault("logging_steps", 1)
    t.setdefault("report_to", "none")
    t.setdefault("seed", 42)
    per_device = int(t.get("per_device_train_batch_size", 8))
    generations = int(t.get("num_generations", 8))
    if "gradient_accumulation_steps" not in t and s.prompt_batch:
        completions = s.prompt_batch * generations
        ga = completions / (per_device * world_size())
        if ga < 1 or not float(ga).is_integer():
            log.warning("prompt_batch %d x num_generations %d is not a multiple of per_device_train_batch_size %d x "
                        "%d process(es); rounding gradient_accumulation_steps", s.prompt_batch, generations,
                        per_device, world_size())
        t["gradient_accumulation_steps"] = max(1, math.ceil(ga))
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        cuda = False
    if not cuda:
        t.setdefault("use_cpu", True)
        t.setdefault("bf16", False)
    return t


def peft_config(s) -> Any:
    if not s.lora:
        return None
    try:
        from peft import LoraConfig
    except ImportError as exc:
        raise ConfigError("lora = true needs peft: pip install 'llmi[train]'") from exc
    return LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                      target_modules=s.lora_target_modules, task_type="CAUSAL_LM")


def epoch_seeded_trainer(trl):
    """``GRPOTrainer`` whose prompt order is a function of (seed, epoch) alone.

    TRL's ``RepeatSampler`` draws each epoch's permutation from one generator stream seeded once, so a
    run resumed in a later epoch restarts that stream and replays the first epoch's order. The trainer
    calls ``sampler.set_epoch(epoch)`` at the start of every epoch (also when resuming); reseeding there
    with ``seed + epoch`` makes a resumed run see exactly the prompts an uninterrupted run would.
    """

    class EpochSeededSampler(trl.trainer.utils.RepeatSampler):
        def set_epoch(self, epoch: int) -> None:
            if self.shuffle and self.seed is not None:
                self.generator.manual_seed(self.seed + int(epoch))

    class GRPOTrainer(trl.GRPOTrainer):
        def _get_train_sampler(self, dataset=None):
            sampler = super()._get_train_sampler(dataset)
            if type(sampler) is trl.trainer.utils.RepeatSampler:
                sampler.__class__ = EpochSeededSampler
            return sampler

    return GRPOTrainer


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    metrics: list[dict[str, Any]]
    plot: Path | None
    samples: list[Path]


def start_outputs(out: Path, resume_from: Path | None) -> None:
    """Metrics and samples of the run folder as the run starts: resuming drops what was logged after the
    checkpoint; a fresh start (the folder of a run that died before its first checkpoint) drops them all,
    so no step is logged twice."""
    from .metrics import MetricsLog

    if resume_from is not None:
        dropped = MetricsLog(out / "metrics.jsonl").truncate_after(checkpoint_step(resume_from))
        if dropped:
            log.info("resuming at %s: dropped %d metrics line(s) logged after it", resume_from.name, dropped)
        return
    dropped = MetricsLog(out / "metrics.jsonl").truncate_after(0)
    stale = sorted((out / "samples").glob("step-*.html"))
    for page in stale:
        page.unlink()
    if dropped or stale:
        log.warning("%s held an earlier run with no checkpoint: starting over (dropped %d metrics line(s) and "
                    "%d samples page(s))", out, dropped, len(stale))


def run_trl(p: Plan) -> TrainResult:
    """Train with TRL's GRPOTrainer; writes checkpoints, the final model, metrics, samples and the plot."""
    import trl

    from .callbacks import RunOutputs, make_callback
    from .metrics import MetricsLog
    from .prepare import trl_dataset
    from .reward import TrainingReward

    req = p.request
    out = Path(req.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(_run_record(p), indent=2, default=str) + "\n", encoding="utf-8")
    start_outputs(out, p.resume_from)
    try:
        args = trl.GRPOConfig(**grpo_args(p))
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"TRL refused the training options: {exc}") from exc
    dataset = trl_dataset(p.rows, max_pixels=p.resolved.llmi.max_image_pixels)
    reward = TrainingReward(req.settings, p.reward, impute=_impute(p), execute=req.execute)
    outputs = RunOutputs(reward, out, samples_every=p.resolved.llmi.samples_every,
                         samples_per_page=p.resolved.llmi.samples_per_page,
                         stop_after_failed_steps=p.resolved.llmi.stop_after_failed_steps,
                         origins=[r.origin for r in p.rows])
    trainer = epoch_seeded_trainer(trl)(
        model=req.model,
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=p.processing_class,
        peft_config=peft_config(p.resolved.llmi),
        callbacks=[make_callback(outputs)],
    )
    try:
        trainer.train(resume_from_checkpoint=str(p.resume_from) if p.resume_from else None)
    finally:
        loop = getattr(trainer, "async_loop", None)
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(reward.aclose(), loop).result(60)
    if outputs.stop_reason is not None:
        last = last_checkpoint(out)
        raise JudgeUnreachable(
            f"{outputs.stop_reason}; "
            + (f"{last.name} is kept: fix the judges and run again with --resume" if last else
               "no checkpoint was saved: fix the judges and run again")
        )
    trainer.save_model(str(out))
    if p.processing_class is not None and trainer.is_world_process_zero():
        p.processing_class.save_pretrained(str(out))
    png = out / "reward.png"
    return TrainResult(
        output_dir=out,
        global_step=trainer.state.global_step,
        metrics=MetricsLog(out / "metrics.jsonl").read(),
        plot=png if png.exists() else None,
        samples=sorted((out / "samples").glob("step-*.html")),
    )
