"""Each benchmark's real data layout in, its own output layout out — the field names and file layouts the
official scripts read (OpenING's ``GPT_score_A.py`` / ``calculate_model_winrate.py``, ISG's ``ISG-eval.py`` /
``calculate_performance.py``, LLM-I's ``evaluation/eval_*.py``), checked on small files written here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.eval.base import JudgeCalls
from llmi.eval.isg import ISGBench, document_output
from llmi.eval.llmi_bench import LLMIBench
from llmi.eval.opening import CRITERIA, OpenING, document_steps
from llmi.eval.store import RunFolder
from llmi.images import ImageData
from llmi.reward.judges import JudgeFailure, JudgeStats, ScoreParseError
from tests.helpers import make_jpeg, make_png


class FakeJudge:
    """A judge object with the interface the benchmarks use; ``reply(messages) -> str``."""

    def __init__(self, reply):
        self.reply = reply
        self.asked: list[list[dict]] = []
        self.client = SimpleNamespace(stats=JudgeStats())

    async def ask(self, messages, parse):
        self.asked.append(messages)
        out = self.reply(messages)
        if isinstance(out, Exception):
            raise out
        try:
            return parse(out)
        except ScoreParseError as exc:  # what JudgeClient does once its retries are spent
            raise JudgeFailure(f"eval_judge failed: {exc}", kind="unparseable") from exc


def _text(messages) -> str:
    content = messages[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p["type"] == "text")


def _n_images(messages) -> int:
    content = messages[-1]["content"]
    return 0 if isinstance(content, str) else sum(p["type"] == "image_url" for p in content)


def png(w=8, h=8, color=(200, 30, 30)) -> ImageData:
    return ImageData.from_bytes(make_png(w, h, color))


# ------------------------------------------------------------------------------------------------
# LLMI-Bench
# ------------------------------------------------------------------------------------------------


def test_llmi_bench_loads_placeholders_images_and_criteria(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "cat.png").write_bytes(make_png(10, 10))
    data = tmp_path / "mm_input.json"
    data.write_text(json.dumps([
        {"prompt": "Describe <image> as a report.", "images": ["imgs/cat.png"], "r1": "names the animal",
         "r10": "has two charts", "r2": "uses headings"},
        {"prompt": "", "r1": "skipped: no prompt"},
        {"prompt": "Plain text task", "r1": "is correct"},
    ]), encoding="utf-8")
    items = LLMIBench(data).load()
    assert [i.id for i in items] == ["1", "3"]  # sample_index is the 1-based position, as the release counts
    first = items[0]
    assert first.prompt == "Describe [image 0] as a report." and first.category == "multimodal"
    assert [k for k, _ in LLMIBench.criteria(first)] == ["r1", "r2", "r10"]
    assert first.input_images()[0].width == 10
    req = LLMIBench(data).request(first, sampling={"seed": 7})
    assert req.prompt == first.prompt and len(req.images) == 1 and req.sampling.seed == 7


async def test_llmi_bench_judges_each_criterion_with_images_in_place(tmp_path):
    data = tmp_path / "b.json"
    (tmp_path / "u.png").write_bytes(make_png(6, 6))
    data.write_text(json.dumps([{"prompt": "Edit <image>", "images": ["u.png"], "r1": "A", "r2": "B", "r3": "C"}]))
    bench = LLMIBench(data)
    item = bench.load()[0]
    doc = Document(blocks=[TextBlock("Here."), ImageBlock(png(), "search", "x"), FailureBlock("code", "boom", "code_error", "bar")])
    replies = {"A": '{"score": 2, "justification": "fine"}', "B": '{"score": 7}', "C": "not json"}

    def reply(messages):
        for k, v in replies.items():
            if f"\n{k}\n" in _text(messages):
                return v
        raise AssertionError("criterion not in the message")

    judge = FakeJudge(reply)
    judged = await bench.judge(item, doc, JudgeCalls(item.id, judge))
    assert judged.score == pytest.approx(1.0)  # only r1 usable: 2 / (2 × 1)
    assert [v.score for v in judged.verdicts] == [2.0, None, None]
    assert judged.verdicts[1].error.startswith("unparseable") and "outside 0-2" in judged.verdicts[1].error
    assert judged.verdicts[2].error.startswith("unparseable")
    msg = judge.asked[0]
    assert _n_images(msg) == 2  # the user's image in the task, the produced one in the report
    assert "image missing: the code tool could not produce it (bar)" in _text(msg)
    assert msg[0]["role"] == "system"


# ------------------------------------------------------------------------------------------------
# OpenING
# ------------------------------------------------------------------------------------------------


def opening_row(uid="1502046", steps=2, with_image=True):
    return {
        "total_uid": uid, "meta_task_id": "15", "meta_task_name": "Multimodal Brainstorming", "subtask_id": "2",
        "subtask_name": "Academic Scenarios Brainstorming", "data_id": "46",
        "conversations": [
            {"input": [{"image": "./images/Academic Scenarios Brainstorming/46-i-1.jpg" if with_image else None,
                        "text": "<BEGIN> How could a language model learn to see? Please show a diagram. <image>"}]},
            {"output": [{"image": f"./images/Academic Scenarios Brainstorming/46-o-{k + 1}.jpg", "text": f"step {k}"}
                        for k in range(steps)]},
        ],
    }


@pytest.fixture
def opening_data(tmp_path):
    root = tmp_path / "OpenING-benchmark"
    (root / "images" / "Academic Scenarios Brainstorming").mkdir(parents=True)
    (root / "images" / "Academic Scenarios Brainstorming" / "46-i-1.jpg").write_bytes(make_jpeg(12, 12))
    data = root / "test_data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in (opening_row(), opening_row("1502010", 1, False))) + "\n")
    return data


def test_opening_items(opening_data):
    items = OpenING(opening_data).load()
    assert [i.id for i in items] == ["1502046", "1502010"]
    it = items[0]
    assert it.category == "Multimodal Brainstorming" and it.subcategory == "Academic Scenarios Brainstorming"
    assert "<BEGIN>" not in it.prompt and "<image>" not in it.prompt and "[image 0]" in it.prompt
    assert "Answer in 2 steps" in it.prompt and it.image_num == 2
    assert it.input_images()[0].width == 12
    assert "Answer in" not in OpenING(opening_data, options={"steps_hint": False}).load()[0].prompt


def test_opening_writes_its_own_layout_and_reads_it_back(opening_data, tmp_path):
    bench = OpenING(opening_data, options={"model_name": "llmi-4b"})
    item = bench.load()[0]
    doc = Document(blocks=[TextBlock("First the encoder."), ImageBlock(png(20, 10), "diffusion", "enc"),
                           TextBlock("Then align."), FailureBlock("search", "none", "no_result"), TextBlock("Done.")])
    run = RunFolder(tmp_path / "run")
    bench.write_item(run, item, doc)
    folder = tmp_path / "run" / "gen_outputs" / "llmi-4b_output"
    saved = json.loads((folder / "1502046.json").read_text())
    # what OpenING's parse_and_load_json reads: conversations[0]["input"] and conversations[1]["output"]
    assert saved["conversations"][0] == opening_row()["conversations"][0]
    out = saved["conversations"][1]["output"]
    assert out == [{"text": "First the encoder.", "image": "1502046-o-0.jpg"}, {"text": "Then align.", "image": None},
                   {"text": "Done.", "image": None}]
    for key in ("meta_task_id", "meta_task_name", "subtask_id", "subtask_name", "data_id"):
        assert saved[key] == opening_row()[key]
    jpg = folder / out[0]["image"].split("/")[-1]  # the scripts join the folder with the basename
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"

    back = list(OpenING(opening_data).read_outputs(folder, OpenING(opening_data).load()))
    assert [o.item.id for o in back] == ["1502046"] and back[0].model == "llmi-4b"
    steps = document_steps(back[0].document)
    assert [t for t, _ in steps][:2] == ["First the encoder.", "Then align.\n\nDone."]
    assert steps[0][1] is not None and steps[0][1].width == 20


def test_opening_outputs_without_data_carry_their_items(opening_data, tmp_path):
    folder = tmp_path / "gen_outputs" / "Other_output"
    folder.mkdir(parents=True)
    row = opening_row("0301096", 2)
    row.pop("total_uid")  # OpenING's released outputs omit it; the file name is the uid
    row["conversations"][1]["output"] = [{"text": "A bird.", "image": "./Other_output/0301096-o-0.jpg"},
                                         {"text": "It flies.", "image": "0301096-o-1.jpg"}]
    (folder / "0301096.jsonl").write_text(json.dumps(row, indent=4))  # a .jsonl holding one object, as Show-o's
    (folder / "0301096-o-0.jpg").write_bytes(make_jpeg(9, 9))
    outs = list(OpenING(None).read_outputs(folder, None))
    assert len(outs) == 1 and outs[0].item.id == "0301096" and outs[0].model == "Other"
    assert len(outs[0].document.images) == 1  # the missing second image is skipped, as OpenING does
    assert "It flies." in outs[0].document.text


async def test_opening_judge_message_and_partial_scores(opening_data):
    bench = OpenING(opening_data)
    item = bench.load()[0]
    doc = Document(blocks=[TextBlock("Step one."), ImageBlock(png(30, 20), "diffusion", "x")])
    scores = {c: {"Score": 8, "Justification": c} for c in CRITERIA}
    scores["Completeness"]["Score"] = 42
    judge = FakeJudge(lambda m: json.dumps({"scores": scores}))
    judged = await bench.judge(item, doc, JudgeCalls(item.id, judge))
    assert judged.scores["Correctness"] == 8.0 and judged.scores["Completeness"] is None
    assert judged.excluded == 1 and judged.score == 8.0
    msg = judge.asked[0]
    parts = msg[-1]["content"]
    imgs = [p for p in parts if p["type"] == "image_url"]
    assert len(imgs) == 2
    from PIL import Image
    import base64
    import io

    shown = Image.open(io.BytesIO(base64.b64decode(imgs[1]["image_url"]["url"].split(",", 1)[1])))
    assert shown.size == (512, 512) and shown.format == "JPEG"  # as OpenING's scorer sends them
    assert "[image 0]" in _text(msg) and "[image 1]" in _text(msg) and "Correctness" in msg[0]["content"]


def test_opening_finalize_writes_the_score_file(opening_data, tmp_path):
    bench = OpenING(opening_data, options={"model_name": "m"})
    items = bench.load()
    run = RunFolder(tmp_path / "run")
    row = {"verdicts": [{"key": c, "score": 7.0, "justification": "j"} for c in CRITERIA]}
    row["verdicts"][0] = {"key": CRITERIA[0], "score": None, "error": "timeout: x"}
    paths = bench.finalize(run, items, {"1502046": row})
    entries = json.loads(paths[0].read_text())
    assert paths[0].name == "gpt-score_results.json" and len(entries) == 1
    e = entries[0]
    assert e["data_id"] == "1502046" and e["model"] == {"id": "0", "name": "m"}
    assert set(e["score"]) == set(CRITERIA) and e["score"]["Completeness"] == {"Score": 7.0, "Justification": "j"}
    assert e["score"][CRITERIA[0]]["Score"] is None  # summarize_GPT_scores.py drops such entries


# ------------------------------------------------------------------------------------------------
# ISG-Bench
# ------------------------------------------------------------------------------------------------


def isg_row(id_="0000", category="Prediction"):
    return {
        "id": id_, "Category": category,
        "Query": [{"type": "text", "content": "Show what happens next in 2 images, after a description."},
                  {"type": "image", "content": "images/0000_q1.png"}],
        "Golden": [{"type": "text", "content": "They rinse."}, {"type": "image", "content": "images/0000_g1.png"},
                   {"type": "image", "content": "images/0000_g2.png"}],
        "predict": {
            "structure": {"Query": ["<query_text1>", "<query_img1>"], "Answer": ["<gen_text1>", "<gen_img1>", "<gen_img2>"]},
            "block_qa": {"questions": [
                {"subject": "<gen_text1>", "object": "<query_img1>", "relation": "describes",
                 "Question": "Does <gen_text1> describe what follows <query_img1>?"},
                {"subject": "<gen_img1>", "object": "<gen_img2>", "relation": "precedes", "Question": "Does <gen_img1> come before <gen_img2>?"},
                {"subject": "<gen_text9>", "object": "<gen_img1>", "Question": "unknown block: skipped"},
            ]},
            "image_qa": {"questions": [
                {"image": "<gen_img1>", "Question": "Are there hands in this image?", "id": 0, "Preliminary": []},
                {"image": "<gen_img1>", "Question": "Are the hands wet?", "id": 1, "Preliminary": [0]},
                {"image": "<gen_img2>", "Question": "Is there a towel?", "id": 2, "Preliminary": []},
                {"image": "<gen_img2>", "Question": "Is the towel blue?", "id": 3, "Preliminary": [2]},
            ]},
        },
    }


@pytest.fixture
def isg_data(tmp_path):
    root = tmp_path / "ISG_eval"
    (root / "images").mkdir(parents=True)
    for name in ("0000_q1.png", "0000_g1.png", "0000_g2.png"):
        (root / "images" / name).write_bytes(make_png(8, 8))
    data = root / "ISG-Bench.jsonl"
    data.write_text(json.dumps(isg_row()) + "\n" + json.dumps(isg_row("0001", "HowTo")) + "\n")
    return data


def test_isg_items_and_structure(isg_data):
    items = ISGBench(isg_data).load()
    it = items[0]
    assert it.category == "Temporal Prediction" and it.subcategory == "Prediction" and it.image_num == 2
    assert it.prompt.endswith("[image 0]") and items[1].category == "Image-Text Complementation"
    doc = Document(blocks=[TextBlock("## Next\n"), TextBlock("They rinse.\n"), ImageBlock(png(), "diffusion"),
                           TextBlock("\n\n"), ImageBlock(png(color=(1, 2, 3)), "diffusion")])
    out = document_output(doc)
    assert [k for k, _ in out] == ["text", "image", "image"] and out[0][1] == "## Next\nThey rinse."
    assert ISGBench.structure(it, out)
    broken = Document(blocks=[TextBlock("x"), ImageBlock(png(), "diffusion"), FailureBlock("diffusion", "no", "timeout")])
    assert not ISGBench.structure(it, document_output(broken))


def _isg_reply(messages):
    text = _text(messages)
    if "overall score" in text:
        return json.dumps({"coherence": {"score": 7, "explanation": "ok"}, "overall_score": 7, "final_thoughts": "good"})
    if "Yes or No" in text:
        yes = "hands in this image" in text or "towel?" in text or "wet" in text
        return json.dumps({"Judge": "Yes" if yes else "No", "Reason": "seen"})
    return json.dumps({"Judge": 9 if ("A text," in text or "Two texts" in text) else 5, "Reason": "holds"})


async def test_isg_levels_when_the_structure_matches(isg_data):
    bench = ISGBench(isg_data)
    item = bench.load()[0]
    doc = Document(blocks=[TextBlock("They rinse."), ImageBlock(png(), "diffusion"), ImageBlock(png(color=(0, 9, 0)), "diffusion")])
    judge = FakeJudge(_isg_reply)
    j = await bench.judge(item, doc, JudgeCalls(item.id, judge))
    assert j.scores["structure"] == 1.0
    assert j.scores["block"] == pytest.approx((9 + 5) / 2)  # two usable block questions; the unknown block skipped
    assert j.scores["image"] == pytest.approx(3 / 4)  # "towel blue" answered No; the dependent "wet" asked after "hands"
    assert j.scores["holistic"] == 7.0 and j.score == 7.0
    texts = [_text(m) for m in judge.asked]
    assert sum("Yes or No" in t for t in texts) == 4 and sum("statement" in t for t in texts) == 2
    block_text = next(t for t in texts if "describe what follows" in t)
    assert "<gen_text1>" not in block_text and "the text" in block_text


async def test_isg_fill_values_and_skipped_dependencies(isg_data):
    bench = ISGBench(isg_data)
    item = bench.load()[0]
    judge = FakeJudge(_isg_reply)
    wrong = Document(blocks=[TextBlock("Only text.")])
    j = await bench.judge(item, wrong, JudgeCalls(item.id, judge))
    assert j.scores == {"structure": 0.0, "block": 1.0, "image": 0.0, "holistic": 7.0}  # ISG's fill values
    assert len(judge.asked) == 1  # only the holistic call
    empty = await bench.judge(item, Document(), JudgeCalls(item.id, FakeJudge(_isg_reply)))
    assert empty.scores["holistic"] == 1.0  # an empty answer: ISG's minimum, no call

    def no_hands(messages):
        if "hands in this image" in _text(messages):
            return json.dumps({"Judge": "No", "Reason": "none"})
        return _isg_reply(messages)

    judge = FakeJudge(no_hands)
    doc = Document(blocks=[TextBlock("t"), ImageBlock(png(), "diffusion"), ImageBlock(png(color=(5, 5, 5)), "diffusion")])
    j = await bench.judge(item, doc, JudgeCalls(item.id, judge))
    assert not any("wet" in _text(m) for m in judge.asked)  # its prerequisite was answered No
    assert j.scores["image"] == pytest.approx(1 / 4)


def test_isg_writes_its_output_and_judged_files(isg_data, tmp_path):
    bench = ISGBench(isg_data)
    items = bench.load()
    run = RunFolder(tmp_path / "run")
    doc = Document(blocks=[TextBlock("They rinse."), ImageBlock(png(), "diffusion"), ImageBlock(png(color=(0, 0, 9)), "diffusion")])
    run.save_document("0000", doc)
    row = {"structure": True, "scores": {}, "verdicts": [
        {"key": "block/0", "score": 8.0, "answer": {"Judge": 8.0, "Reason": "r"}},
        {"key": "image/0", "score": 1.0, "answer": {"Judge": "Yes", "Reason": "r"}},
        {"key": "holistic", "score": 6.0, "answer": {"overall_score": 6.0, "final_thoughts": "f"}},
    ]}
    p_out, p_judged = bench.finalize(run, items, {"0000": row})
    out = [json.loads(line) for line in p_out.read_text().splitlines()]
    assert len(out) == 1 and out[0]["id"] == "0000" and out[0]["Category"] == "Prediction"
    assert [b["type"] for b in out[0]["output"]] == ["text", "image", "image"]
    assert all(Path(b["content"]).is_file() for b in out[0]["output"] if b["type"] == "image")
    for key in ("Query", "Golden", "predict"):  # ISG-eval.py reads them from its input file
        assert out[0][key] == isg_row()[key]
    res = json.loads(p_judged.read_text())["result"]
    # what calculate_performance.py reads
    assert res["structure"] is True
    assert res["block"][0]["VQA_judge_Score"]["Judge"] == 8.0 and "VQA_judge_Score" not in res["block"][1]
    assert res["image"][0]["judge"]["Judge"] == "Yes" and len(res["image"]) == 4
    assert res["holistic"]["overall_score"] == 6.0


def test_isg_reads_outputs_in_its_format(isg_data, tmp_path):
    img = tmp_path / "gen.png"
    img.write_bytes(make_png(7, 7))
    row = dict(isg_row(), output=[{"type": "text", "content": "They rinse."}, {"type": "image", "content": "gen.png"},
                                  {"type": "image", "content": "/nonexistent/x.png"}])
    f = tmp_path / "model_output.jsonl"
    f.write_text(json.dumps(row) + "\n")
    outs = list(ISGBench(None).read_outputs(f, None))
    assert len(outs) == 1
    doc = outs[0].document
    assert len(doc.images) == 1 and len(doc.failures) == 1  # the unreadable image is a gap, not a crash
    assert outs[0].item.category == "Temporal Prediction"


# ------------------------------------------------------------------------------------------------
# The in-domain test set (verl parquet)
# ------------------------------------------------------------------------------------------------


def test_llmi_test_reads_verl_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [
        {"data_source": "interleaved", "prompt": [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Chart sales"}],
         "extra_info": {"image_num": 2, "tools": ["code"], "split": "test", "question": "Chart sales", "index": 0},
         "images": []},
        {"data_source": "interleaved_mm", "prompt": [{"role": "user", "content": "Edit it"}],
         "extra_info": {"image_num": 1, "tools": ["edit"], "split": "test", "question": "Edit it", "index": 1},
         "images": [{"bytes": make_png(9, 9), "path": None}]},
    ]
    path = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    from llmi.eval.llmi_test import LLMITest

    items = LLMITest(path).load()
    assert [i.id for i in items] == ["0", "1"]
    assert items[0].image_num == 2 and items[0].tools == ("code",) and items[0].category == "interleaved"
    assert items[1].input_images()[0].width == 9
    req = LLMITest(path, options={"use_row_system_prompt": True}).request(items[0])
    assert req.system_prompt == "SYS" and req.image_num == 2 and req.tools == ("code",)
    assert LLMITest(path).request(items[0]).system_prompt is None


async def test_llmi_test_reward_components_and_judge_failure(tmp_path):
    from llmi.eval.llmi_test import LLMITest

    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"prompt": "Chart sales", "image_num": 1, "tools": ["code"]}) + "\n")
    bench = LLMITest(data)
    item = bench.load()[0]
    doc = Document(blocks=[TextBlock("Sales rose."), ImageBlock(png(), "code", "sales", {"code": "plt.plot([1])"})])
    response = 'Sales rose.<imgen>{"source": "code", "description": "sales", "params": {"code": "plt.plot([1])"}}</imgen>'

    def reply(messages):
        if "Image Quality" in messages[0]["content"]:
            return "Image Quality: 5\nTask Relevance: 5\nText-Image Relevance: 5"
        return "Text: 5\nImage: 5"

    j = await bench.judge(item, doc, JudgeCalls(item.id, FakeJudge(reply), response=response))
    assert j.scores["s_num"] == 1.0 and j.scores["r_tool"] == 1.0
    assert j.score == pytest.approx(1.0)  # every part at its best
    assert j.extra["image_rule"] is True

    def failing(messages):
        if "Image Quality" in messages[0]["content"]:
            return JudgeFailure("mllm down", kind="http_error")
        return "Text: 3\nImage: 3"

    j = await bench.judge(item, doc, JudgeCalls(item.id, FakeJudge(failing), response=response))
    assert j.score is None and j.scores["s_llm"] == pytest.approx(0.5)  # a failed judge is no score
    assert any(v.error for v in j.verdicts)


def test_a_retried_item_whose_new_image_has_the_same_size_gets_the_new_picture(tmp_path):
    import io

    from PIL import Image

    def bmp(color):  # BMP files of one size have one byte length whatever they show
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), color).save(buf, format="BMP")
        return ImageData.from_bytes(buf.getvalue())

    run = RunFolder(tmp_path / "run")
    first, second = bmp((200, 30, 30)), bmp((0, 0, 9))
    assert len(first.data) == len(second.data) and first.data != second.data
    run.save_document("0000", Document(blocks=[ImageBlock(first, "diffusion")]))
    path = run.save_document("0000", Document(blocks=[ImageBlock(second, "diffusion")]))
    rel = json.loads(path.read_text())["document"]["blocks"][0]["path"]
    assert (run.documents / rel).read_bytes() == second.data
