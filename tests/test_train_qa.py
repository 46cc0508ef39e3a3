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
