"""Training data: the LLM-I schema and llmi reward rows read into one form, converted to each layout
(and verl's parquet), checked, and summarised; ``llmi data`` on real files."""

from __future__ import annotations

import json

import pytest

from llmi.train.data import (
    parse_record, read_rows, summarize, to_llmi_record, to_reward_row, to_verl_record, write_records,
)
from llmi.train.errors import TrainDataError
from tests import train_support as ts

pytest.importorskip("pyarrow")


def test_llmi_schema_rows_with_and_without_images():
    text = parse_record(ts.llmi_rows(1)[0], origin="f:1")
    assert text.prompt == ({"role": "user", "content": "the sales rose in spring 0"},)
    assert (text.image_num, text.tools, text.split, text.index) == (1, ("code",), "train", 0)
    assert text.question == "the sales rose in spring 0" and text.data_source == "interleaved"
    mm = parse_record(ts.llmi_rows(1, with_images=True)[0])
    assert mm.data_source == "interleaved_mm" and len(mm.images) == 1 and mm.image_num == 1
    assert mm.user_text.startswith("<image> ")


def test_reward_rows(tmp_path):
    (tmp_path / "pic.png").write_bytes(ts.png_bytes())
    row = parse_record({"prompt": "<image> draw", "image_num": 2, "tools": ["diffusion"], "split": "test",
                        "images": ["pic.png"], "response": "ignored"}, base_dir=str(tmp_path))
    assert (row.image_num, row.tools, row.split, row.question) == (2, ("diffusion",), "test", "draw")
    assert row.images == (str(tmp_path / "pic.png"),)
    # an image without a placeholder: the model would not know where it belongs
    with pytest.raises(TrainDataError, match="no <image> placeholder"):
        parse_record({"prompt": "draw", "image_num": 2, "tools": [], "images": ["pic.png"]}, base_dir=str(tmp_path))


def test_placeholders_and_images_are_counted_in_structured_prompts(tmp_path):
    (tmp_path / "pic.png").write_bytes(ts.png_bytes())
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "recolour it"}]}]
    row = parse_record({"prompt": chat, "image_num": 1, "tools": ["edit"], "images": ["pic.png"]},
                       base_dir=str(tmp_path))
    assert row.prompt[0]["content"] == "<image>recolour it"
    assert row.images == (str(tmp_path / "pic.png"),)  # relative paths resolved against the data file
    assert row.question == "recolour it"



@pytest.mark.parametrize("record, message", [
    ({"prompt": "x", "extra_info": {"tools": []}}, "no 'image_num'"),
    ({"prompt": "x", "extra_info": {"image_num": 1}}, "no 'tools'"),
    ({"prompt": "x"}, "not LLM-I training data"),
    ({"prompt": "x", "image_num": 1, "tools": ["paint"]}, "unknown tool"),
    ({"prompt": "x", "image_num": 1, "tools": "code"}, "tools must be a list"),
    ({"prompt": "x", "image_num": 1.5, "tools": []}, "image_num"),
    ({"prompt": "x", "image_num": 1, "tools": [], "split": "holdout"}, "unknown split"),
    ({"prompt": [], "image_num": 1, "tools": []}, "non-empty list"),
    ({"prompt": [{"role": "system", "content": "s"}], "image_num": 1, "tools": []}, "no user message"),
    ({"prompt": "<image> x", "image_num": 1, "tools": []}, r"0 image\(s\) but 1"),
    ({"prompt": [{"role": "system", "content": "<image>"}, {"role": "user", "content": "x"}], "image_num": 1,
      "tools": []}, "outside a user message"),
])
def test_bad_rows_say_why(record, message):
    with pytest.raises(TrainDataError, match=message):
        parse_record(record)


def test_read_rows_lists_every_problem_with_its_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    good = {"prompt": "x", "image_num": 1, "tools": []}
    f.write_text("\n".join([json.dumps(good), "not json", json.dumps({"prompt": "y", "tools": []}), ""]))
    with pytest.raises(TrainDataError) as info:
        read_rows([f])
    msg = str(info.value)
    assert msg.startswith("2 of 3 rows cannot be trained on")
    assert f"{f}:2: not JSON" in msg and f"{f}:3: no 'image_num'" in msg
    with pytest.raises(TrainDataError, match="does not exist"):
        read_rows([tmp_path / "nope.parquet"])
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n")
    with pytest.raises(TrainDataError, match="unknown data format"):
        read_rows([csv])


def test_round_trips_between_the_layouts(tmp_path):
    src = ts.write_parquet(tmp_path / "mm.parquet", ts.llmi_rows(2, with_images=True))
    rows = read_rows([src])
    # LLM-I -> verl parquet -> rows: the same rows
    verl = tmp_path / "verl.parquet"
    write_records([to_verl_record(r) for r in rows], verl)
    back = read_rows([verl])
    assert [(r.prompt, r.image_num, r.tools, r.question, r.index) for r in back] == \
        [(r.prompt, r.image_num, r.tools, r.question, r.index) for r in rows]
    import pyarrow.parquet as pq

    table = pq.read_table(verl)
    assert set(table.column_names) == {"data_source", "prompt", "ability", "reward_model", "images", "extra_info"}
    rec = table.to_pylist()[0]
    assert rec["ability"] == "interleaved" and rec["reward_model"]["ground_truth"] == ""
    assert rec["prompt"][0]["role"] == "user" and rec["images"][0]["bytes"][:4] == b"\x89PNG"
    # -> reward JSONL with the images written next to it -> rows
    jl = tmp_path / "reward.jsonl"
    write_records([to_reward_row(r, image_dir=tmp_path / "reward_images", stem=f"r{k}") for k, r in enumerate(rows)], jl)
    first = json.loads(jl.read_text().splitlines()[0])
    assert first["images"] == ["reward_images/r0-0.png"] and first["image_num"] == 1
    again = read_rows([jl])
    assert [r.prompt for r in again] == [r.prompt for r in rows]
    # -> LLM-I layout (a row with input images has a chat prompt, as the release's train_mm.parquet)
    rec = to_llmi_record(again[0])
    assert rec["prompt"] == [{"role": "user", "content": "<image> the sales rose in spring 0"}]
    assert rec["extra_info"]["tools"] == ["edit"]


def test_images_are_scaled_to_max_pixels():
    from PIL import Image
    import io

    row = parse_record({"prompt": "<image>x", "image_num": 1, "tools": [], "images": [ts.png_bytes(400, 300)]})
    rec = to_verl_record(row, max_pixels=100 * 75)
    img = Image.open(io.BytesIO(rec["images"][0]["bytes"]))
    assert img.width * img.height <= 100 * 75 and abs(img.width / img.height - 4 / 3) < 0.05


def test_summary_counts_the_mixes():
    rows = [parse_record(r) for r in ts.llmi_rows(4)] + [parse_record(ts.llmi_rows(1, with_images=True)[0])]
    s = summarize(rows)
    assert s["rows"] == 5 and s["rows_with_images"] == 1 and s["input_images"] == 1
    assert s["image_rule"] == {"exactly 1": 2, "no image (-1)": 1, "exactly 2": 1, "at least one (99)": 1}
    assert s["tools"] == {"code": 2, "search": 2, "edit": 1}
    assert s["tool_sets"]["(none)"] == 1 and s["tool_sets"]["code+search"] == 1
    assert s["prompt_length_unit"] == "chars" and s["prompt_length"]["max"] >= s["prompt_length"]["p50"]
    counted = summarize(rows, count_tokens=lambda r: len(r.user_text.split()))
    assert counted["prompt_length_unit"] == "tokens" and counted["prompt_length"]["max"] == 7


def test_llmi_data_convert_and_summary_commands(tmp_path):
    from typer.testing import CliRunner

    from llmi.cli import app

    src = ts.write_parquet(tmp_path / "train.parquet", ts.llmi_rows(4))
    cfg = ts.write_config(tmp_path / "llmi.toml", "http://127.0.0.1:9/v1")
    out = tmp_path / "verl.parquet"
    r = CliRunner().invoke(app, ["data", "convert", str(src), "-o", str(out), "--to", "verl", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "wrote 4 rows" in r.output and "image-count rule: exactly 1 1 (25%)" in r.output
    rows = read_rows([out])
    # verl 0.9.1 cannot replace the system prompt at load time, so llmi's is written into the rows
    assert all(r.prompt[0]["role"] == "system" and "<imgen>" in r.prompt[0]["content"] for r in rows)
    r = CliRunner().invoke(app, ["data", "summary", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["rows"] == 4
    r = CliRunner().invoke(app, ["data", "convert", str(src), "-o", str(tmp_path / "x.csv"), "--to", "verl"])
    assert r.exit_code == 2 and ".parquet or .jsonl" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "tools": []}) + "\n")
    r = CliRunner().invoke(app, ["data", "summary", str(bad)])
    assert r.exit_code == 2 and "no 'image_num'" in r.output
