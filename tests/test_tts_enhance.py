"""Enhancement per tool, the polish's guard, and the reward selector — on loopback models and real or
fake (registered) tool backends: the local library, the Pillow editor, a fake diffusion backend."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.errors import ToolError
from llmi.images import ImageData
from llmi.tools import registry
from llmi.tools.base import Backend, ToolRequest, ToolResult
from llmi.tts import tts
from llmi.tts.enhance import caption_match, extract_code, parse_grade, parse_lines
from llmi.tts.polish import apply, marked_text, verify
from tests import fakes
from tests.fakes import png_for
from tests.helpers import make_png
from tests.sse_server import SSEServer
from tests.tts_fakes import LIBRARY, between, image_colors, policy_script, settings_for, tag, user_text

LIGHTHOUSE = "A red and white lighthouse on a rocky coast"


@pytest.fixture(autouse=True)
def _fakes():
    fakes.register_all()
    fakes.RECORD.__init__()


def center(image: ImageData) -> tuple[int, int, int]:
    im = image.to_pil().convert("RGB")
    return im.getpixel((im.width // 2, im.height // 2))


def library_center(name: str) -> tuple[int, int, int]:
    return center(ImageData.from_file(LIBRARY / name))


# ------------------------------------------------------------------------------------------------
# Pure helpers
# ------------------------------------------------------------------------------------------------


def test_parse_lines_and_grades_and_code():
    assert parse_lines("1. lighthouse coast\n- \"red lighthouse\"\n\nlighthouse coast\nQueries:", limit=5,
                       exclude=["red"]) == ["lighthouse coast", "red lighthouse"]
    with pytest.raises(ValueError):
        parse_lines("<think>x</think>\n\n", limit=2)
    assert parse_grade("match")("<think>Match: 1</think>Match: 5") == 1.0
    assert parse_grade("edit")("**Edit:** 3/5") == 0.5
    with pytest.raises(ValueError):
        parse_grade("match")("Match: 9")
    with pytest.raises(ValueError):
        parse_grade("match")("Edit: 4")
    assert extract_code("Fixed:\n```python\nx = 1\n```\nand\n```py\nplt.plot([x])\n```") == "plt.plot([x])"
    assert extract_code("plt.plot([1])") == "plt.plot([1])"


def test_caption_match_reads_title_and_caption():
    img = ImageData.from_bytes(make_png(4, 4))
    b = ImageBlock(img, "search", provenance={"title": "lighthouse rocky coast", "caption": "A red and white lighthouse"})
    assert caption_match(LIGHTHOUSE, b) == 1.0
    assert caption_match(LIGHTHOUSE, ImageBlock(img, "search", provenance={"title": "red bicycle"})) == 0.2


def _doc() -> Document:
    img = ImageData.from_bytes(make_png(4, 4))
    return Document(blocks=[TextBlock("Intro.\n"), ImageBlock(img, "code", "chart", slot=0),
                            TextBlock("\nMiddle.\n"), FailureBlock("search", "none", "no_result", "photo", slot=1),
                            TextBlock("\nEnd.")])


def test_polish_paragraph_mode_changes_only_the_named_paragraphs():
    from llmi.tts.polish import apply_edits, numbered_text, paragraphs, verify_edits

    img = ImageData.from_bytes(make_png(4, 4))
    doc = Document(blocks=[TextBlock("# Title\n\nIntro line one.\nline two.\n\n"), ImageBlock(img, "code", "c", slot=0),
                           TextBlock("\nAfter.\n\n\nLast one.")])
    paras = paragraphs(doc)
    assert [p.text for p in paras] == ["# Title", "Intro line one.\nline two.", "After.", "Last one."]
    assert numbered_text(doc, paras) == ("[[P1]] # Title\n\n[[P2]] Intro line one.\nline two.\n\n[[IMAGE 0]]\n\n"
                                         "[[P3]] After.\n\n[[P4]] Last one.")
    ed = verify_edits("Here are the changes:\n[[P3]] After, fixed.\n\n**[[P4]]**: Last, too.", paras)
    assert ed.changes == {3: "After, fixed.", 4: "Last, too."}
    new = apply_edits(doc, paras, ed.changes)
    assert new.text == "# Title\n\nIntro line one.\nline two.\n\n\nAfter, fixed.\n\n\nLast, too."
    assert new.slots == doc.slots and [b.type for b in new.blocks] == ["text", "image", "text"]
    assert verify_edits("NO CHANGES", paras).unchanged
    assert verify_edits("[[P3]] After.", paras).unchanged  # the same text is no change
    assert "paragraph 9" in verify_edits("[[P9]] x", paras).refused
    assert "twice" in verify_edits("[[P3]] a\n[[P3]] b", paras).refused
    assert "empty" in verify_edits("[[P3]]\n[[P4]] b", paras).refused
    assert "image marker" in verify_edits("[[P3]] a [[IMAGE 0]]", paras).refused
    assert "<imgen>" in verify_edits('[[P3]] <imgen>{"x": 1}</imgen>', paras).refused
    assert "no [[Pn]]" in verify_edits("I changed the text.", paras).refused
    assert "keep" in verify_edits("[[P2]] x", paras).refused


def test_polish_verify_accepts_only_a_faithful_rewrite():
    doc = _doc()
    text = marked_text(doc)
    assert text == "Intro.\n[[IMAGE 0]]\nMiddle.\n[[IMAGE 1]]\nEnd."
    ok = verify("Intro, revised.\n[[IMAGE 0]]\nMiddle.\n[[IMAGE 1]]\nEnd.", doc)
    assert ok.pieces == ("Intro, revised.\n", "\nMiddle.\n", "\nEnd.")
    new = apply(doc, ok.pieces)
    assert [b.type for b in new.blocks] == ["text", "image", "text", "failure", "text"]
    assert new.slots == doc.slots and new.text == "Intro, revised.\n\nMiddle.\n\nEnd."
    assert verify("NO CHANGES", doc).unchanged
    assert verify("<think>hm</think>No changes.", doc).unchanged
    assert "markers [1, 0]" in verify("a [[IMAGE 1]] b [[IMAGE 0]] c", doc).refused
    assert "markers [0]" in verify("a [[IMAGE 0]] b c", doc).refused
    assert "markers [0, 0, 1]" in verify("[[IMAGE 0]] [[image 0]] [[IMAGE 1]]", doc).refused
    assert "<imgen>" in verify('x [[IMAGE 0]] <imgen>{}</imgen> [[IMAGE 1]]', doc).refused
    assert "characters" in verify("[[IMAGE 0]][[IMAGE 1]]", doc).refused


# ------------------------------------------------------------------------------------------------
# Search + edit: a replaced image re-runs the edit that depends on it
# ------------------------------------------------------------------------------------------------

PILLOW_TOOLS = {"search": {"backends": ["local"]}, "code": {"backends": []}, "diffusion": {"backends": []},
                "edit": {"backends": ["pillow"]}}


async def test_replaced_search_re_runs_the_dependent_edit():
    cand = ("The coast.\n" + tag("search", LIGHTHOUSE, query="red") + "\nIn black and white:\n"
            + tag("edit", "The lighthouse in black and white", img_index=0, prompt="convert to black and white") + "\nEnd.")
    helpers = {"rewrite": lambda b: "lighthouse rocky coast"}
    with SSEServer(policy_script({0: cand}, helpers)) as policy:
        settings = settings_for(policy.base_url, tools=PILLOW_TOOLS)
        result = await tts("Coast", n=1, settings=settings, stages="sample,enhance")
    before, after = result.snapshots["execute"], result.document
    assert "bicycle" in before.slots[0].provenance["path"] and "lighthouse" in after.slots[0].provenance["path"]
    # the edit was re-run on the new photo: its image is the grey lighthouse now
    grey = after.slots[1].image.to_pil().convert("RGB")
    src = ImageData.from_file(LIBRARY / "lighthouse-rocky-coast.jpg").to_pil().convert("L").convert("RGB")
    assert grey.size == src.size and grey.getpixel((10, 10)) == src.getpixel((10, 10))
    assert before.slots[1].image.sha256 != after.slots[1].image.sha256
    assert after.slots[1].slot == 1 and after.slots[1].call["source"] == "edit"
    # the re-run is on the bill: one search (the rewrite), one edit (re-run)
    assert dict(result.costs["enhance"].tool_calls) == {"edit": 1, "search": 1}
    work = {w["slot"]: w for w in result.stage("enhance").detail["work"]}
    assert work[1]["why"] == "unchecked: no image judge"


async def test_failed_edit_is_retried_with_a_rewritten_instruction():
    cand = ("The coast.\n" + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\nOld style:\n"
            + tag("edit", "The lighthouse as an old photograph", img_index=0, prompt="give it the look of 1900") + "\nEnd.")
    helpers = {"edit_rewrite": lambda b: "Make it sepia, keep everything else."}
    with SSEServer(policy_script({0: cand}, helpers)) as policy:
        settings = settings_for(policy.base_url, tools=PILLOW_TOOLS)
        result = await tts("Coast", n=1, settings=settings, stages="sample,enhance")
    assert isinstance(result.snapshots["execute"].slots[1], FailureBlock)
    fixed = result.document.slots[1]
    assert isinstance(fixed, ImageBlock) and fixed.params["prompt"] == "Make it sepia, keep everything else."
    work = {w["slot"]: w for w in result.stage("enhance").detail["work"]}
    assert work[1]["action"] == "replaced" and work[0]["action"] == "kept"


async def test_edit_graded_below_threshold_by_the_image_judge_is_retried(judge_server):
    cand = ("The coast.\n" + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\n"
            + tag("edit", "Lighthouse, blurred", img_index=0, prompt="make it grayscale") + "\nEnd.")
    helpers = {"edit_rewrite": lambda b: "blur the image"}

    def judge(body, n):
        text = user_text(body)
        if "The instruction:" in text:
            return "Edit: 5" if "blur" in text else "Edit: 2"
        return "Match: 5"

    with SSEServer(policy_script({0: cand}, helpers)) as policy, judge_server(judge) as (murl, mj):
        settings = settings_for(policy.base_url, mllm_url=murl, tools=PILLOW_TOOLS,
                                tts={"enhance": {"search": {"rewrites": 0}}})
        result = await tts("Coast", n=1, settings=settings, stages="sample,enhance")
    work = {w["slot"]: w for w in result.stage("enhance").detail["work"]}
    assert work[1]["grades"] == [0.25, 1.0] and work[1]["action"] == "replaced"
    assert result.document.slots[1].params["prompt"] == "blur the image"
    # the edit judge saw two images: before and after
    edit_reqs = [r for r in mj.requests if "The instruction:" in user_text(r)]
    assert all(len(image_colors(r)) == 2 for r in edit_reqs)


# ------------------------------------------------------------------------------------------------
# Search with the image judge, and its failure
# ------------------------------------------------------------------------------------------------


async def test_search_chosen_by_the_image_judge_and_caption_match_when_it_fails(judge_server):
    lighthouse = library_center("lighthouse-rocky-coast.jpg")
    cand = "The coast.\n" + tag("search", LIGHTHOUSE, query="red") + "\nEnd."
    helpers = {"rewrite": lambda b: "lighthouse rocky coast"}

    def judge(body, n):
        return "Match: 5" if image_colors(body) == [lighthouse] else "Match: 1"

    with SSEServer(policy_script({0: cand}, helpers)) as policy, judge_server(judge) as (murl, _):
        settings = settings_for(policy.base_url, mllm_url=murl)
        result = await tts("Coast", n=1, settings=settings, stages="sample,enhance")
    w = result.stage("enhance").detail["work"][0]
    assert w["scored_by"] == "image judge" and w["scores"] == [0.0, 1.0] and w["action"] == "replaced"

    def broken(body, n):
        return (500, b"{}", {}) if image_colors(body) == [lighthouse] else "Match: 3"

    with SSEServer(policy_script({0: cand}, helpers)) as policy, judge_server(broken) as (murl, _):
        settings = settings_for(policy.base_url, mllm_url=murl)
        result = await tts("Coast", n=1, settings=settings, stages="sample,enhance")
    w = result.stage("enhance").detail["work"][0]
    assert w["scored_by"] == "caption match (image judge failed)" and w["action"] == "replaced"


# ------------------------------------------------------------------------------------------------
# Diffusion: richer prompts, best of k by the image judge
# ------------------------------------------------------------------------------------------------

DIFF_TOOLS = {"search": {"backends": []}, "code": {"backends": []}, "diffusion": {"backends": ["fake"]},
              "edit": {"backends": []}}


async def test_diffusion_best_of_k(judge_server):
    rich = ["a tabby cat asleep on a red cushion, soft morning light, photograph",
            "a tabby cat curled up on a red velvet cushion, watercolour"]
    # the fake backend paints each prompt its own colour; the judge grades by colour
    colors = {center(fakes.png_for("a cat")): 2, center(fakes.png_for(rich[0])): 3, center(fakes.png_for(rich[1])): 5}
    assert len(colors) == 3
    cand = "A cat.\n" + tag("diffusion", "A tabby cat sleeping on a red cushion", prompt="a cat") + "\nEnd."
    helpers = {"enrich": lambda b: "\n".join(rich)}

    def judge(body, n):
        return f"Match: {colors[image_colors(body)[0]]}"

    with SSEServer(policy_script({0: cand}, helpers)) as policy, judge_server(judge) as (murl, _):
        settings = settings_for(policy.base_url, mllm_url=murl, tools=DIFF_TOOLS)
        result = await tts("Cat", n=1, settings=settings, stages="sample,enhance")
    w = result.stage("enhance").detail["work"][0]
    assert w["prompts"] == rich and w["scores"] == [0.25, 0.5, 1.0] and w["action"] == "replaced"
    assert result.document.slots[0].params["prompt"] == rich[1]
    assert dict(result.costs["enhance"].tool_calls) == {"diffusion": 2}

    # without an image judge nothing can choose: skipped, and no tool call spent
    with SSEServer(policy_script({0: cand}, helpers)) as policy:
        result = await tts("Cat", n=1, settings=settings_for(policy.base_url, tools=DIFF_TOOLS), stages="sample,enhance")
    w = result.stage("enhance").detail["work"][0]
    assert w["action"] == "skipped" and "no image judge" in w["why"]
    assert result.costs["enhance"].n_tool_calls == 0


# ------------------------------------------------------------------------------------------------
# The reward selector and the polish guard in the pipeline
# ------------------------------------------------------------------------------------------------


async def test_reward_selector_runs_every_candidate_and_reuses_the_winners_document(judge_server):
    lighthouse = library_center("lighthouse-rocky-coast.jpg")
    cands = {0: "Coast A.\n" + tag("search", LIGHTHOUSE, query="red") + "\nEnd.",
             1: "Coast B.\n" + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\nEnd."}

    def llm_judge(body, n):
        return "Text: 4\nImage: 4"

    def mllm_judge(body, n):
        good = image_colors(body) == [lighthouse]
        return f"Image Quality: 5\nTask Relevance: {5 if good else 1}\nText-Image Relevance: {5 if good else 1}"

    with SSEServer(policy_script(cands)) as policy, judge_server(llm_judge) as (jurl, _), \
            judge_server(mllm_judge) as (murl, _):
        settings = settings_for(policy.base_url, judge_url=jurl, mllm_url=murl, tts={"selector": "reward"})
        result = await tts("Coast", n=2, settings=settings, stages="sample,check,select")
    sel = result.selection
    assert result.winner == 1 and sel.decided_by == "reward"
    assert sel.final[1] > sel.final[0]
    assert result.stage("execute").detail["reused"]
    assert dict(result.costs["select"].tool_calls) == {"search": 2} and result.costs["execute"].n_tool_calls == 0
    assert result.costs["select"].llm_calls == 4  # an LLM and an MLLM judge call per candidate


async def test_a_polish_that_loses_an_image_is_discarded():
    cand = "Intro.\n" + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\nEnd."

    def bad_polish(body):
        return between(user_text(body), "DOCUMENT").replace("[[IMAGE 0]]", "").replace("Intro.", "Intro, better.")

    with SSEServer(policy_script({0: cand}, {"polish": bad_polish})) as policy:
        settings = settings_for(policy.base_url, tts={"polish_mode": "full"})
        result = await tts("Coast", n=1, settings=settings, stages="sample,polish")
    d = result.stage("polish").detail
    assert d["result"] == "kept the original" and "markers []" in d["why"] and d["mode"] == "full"
    assert result.document.text == "Intro.\n\nEnd." and len(result.document.slots) == 1
    assert result.snapshots["polish"] is result.snapshots["execute"]


async def test_polish_sees_what_each_image_shows_and_no_changes_is_cheap():
    cand = "Intro.\n" + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\nEnd."
    seen = {}

    def polish(body):
        seen["text"] = user_text(body)
        seen["images"] = len(image_colors(body))
        return "NO CHANGES"

    with SSEServer(policy_script({0: cand}, {"polish": polish})) as policy:
        result = await tts("Coast", n=1, settings=settings_for(policy.base_url), stages="sample,polish")
    assert "[[IMAGE 0]] shows — search: " + LIGHTHOUSE in seen["text"]
    assert "title: lighthouse rocky coast" in seen["text"] and seen["images"] == 1
    assert result.stage("polish").detail["result"] == "no changes needed"
    assert result.document.text == "Intro.\n\nEnd."


async def test_a_polishing_model_that_fails_leaves_the_document_as_it_was():
    from tests.sse_server import Script
    from tests.tts_fakes import helper_of

    cand = "Intro.\n" + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\nEnd."
    base = policy_script({0: cand})

    def script(n, body):
        return Script(status=401) if helper_of(body) == "polish" else base(n, body)

    with SSEServer(script) as policy:
        result = await tts("Coast", n=1, settings=settings_for(policy.base_url), stages="sample,polish")
    d = result.stage("polish").detail
    assert result.stage("polish").status == "finished" and d["result"] == "kept the original"
    assert "the polishing model failed: llm_error" in d["why"] and "401" in d["why"]
    assert result.document.text == "Intro.\n\nEnd."


async def test_polish_by_the_image_judge_sees_the_images_and_is_on_the_bill(judge_server):
    import json

    cand = "Intro.\n" + tag("search", LIGHTHOUSE, query="lighthouse rocky coast") + "\nEnd."
    lighthouse = library_center("lighthouse-rocky-coast.jpg")
    seen = {}

    def judge(body, n):
        seen["colors"] = image_colors(body)
        return "[[P1]] Intro: the red and white lighthouse."

    events: list = []
    with SSEServer(policy_script({0: cand})) as policy, judge_server(judge) as (murl, mj):
        settings = settings_for(policy.base_url, mllm_url=murl, tts={"polish_model": "mllm_judge"})
        result = await tts("Coast", n=1, settings=settings, stages="sample,polish", on_event=events.append)
    assert seen["colors"] == [lighthouse]
    assert result.document.text == "Intro: the red and white lighthouse.\n\nEnd."
    assert result.stage("polish").detail["model"] == "mllm_judge"
    c = result.costs["polish"]
    assert (c.llm_calls, c.tokens_in, c.tokens_out) == (1, 12, 6)  # the judge fake's reported usage
    assert mj.requests[0]["max_tokens"] == 2048  # the writing cap ([llm] max_tokens), not the grading cap
    json.dumps([e.to_dict() for e in events if e.type == "stage"])  # stage events are JSON (server-sent events)


# ------------------------------------------------------------------------------------------------
# Asked ahead: the enhancement's model calls start while the winner's tools first run
# ------------------------------------------------------------------------------------------------


class PickyChart(Backend):
    """A chart tool taking 0.3 s that fails on code calling ``shapes_differ`` (with a ValueError)."""

    tool, name = "code", "picky"
    ends: list = []

    async def run(self, request: ToolRequest) -> ToolResult:
        await asyncio.sleep(0.3)
        PickyChart.ends.append((time.monotonic(), request.params["code"]))
        if "shapes_differ" in request.params["code"]:
            raise ToolError("ValueError: x and y must have the same first dimension (line 1: shapes_differ(data))",
                            kind="code_error")
        return ToolResult(png_for(request.params["code"]), {"model": "picky"})


@pytest.fixture
def picky():
    registry.register(PickyChart)
    PickyChart.ends = []
    yield
    registry.unregister("code", "picky")


def _timed(answer: str, log: list):
    def helper(body: dict) -> str:
        log.append((time.monotonic(), user_text(body)))
        return answer

    return helper


FAKE_TOOLS = {"search": {"backends": ["fake"]}, "code": {"backends": ["picky"]}, "diffusion": {"backends": []},
              "edit": {"backends": []}}


async def test_rewrites_and_a_foreseen_fix_are_asked_while_the_tools_run_and_an_unneeded_fix_is_billed(picky):
    """The search's rewrites are asked at once; the chart reads a name nothing defines, so its fix is
    asked at once too — but this sandbox draws it anyway: the early fix is not used, and is on the bill."""
    cand = ("Sales.\n" + tag("code", "Sales", code="plt.bar(['a'], data)") + "\nThe coast.\n"
            + tag("search", LIGHTHOUSE, query="coast") + "\nEnd.")
    fixes, rewrites = [], []
    helpers = {"fix": _timed("```python\nplt.bar(['a'], [1])\n```", fixes),
               "rewrite": _timed("lighthouse rocky coast", rewrites)}
    with SSEServer(policy_script({0: cand}, helpers)) as policy:
        settings = settings_for(policy.base_url, tools=FAKE_TOOLS, backends={"search": {"fake": {"delay": 0.3}}})
        result = await tts("Sales and coast", n=1, settings=settings, stages="sample,enhance")
    chart_done = PickyChart.ends[0][0]
    search_done = fakes.RECORD.ends["coast"]
    assert fixes[0][0] < chart_done and rewrites[0][0] < search_done  # asked before the tools returned
    assert "NameError: name 'data' is not defined" in fixes[0][1]
    work = {w["slot"]: w for w in result.stage("enhance").detail["work"]}
    assert work[0]["fix_asked_ahead"] == "not used: the chart rendered" and work[0]["action"] == "kept"
    assert len(PickyChart.ends) == 1 and len(fixes) == 1  # the chart ran once; the fix was asked once
    assert result.document.slots[0].image == png_for("plt.bar(['a'], data)")
    assert [q for _, _, p in fakes.RECORD.calls for q in [p.get("query")] if q] == ["coast", "lighthouse rocky coast"]
    # both early calls are enhance's (calls and tokens), and the slots' own; none is execute's
    assert result.costs["enhance"].llm_calls == 2 and result.costs["execute"].llm_calls == 0
    assert work[0]["cost"]["llm_calls"] == 1 and work[1]["cost"]["llm_calls"] == 1
    assert result.stage("enhance").detail["asked_ahead"] == [{"slot": 0, "tool": "code", "ask": "chart fix"},
                                                             {"slot": 1, "tool": "search", "ask": "query rewrites"}]


async def test_a_chart_that_fails_otherwise_than_foreseen_is_fixed_from_its_real_error(picky):
    cand = "Sales.\n" + tag("code", "Sales", code="shapes_differ(data)") + "\nEnd."
    fixes: list = []
    helpers = {"fix": _timed("```python\nplt.plot([1, 2])\n```", fixes)}
    with SSEServer(policy_script({0: cand}, helpers)) as policy:
        settings = settings_for(policy.base_url, tools=FAKE_TOOLS)
        result = await tts("Sales", n=1, settings=settings, stages="sample,enhance")
    work = result.stage("enhance").detail["work"][0]
    assert work["fix_asked_ahead"] == "not used: the chart failed otherwise than foreseen"
    assert len(fixes) == 2 and "NameError: name 'shapes_differ'" in fixes[0][1] and "ValueError" in fixes[1][1]
    assert work["action"] == "replaced" and work["attempts"] == [{"ok": True}]
    assert result.document.slots[0].params["code"] == "plt.plot([1, 2])"
    assert result.costs["enhance"].llm_calls == 2  # the unused early fix is paid for too
