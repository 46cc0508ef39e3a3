"""Bad input stops ``llmi train`` with a clear, typed error before any model loads.

The ``--model`` given here is a folder that does not exist: reaching the model would fail with a
different message (a ConfigError about the tokenizer), so each test also shows the check came first.
"""

from __future__ import annotations

import socket

import pytest

from llmi.config import load_settings
from llmi.train.errors import JudgeUnreachable, RecipeError, TrainDataError
from llmi.train.runner import TrainRequest, plan
from tests import train_support as ts

pytest.importorskip("trl")


@pytest.fixture
def judges():
    from tests.conftest import _judge_server

    with _judge_server(ts.judge_reply) as (url, server):
        yield url, server


def request(tmp_path, cfg, data, **kw):
    return TrainRequest(model=str(tmp_path / "no-such-model"), data=[str(data)], output_dir=tmp_path / "out",
                        settings=load_settings(cfg, environ={}), **kw)


def rows_without(key):
    rows = ts.llmi_rows(2)
    for r in rows:
        r["extra_info"].pop(key)
    return rows


@pytest.mark.parametrize("key", ["image_num", "tools"])
def test_a_dataset_without_image_num_or_tools(tmp_path, judges, key):
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    data = ts.write_parquet(tmp_path / "d.parquet", rows_without(key))
    with pytest.raises(TrainDataError, match=f"no '{key}'") as info:
        plan(request(tmp_path, cfg, data))
    assert "d.parquet:1" in str(info.value) and len(info.value.problems) == 2


def test_images_that_do_not_match_the_placeholders(tmp_path, judges):
    rows = ts.llmi_rows(2, with_images=True)
    rows[1]["prompt"] = [{"role": "user", "content": "<image> and <image> again"}]
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    data = ts.write_parquet(tmp_path / "mm.parquet", rows)
    with pytest.raises(TrainDataError, match=r"mm.parquet:2: 1 image\(s\) but 2 <image> placeholder"):
        plan(request(tmp_path, cfg, data))


def test_an_unknown_recipe_field_is_named(tmp_path, judges):
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0], train="num_generation = 4")
    data = ts.write_parquet(tmp_path / "d.parquet", ts.llmi_rows(2))
    with pytest.raises(RecipeError, match="unknown recipe field 'num_generation'.*did you mean 'num_generations'"):
        plan(request(tmp_path, cfg, data))
    with pytest.raises(RecipeError, match="unknown recipe"):
        plan(request(tmp_path, ts.write_config(tmp_path / "b.toml", judges[0]), data, recipe="llmi-ppo"))


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_an_unreachable_or_unset_judge(tmp_path, judges):
    data = ts.write_parquet(tmp_path / "d.parquet", ts.llmi_rows(2))
    cfg = ts.write_config(tmp_path / "llmi.toml", f"http://127.0.0.1:{_closed_port()}/v1")
    with pytest.raises(JudgeUnreachable, match="unreachable"):
        plan(request(tmp_path, cfg, data))
    cfg = ts.write_config(tmp_path / "llmi.toml", "")
    with pytest.raises(JudgeUnreachable, match=r"\[llm_judge\] base_url is not set"):
        plan(request(tmp_path, cfg, data))


def test_a_judge_serving_another_model(tmp_path):
    from tests.conftest import _judge_server

    data = ts.write_parquet(tmp_path / "d.parquet", ts.llmi_rows(2))
    with _judge_server(ts.judge_reply, models=["other"]) as (url, _):
        cfg = ts.write_config(tmp_path / "llmi.toml", url)
        with pytest.raises(JudgeUnreachable, match="does not serve 'judge-1'"):
            plan(request(tmp_path, cfg, data))


def test_with_good_input_the_model_folder_is_what_fails(tmp_path, judges):
    from llmi.errors import ConfigError

    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    data = ts.write_parquet(tmp_path / "d.parquet", ts.llmi_rows(2))
    with pytest.raises(ConfigError, match="cannot load the tokenizer"):
        plan(request(tmp_path, cfg, data))


def test_prompts_over_the_limit(tmp_path, judges):
    model = ts.build_text_model(tmp_path / "m")
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0], extra="")
    rows = ts.llmi_rows(4)
    rows[2]["prompt"] = "the sales rose " * 300  # far over the limit (with a ~100-token system prompt)
    data = ts.write_parquet(tmp_path / "d.parquet", rows)
    settings = load_settings(cfg, environ={})
    req = TrainRequest(model=str(model), data=[str(data)], output_dir=tmp_path / "o", settings=settings,
                       flags={"max_prompt_length": 20})
    with pytest.raises(TrainDataError, match="over the length limit"):
        plan(req)
    req.flags = {"max_prompt_length": 20, "prompt_overflow": "drop"}
    with pytest.raises(TrainDataError, match="every row was dropped"):
        plan(req)
    # truncate: the user text is cut until the prompt fits; the system prompt (from the file) is kept
    req.flags = {"max_prompt_length": 200, "prompt_overflow": "truncate"}
    p = plan(req)
    assert p.lengths.longest > 200 and p.lengths.truncated == 1 and p.lengths.kept == 3
    cut = p.rows[2].prompt[-1]["content"]
    assert "the sales rose " * 20 in cut and len(cut) < len(rows[2]["prompt"])
    assert all(r.prompt[0]["role"] == "system" and r.prompt[0]["content"].startswith(ts.SYSTEM) for r in p.rows)
    # resuming a run that does not exist
    req.flags, req.resume = {}, True
    with pytest.raises(Exception, match="no checkpoint-N folder"):
        plan(req)


def test_the_built_in_system_prompt_replaces_the_datasets(tmp_path, judges):
    from llmi.prompting import build_system_prompt

    model = ts.build_text_model(tmp_path / "m")
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    rows = ts.llmi_rows(2)
    rows[0]["prompt"] = [{"role": "system", "content": "the release's prompt"}, {"role": "user", "content": "hi"}]
    data = tmp_path / "d.jsonl"  # a string prompt and a chat prompt in one file
    data.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    settings = load_settings(cfg, environ={})
    p = plan(TrainRequest(model=str(model), data=[str(data)], output_dir=tmp_path / "o", settings=settings,
                          flags={"system_prompt": "llmi", "max_prompt_length": None}))
    expected = build_system_prompt(["search", "code", "edit"]).text
    assert p.usable_tools == ["search", "code", "edit"]
    assert [r.prompt[0] for r in p.rows] == [{"role": "system", "content": expected}] * 2
    assert [m["role"] for m in p.rows[0].prompt] == ["system", "user"]


def test_resuming_with_other_data_is_refused(tmp_path, judges):
    model = ts.build_text_model(tmp_path / "m")
    cfg = ts.write_config(tmp_path / "llmi.toml", judges[0])
    data = ts.write_parquet(tmp_path / "d.parquet", ts.llmi_rows(4))
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-1").mkdir()  # no trainer state: not a checkpoint to resume from
    (out / "llmi_train.json").write_text('{"fingerprint": "0123456789abcdef"}')
    req = TrainRequest(model=str(model), data=[str(data)], output_dir=out, settings=load_settings(cfg, environ={}),
                       resume=True)
    with pytest.raises(TrainDataError, match="differs from the run"):
        plan(req)
    from llmi.train.runner import last_checkpoint

    assert last_checkpoint(out).name == "checkpoint-2"
