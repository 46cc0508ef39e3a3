"""The trainer callback that writes the run's outputs: ``metrics.jsonl`` at every logged step,
``samples/step-N.html`` every ``samples_every`` steps, and ``reward.png`` at the end."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from .metrics import MetricsLog, plot, step_metrics, trainer_numbers
from .reward import TrainingReward
from .samples import samples_page

log = logging.getLogger(__name__)


class RunOutputs:
    """What the callback does, free of transformers (testable with plain values)."""

    def __init__(self, reward: TrainingReward, output_dir: Path, *, samples_every: int, samples_per_page: int,
                 stop_after_failed_steps: int = 0, origins: list[str] | None = None):
        self.reward = reward
        self.dir = Path(output_dir)
        self.metrics = MetricsLog(self.dir / "metrics.jsonl")
        self.samples_every = samples_every
        self.samples_per_page = samples_per_page
        self.samples_dir = self.dir / "samples"
        self.stop_after_failed_steps = stop_after_failed_steps
        self.origins = origins
        self.failed_steps = 0
        #: Why training should stop (judges down), once it should; ``None`` while all is well.
        self.stop_reason: str | None = None

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
        self.watch(step, logs, batches)
        return line

    def watch(self, step: int, logs: dict[str, Any], batches=()) -> None:
        """Counts the logged steps in a row whose every rollout was dropped: TRL's step reward (gathered
        over all processes, so every process decides alike) is NaN then. Sets :attr:`stop_reason`."""
        if "train_runtime" in logs or "reward" not in logs:
            return
        value = logs["reward"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self.failed_steps += 1
        else:
            self.failed_steps = 0
        if self.stop_after_failed_steps and self.failed_steps >= self.stop_after_failed_steps:
            errors = [f"{k}: {v}" for b in batches for r in b.rollouts for k, v in r.result.errors.items()]
            self.stop_reason = (
                f"stopped at step {step}: every rollout of the last {self.failed_steps} steps was dropped"
                + (f" ({errors[-1][:200]})" if errors else "")
            )
            log.error("%s", self.stop_reason)

    def write_samples(self, step: int, rollouts) -> Path:
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = self.samples_dir / f"step-{step}.html"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(samples_page(step, rollouts, n=self.samples_per_page, origins=self.origins), encoding="utf-8")
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
            if logs is None:
                return control
            if state.is_world_process_zero:
                outputs.on_log(state.global_step, logs, epoch=state.epoch, last=state.global_step >= state.max_steps)
            else:
                outputs.watch(state.global_step, logs)
            if outputs.failed_steps:  # a step that learnt nothing is not checkpointed: resume before it
                control.should_save = False
            if outputs.stop_reason is not None:  # the judges are down: keep the last good checkpoint
                control.should_training_stop = True
            return control

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                outputs.on_train_end()

    return LLMIOutputsCallback()
