"""The verl 0.9.1 reward manager, the ``compute_score`` entry point and the cluster launch.

Two parts. verl cannot be installed next to TRL 1.16 (verl 0.9.1 pins transformers < 5.11), so the first
part, which always runs, stands the verl interface in, built from verl 0.9.1's source: ``verl.DataProto`` (a batch of tensors plus
numpy object arrays, ``data[i]`` an item, ``data[i:j]`` a DataProto),
``verl.experimental.reward_loop.reward_manager.register`` / ``.registry.REWARD_MANAGER`` and ``RewardManagerBase``
(``__init__(config, tokenizer, compute_score)`` taking ``self.loop``, abstract ``async run_single(data)``,
``assemble_rm_scores``). The rollouts are scored as verl's ``RewardLoopWorker.compute_score_batch``
does: one ``run_single`` per one-row slice, all gathered at once, on real tools and loopback judges.
The second part (``test_real_verl_*``) runs the same reward through the real verl 0.9.1 where it is
installed (``scripts/verl_check.sh`` makes a venv for it) and skips, saying why, where it is not.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
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
             "verl.experimental.reward_loop.reward_manager.base",
             "verl.experimental.reward_loop.reward_manager.registry"]
    mods = {"verl": verl, **{n: types.ModuleType(n) for n in names}}
    mods["verl.experimental.reward_loop.reward_manager"].register = register
    mods["verl.experimental.reward_loop.reward_manager.registry"].register = register
    mods["verl.experimental.reward_loop.reward_manager.registry"].REWARD_MANAGER = REWARD_MANAGER
    mods["verl.experimental.reward_loop.reward_manager.base"].RewardManagerBase = RewardManagerBase
    return mods, REWARD_MANAGER, RewardManagerBase


@pytest.fixture
def verl_adapter(monkeypatch):
    mods, registry, base = _verl_modules()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    yield fresh_import(monkeypatch), registry, base


def fresh_import(monkeypatch):
    """llmi.integrations.verl imported anew; afterwards sys.modules holds what it held before (the real
    verl's registration, if any, stays that of the module imported first)."""
    monkeypatch.setitem(sys.modules, "llmi.integrations.verl", None)  # undo restores the old entry or removes it
    del sys.modules["llmi.integrations.verl"]
    return importlib.import_module("llmi.integrations.verl")


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


def test_without_verl_the_module_still_imports(monkeypatch):
    for name in [n for n in sys.modules if n == "verl" or n.startswith("verl.")] + ["verl"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import verl...` raises ImportError, installed or not
    module = fresh_import(monkeypatch)
    assert module.HAVE_VERL is False and callable(module.compute_score)
    sample = module.sample_of("x", {"image_num": 1})
    assert sample.input_error and "tools" in sample.input_error
    # what verl's dataset hands over: numpy values; nulls where a mixed parquet's struct lacks the keys
    sample = module.sample_of("x", {"image_num": np.int64(2), "tools": np.array(["code"], dtype=object)})
    assert (sample.input_error, sample.image_num, sample.tools) == (None, 2, ["code"])
    assert "image_num, tools" in module.sample_of("x", {"image_num": None, "tools": None}).input_error
    assert "integer" in module.sample_of("x", {"image_num": 1.5, "tools": []}).input_error
    assert "list of tool names" in module.sample_of("x", {"image_num": 1, "tools": "code"}).input_error


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

    assert subprocess.run(["bash", "-n", str(launch.script)], check=False).returncode == 0
    assert json.loads((tmp_path / "run" / "verl_overrides.json").read_text()) == o


def test_llmi_train_backend_verl_writes_the_launch(tmp_path, judges, monkeypatch):
    from typer.testing import CliRunner

    from llmi.cli import app

    model = ts.build_text_model(tmp_path / "m")
    ts.write_config(tmp_path / "llmi.toml", judges[0], train='nnodes = 4\ngpus_per_node = 2\n[train.verl]\n'
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


# -- real verl 0.9.1 (scripts/verl_check.sh installs it in a venv of its own) ------------------------
# These drive llmi's reward through verl's own code: the launch's Hydra overrides composed onto verl's
# ppo_trainer config, verl's RLHFDataset reading the parquet `llmi train --backend verl` writes, the
# one-trajectory DataProto that verl's AgentLoopWorker._compute_score builds and sends to a reward-loop
# worker (crossing Ray means pickling: done here too), RewardLoopWorker loading the manager through the
# `importlib` source, and the driver's chunking and assemble_rm_scores. Only the LLM is missing: the
# responses are written by the test.
VERL_MISSING = "verl 0.9.1 is not installed here (it pins transformers < 5.11); scripts/verl_check.sh runs these"


@pytest.fixture
def real_verl():
    if importlib.util.find_spec("verl") is None:
        if os.environ.get("LLMI_REQUIRE_VERL"):  # scripts/verl_check.sh: a skip there would hide a broken install
            pytest.fail("LLMI_REQUIRE_VERL is set but verl is not importable")
        pytest.skip(VERL_MISSING)
    import verl  # an installed verl that does not import is a failure, not a skip

    assert verl.__version__ == "0.9.1", f"llmi's verl adapter is written for verl 0.9.1, found {verl.__version__}"
    module = importlib.import_module("llmi.integrations.verl")
    assert module.HAVE_VERL
    return module


def save_tiny_vlm_tokenizer(path):
    """A tokenizer (with a chat template for text and image parts) and a Llava processor, both saved to
    ``path``: verl loads the tokenizer from ``actor_rollout_ref.model.path``; its dataset wants a
    processor for rows with images."""
    import transformers

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<image>"]
    fast, _ = ts._tokenizer(ts.WORDS + [ts.CODE_TAG, ts.EDIT_TAG], specials,
                            extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = ts.VLM_TEMPLATE
    images = transformers.CLIPImageProcessorPil(size={"shortest_edge": ts.IMAGE_SIZE},
                                                crop_size={"height": ts.IMAGE_SIZE, "width": ts.IMAGE_SIZE})
    processor = transformers.LlavaProcessor(
        image_processor=images, tokenizer=fast, patch_size=ts.PATCH, vision_feature_select_strategy="default",
        chat_template=ts.VLM_TEMPLATE, image_token="<image>", num_additional_image_tokens=1)
    processor.save_pretrained(path)
    return processor


def verl_config(overrides, extra=()):
    """verl 0.9.1's ppo_trainer config with these overrides, as `python -m verl.trainer.main_ppo K=V ...` builds
    it (Hydra refuses an unknown key without `+`, a bad value, a bad type)."""
    import verl
    from hydra import compose, initialize_config_dir

    from llmi.train.verl_launch import hydra_value

    args = [f"{k}={hydra_value(v)}" for k, v in overrides.items()] + list(extra)
    with initialize_config_dir(config_dir=os.path.join(os.path.dirname(verl.__file__), "trainer", "config"),
                               version_base=None):
        return compose("ppo_trainer", overrides=args)


RESPONSES = {  # what the "policy" writes for each kind of prompt
    "code": f"the sales rose {ts.CODE_TAG}",
    "edit": f"a photo {ts.EDIT_TAG}",
    "none": "the river",
}


def response_for(extra_info):
    tools = list(extra_info["tools"]) if "tools" in extra_info else []
    return RESPONSES["edit" if "edit" in tools else "code" if "code" in tools else "none"]


class _RayHandle:
    """Stands in for a Ray actor handle of a RewardLoopWorker: `await h.compute_score.remote(data)`, with
    the data and the result pickled both ways as Ray does."""

    def __init__(self, worker):
        import pickle

        class _Method:
            @staticmethod
            async def remote(data):
                out = await worker.compute_score(pickle.loads(pickle.dumps(data)))
                return pickle.loads(pickle.dumps(out))

        self.compute_score = _Method()


@pytest.fixture
def verl_run(tmp_path, judges, monkeypatch):
    """A `llmi train --backend verl` launch (text and multimodal rows, one row not prepared for llmi) and
    verl's config from its overrides; the working directory is the uploaded one (it holds llmi.toml)."""
    from llmi.train import recipes
    from llmi.train.data import read_rows
    from llmi.train.verl_launch import write_launch

    url, server = judges
    monkeypatch.chdir(tmp_path)
    ts.write_config(tmp_path / "llmi.toml", url)
    processor = save_tiny_vlm_tokenizer(tmp_path / "model")
    rows = read_rows([ts.write_parquet(tmp_path / "mm.parquet", ts.llmi_rows(1, with_images=True)),
                      ts.write_parquet(tmp_path / "text.parquet", ts.llmi_rows(2))])
    resolved = recipes.resolve("mllmi-grpo", known_trainer=recipes.trainer_fields())
    launch = write_launch(rows, resolved, model=str(tmp_path / "model"), output_dir=tmp_path / "run",
                          config_file="llmi.toml", max_steps=10)
    # a row that was not prepared with `llmi data --to verl`: no image_num / tools in extra_info
    import pyarrow.parquet as pq

    table = pq.read_table(launch.train_file).to_pylist()
    broken = dict(table[-1], extra_info={"question": "no constraints", "index": 9, "split": "train",
                                         "image_num": None, "tools": None})
    ts.write_parquet(launch.train_file, table + [broken])
    return types.SimpleNamespace(launch=launch, processor=processor, server=server, tmp=tmp_path,
                                 config=verl_config(launch.overrides))


def verl_batch(run, worker):
    """The prompt batch verl's trainer makes: RLHFDataset rows through its collate_fn into a DataProto."""
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    dataset = RLHFDataset([str(run.launch.train_file)], tokenizer=worker.input_tokenizer, config=run.config.data,
                          processor=run.processor)
    return DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))


@pytest.mark.parametrize("recipe", ["llmi-grpo", "llmi-gspo", "mllmi-grpo"])
def test_real_verl_accepts_each_recipe_launch(real_verl, recipe, tmp_path):
    """What main_ppo does before Ray starts: compose the launch's overrides, validate the config."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from llmi.train import recipes
    from llmi.train.data import read_rows
    from llmi.train.verl_launch import write_launch

    rows = read_rows([ts.write_parquet(tmp_path / "d.parquet", ts.llmi_rows(2))])
    resolved = recipes.resolve(recipe, known_trainer=recipes.trainer_fields())
    launch = write_launch(rows, resolved, model="Qwen/Qwen3-4B-Instruct-2507", output_dir=tmp_path / "run",
                          config_file="llmi.toml", max_steps=10)
    config = verl_config(launch.overrides)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert not need_reference_policy(config) and not need_critic(config)  # beta 0: no reference model; GRPO
    actor, rollout = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
    assert config.algorithm.adv_estimator == "grpo" and rollout.n == 8 and actor.optim.lr == 1e-6
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (2, 8)
    if recipe == "llmi-gspo":
        assert (actor.policy_loss.loss_mode, actor.loss_agg_mode) == ("gspo", "seq-mean-token-mean")
        assert (actor.clip_ratio_low, actor.clip_ratio_high, config.data.train_batch_size) == (3e-4, 4e-4, 16)
    else:
        assert (actor.loss_agg_mode, actor.clip_ratio_c, config.data.train_batch_size) == ("token-mean", 10.0, 32)
    assert config.reward.reward_kwargs.recipe == recipe


PROMPT_LEN, RESPONSE_LEN = 12, 6


def rollout_batch(prompts, tok):
    """The step's batch as verl's agent loop returns it: left-padded prompts, right-padded responses."""
    from verl import DataProto

    P, R = PROMPT_LEN, RESPONSE_LEN
    rows = {"prompts": [], "responses": [], "attention_mask": []}
    for i in range(len(prompts)):
        extra = prompts.non_tensor_batch["extra_info"][i]
        p = tok.apply_chat_template(list(prompts.non_tensor_batch["raw_prompt"][i]), add_generation_prompt=True,
                                    tokenize=True)
        p = list(p["input_ids"] if hasattr(p, "keys") else p)[-P:]
        r = tok(response_for(extra) if extra.get("tools") is not None else RESPONSES["none"],
                add_special_tokens=False)["input_ids"][:R]
        rows["prompts"].append([tok.pad_token_id] * (P - len(p)) + p)
        rows["responses"].append(r + [tok.pad_token_id] * (R - len(r)))
        rows["attention_mask"].append([0] * (P - len(p)) + [1] * (len(p) + len(r)) + [0] * (R - len(r)))
    return DataProto.from_dict(tensors={k: torch.tensor(v) for k, v in rows.items()},
                               non_tensors=dict(prompts.non_tensor_batch))


def test_real_verl_registers_the_manager_and_loads_it_from_the_launch(real_verl, verl_run):
    from verl.experimental.reward_loop import RewardLoopWorker
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    assert get_reward_manager_cls("llmi") is real_verl.LLMIRewardManager
    assert issubclass(real_verl.LLMIRewardManager, RewardManagerBase)
    assert resolve_reward_manager_cls(verl_run.config) is real_verl.LLMIRewardManager  # the importlib source
    worker = RewardLoopWorker(verl_run.config)  # loads the tokenizer from the model folder, builds the manager
    manager = worker.reward_manager
    assert isinstance(manager, real_verl.LLMIRewardManager) and manager.tokenizer is worker.input_tokenizer
    # the recipe's reward weights and drop score came through reward.reward_kwargs
    assert (manager.reward_config.text_weight, manager.reward_config.image_weight) == (1.5, 0.5)
    assert manager.drop_score == 0.0
    # a re-import (importlib.reload, a fresh import in a test) replaces its own registration, no error
    importlib.reload(real_verl)
    assert get_reward_manager_cls("llmi") is real_verl.LLMIRewardManager


def test_real_verl_reward_loop_scores_each_trajectory_as_the_agent_loop_sends_it(real_verl, verl_run, caplog):
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
    from verl.experimental.reward_loop import RewardLoopWorker

    worker = RewardLoopWorker(verl_run.config)
    batch = verl_batch(verl_run, worker)
    assert len(batch) == 4
    tok = worker.input_tokenizer
    agent = object.__new__(AgentLoopWorker)  # only the reward hand-off of verl's agent loop worker is used
    agent.processor, agent.mm_processor_kwargs = None, None
    agent.reward_loop_worker_handles = [_RayHandle(worker)]

    async def rollouts():
        outs = []
        try:
            for i in range(len(batch)):  # what AgentLoopWorker.generate_sequences hands each agent loop
                kwargs = {k: v[i] for k, v in batch.non_tensor_batch.items() if k != "agent_name"}
                prompt_ids = tok.apply_chat_template(list(kwargs["raw_prompt"]), add_generation_prompt=True,
                                                     tokenize=True)
                prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
                response = response_for(kwargs["extra_info"]) if kwargs["extra_info"].get("tools") is not None \
                    else RESPONSES["none"]
                response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                out = AgentLoopOutput(prompt_ids=prompt_ids, response_ids=response_ids,
                                      response_mask=[1] * len(response_ids), metrics=AgentLoopMetrics())
                outs.append((kwargs, out))
            # the rollouts of a step are scored concurrently on the reward worker's event loop
            await asyncio.gather(*(AgentLoopWorker._compute_score(agent, [o], kwargs=k) for k, o in outs))
        finally:
            await real_verl._SHARED.aclose()
        return outs

    outs = asyncio.run(rollouts())
    infos = [o.extra_fields["reward_extra_info"] for _, o in outs]
    assert all(set(i) == set(infos[0]) for i in infos)  # verl stacks them into arrays: same keys every time
    assert all(isinstance(v, float) for i in infos for v in i.values())
    by_kind = {}
    for (kwargs, out), info in zip(outs, infos):
        assert out.reward_score == info["score"]
        by_kind[str(kwargs["data_source"]) + ("" if kwargs["extra_info"].get("tools") is not None else "-broken")] = \
            (out.reward_score, info, kwargs)
    mm_score, mm, mm_kwargs = by_kind["interleaved_mm"]
    assert mm["tool_total/edit"] == mm["tool_success/edit"] == 1.0 and mm["dropped"] == 0.0
    assert 0 < mm_score <= 1 and mm["s_mllm"] > 0
    broken_score, broken, _ = by_kind["interleaved-broken"]
    assert broken_score == 0.0 and broken["dropped"] == 1.0  # drop_score of the launch, flagged
    assert "extra_info has no image_num, tools" in caplog.text  # its null keys: the reason is logged
    text = [(s, i) for (k, o), i, s in zip(outs, infos, [o.reward_score for _, o in outs])
            if str(k["data_source"]) == "interleaved" and k["extra_info"].get("tools") is not None]
    code = [i for _, i in text if i["tool_total/code"]]
    assert len(text) == 2 and code and code[0]["tool_success/code"] == 1.0
    assert all(i["dropped"] == 0.0 for _, i in text)
    # the MLLM judge saw the user's input image (from verl's raw_prompt) next to the edited one
    requests = verl_run.server.requests
    mllm = [r for r in requests if "Image Quality" in r["messages"][0]["content"]]
    counts = sorted(sum(p["type"] == "image_url" for p in r["messages"][1]["content"]) for r in mllm)
    assert 2 in counts
    assert mm_kwargs["extra_info"]["question"] in json.dumps([r["messages"] for r in requests])


def test_real_verl_batch_reward_path_chunks_scores_and_assembles(real_verl, verl_run):
    """The colocated reward-model path: the driver pads and chunks the step's batch over the reward workers
    (compute_score_batch) and places each score on the last response token (assemble_rm_scores)."""
    from verl.experimental.reward_loop import RewardLoopWorker
    from verl.protocol import pad_dataproto_to_divisor

    worker = RewardLoopWorker(verl_run.config)
    data = rollout_batch(verl_batch(verl_run, worker), worker.input_tokenizer)
    padded, pad = pad_dataproto_to_divisor(data, 3)  # three reward workers

    async def score():
        try:
            chunks = await asyncio.gather(*(worker.compute_score_batch(c) for c in padded.chunk(3)))
        finally:
            await real_verl._SHARED.aclose()
        return [o for chunk in chunks for o in chunk][: len(data)]

    outs = asyncio.run(score())
    assert pad == 2 and len(outs) == 4
    scores = [o["reward_score"] for o in outs]
    rm = worker.reward_manager.assemble_rm_scores(data, scores)
    valid = data.batch["attention_mask"][:, PROMPT_LEN:].sum(dim=1)
    assert rm.shape == (4, RESPONSE_LEN)
    assert [rm[i, valid[i] - 1].item() for i in range(4)] == pytest.approx(scores)
    assert rm.sum().item() == pytest.approx(sum(scores))
    extra = {k: np.array([o["reward_extra_info"][k] for o in outs]) for k in outs[0]["reward_extra_info"]}
    assert extra["dropped"].tolist().count(1.0) == 1 and extra["tool_success/edit"].sum() == 1.0


def test_real_verl_compute_score_through_the_naive_manager(real_verl, verl_run):
    """`reward.custom_reward_function` = llmi's compute_score, run by verl's own naive reward manager."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
    from verl.experimental.reward_loop import RewardLoopWorker
    from verl.experimental.reward_loop.reward_manager import NaiveRewardManager

    overrides = {k: v for k, v in verl_run.launch.overrides.items() if not k.startswith(("reward.reward_manager",
                                                                                          "+reward.reward_kwargs"))}
    config = verl_config(overrides, [
        "reward.custom_reward_function.path=pkg://llmi.integrations.verl",
        "reward.custom_reward_function.name=compute_score",
        "+reward.custom_reward_function.reward_kwargs.llmi_config=llmi.toml",
        "+reward.custom_reward_function.reward_kwargs.recipe=llmi-grpo",
    ])
    run = types.SimpleNamespace(**{**vars(verl_run), "config": config})

    async def score():
        # built on the loop it serves, as in its Ray actor: verl's naive manager keeps the loop it was made on
        worker = RewardLoopWorker(config)
        assert type(worker.reward_manager) is NaiveRewardManager
        batch = verl_batch(run, worker)
        i = next(i for i in range(len(batch)) if "code" in (batch.non_tensor_batch["extra_info"][i]["tools"] or []))
        kwargs = {k: v[i] for k, v in batch.non_tensor_batch.items() if k != "agent_name"}
        tok = worker.input_tokenizer
        prompt_ids = tok(str(kwargs["extra_info"]["question"]), add_special_tokens=False)["input_ids"]
        response_ids = tok(RESPONSES["code"], add_special_tokens=False)["input_ids"]
        out = AgentLoopOutput(prompt_ids=prompt_ids, response_ids=response_ids,
                              response_mask=[1] * len(response_ids), metrics=AgentLoopMetrics())
        agent = object.__new__(AgentLoopWorker)
        agent.processor, agent.mm_processor_kwargs = None, None
        agent.reward_loop_worker_handles = [_RayHandle(worker)]
        try:
            await AgentLoopWorker._compute_score(agent, [out], kwargs=kwargs)
        finally:
            await real_verl._SHARED.aclose()
        return out

    out = asyncio.run(score())
    info = out.extra_fields["reward_extra_info"]
    assert 0 < out.reward_score <= 1 and info["score"] == out.reward_score
    assert info["tool_success/code"] == 1.0 and info["dropped"] == 0.0


@pytest.mark.slow
def test_real_verl_reward_loop_manager_on_a_local_ray_cluster(real_verl, verl_run):
    """verl's RewardLoopManager with two reward-loop actors on a local Ray, the working directory shipped
    as `ray job submit --working-dir .` does (the actors read the relative llmi.toml from it)."""
    import ray
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.experimental.reward_loop import RewardLoopManager
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    config = verl_config(verl_run.launch.overrides, ["reward.num_workers=2"])
    tok = AutoTokenizer.from_pretrained(verl_run.tmp / "model")
    dataset = RLHFDataset([str(verl_run.launch.train_file)], tokenizer=tok, config=config.data,
                          processor=verl_run.processor)
    data = rollout_batch(DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))])), tok)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"working_dir": str(verl_run.tmp), "excludes": ["model/", "run/", "*.parquet"]})
    try:
        manager = RewardLoopManager(config)
        assert manager.reward_manager_cls is real_verl.LLMIRewardManager and manager.reward_loop_worker_handles
        out = manager.compute_rm_score(data)  # padded to 2 workers, chunked, scored in the actors
    finally:
        ray.shutdown()
    rm = out.batch["rm_scores"]
    scores = out.non_tensor_batch["score"]
    assert rm.shape == (4, RESPONSE_LEN) and rm.sum(dim=1).tolist() == pytest.approx(scores.tolist(), rel=1e-6)
    assert out.meta_info["reward_extra_keys"][0] == "score"
    assert out.non_tensor_batch["dropped"].tolist().count(1.0) == 1  # the row without image_num / tools
    assert out.non_tensor_batch["tool_success/edit"].sum() == 1.0 and out.non_tensor_batch["tool_success/code"].sum() >= 1
    assert sum(s > 0 for s in scores.tolist()) == 3
