"""Regressions found trying ``llmi data`` and ``llmi train`` the way a researcher reproducing LLM-I would:
on files in the release's exact layout (``train.parquet`` with string prompts, ``train_mm.parquet`` with
chat prompts, JPEG bytes and file names in the image structs, extra ``extra_info`` fields), with bad
inputs, a judge going down mid-run and resumed runs."""

from __future__ import annotations

import io
import json

import pytest

from llmi.train.data import (
    parse_record,
    read_rows,
    to_llmi_record,
    to_reward_row,
    to_verl_record,
    write_records,
)
from llmi.train.errors import TrainDataError
from tests import train_support as ts

pytest.importorskip("pyarrow")


def _jpeg(w=24, h=16, color=(10, 120, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="JPEG")
    return buf.getvalue()


def release_text_rows():
    """The release's train.parquet: prompt a string, extra_info with a field llmi does not use."""
    return [
        {"data_source": "interleaved", "prompt": "Sales of electric cars in 2024, with a chart.",
         "extra_info": {"image_num": 1, "tools": ["code"], "split": "train", "question": "Sales of cars",
                        "index": 0, "category": "report"}},
        {"data_source": "interleaved", "prompt": "How does a lighthouse work?",
         "extra_info": {"image_num": -1, "tools": [], "split": "train", "question": "How does a lighthouse work?",
                        "index": 1, "category": "science"}},
    ]


def release_mm_rows():
    """The release's train_mm.parquet: chat prompts, images as {bytes, path} structs (JPEG, with a name)."""
    return [
        {"data_source": "interleaved_mm", "prompt": [{"role": "user", "content": "<image>\nMake it grey."}],
         "images": [{"bytes": _jpeg(), "path": "00001.jpg"}],
         "extra_info": {"image_num": 1, "tools": ["edit"], "split": "train", "question": "Make it grey.",
                        "index": 10}},
    ]


def test_the_llmi_layout_keeps_string_prompts_for_a_text_file(tmp_path):
    """The release's text rows hold a string prompt (its loader wraps it in a user message itself)."""
    import pyarrow.parquet as pq

    rows = read_rows([ts.write_parquet(tmp_path / "train.parquet", release_text_rows())])
    out = tmp_path / "out.parquet"
    write_records([to_llmi_record(r) for r in rows], out)
    table = pq.read_table(out)
    assert str(table.schema.field("prompt").type) == "string"
    assert table.to_pylist()[0]["prompt"] == "Sales of electric cars in 2024, with a chart."
    # a row with input images is a chat, as the release's train_mm.parquet
    mm = read_rows([ts.write_parquet(tmp_path / "train_mm.parquet", release_mm_rows())])
    assert to_llmi_record(mm[0])["prompt"] == [{"role": "user", "content": "<image>\nMake it grey."}]


def test_extra_info_fields_survive_every_layout_and_parquet_nulls_are_not_invented(tmp_path):
    text = ts.write_parquet(tmp_path / "train.parquet", release_text_rows())
    mm = ts.write_parquet(tmp_path / "train_mm.parquet", release_mm_rows())
    rows = read_rows([text, mm])
    assert rows[0].extra == {"category": "report"} and rows[2].extra == {}
    # one parquet with both: the mm row gets category=None from the struct's schema; read back it is absent
    both = tmp_path / "both.parquet"
    write_records([to_llmi_record(r) for r in rows], both)
    assert [r.extra for r in read_rows([both])] == [r.extra for r in rows]
    # reward rows carry the fields under extra_info, and give them back
    jl = tmp_path / "reward.jsonl"
    write_records([to_reward_row(r, image_dir=tmp_path / "img", stem=f"r{k}") for k, r in enumerate(rows)], jl)
    assert json.loads(jl.read_text().splitlines()[0])["extra_info"] == {"category": "report"}
    back = read_rows([jl])
    assert [r.extra for r in back] == [r.extra for r in rows]
    # and from the reward rows to verl and back to LLM-I
    verl = tmp_path / "verl.parquet"
    write_records([to_verl_record(r) for r in back], verl)
    again = read_rows([verl])
    assert [(r.extra, r.prompt, r.image_num, r.tools, r.question, r.index) for r in again] == \
        [(r.extra, r.prompt, r.image_num, r.tools, r.question, r.index) for r in rows]


def test_jpeg_images_keep_their_bytes_format_and_name(tmp_path):
    rows = read_rows([ts.write_parquet(tmp_path / "train_mm.parquet", release_mm_rows())])
    jpeg = release_mm_rows()[0]["images"][0]["bytes"]
    for rec in (to_llmi_record(rows[0]), to_verl_record(rows[0])):
        assert rec["images"] == [{"bytes": jpeg, "path": "00001.jpg"}]
    row = to_reward_row(rows[0], image_dir=tmp_path / "img", stem="r0")
    assert row["images"] == ["img/r0-0.jpg"] and (tmp_path / "img" / "r0-0.jpg").read_bytes() == jpeg
    inline = to_reward_row(rows[0])
    assert inline["images"][0].startswith("data:image/jpeg;base64,")
    # JSONL in the LLM-I layout: the bytes become a data URI of the right type, read back byte for byte
    jl = tmp_path / "llmi.jsonl"
    write_records([to_llmi_record(rows[0])], jl)
    assert json.loads(jl.read_text())["images"][0]["bytes"].startswith("data:image/jpeg;base64,")
    from llmi.train.data import image_bytes

    assert image_bytes(read_rows([jl])[0].images[0]) == jpeg


@pytest.mark.parametrize("record, message", [
    ({"prompts": "x", "extra_info": {"image_num": 1, "tools": []}}, "did you mean 'prompts'"),
    ({"prompt": "x", "extra": {"image_num": 1, "tools": []}}, "did you mean 'extra'"),
    ({"prompt": "x", "extra_info": {"img_num": 1, "tools": []}}, "did you mean 'img_num'"),
    ({"prompt": "x", "extra_info": {"image_num": 1, "tool": []}}, "the row has: image_num, tool"),
    ({"prompt": "<image> x", "image": [ts.png_bytes()], "extra_info": {"image_num": 1, "tools": []}},
     "no 'images' column (the row has 'image'"),
])
def test_wrong_column_names_are_named(record, message):
    with pytest.raises(TrainDataError, match=message.replace("(", r"\(")):
        parse_record(record)


@pytest.mark.parametrize("prompt", ["", "  \n", [{"role": "system", "content": "s"}, {"role": "user", "content": " "}]])
def test_an_empty_prompt_is_refused(prompt):
    """An empty prompt was trained on, its judges asked about an empty question."""
    with pytest.raises(TrainDataError, match="the prompt's user text is empty"):
        parse_record({"prompt": prompt, "image_num": 1, "tools": []})


def test_missing_or_broken_images_are_a_problem_of_their_row(tmp_path):
    """They surfaced at conversion or training time without a row ("cannot identify image file
    <_io.BytesIO object at 0x...>"), or were copied through unchecked into reward rows."""
    jl = tmp_path / "rows.jsonl"
    good = tmp_path / "ok.png"
    good.write_bytes(ts.png_bytes())
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "<image> a", "image_num": 1, "tools": [], "images": ["ok.png"]},
        {"prompt": "<image> b", "image_num": 1, "tools": [], "images": ["missing.png"]},
        {"prompt": "<image> c", "image_num": 1, "tools": [], "images": ["data:image/png;base64,Z2FyYmFnZQ=="]},
    ]) + "\n")
    with pytest.raises(TrainDataError) as info:
        read_rows([jl])
    assert info.value.problems == [
        f"{jl}:2: image 0 ({tmp_path / 'missing.png'}) does not exist",
        f"{jl}:3: image 0 cannot be read: not an image file",
    ]


# ------------------------------------------------------------------------------------------------
# llmi train: the output folder, the model, multimodal data
# ------------------------------------------------------------------------------------------------

pytest.importorskip("trl")


@pytest.fixture
def judges():
    from tests.conftest import _judge_server

    with _judge_server(ts.judge_reply) as (url, server):
        yield url, server


def _request(tmp_path, cfg, data, *, model=None, out=None, **kw):
    from llmi.config import load_settings
    from llmi.train.runner import TrainRequest

    return TrainRequest(model=str(model or tmp_path / "no-such-model"), data=[str(d) for d in data],
                        output_dir=out or tmp_path / "out", settings=load_settings(cfg, environ={}), **kw)


def test_an_output_folder_of_another_model_is_refused_before_anything_loads(tmp_path, judges):
    """Resuming with a different --model loaded the weights and died on a size-mismatch traceback."""
    from llmi.errors import InputError
    from llmi.train.runner import plan

    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    data = ts.write_parquet(tmp_path / "d.parquet", ts.llmi_rows(2))
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "llmi_train.json").write_text(json.dumps({"model": "Qwen/Qwen3-4B-Instruct-2507", "fingerprint": "x"}))
    for resume in (True, False):
        with pytest.raises(InputError, match="holds a run of Qwen/Qwen3-4B-Instruct-2507, not of --model"):
            plan(_request(tmp_path, cfg, [data], out=out, resume=resume))
    # a folder holding some model that is not an llmi run, and the --model folder itself
    other = tmp_path / "some-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(InputError, match="holds a model \\(config.json\\) that is not an llmi train run"):
        plan(_request(tmp_path, cfg, [data], out=other))
    with pytest.raises(InputError, match="is the --model folder"):
        plan(_request(tmp_path, cfg, [data], model=other, out=other))


def test_resuming_with_another_batch_composition_is_refused(tmp_path, judges):
    """--resume with another prompt_batch (or num_generations, seed, ...) ran on, its steps seeing other
    prompts than an uninterrupted run."""
    from llmi.train.errors import RecipeError
    from llmi.train.runner import RUN_FILE, _run_record, plan

    model = ts.build_text_model(tmp_path / "m")
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    data = ts.write_parquet(tmp_path / "d.parquet", ts.llmi_rows(4))
    out = tmp_path / "run"
    first = plan(_request(tmp_path, cfg, [data], model=model, out=out))
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (out / RUN_FILE).write_text(json.dumps(_run_record(first), default=str))
    plan(_request(tmp_path, cfg, [data], model=model, out=out, resume=True, flags={"learning_rate": 2e-3}))
    for flags, key in (({"prompt_batch": 4}, "prompt_batch"), ({"num_generations": 4}, "num_generations"),
                       ({"seed": 7}, "seed")):
        with pytest.raises(RecipeError, match=f"--resume: {key} was .* now"):
            plan(_request(tmp_path, cfg, [data], model=model, out=out, resume=True, flags=flags))


def test_the_same_model_named_another_way_is_the_same_run(tmp_path, monkeypatch):
    from llmi.train.runner import _check_output_folder, model_key

    model = tmp_path / "m"
    model.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    (out / "llmi_train.json").write_text(json.dumps({"model": str(model)}))
    monkeypatch.chdir(tmp_path)
    _check_output_folder(out, "m")  # relative, same folder: no error
    _check_output_folder(out, "./m/")
    assert model_key("m") == model_key(str(model))


def test_a_fresh_start_in_a_run_folder_without_checkpoint_drops_the_old_steps(tmp_path):
    """A run killed before its first checkpoint, started again without --resume, appended its steps to
    the dead run's metrics.jsonl: step 1 twice."""
    from llmi.train.metrics import MetricsLog
    from llmi.train.runner import start_outputs

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2):
        log.append({"step": step, "reward": 0.5})
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "step-1.html").write_text("old")
    start_outputs(tmp_path, None)
    assert log.read() == [] and not list((tmp_path / "samples").iterdir())
    for step in (1, 2, 3):
        log.append({"step": step})
    start_outputs(tmp_path, tmp_path / "checkpoint-2")
    assert [l["step"] for l in log.read()] == [1, 2]


def test_images_for_a_text_only_model_are_an_error_before_it_loads(tmp_path, judges):
    """A text model given interleaved_mm rows trained until TRL's KeyError: 'pixel_values'."""
    from llmi.train.runner import plan

    model = ts.build_text_model(tmp_path / "m")
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    text = ts.write_parquet(tmp_path / "train.parquet", ts.llmi_rows(2))
    mm = ts.write_parquet(tmp_path / "train_mm.parquet", ts.llmi_rows(2, with_images=True))
    with pytest.raises(TrainDataError, match="2 row\\(s\\) have input images, but .* has no image processor"):
        plan(_request(tmp_path, cfg, [text, mm], model=model))


def test_text_rows_next_to_image_rows_get_the_releases_blank_image_which_the_reward_leaves_out(tmp_path, judges):
    """TRL 1.16 cannot batch prompts with images next to prompts without (the release's mllmi recipe
    trains on train.parquet + train_mm.parquet): it died in the processor. Text rows now carry one blank
    28x28 image, as the release's loader gave them, and the reward never sees it."""
    import asyncio

    from llmi.config import load_settings
    from llmi.document import Document, TextBlock
    from llmi.train.prepare import trl_records
    from llmi.train.reward import TrainingReward

    rows = [parse_record(r) for r in ts.llmi_rows(1)] + [parse_record(ts.llmi_rows(1, with_images=True)[0])]
    records, multimodal = trl_records(rows)
    assert multimodal
    text, mm = records
    assert text["pad_images"] == 1 and mm["pad_images"] == 0
    assert [im.size for im in text["images"]] == [(28, 28)] and text["images"][0].getpixel((0, 0)) == (255, 255, 255)
    assert text["prompt"][-1]["content"][0] == {"type": "image", "text": None}
    assert [p["type"] for p in mm["prompt"][-1]["content"]] == ["image", "text"]  # its own image, no blank

    seen = []

    async def execute(response, images):
        seen.append(len(images))
        return Document(blocks=[TextBlock(response)], input_images=list(images))

    settings = load_settings(ts.write_config(tmp_path / "llmi.toml", judges[0]), environ={})
    reward = TrainingReward(settings, execute=execute)

    async def score():
        try:
            return await reward(prompts=[r["prompt"] for r in records], completions=["hello " + ts.CODE_TAG] * 2,
                                image_num=[r["image_num"] for r in records], tools=[r["tools"] for r in records],
                                question=[r["question"] for r in records], images=[r["images"] for r in records],
                                pad_images=[r["pad_images"] for r in records], row=[0, 1])
        finally:
            await reward.aclose()

    scores = asyncio.run(score())
    assert sorted(seen) == [0, 1] and all(s is not None for s in scores)
    by_row = {r.row: r for r in reward.last.rollouts}
    assert by_row[0].document.input_images == [] and len(by_row[1].document.input_images) == 1


# ------------------------------------------------------------------------------------------------
# A judge that goes down during training
# ------------------------------------------------------------------------------------------------


def test_steps_whose_every_rollout_was_dropped_stop_the_run(tmp_path):
    """With the judges down, TRL trained on (loss 0, grad norm 0) for as many steps as asked."""
    from llmi.train.callbacks import RunOutputs, make_callback

    class NoBatches:
        def drain(self):
            return []

    outputs = RunOutputs(NoBatches(), tmp_path, samples_every=10, samples_per_page=2, stop_after_failed_steps=2)
    outputs.on_log(1, {"reward": float("nan")})
    outputs.on_log(2, {"reward": 0.4})  # a good step in between starts the count again
    outputs.on_log(3, {"reward": float("nan")})
    assert outputs.stop_reason is None
    outputs.on_log(4, {"reward": None})
    assert outputs.stop_reason.startswith("stopped at step 4: every rollout of the last 2 steps was dropped")
    never = RunOutputs(NoBatches(), tmp_path / "b", samples_every=10, samples_per_page=2, stop_after_failed_steps=0)
    (tmp_path / "b").mkdir()
    for step in range(1, 6):
        never.on_log(step, {"reward": float("nan")})
    assert never.stop_reason is None

    # the callback stops training without saving the failed step, on every process alike
    from transformers import TrainerControl, TrainerState

    outputs = RunOutputs(NoBatches(), tmp_path, samples_every=10, samples_per_page=2, stop_after_failed_steps=1)
    callback = make_callback(outputs)
    state = TrainerState()
    state.global_step, state.max_steps, state.is_world_process_zero = 5, 10, False
    control = TrainerControl(should_save=True)
    callback.on_log(None, state, control, logs={"reward": float("nan"), "loss": 0.0})
    assert control.should_training_stop and not control.should_save


def test_the_samples_page_says_what_the_row_asked_for_and_where_it_came_from():
    from llmi.reward.rules import RewardResult
    from llmi.train.reward import Rollout
    from llmi.train.samples import samples_page

    result = RewardResult(score=0.5, n_tags=1, n_images=1)
    rollout = Rollout(row=1, question="q", completion="hello", result=result, document=None, image_num=99,
                      tools=("search", "code"))
    page = samples_page(3, [rollout], origins=["a.parquet:1", "train.parquet:2"])
    assert "row 1 (train.parquet:2) · asks for images: at least one (99), tools: search, code · wrote 1 tag(s)" in page


# ------------------------------------------------------------------------------------------------
# End to end (GRPOTrainer really runs; slow)
# ------------------------------------------------------------------------------------------------


def _train_cli(*args: str):
    from typer.testing import CliRunner

    from llmi.cli import app

    return CliRunner().invoke(app, ["train", *args])


@pytest.mark.slow
@pytest.mark.local_models
def test_a_vlm_trains_on_the_releases_text_and_multimodal_files_together(tmp_path, judges):
    """The mllmi-grpo recipe's data: train.parquet (string prompts) + train_mm.parquet (chats, images)."""
    model = ts.build_vlm(tmp_path / "vlm")
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    text = ts.write_parquet(tmp_path / "train.parquet", ts.llmi_rows(2))
    mm = ts.write_parquet(tmp_path / "train_mm.parquet", ts.llmi_rows(2, with_images=True))
    out = tmp_path / "run"
    r = _train_cli("--model", str(model), "--data", str(text), "--data", str(mm), "--config", str(cfg),
                   "--recipe", "mllmi-grpo", "-o", str(out), "--max-steps", "1", "--set", "prompt_batch=4")
    assert r.exit_code == 0, r.output
    (line,) = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert line["prompt_rows"] == [0, 1, 2, 3] and line["reward"] is not None
    page = (out / "samples" / "step-1.html").read_text()
    import re

    assert re.search(r"row \d \(\S+/train(_mm)?\.parquet:\d\) · asks for images: ", page)


@pytest.mark.slow
@pytest.mark.local_models
def test_judges_going_down_stop_the_run_with_one_line_and_resume_continues(tmp_path):
    from tests.conftest import _judge_server

    model = ts.build_text_model(tmp_path / "m")
    data = ts.write_parquet(tmp_path / "train.parquet", ts.llmi_rows(4))
    down = {"on": False}

    def reply(body, n):
        if down["on"]:
            return (500, b'{"error": {"message": "judge is down"}}', {})
        return ts.judge_reply(body, n)

    with _judge_server(reply) as (url, _):
        cfg = ts.write_config(tmp_path / "llmi.toml", url, train="stop_after_failed_steps = 2")
        out = tmp_path / "run"
        common = ["--model", str(model), "--data", str(data), "--config", str(cfg), "-o", str(out)]
        assert _train_cli(*common, "--max-steps", "1").exit_code == 0
        down["on"] = True
        r = _train_cli(*common, "--max-steps", "6", "--resume")
        assert r.exit_code == 2
        (last,) = [l for l in r.output.splitlines() if l.startswith("error:")]
        assert "every rollout of the last 2 steps was dropped" in last and "judge is down" in last
        # the failed steps were not checkpointed: the run continues from the last step that learnt something
        assert "checkpoint-1 is kept" in last and not (out / "checkpoint-2").exists()
        down["on"] = False
        assert _train_cli(*common, "--max-steps", "4", "--resume").exit_code == 0
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_summary_counts_prompt_tokens_with_the_training_system_prompt(tmp_path):
    """`llmi data summary --tokenizer` counted the stored prompts only, a few tokens, while llmi train's
    max_prompt_length counts them with its system prompt (hundreds): no help choosing the limit."""
    from typer.testing import CliRunner

    from llmi.cli import app

    model = tmp_path / "m"  # the tokenizer is all a summary loads
    fast, _ = ts._tokenizer(ts.WORDS, ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"])
    fast.chat_template = ts.TEMPLATE
    fast.save_pretrained(model)
    data = ts.write_parquet(tmp_path / "train.parquet", ts.llmi_rows(2))
    cfg = tmp_path / "llmi.toml"
    cfg.write_text("[cache]\nenabled = false\n")

    def p50(*extra):
        r = CliRunner().invoke(app, ["data", "summary", str(data), "--tokenizer", str(model), "--json", *extra])
        assert r.exit_code == 0, r.output
        return json.loads(r.output)["prompt_length"]["p50"]

    stored, with_system = p50(), p50("--system-prompt", "llmi", "--config", str(cfg))
    assert stored < 10 < 100 < with_system


def test_a_tool_set_is_one_set_whatever_the_order_its_tools_are_listed_in():
    from llmi.train.data import summarize

    rows = [parse_record({"prompt": "x", "image_num": 0, "tools": t}) for t in
            (["search", "diffusion"], ["diffusion", "search"], ["code"])]
    assert summarize(rows)["tool_sets"] == {"diffusion+search": 2, "code": 1}


def test_trainer_options_of_the_wrong_type_are_named_before_anything_runs():
    """`--set learning_rate=abc` (or a quoted TOML value) reached the optimizer after the model loaded:
    TypeError: '<=' not supported between instances of 'float' and 'str'."""
    from llmi.train import recipes
    from llmi.train.errors import RecipeError
    from llmi.train.settings import TrainSettings

    known = recipes.trainer_fields()
    with pytest.raises(RecipeError, match=r"learning_rate = 'abc' \(from a flag\): TRL's GRPOConfig wants float"):
        recipes.resolve("llmi-grpo", flags={"learning_rate": "abc"}, known_trainer=known)
    with pytest.raises(RecipeError, match=r"gradient_checkpointing = 'yes' \(from \[train\]\).*bool"):
        recipes.resolve("llmi-grpo", TrainSettings(gradient_checkpointing="yes"), known_trainer=known)
    # numbers and booleans written as text are read as such; lists and None stay as they are
    r = recipes.resolve("llmi-grpo", TrainSettings(learning_rate="3e-6", num_generations=4.0, use_vllm="false",
                                                   report_to=["wandb"], epsilon_high=None), known_trainer=known)
    t = r.trainer
    assert t["learning_rate"] == 3e-6 and t["num_generations"] == 4 and isinstance(t["num_generations"], int)
    assert t["use_vllm"] is False and t["report_to"] == ["wandb"] and t["epsilon_high"] is None


def test_test_split_rows_among_the_training_data_are_pointed_out(tmp_path, judges, caplog):
    import logging

    from llmi.train.runner import plan

    model = ts.build_text_model(tmp_path / "m")
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    rows = ts.llmi_rows(3)
    rows[1]["extra_info"]["split"] = "test"
    data = ts.write_parquet(tmp_path / "d.parquet", rows)
    with caplog.at_level(logging.WARNING, logger="llmi.train.runner"):
        plan(_request(tmp_path, cfg, [data], model=model))
    assert "1 of 3 training rows are not split 'train'" in caplog.text
