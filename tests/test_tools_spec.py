"""The tool table: one place for each tool's parameters, prompt, credit, reward weight and defaults."""

from __future__ import annotations

import ast
from importlib import resources
from pathlib import Path

import pytest

from llmi import protocol
from llmi.config import Settings
from llmi.prompting import build_system_prompt
from llmi.render.credit import credit_text
from llmi.reward import DEFAULT_TOOL_WEIGHTS
from llmi.tools import registry
from llmi.tools.spec import PARAMS, SOURCES, TOOLS

SRC = Path(__file__).resolve().parents[1] / "src" / "llmi"


def test_the_four_tools_in_protocol_order():
    assert SOURCES == ("search", "diffusion", "code", "edit")
    assert protocol.SOURCES is SOURCES and protocol.PARAMS is PARAMS and registry.TOOLS == SOURCES
    assert DEFAULT_TOOL_WEIGHTS == {"code": 0.4, "edit": 0.3, "search": 0.2, "diffusion": 0.1}  # the paper's


@pytest.mark.parametrize("name", SOURCES)
def test_a_tag_with_exactly_the_table_params_is_valid(name):
    spec = TOOLS[name]
    values = {"query": "fox", "prompt": "a fox", "code": "plt.plot([1])", "img_index": 0}
    params = {p: values[p] for p in spec.params}
    raw = protocol.json.dumps({"source": name, "description": "d", "params": params})
    n_inputs = 1 if name == "edit" else 0
    assert isinstance(protocol.validate(raw, 0, n_inputs, 1), protocol.ToolCall)
    extra = protocol.json.dumps({"source": name, "description": "d", "params": {**params, "x": "y"}})
    assert isinstance(protocol.validate(extra, 0, n_inputs, 1), protocol.InvalidTag)


@pytest.mark.parametrize("name", SOURCES)
def test_prompt_files_exist_and_the_prompt_lists_exactly_the_usable_tools(name):
    spec = TOOLS[name]
    for f in filter(None, (spec.prompt_file, spec.rules_file)):
        assert resources.files("llmi").joinpath("prompts", f).is_file(), f
    own = resources.files("llmi").joinpath("prompts", spec.prompt_file).read_text(encoding="utf-8").strip()
    assert own in build_system_prompt([name]).text
    others = [TOOLS[t] for t in SOURCES if t != name]
    text = build_system_prompt([name]).text
    for other in others:
        assert resources.files("llmi").joinpath("prompts", other.prompt_file).read_text(encoding="utf-8").strip() not in text
    rules = resources.files("llmi").joinpath("prompts", "edit_rules.md").read_text(encoding="utf-8").strip()
    assert (rules in text) == (spec.rules_file == "edit_rules.md")


def test_credit_comes_from_the_table():
    assert credit_text("diffusion", {"model": "flux"}) == "Generated with flux"
    assert credit_text("code", {}) == "Chart rendered from code"
    assert credit_text("edit", {"backend": "ark"}, {"img_index": 2}) == "Edited with ark (from image 2)"
    assert credit_text("search", {"title": "Fox", "license": "CC0", "page_url": "https://ex.org/f"}) == (
        "Photo: Fox, CC0 — ex.org <https://ex.org/f>")
    assert credit_text("input", {}) == "Your image"
    assert credit_text("crayons", {"cached": True}) == "Image from crayons (cached)"
    for name, spec in TOOLS.items():
        assert spec.credit({}, {}) and all(isinstance(p, str) or hasattr(p, "url") for p in spec.credit({}, {}))


def test_config_defaults_come_from_the_table():
    s = Settings()
    for name, spec in TOOLS.items():
        for key, value in spec.defaults.items():
            assert getattr(s.tools[name], key) == value
    assert s.tools["code"].backends == ["sandbox"] and s.tools["search"].backends == ["local"]


#: Where a dict keyed by the four tools would be a second copy of the table (what the table holds: params,
#: prompts, credits, reward weights, default settings). Feature packages may keep per-tool tables of their
#: own (how test-time scaling improves each tool's result) — but not a second list of the names.
CORE = ("protocol.py", "prompting.py", "config.py", "engine.py", "document.py", "render/", "reward/", "tools/")


def test_no_module_outside_the_table_lists_the_four_tools():
    """A tuple, list or set naming all four tools outside ``tools/spec.py`` is a second list of them (use
    ``SOURCES``); a dict keyed by them in a core module is a second table (add a field to ``ToolSpec``)."""
    names = set(SOURCES)
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel == "tools/spec.py":
            continue
        core = rel.startswith(CORE)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if isinstance(node, ast.Dict) and not core:
                continue
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and items:
                found = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
                if names <= found:
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []
