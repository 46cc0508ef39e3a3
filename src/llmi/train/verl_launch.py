"""A verl 0.9.1 run on a Ray cluster, from the same recipe: the data in verl's parquet layout, the Hydra
overrides, and the ``ray job submit`` command (written to ``OUT/launch.sh`` and printed).

The reward is llmi's: the overrides load :class:`llmi.integrations.verl.LLMIRewardManager` through
verl's ``importlib`` source (``reward.reward_manager.module.path=pkg://llmi.integrations.verl``), which
works in every Ray process. (verl's ``register`` source looks the name up in a registry that is filled
at import time, and the driver validates it before any llmi module is imported there.)

verl 0.9.1 has no ``replace_system_prompt`` (the release's fork had one): llmi's system prompt is
written into each row's ``prompt`` here instead.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import recipes
from .data import TrainRow, to_verl_record, write_records

MANAGER_MODULE = "pkg://llmi.integrations.verl"
MANAGER_CLASS = "LLMIRewardManager"
ENTRY = "verl.trainer.main_ppo"


def hydra_value(value: Any, *, quote: bool = False) -> str:
    """A value as Hydra's override grammar reads it (strings inside lists and tables always quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v, quote=True) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v, quote=True)}" for k, v in value.items()) + "}"
    text = str(value)
    if not quote and text and all(c.isalnum() or c in "._-/@+" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Launch:
    overrides: dict[str, Any]
    command: list[str]
    script: Path
    train_file: Path
    val_file: Path | None


def launch_overrides(
    resolved: recipes.Resolved,
    *,
    model: str,
    train_files: Sequence[str],
    val_files: Sequence[str] | None,
    output_dir: Path,
    config_file: str | None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """All Hydra overrides of the run; keys that verl's schema lacks get Hydra's ``+`` prefix."""
    s = resolved.llmi
    out: dict[str, Any] = {
        "data.train_files": list(train_files),
        "data.val_files": list(val_files or train_files),
        "actor_rollout_ref.model.path": model,
        "reward.reward_manager.source": "importlib",
        "reward.reward_manager.name": MANAGER_CLASS,
        "reward.reward_manager.module.path": MANAGER_MODULE,
        "+reward.reward_kwargs.recipe": resolved.recipe.name,
        "+reward.reward_kwargs.drop_score": s.drop_score,
        "trainer.nnodes": s.nnodes,
        "trainer.n_gpus_per_node": s.gpus_per_node,
        "trainer.default_local_dir": str(Path(output_dir).resolve() / "checkpoints"),
    }
    if config_file:
        out["+reward.reward_kwargs.llmi_config"] = config_file
    for key, value in resolved.reward.items():
        out[f"+reward.reward_kwargs.reward.{key}"] = value
    out.update(recipes.verl_overrides(resolved, max_steps=max_steps))
    if not val_files:  # no held-out data: no validation passes
        out["trainer.val_before_train"] = False
        out["trainer.test_freq"] = -1
    return out


def submit_command(overrides: Mapping[str, Any], *, working_dir: str = ".") -> list[str]:
    cmd = ["ray", "job", "submit", "--no-wait", "--working-dir", working_dir, "--", "python3", "-m", ENTRY]
    return cmd + [f"{k}={hydra_value(v)}" for k, v in overrides.items()]


def write_launch(
    rows: Sequence[TrainRow],
    resolved: recipes.Resolved,
    *,
    model: str,
    output_dir: Path,
    config_file: str | None,
    val_rows: Sequence[TrainRow] | None = None,
    max_steps: int | None = None,
) -> Launch:
    """Write ``OUT/data/train.parquet`` (and ``val.parquet``), ``OUT/verl_overrides.json`` and
    ``OUT/launch.sh``; nothing is submitted."""
    out = Path(output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    px = resolved.llmi.max_image_pixels
    train_file = out / "data" / "train.parquet"
    write_records([to_verl_record(r, max_pixels=px) for r in rows], train_file)
    val_file = None
    if val_rows:
        val_file = out / "data" / "val.parquet"
        write_records([to_verl_record(r, max_pixels=px) for r in val_rows], val_file)
    overrides = launch_overrides(
        resolved, model=model, train_files=[str(train_file.resolve())],
        val_files=[str(val_file.resolve())] if val_file else None, output_dir=out,
        config_file=config_file, max_steps=max_steps,
    )
    (out / "verl_overrides.json").write_text(json.dumps(overrides, indent=2) + "\n", encoding="utf-8")
    command = submit_command(overrides)
    script = out / "launch.sh"
    lines = [
        "#!/usr/bin/env bash",
        f"# verl 0.9.1 GRPO run written by `llmi train --backend verl` (recipe {resolved.recipe.name}).",
        "# Run it from the folder that holds your llmi.toml: `ray job submit --working-dir .` uploads it,",
        "# and every node needs `pip install 'llmi[verl]'` (or a runtime_env that installs it).",
        "# The data paths below must be readable on every node (shared storage).",
        "set -euo pipefail",
        ': "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray dashboard of the head node, e.g. http://head:8265}"',
        " ".join(shlex.quote(c) for c in command[: command.index(ENTRY) + 1]) + " \\\n    "
        + " \\\n    ".join(shlex.quote(c) for c in command[command.index(ENTRY) + 1:]),
        "",
    ]
    script.write_text("\n".join(lines), encoding="utf-8")
    script.chmod(0o755)
    return Launch(overrides=overrides, command=command, script=script, train_file=train_file, val_file=val_file)
