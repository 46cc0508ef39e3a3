"""The trainer callback that writes the run's outputs: ``metrics.jsonl`` at every logged step,
``samples/step-N.html`` every ``samples_every`` steps, and ``reward.png`` at the end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .metrics import MetricsLog, plot, step_metrics, trainer_numbers
from .reward import TrainingReward
from .samples import samples_page

log = logging.getLogger(__name__)


class RunOutputs:
    """What the callback does, free of transformers (testable with plain values)."""

    def __init__(self, reward: TrainingReward, output_dir: Path, *, samples_every: int, samples_per_page: int):
        self.reward = reward
        self.dir = Path(output_dir)
        self.metrics = MetricsLog(self.dir / "metrics.jsonl")
        self.samples_every = samples_every
        self.samples_per_page = samples_per_page
        self.samples_dir = self.dir / "samples"

    def on_log(self, step: int, logs: dict[str, Any], *, epoch: float | None = None, last: bool = False) -> dict[str, Any] | None:
        if "train_runtime" in logs:  # the end-of-training summary, not a step
            return None
        batches = self.reward.drain()
        line: dict[str, Any] = {**trainer_numbers(logs), **step_metrics(batches), "step": step}
        if epoch is not None:
            line["epoch"] = round(epoch, 4)
        self.metrics.append(line)
        if batches and (step % self.samples_every == 0 or last or step == 1):
            self.write_samples(step, [r for b in batches for r in b.rollouts])
        return line

    def write_samples(self, step: int, rollouts) -> Path:
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = self.samples_dir / f"step-{step}.html"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(samples_page(step, rollouts, n=self.samples_per_page), encoding="utf-8")
        tmp.replace(path)
        return path

    def on_train_end(self) -> Path | None:
        lines = self.metrics.read()
        if not lines:
            return None
        return plot(lines, self.dir / "reward.png")


def make_callback(outputs: RunOutputs):
    """A ``transformers.TrainerCallback`` driving ``outputs`` (on the main process only)."""
    from transformers import TrainerCallback

    class LLMIOutputsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs is not None:
                outputs.on_log(state.global_step, logs, epoch=state.epoch, last=state.global_step >= state.max_steps)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                outputs.on_train_end()

    return LLMIOutputsCallback()
