"""The verl 0.9.1 reward manager, the ``compute_score`` entry point and the cluster launch.

verl itself cannot be installed next to TRL 1.16 (verl 0.9.1 pins transformers < 5.11), so the verl
interface is stood in here, built from verl 0.9.1's source: ``verl.DataProto`` (a batch of tensors plus
numpy object arrays, ``data[i]`` an item, ``data[i:j]`` a DataProto),
``verl.experimental.reward_loop.reward_manager.register`` / ``REWARD_MANAGER`` and ``RewardManagerBase``
(``__init__(config, tokenizer, compute_score)`` taking ``self.loop``, abstract ``async run_single(data)``,
``assemble_rm_scores``). The rollouts are scored as verl's ``RewardLoopWorker.compute_score_batch``
does: one ``run_single`` per one-row slice, all gathered at once, on real tools and loopback judges.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests import train_support as ts  # noqa: E402


# -- the stand-in of verl 0.9.1's interface ---------------------------------------------------------
@dataclass
class DataProtoItem:
    batch: dict
    non_tensor_batch: dict = field(default_factory=dict)


@dataclass
class DataProto:
    batch: dict
    non_tensor_batch: dict = field(default_factory=dict)
    meta_info: dict = field(default_factory=dict)

    def __len__(self):
        return len(next(iter(self.batch.values())))

    def __getitem__(self, item):
        if isinstance(item, slice):
            return DataProto({k: v[item] for k, v in self.batch.items()},
                             {k: v[item] for k, v in self.non_tensor_batch.items()}, self.meta_info)
        return DataProtoItem({k: v[item] for k, v in self.batch.items()},
                             {k: v[item] for k, v in self.non_tensor_batch.items()})


def _verl_modules():
    REWARD_MANAGER: dict = {}

    def register(name):
        def decorator(cls):
            if name in REWARD_MANAGER and REWARD_MANAGER[name] != cls:
                raise ValueError(f"reward manager {name} has already been registered")
            REWARD_MANAGER[name] = cls
            return cls
        return decorator

    class RewardManagerBase:
        _class_initialized = False

        def __init__(self, config, tokenizer, compute_score):
            self.config, self.tokenizer, self.compute_score = config, tokenizer, compute_score
            try:
                self.loop = asyncio.get_event_loop()
            except RuntimeError:
                self.loop = asyncio.new_event_loop()

        async def run_single(self, data):
            raise NotImplementedError

        @classmethod
        def assemble_rm_scores(cls, data, scores):
            prompt_length = data.batch["prompts"].size(1)
            valid = data.batch["attention_mask"][:, prompt_length:].sum(dim=1)
            rm = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
            rm[torch.arange(rm.size(0)), valid - 1] = rm.new_tensor(scores)
            return rm

    verl = types.ModuleType("verl")
    verl.DataProto = DataProto
    names = ["verl.experimental", "verl.experimental.reward_loop", "verl.experimental.reward_loop.reward_manager",
             "verl.experimental.reward_loop.reward_manager.base"]
    mods = {"verl": verl, **{n: types.ModuleType(n) for n in names}}
    mods["verl.experimental.reward_loop.reward_manager"].register = register
    mods["verl.experimental.reward_loop.reward_manager"].REWARD_MANAGER = REWARD_MANAGER
    mods["verl.experimental.reward_loop.reward_manager.base"].RewardManagerBase = RewardManagerBase
    return mods, REWARD_MANAGER, RewardManagerBase


@pytest.fixture
def verl_adapter(monkeypatch):
    mods, registry, base = _verl_modules()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "llmi.integrations.verl", raising=False)
    module = importlib.import_module("llmi.integrations.verl")
    yield module, registry, base
    sys.modules.pop("llmi.integrations.verl", None)  # the next import sees no verl again


@pytest.fixture
def judges():
    from tests.conftest import _judge_server

    with _judge_server(ts.judge_reply) as (url, server):
        yield url, server


def tokenizer():
    fast, _ = ts._tokenizer(ts.WORDS + [ts.CODE_TAG, ts.EDIT_TAG],
                            ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"])
    return fast


def batch(tok, rollouts):
    """A DataProto as verl's agent loop builds it: left-padded prompts, right-padded responses."""
    P, R = 6, 10
    pad = tok.pad_token_id
    prompts, responses, masks = [], [], []
    for prompt, response, _ in rollouts:
        p = tok(prompt, add_special_tokens=False)["input_ids"][-P:]
        r = tok(response, add_special_tokens=False)["input_ids"][:R]
        prompts.append([pad] * (P - len(p)) + p)
        responses.append(r + [pad] * (R - len(r)))
        masks.append([0] * (P - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (R - len(r)))
    non_tensor = {
        "data_source": np.array(["interleaved_mm" if x[2].get("raw_prompt") else "interleaved" for x in rollouts],
                                dtype=object),
        "extra_info": np.array([x[2]["extra_info"] for x in rollouts], dtype=object),
        "raw_prompt": np.array([x[2].get("raw_prompt", []) for x in rollouts] + [None], dtype=object)[:-1],
        "reward_model": np.array([{"ground_truth": ""}] * len(rollouts), dtype=object),
    }
    return DataProto(
        batch={"prompts": torch.tensor(prompts), "responses": torch.tensor(responses),
               "attention_mask": torch.tensor(masks)},
        non_tensor_batch=non_tensor,
    )


def test_the_manager_registers_and_scores_rollouts_like_the_reward_loop(tmp_path, judges, verl_adapter):
    from PIL import Image

    module, registry, base = verl_adapter
    url, server = judges
    assert module.HAVE_VERL and registry["llmi"] is module.LLMIRewardManager
    assert issubclass(module.LLMIRewardManager, base)
    cfg = ts.write_config(tmp_path / "llmi.toml", url)
    tok = tokenizer()
    config = {"reward": {"reward_kwargs": {"llmi_config": str(cfg), "recipe": "mllmi-grpo", "drop_score": -1.0}}}
    manager = module.LLMIRewardManager(config=config, tokenizer=tok, compute_score=None)
    assert (manager.reward_config.text_weight, manager.reward_config.image_weight) == (1.5, 0.5)
    user_image = Image.new("RGB", (40, 30), (200, 40, 40))
    rollouts = [
        ("the sales", f"the sales rose {ts.CODE_TAG}",
         {"extra_info": {"image_num": 1, "tools": ["code"], "split": "train", "question": "sales chart"}}),
        ("photo", f"a photo {ts.EDIT_TAG}",
         {"extra_info": {"image_num": 1, "tools": ["edit"], "question": "grey it"},
          "raw_prompt": [{"role": "user", "content": [{"type": "image", "image": user_image},
                                                      {"type": "text", "text": "grey it"}]}]}),
        ("river", "the river", {"extra_info": {"image_num": -1, "tools": [], "question": "a river"}}),
        ("broken", "the city", {"extra_info": {"question": "no constraints"}}),
    ]
    data = batch(tok, rollouts)

    async def compute_score_batch():  # what RewardLoopWorker.compute_score_batch does
        try:
            return await asyncio.gather(*(manager.run_single(data[i:i + 1]) for i in range(len(data))))
        finally:
            await module._SHARED.aclose()

    outs = asyncio.run(compute_score_batch())
    keys = set(outs[0]["reward_extra_info"])
    assert all(set(o["reward_extra_info"]) == keys for o in outs)  # verl stacks them into arrays
    assert all(isinstance(v, float) for o in outs for v in o["reward_extra_info"].values())
    code, edit, plain, broken = (o["reward_extra_info"] for o in outs)
    assert code["tool_total/code"] == code["tool_success/code"] == 1.0 and code["s_num"] == 1.0
    assert edit["tool_total/edit"] == edit["tool_success/edit"] == 1.0
    assert plain["n_images"] == 0 and plain["s_num"] == 1.0
    assert 0 < outs[0]["reward_score"] <= 1 and outs[0]["reward_score"] == code["score"]
    # a row whose data was not prepared for llmi is dropped: drop_score, flagged
    assert outs[3]["reward_score"] == -1.0 and broken["dropped"] == 1.0
    # the judges saw the questions; the MLLM judge saw the user's image and the edited one
    mllm = [r for r in server.requests if "Image Quality" in r["messages"][0]["content"]]
    assert len(mllm) == 2
    counts = sorted(sum(p["type"] == "image_url" for p in r["messages"][1]["content"]) for r in mllm)
    assert counts == [1, 2]
    texts = json.dumps([r["messages"] for r in server.requests])
    assert "sales chart" in texts and "grey it" in texts
    # verl places each score on the last valid response token
    rm = base.assemble_rm_scores(data, [o["reward_score"] for o in outs])
    assert rm.shape == data.batch["responses"].shape and rm.sum().item() == pytest.approx(
        sum(o["reward_score"] for o in outs), rel=1e-5)


def test_compute_score_entry_point(tmp_path, judges, verl_adapter):
    module, _, _ = verl_adapter
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    async def score():
        try:
            return await module.compute_score(
                "interleaved", f"the sales {ts.CODE_TAG}", "", {"image_num": 1, "tools": ["code"], "question": "q"},
                llmi_config=str(cfg), recipe="llmi-grpo")
        finally:
            await module._SHARED.aclose()

    out = asyncio.run(score())
    assert 0 < out["score"] <= 1 and out["tool_success/code"] == 1.0 and out["dropped"] == 0.0


def test_without_verl_the_module_still_imports():
    sys.modules.pop("llmi.integrations.verl", None)
    module = importlib.import_module("llmi.integrations.verl")
    assert module.HAVE_VERL is False and callable(module.compute_score)
    sample = module.sample_of("x", {"image_num": 1})
    assert sample.input_error and "tools" in sample.input_error


def test_the_launch_writes_verl_data_and_a_ray_job_submit_script(tmp_path):
    from llmi.train import recipes
    from llmi.train.data import read_rows
    from llmi.train.verl_launch import write_launch

    rows = read_rows([ts.write_parquet(tmp_path / "mm.parquet", ts.llmi_rows(2, with_images=True))])
    resolved = recipes.resolve("mllmi-grpo", known_trainer=recipes.trainer_fields())
    launch = write_launch(rows, resolved, model="Qwen/Qwen2.5-VL-7B-Instruct", output_dir=tmp_path / "run",
                          config_file="llmi.toml", max_steps=100)
    assert read_rows([launch.train_file])[0].prompt == rows[0].prompt
    o = launch.overrides
    assert o["reward.reward_manager.source"] == "importlib"
    assert o["reward.reward_manager.module.path"] == "pkg://llmi.integrations.verl"
    assert o["reward.reward_manager.name"] == "LLMIRewardManager"
    assert o["+reward.reward_kwargs.llmi_config"] == "llmi.toml"
    assert o["data.max_prompt_length"] == o["data.max_response_length"] == 16384
    assert o["data.train_batch_size"] == 32 and o["actor_rollout_ref.rollout.n"] == 8
    assert o["trainer.total_training_steps"] == 100 and o["trainer.test_freq"] == -1
    script = launch.script.read_text()
    assert "ray job submit --no-wait --working-dir . -- python3 -m verl.trainer.main_ppo" in script
    assert "RAY_ADDRESS:?" in script and launch.script.stat().st_mode & 0o100
    import subprocess

    assert subprocess.run(["bash", "-n", str(launch.script)]).returncode == 0
    assert json.loads((tmp_path / "run" / "verl_overrides.json").read_text()) == o


def test_llmi_train_backend_verl_writes_the_launch(tmp_path, judges, monkeypatch):
    from typer.testing import CliRunner

    from llmi.cli import app

    model = ts.build_text_model(tmp_path / "m")
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0], train='nnodes = 4\ngpus_per_node = 2\n[train.verl]\n'
                                                                  '"trainer.project_name" = "mine"')
    data = ts.write_parquet(tmp_path / "d.parquet", ts.llmi_rows(4))
    val = ts.write_parquet(tmp_path / "v.parquet", ts.llmi_rows(2))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--backend", "verl", "--model", str(model), "--data", str(data), "--val-data", str(val),
            "-o", str(out), "--config", "llmi.toml"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "ray job submit --no-wait --working-dir . -- python3 -m verl.trainer.main_ppo" in r.output
    o = json.loads((out / "verl_overrides.json").read_text())
    assert (o["trainer.nnodes"], o["trainer.n_gpus_per_node"], o["trainer.project_name"]) == (4, 2, "mine")
    assert o["+reward.reward_kwargs.llmi_config"] == "llmi.toml"  # relative to the uploaded working dir
    assert o["data.val_files"] == [str((out / "data" / "val.parquet").resolve())]
    assert o["actor_rollout_ref.rollout.n"] == 2  # [train] num_generations from the test config
    from llmi.train.data import read_rows

    rows = read_rows([out / "data" / "train.parquet"])
    assert len(rows) == 4 and all(r.prompt[0]["content"].startswith(ts.SYSTEM) for r in rows)
    # --submit needs the ray command (not installed next to TRL)
    import shutil

    if shutil.which("ray") is None:
        r = CliRunner().invoke(app, args + ["--submit"])
        assert r.exit_code == 2 and "`ray` command is not installed" in r.output
