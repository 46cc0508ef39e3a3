"""``llmi train`` end to end on CPU with no download: GRPOTrainer really runs.

A tiny random Qwen2 (text) and a tiny Llava (vision-language) are built here, trained for a step or two
on parquet files in the LLM-I schema; the judges are a loopback OpenAI-compatible server, the tools are
real (the sandboxed chart tool, the local image library, the Pillow editor). Checked: checkpoints in the
Hugging Face layout that ``from_pretrained`` loads, ``metrics.jsonl`` with the required fields,
``samples/step-N.html`` pages, the PNG plot, and that ``--resume`` continues at step 3 with the data
order of an uninterrupted run.
"""

from __future__ import annotations

import json
import math

import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from llmi.cli import app  # noqa: E402
from tests import train_support as ts  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.local_models]

REQUIRED = ("step", "reward", "s_num", "s_llm", "s_mllm", "r_tool", "judge_error_frac", "llm_judge_error_frac",
            "mllm_judge_error_frac", "completion_length", "reward_time_s", "loss", "learning_rate",
            *(f"tool_success/{s}" for s in ("search", "diffusion", "code", "edit")))


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return ts.build_text_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="module")
def judges():
    from tests.conftest import _judge_server

    with _judge_server(ts.judge_reply) as (url, server):
        yield url, server


def train(*args: str):
    result = CliRunner().invoke(app, ["train", *args])
    if result.exit_code != 0:
        raise AssertionError(f"llmi train {' '.join(args)} exited {result.exit_code}:\n{result.output}\n{result.exception!r}")
    return result


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_two_steps_then_resume_continues_at_step_three_in_the_same_data_order(tmp_path, text_model, judges):
    url, server = judges
    cfg = ts.write_config(tmp_path / "llmi.toml", url)
    data = ts.write_parquet(tmp_path / "train.parquet", ts.llmi_rows(4))
    out = tmp_path / "run"
    common = ["--model", str(text_model), "--data", str(data), "--config", str(cfg)]
    n_requests = len(server.requests)

    train(*common, "-o", str(out), "--max-steps", "2")
    lines = metrics(out)
    assert [l["step"] for l in lines] == [1, 2]
    for line in lines:
        missing = [k for k in REQUIRED if k not in line]
        assert not missing, missing
        assert 0.0 <= line["reward"] <= 1.0 and line["rollouts"] == 4
        assert line["judge_error_frac"] == 0.0 and line["completion_length"] > 0
        assert len(line["prompt_rows"]) == 2  # prompt_batch 2 x 2 generations = 4 rollouts per step
    # the judges were really asked: once per rollout for the LLM judge, and for every rollout with images
    llm_calls = [r for r in server.requests[n_requests:] if "Image Quality" not in r["messages"][0]["content"]]
    assert len(llm_calls) == 8
    # real tools ran: every code tag's chart and every search hit is counted per source
    calls = sum(l["tool_calls/code"] + l["tool_calls/search"] for l in lines)
    made = sum(l["images_per_rollout"] * l["rollouts"] for l in lines)
    assert calls > 0 and made > 0

    # checkpoints in the Hugging Face layout, and the final model, load with from_pretrained
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    for folder in (out / "checkpoint-1", out):
        model = transformers.AutoModelForCausalLM.from_pretrained(folder)
        assert model.config.model_type == "qwen2"
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == ts.TEMPLATE
    # samples pages and the plot
    page = (out / "samples" / "step-2.html").read_text()
    assert page.count('class="llmi-sample"') == 3 and "s_llm" in page and "llmi-document" in page
    png = (out / "reward.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    run = json.loads((out / "llmi_train.json").read_text())
    assert run["resolved"]["recipe"] == "llmi-grpo" and run["rows"] == 4
    assert run["resolved"]["trainer"]["loss_type"] == "dapo" and run["resolved"]["trainer"]["beta"] == 0.0

    # without --resume an existing run is not overwritten
    again = CliRunner().invoke(app, ["train", *common, "-o", str(out), "--max-steps", "3"])
    assert again.exit_code == 2 and "--resume" in again.output

    # --resume continues at step 3
    train(*common, "-o", str(out), "--max-steps", "3", "--resume")
    resumed = metrics(out)
    assert [l["step"] for l in resumed] == [1, 2, 3]
    assert (out / "checkpoint-3").is_dir()

    # an uninterrupted 3-step run sees the prompts in the same order
    fresh = tmp_path / "fresh"
    train(*common, "-o", str(fresh), "--max-steps", "3")
    assert [l["prompt_rows"] for l in metrics(fresh)] == [l["prompt_rows"] for l in resumed]


def test_a_vision_language_model_trains_on_input_images(tmp_path, judges):
    url, server = judges
    model = ts.build_vlm(tmp_path / "tiny-llava")
    cfg = ts.write_config(tmp_path / "llmi.toml", url)
    data = ts.write_parquet(tmp_path / "mm.parquet", ts.llmi_rows(4, with_images=True))
    out = tmp_path / "run"
    n_requests = len(server.requests)
    train("--model", str(model), "--data", str(data), "--config", str(cfg), "--recipe", "mllmi-grpo",
          "-o", str(out), "--max-steps", "1")
    (line,) = metrics(out)
    assert line["step"] == 1 and math.isfinite(line["reward"])
    # rollouts that made an image were judged by the MLLM judge, shown the user's image and the new one
    mllm_calls = [r for r in server.requests[n_requests:] if "Image Quality" in r["messages"][0]["content"]]
    assert 1 <= len(mllm_calls) <= line["rollouts"]
    for call in mllm_calls:
        assert sum(p["type"] == "image_url" for p in call["messages"][1]["content"]) >= 2
    assert line["tool_calls/edit"] + line["tool_calls/code"] >= 1
    assert transformers.AutoModelForImageTextToText.from_pretrained(out).config.model_type == "llava"
    assert (out / "samples" / "step-1.html").exists()
    run = json.loads((out / "llmi_train.json").read_text())
    assert run["reward"]["text_weight"] == 1.5 and run["reward"]["image_weight"] == 0.5  # the mllmi recipe


def test_lora_trains_adapters_only(tmp_path, text_model, judges):
    url, _ = judges
    cfg = ts.write_config(tmp_path / "llmi.toml", url, train="lora = true\nlora_r = 2\nlora_alpha = 4")
    data = ts.write_parquet(tmp_path / "train.parquet", ts.llmi_rows(4))
    out = tmp_path / "run"
    train("--model", str(text_model), "--data", str(data), "--config", str(cfg), "-o", str(out), "--max-steps", "1")
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and adapter["peft_type"] == "LORA"
    assert not (out / "model.safetensors").exists()  # only the adapters were saved
    from peft import PeftModel

    base = transformers.AutoModelForCausalLM.from_pretrained(text_model)
    assert isinstance(PeftModel.from_pretrained(base, out), PeftModel)
