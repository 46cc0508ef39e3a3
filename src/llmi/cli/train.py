"""``llmi train``: GRPO training with llmi's reward — TRL on one machine, or a verl launch for a Ray cluster.

Everything that can be checked without the model is checked first (recipe fields, data, judges, tools,
prompt lengths, the output folder), so a mistake costs seconds. See docs/train.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, List, Optional

import typer

from . import app
from .common import console, errors_as_exit, fail, info, load, setup_logging, warn


def parse_set(items: List[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value is read as JSON when it parses (numbers, booleans, lists, tables)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set wants KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def _judge_overrides(llm_url: str | None, mllm_url: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if llm_url:
        out["llm_judge"] = {"base_url": llm_url}
    if mllm_url:
        out["mllm_judge"] = {"base_url": mllm_url}
    return out


def _config_for_cluster(config: Path | None) -> str | None:
    """How the Ray workers find the config: relative to the working dir that `ray job submit` uploads."""
    if config is None:
        return None
    path = config.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        warn(f"{config} is outside the current folder, which `ray job submit --working-dir .` uploads; the "
             "workers will read it at its absolute path, so it must exist on every node")
        return str(path)


@app.command("train")
def train(
    model: Optional[str] = typer.Option(None, "--model", help="hub id or local folder (text LLM or vision-language model)"),
    data: Optional[List[str]] = typer.Option(None, "--data", help="training data: .parquet/.jsonl files or hf://datasets/... (repeatable)"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="run folder: checkpoints, metrics, samples"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="llmi-grpo, llmi-gspo or mllmi-grpo (default: recipe in the train table)"),
    config: Optional[Path] = typer.Option(None, "--config", help="llmi TOML: judges, tools, train-table overrides"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="stop after N optimizer steps"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint in --output-dir"),
    backend: Optional[str] = typer.Option(None, "--backend", help="trl (this machine) or verl (write a Ray launch)"),
    set_: List[str] = typer.Option([], "--set", help="KEY=VALUE: any train-table field or trainer option (repeatable)"),
    num_generations: Optional[int] = typer.Option(None, "--num-generations", help="completions per prompt"),
    per_device_train_batch_size: Optional[int] = typer.Option(None, "--per-device-train-batch-size"),
    max_completion_length: Optional[int] = typer.Option(None, "--max-completion-length"),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate"),
    lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="train LoRA adapters (peft)"),
    use_vllm: Optional[bool] = typer.Option(None, "--use-vllm/--no-vllm", help="generate with vLLM (TRL)"),
    vllm_mode: Optional[str] = typer.Option(None, "--vllm-mode", help="colocate or server (TRL's vllm_mode)"),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="wandb, tensorboard, ... (TRL's report_to)"),
    llm_judge_url: Optional[str] = typer.Option(None, "--llm-judge-url", help="override the llm_judge base_url"),
    mllm_judge_url: Optional[str] = typer.Option(None, "--mllm-judge-url", help="override the mllm_judge base_url"),
    no_judge_check: bool = typer.Option(False, "--no-judge-check", help="do not contact the judges before training"),
    val_data: Optional[List[str]] = typer.Option(None, "--val-data", help="verl: held-out data for validation"),
    submit: bool = typer.Option(False, "--submit", help="verl: also run the `ray job submit` command"),
    show_recipe: bool = typer.Option(False, "--show-recipe", help="print the resolved options and exit"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train an LLM or MLLM to orchestrate the tools with GRPO on llmi's hybrid reward.

    The reward is exactly `llmi reward`'s: the judges of the llm_judge and mllm_judge tables, the tools
    of the tools tables. Recipe values can be overridden in the train table of the config (under the
    trainer's own option names) or with flags.
    """
    setup_logging(verbose)
    from ..train import recipes
    from ..train.runner import TrainRequest, plan

    with errors_as_exit():
        flags: dict[str, Any] = {
            "num_generations": num_generations, "per_device_train_batch_size": per_device_train_batch_size,
            "max_completion_length": max_completion_length, "learning_rate": learning_rate, "lora": lora,
            "use_vllm": use_vllm, "vllm_mode": vllm_mode, "report_to": report_to,
        }
        flags = {k: v for k, v in flags.items() if v is not None}
        flags.update(parse_set(set_))
        if no_judge_check:
            flags["check_judges"] = False
        if vllm_mode is not None and vllm_mode not in ("colocate", "server"):
            fail("--vllm-mode must be colocate or server")
        if backend is not None and backend not in ("trl", "verl"):
            fail("--backend must be trl or verl")
        settings = load(config, _judge_overrides(llm_judge_url, mllm_judge_url))
        if show_recipe:
            resolved = recipes.resolve(recipe, settings.train, flags=flags, known_trainer=recipes.trainer_fields(),
                                       reward=recipes.explicit_reward_fields(settings))
            typer.echo(json.dumps(resolved.to_dict(), indent=2, default=str))
            return
        if not model or not data or output_dir is None:
            fail("--model, --data and --output-dir are required")
        req = TrainRequest(model=model, data=list(data), output_dir=output_dir, settings=settings, recipe=recipe,
                           flags=flags, max_steps=max_steps, resume=resume, backend=backend)
        p = plan(req)
        info(f"recipe {p.resolved.recipe.name}: {len(p.rows)} rows, {p.lengths.truncated} truncated, "
             f"{p.lengths.dropped} dropped (longest prompt {p.lengths.longest} tokens); tools {', '.join(p.usable_tools) or 'none'}"
             + (f"; judges {p.judge_models}" if p.judge_models else ""))
        if p.backend == "verl":
            if resume:
                warn("--resume is for the trl backend: verl resumes from the latest checkpoint under the output "
                     "folder by itself (its trainer.resume_mode=auto)")
            _verl(p, config, val_data, submit)
            return
        from ..train.runner import run_trl

        try:
            result = run_trl(p)
        except KeyboardInterrupt:
            fail(f"interrupted; checkpoints in {output_dir} are kept: run again with --resume", 130)
        last = result.metrics[-1] if result.metrics else {}
        info(f"trained to step {result.global_step}; last reward {last.get('reward')}; model in {result.output_dir}; "
             f"metrics {result.output_dir / 'metrics.jsonl'}; {len(result.samples)} samples page(s)"
             + (f"; plot {result.plot}" if result.plot else ""))


def _verl(p, config: Path | None, val_data: Optional[List[str]], submit: bool) -> None:
    from ..train.data import read_rows
    from ..train.prepare import apply_system_prompt
    from ..train.verl_launch import write_launch

    val_rows = apply_system_prompt(read_rows(list(val_data)), p.system_prompt) if val_data else None
    launch = write_launch(p.rows, p.resolved, model=p.request.model, output_dir=Path(p.request.output_dir),
                          config_file=_config_for_cluster(config), val_rows=val_rows, max_steps=p.request.max_steps)
    info(f"verl data: {launch.train_file}" + (f", {launch.val_file}" if launch.val_file else ""))
    info(f"launch script: {launch.script} (overrides in {launch.script.parent / 'verl_overrides.json'})")
    console.print(" ".join(launch.command), highlight=False, markup=False, soft_wrap=True)
    if submit:
        if shutil.which("ray") is None:
            fail("--submit: the `ray` command is not installed here (pip install 'llmi[verl]')")
        if not os.environ.get("RAY_ADDRESS"):
            fail("--submit: set RAY_ADDRESS to the Ray head's dashboard address (e.g. http://head:8265)")
        code = subprocess.call(launch.command)
        if code:
            fail(f"ray job submit exited with {code}", code)
