"""The prompts the writing LLM sees: every example tag is one the parser accepts, only usable tools are
advertised, placeholders are filled, and the user-image note fits what the model can see."""

from __future__ import annotations

import itertools
import re
from importlib import resources

import pytest

from llmi.errors import ConfigError
from llmi.prompting import BUILTIN_NAME, build_messages, build_system_prompt, image_note, prompt_file
from llmi.protocol import SOURCES, ToolCall, parse_response

#: A tag as the model should write it. A tag *mentioned* in backticks (`<imgen>`) is prose, not an example.
TAG = re.compile(r"(?<!`)<imgen>(.*?)</imgen>", re.S)
PLACEHOLDER = re.compile(r"\{\{[A-Z_]+\}\}")
ALL_SUBSETS = [list(c) for r in range(len(SOURCES) + 1) for c in itertools.combinations(SOURCES, r)]


def prompt_files() -> list[str]:
    folder = resources.files("llmi").joinpath("prompts")
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".md") and not p.name.startswith("judge_"))


def example_sources(text: str) -> list[str]:
    return [c.source for c in parse_response("\n\n".join(m.group(0) for m in TAG.finditer(text)), 1).calls]


@pytest.mark.parametrize("name", prompt_files())
def test_every_example_tag_in_every_prompt_file_is_a_valid_tool_call(name):
    """The examples of a file, read in order as one response with one user image (what the edit
    example says the user attached), are all valid calls with no format violation."""
    text = prompt_file(name)
    tags = TAG.findall(text)
    if name.startswith("tool_") and name != "tool_edit.md":
        assert len(tags) == 1, f"{name} should show exactly one example"
    if name == "edit_rules.md":
        assert len(tags) == 2, "the worked indexing example edits the user's image, then the first edit"
    response = "\n\n".join(f"<imgen>{t}</imgen>" for t in tags)
    parsed = parse_response(response, n_input_images=1)
    assert [type(s).__name__ for s in parsed.slots] == ["ToolCall"] * len(tags), parsed.invalid
    assert parsed.violations == []
    if name.startswith("tool_") and tags:
        assert parsed.calls[0].source == name[len("tool_"):-len(".md")]


def test_the_worked_edit_example_means_what_its_prose_says():
    text = prompt_file("edit_rules.md")
    first, second = parse_response("\n".join(m.group(0) for m in TAG.finditer(text)), n_input_images=1).calls
    assert (first.params["img_index"], second.params["img_index"]) == (0, 1)
    assert "becomes image 1" in text and "becomes image 2" in text and "first tag is image 0" in text


@pytest.mark.parametrize("tools", ALL_SUBSETS, ids=lambda t: "+".join(t) or "none")
def test_the_prompt_advertises_exactly_the_usable_tools(tools):
    text = build_system_prompt(tools).text
    assert not PLACEHOLDER.search(text)
    if not tools:
        assert "<imgen>" not in text and "text only" in text
        return
    listed = re.findall(r"^- `(\w+)` ", text, re.M)
    assert listed == [t for t in SOURCES if t in tools]  # one entry each, protocol order
    for other in set(SOURCES) - set(tools):
        assert f"`{other}`" not in text, f"{other} is not usable but the prompt names it"
    # every example in the assembled prompt uses an advertised tool, and every advertised tool has one
    assert set(example_sources(text.split("# Image numbers")[0])) | ({"edit"} if "edit" in tools else set()) \
        == set(tools)
    for tag in TAG.findall(text):
        assert "\n" not in tag  # an example tag fits on one line, as the rules ask
    assert ("img_index" in text) == ("edit" in tools)
    assert ("# Image numbers for `edit`" in text) == ("edit" in tools)


def test_builtin_prompt_is_concise_and_keeps_its_writing_rules():
    full = build_system_prompt(list(SOURCES))
    # Token cost is paid on every request: ~1200 tokens (o200k) for all four tools; a guard against bloat.
    assert len(full.text) < 5000, len(full.text)
    for rule in ('"Here is an image:"', "code block", "![...](...)", "exactly that many tags", "user's language"):
        assert rule in full.text
    assert full.name == BUILTIN_NAME and len(full.sha256) == 64
    assert build_system_prompt(["code"]).sha256 != full.sha256
    assert build_system_prompt(["edit", "code"]).text == build_system_prompt(["code", "edit", "bogus"]).text


def test_a_user_prompt_file_gets_its_placeholders_filled(tmp_path):
    mine = tmp_path / "house.md"
    mine.write_text("House style.\n\nTools:\n{{TOOLS}}\n\n{{EDIT_RULES}}\n\nBe brief.\n", encoding="utf-8")

    with_edit = build_system_prompt(["code", "edit"], path=mine)
    assert with_edit.name == str(mine)
    assert with_edit.text.startswith("House style.") and with_edit.text.rstrip().endswith("Be brief.")
    assert prompt_file("tool_code.md").strip() in with_edit.text
    assert prompt_file("tool_edit.md").strip() in with_edit.text
    assert "# Image numbers for `edit`" in with_edit.text

    no_edit = build_system_prompt(["search"], path=mine).text
    assert "`search`" in no_edit and "`code`" not in no_edit and "Image numbers" not in no_edit
    assert not PLACEHOLDER.search(no_edit)

    nothing = build_system_prompt([], path=mine).text
    assert "text only" in nothing and "House style." in nothing and "You write" not in nothing

    plain = tmp_path / "plain.md"
    plain.write_text("Only my words.", encoding="utf-8")
    assert build_system_prompt(list(SOURCES), path=plain).text == "Only my words.\n"


def test_an_unreadable_prompt_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the system prompt file"):
        build_system_prompt(["code"], path=tmp_path / "missing.md")
    binary = tmp_path / "binary.md"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read the system prompt file"):
        build_system_prompt(["code"], path=binary)


def test_image_note_for_vision_and_text_only_models():
    assert image_note(0, can_see=True, edit_usable=True) == ""
    seen = image_note(2, can_see=True, edit_usable=True)
    assert "2 image(s), numbered 0 to 1" in seen and "cannot see" not in seen
    assert "`edit`" in seen and "first tag will be image 2" in seen

    blind = image_note(1, can_see=False, edit_usable=True)
    assert "numbered 0," in blind and "cannot see them" in blind and "first tag will be image 1" in blind

    no_edit = image_note(3, can_see=False, edit_usable=False)
    assert "cannot see them" in no_edit and "edit" not in no_edit
    for note in (seen, blind, no_edit):
        assert not PLACEHOLDER.search(note)


def test_build_messages_puts_the_note_before_the_request():
    system = build_system_prompt(["edit"])
    msgs = build_messages("Make it blue.", system, n_images=1, can_see=False, edit_usable=True)
    assert msgs[0] == {"role": "system", "content": system.text}
    assert msgs[1]["role"] == "user"
    note, request = msgs[1]["content"].split("\n\n")
    assert "cannot see" in note and request == "Make it blue."
    assert build_messages("Hi", system)[1] == {"role": "user", "content": "Hi"}


@pytest.mark.slow
async def test_the_code_example_renders_in_the_real_chart_sandbox():
    """What the prompt shows a model must work: its chart example, run by the real sandboxed tool."""
    from llmi.config import load_settings
    from llmi.engine import Engine

    settings = load_settings(overrides={"tools": {"code": {"backends": ["sandbox"]}}, "cache": {"enabled": False}},
                             environ={})
    example = TAG.search(prompt_file("tool_code.md")).group(0)
    async with Engine(settings, cache=False) as engine:
        if "code" not in engine.usable_tools():
            pytest.skip("the chart sandbox is not usable on this host")
        doc = await engine.run_response("Text.\n\n" + example + "\n\nMore text.")
    assert [b.type for b in doc.slots] == ["image"], doc.failures
    assert doc.images[0].width > 400 and doc.violations == []
