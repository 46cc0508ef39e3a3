"""Recipes carry the release's values; options resolve recipe < [train] < flags; names are checked;
the verl mapping; and the run outputs (metrics lines, samples page, plot) from plain values."""

from __future__ import annotations

import json

import pytest

from llmi.config import load_settings
from llmi.reward.rules import RewardResult
from llmi.train import recipes
from llmi.train.errors import RecipeError
from llmi.train.settings import TrainSettings

KNOWN = {"num_generations", "per_device_train_batch_size", "learning_rate", "max_completion_length", "beta",
         "loss_type", "epsilon", "epsilon_high", "delta", "importance_sampling_level", "warmup_steps",
         "weight_decay", "max_grad_norm", "lr_scheduler_type", "lr_scheduler_kwargs", "num_iterations",
         "num_train_epochs", "temperature", "top_p", "scale_rewards", "save_strategy", "save_steps",
         "gradient_checkpointing", "use_vllm", "vllm_mode", "report_to", "gradient_accumulation_steps"}


def test_the_recipes_hold_the_releases_values():
    # values read from ByteDance-BandAI/LLM-I recipe/llmi/{llmi_grpo,llmi_gspo,mllmi_grpo}.sh
    g, s, m = (recipes.get(n) for n in ("llmi-grpo", "llmi-gspo", "mllmi-grpo"))
    for r in (g, s, m):
        t = r.trainer
        assert (t["num_generations"], t["learning_rate"], t["weight_decay"], t["max_grad_norm"], t["beta"]) == \
            (8, 1e-6, 0.1, 1.0, 0.0)
        assert t["lr_scheduler_type"] == "cosine_with_min_lr" and t["lr_scheduler_kwargs"]["min_lr_rate"] == 0.01
        assert (r.reward["w_num"], r.reward["w_mllm"], r.reward["w_llm"]) == (0.2, 0.3, 0.5)
        assert r.llmi["system_prompt"] == "llmi" and r.notes
    assert g.trainer["warmup_steps"] == 5 and s.trainer["warmup_steps"] == 6 and m.trainer["warmup_steps"] == 4
    assert g.llmi["prompt_batch"] == 32 and s.llmi["prompt_batch"] == 16 and m.llmi["prompt_batch"] == 32
    assert (g.llmi["max_prompt_length"], g.trainer["max_completion_length"]) == (8192, 24576)
    assert (m.llmi["max_prompt_length"], m.trainer["max_completion_length"]) == (16384, 16384)
    assert g.trainer["loss_type"] == "dapo" and g.trainer["delta"] == 10.0  # token-mean, clip_ratio_c 10
    assert s.trainer["importance_sampling_level"] == "sequence" and s.trainer["loss_type"] == "grpo"
    assert (s.trainer["epsilon"], s.trainer["epsilon_high"]) == (3e-4, 4e-4) and "delta" not in s.trainer
    assert (g.reward["text_weight"], g.reward["image_weight"]) == (1.4, 0.6)
    assert (m.reward["text_weight"], m.reward["image_weight"]) == (1.5, 0.5)
    assert m.llmi["max_image_pixels"] == 1024 * 1024


def test_precedence_recipe_then_table_then_flags(tmp_path):
    cfg = tmp_path / "llmi.toml"
    cfg.write_text('[train]\nrecipe = "llmi-gspo"\nnum_generations = 4\nsamples_every = 3\n'
                   'learning_rate = 2e-6\n[train.verl]\n"trainer.nnodes" = 4\n')
    s = load_settings(cfg, environ={}).train
    r = recipes.resolve(None, s, flags={"learning_rate": 5e-6, "samples_per_page": 2}, known_trainer=KNOWN)
    assert r.recipe.name == "llmi-gspo"
    assert r.trainer["num_generations"] == 4 and r.trainer["learning_rate"] == 5e-6
    assert r.trainer["epsilon"] == 3e-4  # untouched recipe value
    assert (r.llmi.samples_every, r.llmi.samples_per_page, r.llmi.prompt_batch) == (3, 2, 16)
    assert r.verl["trainer.nnodes"] == 4
    assert r.llmi.trainer_options() == {}  # the merged llmi settings hold no trainer options
    # the reward: recipe weights, then explicit [reward]-style fields
    r = recipes.resolve("mllmi-grpo", TrainSettings(), known_trainer=KNOWN, reward={"w_tool": 0.1})
    assert r.reward["text_weight"] == 1.5 and r.reward["w_tool"] == 0.1


def test_names_are_checked():
    with pytest.raises(RecipeError, match="unknown recipe field 'leraning_rate'.*'learning_rate'"):
        recipes.resolve("llmi-grpo", TrainSettings(leraning_rate=1.0), known_trainer=KNOWN)
    with pytest.raises(RecipeError, match="output_dir is set by llmi train"):
        recipes.resolve("llmi-grpo", flags={"output_dir": "x"}, known_trainer=KNOWN)
    with pytest.raises(RecipeError, match="unknown reward field 'text_wieght'"):
        recipes.resolve("llmi-grpo", known_trainer=KNOWN, reward={"text_wieght": 1.0})
    with pytest.raises(RecipeError, match="invalid reward"):
        recipes.resolve("llmi-grpo", known_trainer=KNOWN, reward={"tool_beta": 2.0})
    with pytest.raises(RecipeError, match="invalid"):
        recipes.resolve("llmi-grpo", flags={"prompt_overflow": "wrap"}, known_trainer=KNOWN)


def test_the_verl_mapping():
    g = recipes.verl_overrides(recipes.resolve("llmi-grpo", known_trainer=KNOWN), max_steps=7)
    assert g["actor_rollout_ref.actor.loss_agg_mode"] == "token-mean"
    assert g["actor_rollout_ref.actor.clip_ratio_c"] == 10.0 and g["actor_rollout_ref.actor.use_kl_loss"] is False
    assert g["actor_rollout_ref.actor.optim.lr_scheduler_type"] == "cosine"
    assert g["actor_rollout_ref.actor.optim.min_lr_ratio"] == 0.01
    assert g["actor_rollout_ref.actor.optim.lr_warmup_steps"] == 5
    assert g["actor_rollout_ref.actor.ppo_mini_batch_size"] == g["data.train_batch_size"] == 32
    assert g["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == 4
    assert g["actor_rollout_ref.actor.ppo_max_token_len_per_gpu"] == 8192 + 24576
    assert g["actor_rollout_ref.rollout.tensor_model_parallel_size"] == 2
    assert g["trainer.total_training_steps"] == 7
    s = recipes.verl_overrides(recipes.resolve("llmi-gspo", known_trainer=KNOWN))
    assert s["actor_rollout_ref.actor.policy_loss.loss_mode"] == "gspo"
    assert s["actor_rollout_ref.actor.loss_agg_mode"] == "seq-mean-token-mean"
    assert (s["actor_rollout_ref.actor.clip_ratio_low"], s["actor_rollout_ref.actor.clip_ratio_high"]) == (3e-4, 4e-4)
    # TRL-only mechanics are ignored; an option with no verl meaning is an error that says what to do
    r = recipes.resolve("llmi-grpo", flags={"use_vllm": True, "gradient_accumulation_steps": 8}, known_trainer=KNOWN)
    assert "use_vllm" not in json.dumps(recipes.verl_overrides(r))
    with pytest.raises(RecipeError, match="loss_type 'sapo' has no verl"):
        recipes.verl_overrides(recipes.resolve("llmi-grpo", flags={"loss_type": "sapo"}, known_trainer=KNOWN | {"x"}))
    with pytest.raises(RecipeError, match=r"'top_entropy_quantile' has no verl mapping.*\[train.verl\]"):
        recipes.verl_overrides(recipes.resolve("llmi-grpo", flags={"top_entropy_quantile": 0.2},
                                               known_trainer=KNOWN | {"top_entropy_quantile"}))


def test_the_recipes_are_valid_grpo_configs():
    trl = pytest.importorskip("trl")
    from llmi.train.runner import Plan, grpo_args
    from llmi.train.prepare import LengthReport

    for name in recipes.RECIPES:
        r = recipes.resolve(name, known_trainer=recipes.trainer_fields())
        p = Plan(request=type("R", (), {"output_dir": "/tmp/x", "max_steps": 2})(), resolved=r, reward=None, rows=[],
                 system_prompt=None, usable_tools=[], fingerprint="", lengths=LengthReport())
        args = grpo_args(p)
        # prompt_batch prompts x num_generations completions per optimizer step, on one process
        assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == \
            r.llmi.prompt_batch * r.trainer["num_generations"]
        cfg = trl.GRPOConfig(**args)
        assert cfg.generation_batch_size == r.llmi.prompt_batch * 8 and cfg.beta == 0.0


def test_show_recipe_prints_the_resolved_options(tmp_path):
    from typer.testing import CliRunner

    from llmi.cli import app

    pytest.importorskip("trl")
    cfg = tmp_path / "llmi.toml"
    cfg.write_text("[train]\nnum_generations = 4\n")
    r = CliRunner().invoke(app, ["train", "--show-recipe", "--recipe", "llmi-gspo", "--config", str(cfg),
                                 "--set", "max_prompt_length=4096", "--learning-rate", "3e-6"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["trainer"]["num_generations"] == 4 and shown["trainer"]["learning_rate"] == 3e-6
    assert shown["llmi"]["max_prompt_length"] == 4096 and shown["notes"]
    r = CliRunner().invoke(app, ["train", "--show-recipe", "--set", "num_generatoins=4"])
    assert r.exit_code == 2 and "unknown recipe field 'num_generatoins'" in r.output


# -- the run's outputs from plain values -----------------------------------------------------------

def _rollout(row, score, *, doc_stats=None, errors=None, tokens=10):
    from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
    from llmi.images import ImageData
    from llmi.train.reward import Rollout
    from tests.helpers import make_png

    blocks = [TextBlock("Some text.")]
    for source, (total, ok) in (doc_stats or {}).items():
        blocks += [ImageBlock(ImageData.from_bytes(make_png(8, 8)), source, "d")] * ok
        blocks += [FailureBlock(source, "failed", "tool_error")] * (total - ok)
    result = RewardResult(score=score, s_num=1.0, s_llm=0.5, s_mllm=0.75, r_tool=0.2, text=4.0, image=3.0,
                          n_images=sum(ok for _, ok in (doc_stats or {}).values()), errors=dict(errors or {}))
    return Rollout(row=row, question=f"q{row}", completion="x" * 20, result=result,
                   document=Document(blocks=blocks), completion_tokens=tokens)


def test_step_metrics_and_the_outputs(tmp_path):
    from llmi.train.callbacks import RunOutputs
    from llmi.train.metrics import MetricsLog, step_metrics
    from llmi.train.reward import BatchRecord

    batch = BatchRecord(rollouts=[
        _rollout(0, 0.8, doc_stats={"code": (2, 1)}),
        _rollout(0, 0.4, doc_stats={"search": (1, 1)}, tokens=20),
        _rollout(1, None, errors={"llm_judge": "timeout"}),
        _rollout(1, 0.6),
    ], elapsed_s=1.5)
    m = step_metrics([batch])
    assert m["reward"] == pytest.approx(0.6) and m["rollouts"] == 4
    assert m["llm_judge_error_frac"] == 0.25 and m["judge_error_frac"] == 0.25 and m["dropped_frac"] == 0.25
    assert m["tool_success/code"] == 0.5 and m["tool_calls/code"] == 2 and m["tool_success/search"] == 1.0
    assert m["tool_success/edit"] is None and m["completion_length"] == 12.5 and m["reward_time_s"] == 1.5
    assert m["prompt_rows"] == [0, 1] and m["s_mllm"] == 0.75

    class FakeReward:
        def __init__(self):
            self.batches = [[batch], [batch], []]

        def drain(self):
            return self.batches.pop(0)

    outputs = RunOutputs(FakeReward(), tmp_path, samples_every=2, samples_per_page=3)
    for step in (1, 2, 3):
        outputs.on_log(step, {"loss": 0.1, "reward": 99.0, "learning_rate": 1e-6}, epoch=0.5)
    assert outputs.on_log(4, {"train_runtime": 3.0}) is None  # the end summary is not a step
    lines = MetricsLog(tmp_path / "metrics.jsonl").read()
    assert [l["step"] for l in lines] == [1, 2, 3] and lines[0]["loss"] == 0.1
    assert lines[0]["reward"] == pytest.approx(0.6)  # ours, not the trainer's number
    assert lines[2]["rollouts"] == 0
    pages = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert pages == ["step-1.html", "step-2.html"]
    page = (tmp_path / "samples" / "step-2.html").read_text()
    # the best and the worst of each prompt's group, with their breakdown
    assert page.count('class="llmi-sample"') == 3 and "0.800" in page and "0.400" in page
    assert "llm_judge: timeout" in page or "0.600" in page
    assert "Content-Security-Policy" in page and "<script" not in page
    png = outputs.on_train_end()
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert MetricsLog(tmp_path / "metrics.jsonl").truncate_after(2) == 1
    assert [l["step"] for l in MetricsLog(tmp_path / "metrics.jsonl").read()] == [1, 2]


def test_the_train_tables_in_the_docs_resolve(tmp_path):
    """Every ```toml block of docs/train.md with a [train] table names real fields and trainer options."""
    import re
    from pathlib import Path

    pytest.importorskip("trl")
    text = (Path(__file__).resolve().parents[1] / "docs" / "train.md").read_text()
    blocks = [b for b in re.findall(r"^```toml\n(.*?)^```", text, re.DOTALL | re.MULTILINE) if "[train]" in b]
    assert blocks
    for block in blocks:
        cfg = tmp_path / "llmi.toml"
        cfg.write_text(block)
        r = recipes.resolve(None, load_settings(cfg, environ={}).train, known_trainer=recipes.trainer_fields())
        assert r.recipe.name in recipes.RECIPES
