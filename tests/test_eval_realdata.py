"""What the real benchmark files do that small tidy fixtures do not: found by running ``llmi eval`` on
OpenING's released ``test_data.jsonl`` and ``gen_outputs`` folders, ISG-Bench's documented layout and the
LLM-I release's formats, each failure reproduced here on a small file written in the test (own data, the
real layout: image paths relative to the data file, ``<image>`` placeholders, ``.jsonl`` files holding one
pretty-printed object, ``.jpg`` files that are PNGs, non-UTF-8 bytes, odd ids, missing optional fields)."""

from __future__ import annotations

import base64
import json

import pytest
from typer.testing import CliRunner

from llmi.cli import app
from llmi.document import Document, ImageBlock, TextBlock
from llmi.errors import InputError
from llmi.eval.base import JudgeCalls, read_jsonl, read_text
from llmi.eval.isg import ISGBench
from llmi.eval.llmi_bench import LLMIBench
from llmi.eval.llmi_test import LLMITest
from llmi.eval.opening import OpenING, document_steps
from llmi.eval.report import _document_html, _verdicts_html, thumbnail_document
from llmi.eval.store import RunFolder
from llmi.images import ImageData
from tests.helpers import make_jpeg, make_png
from tests.test_eval_formats import FakeJudge

runner = CliRunner()


def _opening_row(uid: str, n_out: int = 2, input_image: str | None = "./images/Storybook Completion/7-i-1.jpg") -> dict:
    return {
        "total_uid": uid, "meta_task_id": "3", "meta_task_name": "Multimodal Content Completion", "subtask_id": "1",
        "subtask_name": "Storybook Completion", "data_id": uid[-2:],
        "conversations": [
            {"input": [{"image": input_image, "text": "Go on with the story. <BEGIN> A fox finds a lamp. <image>"},
                       {"image": None, "text": "It is dark."}]},
            {"output": [{"image": f"./images/Storybook Completion/7-o-{k + 1}.jpg", "text": f"golden {k} <image>"}
                        for k in range(n_out)]},
        ],
    }


# ------------------------------------------------------------------------------------------------
# The report shows the item's input images
# ------------------------------------------------------------------------------------------------


def test_report_documents_show_the_input_images(tmp_path):
    """Found on OpenING item 1502046 (one input image): the report's thumbnails dropped the document's input
    images, and a document read from a gen_outputs folder has none, so no item ever showed its input."""
    run = RunFolder(tmp_path / "run")
    big = ImageData.from_bytes(make_png(900, 600, (10, 120, 200)))
    doc = Document(blocks=[TextBlock("Here."), ImageBlock(ImageData.from_bytes(make_png(20, 20)), "search", "x")],
                   input_images=[big])
    small = thumbnail_document(doc)
    assert len(small.input_images) == 1 and max(small.input_images[0].width, small.input_images[0].height) <= 512

    root = tmp_path / "OpenING-benchmark"
    (root / "images" / "Storybook Completion").mkdir(parents=True)
    (root / "images" / "Storybook Completion" / "7-i-1.jpg").write_bytes(make_jpeg(30, 20))
    data = root / "test_data.jsonl"
    data.write_text(json.dumps(_opening_row("0301007")) + "\n")
    item = OpenING(data).load()[0]
    run.save_document(item.id, Document(blocks=[TextBlock("A step.")]))  # imported: no input images of its own
    page = _document_html(run, item, True)
    assert "llmi-inputs" in page and page.count("data:image/") == 1


# ------------------------------------------------------------------------------------------------
# OpenING
# ------------------------------------------------------------------------------------------------


def test_opening_output_folder_without_data_states_no_step_count(tmp_path):
    """Found judging gen_outputs/Show-o_output alone: the item was built from the model's own output file, so
    its "golden" step count was the model's and the image-count rule always held."""
    folder = tmp_path / "gen_outputs" / "Fox_output"
    folder.mkdir(parents=True)
    row = _opening_row("0301007", n_out=3)
    row.pop("total_uid")
    row["conversations"][1]["output"] = [{"text": f"model step {k}", "image": f"0301007-o-{k}.jpg"} for k in range(3)]
    (folder / "0301007.json").write_text(json.dumps(row, indent=4))
    for k in range(3):
        (folder / f"0301007-o-{k}.jpg").write_bytes(make_jpeg(8, 8))
    out = next(iter(OpenING(None).read_outputs(folder, None)))
    assert out.item.image_num is None and "Answer in" not in out.item.prompt
    assert len(out.document.images) == 3


def test_opening_output_images_that_are_png_or_missing(tmp_path):
    """OpenING's GPT-4o+DALL-E3 outputs are PNG files named .jpg; a step's image may be missing: the step keeps
    its place (a noted gap, as the report shows it) instead of merging its text into the next step."""
    folder = tmp_path / "Dalle_output"
    folder.mkdir()
    row = _opening_row("0302005")
    row["conversations"][1]["output"] = [{"text": "One.", "image": "0302005-o-0.jpg"},
                                         {"text": "Two.", "image": "0302005-o-1.jpg"},
                                         {"text": "Three.", "image": "./Dalle_output/0302005-o-2.jpg"}]
    (folder / "0302005.json").write_text(json.dumps(row))
    (folder / "0302005-o-0.jpg").write_bytes(make_png(16, 16))  # a PNG under a .jpg name
    (folder / "0302005-o-2.jpg").write_bytes(make_jpeg(16, 16))
    doc = next(iter(OpenING(None).read_outputs(folder, None))).document
    assert doc.images[0].image.mime == "image/png"
    assert [f.kind for f in doc.failures] == ["missing_image"] and "0302005-o-1.jpg" in doc.failures[0].reason
    steps = document_steps(doc)
    assert [t for t, _ in steps] == ["One.", "Two.", "Three."] and steps[1][1] is None

    bench = OpenING(None, options={"model_name": "m"})
    run = RunFolder(tmp_path / "run")
    item = bench.item(row, None)
    bench.write_item(run, item, doc)
    written = tmp_path / "run" / "gen_outputs" / "m_output" / "0302005-o-0.jpg"
    assert written.read_bytes()[:3] == b"\xff\xd8\xff"  # OpenING's layout holds JPEGs


def test_opening_parent_gen_outputs_folder_names_the_model_folders(tmp_path):
    (tmp_path / "gen_outputs" / "A_output").mkdir(parents=True)
    (tmp_path / "gen_outputs" / "B_output").mkdir()
    with pytest.raises(InputError, match="A_output, B_output"):
        list(OpenING(None).read_outputs(tmp_path / "gen_outputs", None))


def test_opening_odd_ids_stay_inside_the_output_folder(tmp_path):
    bench = OpenING(None, options={"model_name": "m"})
    run = RunFolder(tmp_path / "run")
    for uid in ("../../escape", "a/b", "0301096"):
        item = bench.item(_opening_row(uid, input_image=None), None)
        bench.write_item(run, item, Document(blocks=[TextBlock("x"), ImageBlock(ImageData.from_bytes(make_png(4, 4)), "search", "")]))
    folder = tmp_path / "run" / "gen_outputs" / "m_output"
    names = sorted(p.name for p in folder.iterdir())
    assert "0301096.json" in names and "0301096-o-0.jpg" in names  # plain ids keep OpenING's names
    assert len(names) == 6 and not (tmp_path / "escape.json").exists()
    assert all(p.parent == folder for p in folder.rglob("*"))


def test_opening_placeholder_inside_a_step_keeps_its_place():
    row = _opening_row("0301007")
    row["conversations"][0]["input"][0]["text"] = "<BEGIN> Look at <image> and go on."
    item = OpenING(None).item(row, None)
    assert item.prompt.startswith("Look at [image 0] and go on.")


# ------------------------------------------------------------------------------------------------
# Encodings
# ------------------------------------------------------------------------------------------------


def test_non_utf8_data_is_an_input_error_naming_the_line(tmp_path):
    """Found with a latin-1 byte in an OpenING / ISG JSONL: a UnicodeDecodeError traceback instead of exit 2."""
    bad = tmp_path / "data.jsonl"
    bad.write_bytes(json.dumps(_opening_row("1")).encode() + b"\n" + b'{"total_uid": "2", "x": "caf\xe9"}\n')
    for bench in (OpenING(bad), ISGBench(bad), LLMITest(bad)):
        with pytest.raises(InputError, match=r"not UTF-8 text \(line 2: byte 0xe9\)"):
            bench.load()
    result = runner.invoke(app, ["eval", "opening", "--data", str(bad), "-o", str(tmp_path / "run"),
                                 "--judge-url", "http://127.0.0.1:9/v1", "--no-progress"])
    assert result.exit_code == 2 and "line 2: byte 0xe9" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_utf16_and_bom_files_are_read(tmp_path):
    rows = [{"id": "0001", "Category": "HowTo", "Query": [{"type": "text", "content": "Brew tea — 茶"}],
             "Golden": [{"type": "text", "content": "Boil."}]}]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    f16 = tmp_path / "isg16.jsonl"
    f16.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    f8 = tmp_path / "isg8.jsonl"
    f8.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    for f in (f16, f8):
        items = ISGBench(f).load()
        assert [i.id for i in items] == ["0001"] and "茶" in items[0].prompt
    assert read_text(f16) == text
    bench = tmp_path / "text_only.json"
    bench.write_bytes(b"\xff\xfe" + json.dumps([{"prompt": "Über Kaffee", "r1": "nennt Marken"}]).encode("utf-16-le"))
    assert LLMIBench(bench).load()[0].prompt == "Über Kaffee"


def test_jsonl_holding_one_pretty_printed_object_or_a_list(tmp_path):
    """OpenING's SEED-LLaMA / Show-o outputs are `.jsonl` files holding one indented object."""
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"a": 1}, indent=4))
    assert read_jsonl(one) == [(1, {"a": 1})]
    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"a": 1}, {"a": 2}], indent=2))
    assert [v for _, v in read_jsonl(many)] == [{"a": 1}, {"a": 2}]
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(lines) == [(1, {"a": 1}), (3, {"a": 2})]
    lines.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(InputError, match="line 2 is not JSON"):
        read_jsonl(lines)


# ------------------------------------------------------------------------------------------------
# LLMI-Bench
# ------------------------------------------------------------------------------------------------


def test_llmi_bench_release_results_without_data_is_an_input_error(tmp_path):
    """Found judging the release's json_results/evaluation_results.json alone: it keeps the scores, not the
    criteria, so every item "finished" with no score and nothing said why."""
    results = tmp_path / "evaluation_results.json"
    results.write_text(json.dumps([{"sample_index": 1, "prompt": "Coffee report", "answer": "Coffee.",
                                    "scores": {"r1": 2}, "justifications": {"r1": "ok"}}], indent=4))
    with pytest.raises(InputError, match="--data benchmark/text_only.json"):
        list(LLMIBench(None).read_outputs(results, None))
    data = tmp_path / "text_only.json"
    data.write_text(json.dumps([{"prompt": "Coffee report", "r1": "names brands"}]))
    bench = LLMIBench(data)
    outs = list(bench.read_outputs(results, bench.load()))
    assert [o.item.id for o in outs] == ["1"] and outs[0].response == "Coffee."


def test_llmi_bench_images_relative_to_the_repo_and_data_uris(tmp_path, monkeypatch):
    """mm_input.json lists images relative to the release's root (benchmark/...), next to a data URI."""
    (tmp_path / "LLM-I" / "benchmark" / "mm").mkdir(parents=True)
    (tmp_path / "LLM-I" / "benchmark" / "mm" / "0.jpg").write_bytes(make_jpeg(10, 6))
    uri = "data:image/png;base64," + base64.b64encode(make_png(5, 5)).decode()
    data = tmp_path / "LLM-I" / "benchmark" / "mm_input.json"
    data.write_text(json.dumps([{"prompt": "<image> vs <image>: compare.", "images": ["benchmark/mm/0.jpg", uri],
                                 "r1": "compares"}]))
    monkeypatch.chdir(tmp_path)
    item = LLMIBench(data).load()[0]
    assert item.prompt == "[image 0] vs [image 1]: compare."
    assert [(i.width, i.height) for i in item.input_images()] == [(10, 6), (5, 5)]


# ------------------------------------------------------------------------------------------------
# The in-domain test set
# ------------------------------------------------------------------------------------------------


def test_llmi_test_placeholders_relative_images_and_data_uris(tmp_path, monkeypatch):
    """Found on a verl-style test_mm row and on llmi's own reward rows: the question kept its raw <image>
    placeholder (sent to the model and the judges), and images given as paths relative to the JSONL or as
    data URIs could not be read from another folder."""
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "a.png").write_bytes(make_png(12, 7))
    uri = "data:image/png;base64," + base64.b64encode(make_png(3, 3)).decode()
    rows = [{"prompt": "Brighten <image> and chart it.", "image_num": 1, "tools": ["edit", "code"], "index": 0,
             "images": ["imgs/a.png"]},
            {"prompt": [{"role": "user", "content": "<image>Compare with a lighthouse."}], "index": 1,
             "extra_info": {"image_num": 1, "tools": ["search"], "question": "<image>Compare with a lighthouse."},
             "images": [uri]},
            {"prompt": "Plain.", "image_num": 0, "tools": [], "index": 2, "images": [{"bytes": None, "path": "imgs/a.png"}]}]
    data = tmp_path / "data" / "test_rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.chdir(tmp_path)
    items = LLMITest(data).load()
    assert items[0].prompt == "Brighten [image 0] and chart it." and items[1].prompt == "[image 0]Compare with a lighthouse."
    assert items[0].input_images()[0].width == 12 and items[1].input_images()[0].width == 3
    assert items[2].input_images()[0].height == 7
    req = LLMITest(data).request(items[1])
    assert "<image>" not in req.prompt and len(req.images) == 1


def test_llmi_test_repeated_index_numbers_the_rows(tmp_path):
    rows = [{"prompt": f"Topic {k}", "extra_info": {"image_num": 1, "tools": ["code"], "index": 0}} for k in range(3)]
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    assert [i.id for i in LLMITest(data).load()] == ["0", "1", "2"]  # no item lost as a "duplicate"
    rows = [{"prompt": "x", "extra_info": {"image_num": 1, "tools": ["code"], "index": 4.0}}]
    data.write_text(json.dumps(rows[0]))
    assert LLMITest(data).load()[0].id == "4"


# ------------------------------------------------------------------------------------------------
# ISG-Bench
# ------------------------------------------------------------------------------------------------


def _isg_row(**kw) -> dict:
    row = {"id": "0007", "Category": "Photo Variation",
           "Query": [{"type": "image", "content": "images/0007_q1.png"}, {"type": "text", "content": "Make 2 variations."},
                     "stray"],
           "Golden": [{"type": "image", "content": "images/0007_g1.png"}, {"type": "text", "content": "Darker."},
                      {"type": "image", "content": "images/0007_g2.png"}, {"type": "text", "content": "Lighter.", "caption": ""}],
           "predict": {"structure": {}, "block_qa": {"questions": [{"subject": "<gen_img1>", "object": "<query_img1>"}]},
                       "image_qa": {"anything": [
                           {"image": "<gen_img1>", "Question": "Is it darker?", "id": 0, "Preliminary": []},
                           {"image": "<gen_img1>", "Question": "Is it the same pond?", "id": "1", "Preliminary": ["0"]},
                           {"image": "<gen_img2>", "Question": "Is it lighter?", "id": 2, "Preliminary": 1}]}}}
    row.update(kw)
    return row


async def test_isg_structure_mismatch_is_explained_and_odd_fields_are_tolerated(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0007_q1.png").write_bytes(make_png(8, 8))
    data = tmp_path / "ISG-Bench.jsonl"
    data.write_text(json.dumps(_isg_row()) + "\n")
    bench = ISGBench(data)
    item = bench.load()[0]
    assert item.prompt == "[image 0]\nMake 2 variations." and item.image_num == 2  # the stray block is no block
    judge = FakeJudge(lambda m: json.dumps({"Judge": "Yes", "Reason": "r", "overall_score": 6}))
    wrong = Document(blocks=[TextBlock("Here you go."), ImageBlock(ImageData.from_bytes(make_png(6, 6)), "search", "")])
    judged = await bench.judge(item, wrong, JudgeCalls(item.id, judge))
    row = judged.to_dict()
    assert row["structure_expected"] == "image text image text" and row["structure_got"] == "text image"
    html = _verdicts_html(row)
    assert "expected <code>image text image text</code>, got <code>text image</code>" in html

    img = ImageData.from_bytes(make_png(6, 6))
    right = Document(blocks=[ImageBlock(img, "search", ""), TextBlock("Darker."), ImageBlock(img, "search", ""),
                             TextBlock("Lighter.")])
    judged = await bench.judge(item, right, JudgeCalls(item.id, judge))
    # question "1" depends on 0 (a number there, a string here); question 2 on "1" given without a list
    assert [v.justification for v in judged.verdicts if v.key.startswith("image/")] == ["r", "r", "r"]
    assert judged.scores["image"] == 1.0 and "structure_expected" not in judged.to_dict()


def test_isg_output_list_may_be_missing_or_null(tmp_path):
    data = tmp_path / "ISG-Bench.jsonl"
    data.write_text(json.dumps(_isg_row()) + "\n")
    out = tmp_path / "model.jsonl"
    out.write_text(json.dumps({"id": "0007", "output": None}) + "\n" + json.dumps({"id": "0007"}) + "\n")
    bench = ISGBench(data)
    outs = list(bench.read_outputs(out, bench.load()))
    assert len(outs) == 2 and all(o.document.blocks == [] for o in outs)


def test_report_item_link_target_sits_inside_its_details(tmp_path):
    """The items table links to #item-N; with the target inside the <details>, following it opens the item."""
    import re

    from llmi.eval.report import write_report

    data = tmp_path / "text_only.json"
    data.write_text(json.dumps([{"prompt": "Tea", "r1": "names a tea"}]))
    bench = LLMIBench(data)
    items = bench.load()
    run = RunFolder(tmp_path / "run")
    run.save_document("1", Document(blocks=[TextBlock("Green tea.")]))
    rows = {"1": {"score": 1.0, "scores": {"r1": 2.0}, "verdicts": [{"key": "r1", "score": 2.0, "justification": "ok"}]}}
    summary = {"benchmark": "llmi-bench", "title": "LLMI-Bench", "scale": [0, 10], "item_scale": 10.0,
               "scores": bench.aggregate(list(rows.values())), "items": {"total": 1, "finished": 1}}
    page = write_report(run, bench, items, rows, summary).read_text()
    assert 'href="#item-0"' in page
    assert re.search(r'<details class="ev-item"><summary>[^<]*</summary><div class="ev-item-body" id="item-0">', page)
    item_part = page.split('id="item-0"', 1)[1]
    assert item_part.count(">r1<") == 1  # the verdict row only, not a second table repeating the same score


def test_compare_report_item_scores_on_the_headline_scale(tmp_path):
    """Found comparing two LLMI-Bench runs: the headline said 5.67 vs 5.99 (0-10) and each item 0.500 vs 0.600."""
    from types import SimpleNamespace

    from llmi.eval.report import write_compare_report

    data = tmp_path / "text_only.json"
    data.write_text(json.dumps([{"prompt": "Tea", "r1": "names a tea"}]))
    bench = LLMIBench(data)
    items = bench.load()
    runs = [RunFolder(tmp_path / n) for n in ("a", "b")]
    for r in runs:
        r.save_document("1", Document(blocks=[TextBlock("Green tea.")]))
    ra = {"1": {"score": 0.5, "verdicts": [{"key": "r1", "score": 1.0, "justification": "half"}]}}
    rb = {"1": {"score": 1.0, "verdicts": [{"key": "r1", "score": 2.0, "justification": "full"}]}}
    summary = {"title": "LLMI-Bench", "a": {"label": "a", "score": {"mean": 5.0, "n": 1}},
               "b": {"label": "b", "score": {"mean": 10.0, "n": 1}}, "difference": {"mean": -5.0, "n": 1},
               "a_better_items": 0, "b_better_items": 1, "equal_items": 0}
    out = SimpleNamespace(root=tmp_path / "cmp")
    out.root.mkdir()
    page = write_compare_report(out, bench, items, ra, rb, {}, summary, runs[0], runs[1]).read_text()
    assert "<summary>1 · A 5.000 · B 10.000</summary>" in page
    assert "<strong>score 5.000</strong>" in page and "<strong>score 10.000</strong>" in page


def test_report_of_a_run_whose_items_all_failed_has_no_empty_plots_section(tmp_path):
    """Found on OpenING items whose input images were not downloaded: every item an input error, and the
    report showed a "Plots" heading over nothing."""
    from llmi.eval.report import write_report

    data = tmp_path / "text_only.json"
    data.write_text(json.dumps([{"prompt": "Tea", "r1": "names a tea"}]))
    bench = LLMIBench(data)
    rows = {"1": {"error": {"kind": "input", "message": "InputError: input image x.jpg does not exist"}}}
    summary = {"benchmark": "llmi-bench", "title": "LLMI-Bench", "scale": [0, 10], "item_scale": 10.0,
               "scores": bench.aggregate(list(rows.values())), "items": {"total": 1, "finished": 1, "failed": 1}}
    page = write_report(RunFolder(tmp_path / "run"), bench, bench.load(), rows, summary).read_text()
    assert "<h2>Plots</h2>" not in page and "x.jpg does not exist" in page


def test_opening_output_folder_with_stray_json_files(tmp_path, caplog):
    """A model's gen_outputs folder may hold other JSON files (a score summary, a broken file): they are
    skipped with a warning, not the end of the run; with --data, files of other ids are not even read."""
    folder = tmp_path / "M_output"
    folder.mkdir()
    row = _opening_row("0301007", input_image=None)
    row["conversations"][1]["output"] = [{"text": "Step.", "image": None}]
    (folder / "0301007.json").write_text(json.dumps(row))
    (folder / "scores.json").write_text(json.dumps([{"data_id": "0301007", "score": 7}]))
    (folder / "broken.json").write_text("{not json")
    outs = list(OpenING(None).read_outputs(folder, None))
    assert [o.item.id for o in outs] == ["0301007"]
    assert "scores.json holds no OpenING output object" in caplog.text and "broken.json is not a JSON" in caplog.text
    data = tmp_path / "test_data.jsonl"
    data.write_text(json.dumps(_opening_row("0301007", input_image=None)) + "\n")
    bench = OpenING(data)
    caplog.clear()
    assert [o.item.id for o in bench.read_outputs(folder, bench.load())] == ["0301007"] and "skipped" not in caplog.text


def test_isg_images_come_from_the_data_folder_before_the_current_one(tmp_path, monkeypatch):
    """ISG's images/ and OpenING's ./images/ share a folder name: running from a folder with its own images/
    must not swap the benchmark's query image for another one."""
    bench_dir, cwd = tmp_path / "ISG_eval", tmp_path / "elsewhere"
    for d, color in ((bench_dir, (200, 0, 0)), (cwd, (0, 0, 200))):
        (d / "images").mkdir(parents=True)
        (d / "images" / "0007_q1.png").write_bytes(make_png(4, 4, color))
    (cwd / "images" / "only_here.png").write_bytes(make_png(3, 3))
    row = _isg_row()
    row["Query"].append({"type": "image", "content": "images/only_here.png"})
    data = bench_dir / "ISG-Bench.jsonl"
    data.write_text(json.dumps(row) + "\n")
    monkeypatch.chdir(cwd)
    images = ISGBench(data).load()[0].input_images()
    assert images[0].to_pil().convert("RGB").getpixel((1, 1)) == (200, 0, 0)
    assert images[1].width == 3  # found where ISG's script looks first, when the data folder lacks it
