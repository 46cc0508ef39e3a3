"""The first thing a new user sees: the quick-start examples look right without CJK fonts, and
``llmi doctor`` says when CJK text in charts would fall back to boxes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmi.protocol import ToolCall, parse_response

ROOT = Path(__file__).resolve().parents[1]
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]")


@pytest.mark.parametrize("name", ["report.txt", "edit_chain.txt"])
def test_quick_start_charts_use_no_cjk_glyphs(name):
    """The README's first commands must look right on a fresh machine, which has no CJK font: their charts
    draw only glyphs DejaVu Sans (matplotlib's own font) has."""
    calls = [s for s in parse_response((ROOT / "examples" / name).read_text(encoding="utf-8")).segments
             if isinstance(s, ToolCall) and s.source == "code"]
    assert calls
    for call in calls:
        assert not CJK.search(call.params["code"]), call.params["code"]


def test_the_chinese_tutorial_says_it_needs_a_cjk_font():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = " ".join(readme.split("## Quick start", 1)[1].split("\n## ", 1)[0].split())
    said = quick_start[quick_start.index("Chinese tutorial"):quick_start.index("examples/tutorial_zh.txt")]
    assert "CJK font" in said and "fonts-noto-cjk" in said and "llmi doctor" in said


def test_find_cjk_font_prefers_the_listed_families():
    from llmi.tools.code.worker import find_cjk_font

    assert find_cjk_font({"DejaVu Sans": "/d.ttf", "Noto Sans CJK JP": "/j.ttc", "WenQuanYi Zen Hei": "/w.ttc"}) == (
        "Noto Sans CJK JP", "/j.ttc")
    assert find_cjk_font({"DejaVu Sans": "/d.ttf", "Some CJK Font": "/s.otf"}) == ("Some CJK Font", "/s.otf")
    assert find_cjk_font({"DejaVu Sans": "/d.ttf", "Liberation Serif": "/l.ttf"}) is None


@pytest.fixture
def doctor(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import llmi.cli.doctor  # noqa: F401 - registers the command
    from llmi.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("LLMI_CONFIG", raising=False)
    monkeypatch.chdir(ROOT)

    def run():
        return CliRunner().invoke(app, ["doctor", "-c", "examples/llmi.toml"])

    return run


def test_doctor_says_when_cjk_text_would_fall_back(doctor, monkeypatch):
    import llmi.tools.code.worker as worker

    monkeypatch.setattr(worker, "find_cjk_font", lambda fonts=None: None)  # a fresh machine
    r = doctor()
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "no CJK font: Chinese, Japanese, Korean text in charts renders as boxes" in text
    assert "apt-get install fonts-noto-cjk" in text and "fontlist-" in text
    assert all(len(line.rstrip()) <= 80 for line in r.output.splitlines()), r.output


def test_doctor_names_the_cjk_font_it_found(doctor, monkeypatch):
    import llmi.tools.code.worker as worker

    monkeypatch.setattr(worker, "find_cjk_font", lambda fonts=None: ("Noto Sans CJK SC", "/fonts/NotoSansCJK.ttc"))
    r = doctor()
    assert r.exit_code == 0, r.output
    assert "chart fonts: DejaVu Sans; CJK text: Noto Sans CJK SC" in r.output
    assert "renders as boxes" not in r.output


def test_doctor_matches_what_the_chart_worker_would_choose(doctor):
    """Unpatched: doctor's answer is the worker's own lookup on this machine."""
    from llmi.tools.code.worker import find_cjk_font

    r = doctor()
    found = find_cjk_font()
    if found:
        assert f"CJK text: {found[0]}" in r.output
    else:
        assert "no CJK font" in r.output


async def test_a_chart_drawn_with_boxes_is_not_cached(tmp_path):
    """A chart whose glyphs no font has (CJK text on a machine without a CJK font) is not cached, so it is
    drawn again once a font is installed; a chart that drew every glyph is cached as usual."""
    from types import SimpleNamespace

    from llmi.config import load_settings
    from llmi.tools.base import BackendContext, ToolRequest
    from llmi.tools.code import backend as code_backend
    from llmi.tools.code.pool import ChartOutcome
    from tests.fakes import png_for

    png = png_for("chart").data
    warning = "Glyph 38144 (\\N{CJK UNIFIED IDEOGRAPH-9500}) missing from font(s) DejaVu Sans."
    settings = load_settings(overrides={"cache": {"enabled": False}}, environ={})
    chart = code_backend.SandboxChartBackend(code_backend.SandboxOptions(), BackendContext(settings, None, None))
    results = []
    for warnings in ((warning,), ()):
        async def run(code, _w=warnings):
            return ChartOutcome(ok=True, png=png, font="DejaVu Sans", warnings=_w)

        chart._pool = SimpleNamespace(run=run)
        results.append(await chart.run(ToolRequest("code", {"code": "plt.title('销售额')"})))
    assert [r.cacheable for r in results] == [False, True]
    assert results[0].provenance["warnings"] == [warning]


async def test_the_engine_does_not_cache_a_result_marked_not_cacheable(tmp_path):
    from llmi.cache import Cache
    from llmi.engine import Engine
    from llmi.tools import registry
    from llmi.tools.base import Backend, ToolRequest, ToolResult
    from tests.fakes import png_for
    from tests.test_engine import settings, tag

    calls = []

    class Degraded(Backend):
        tool, name = "code", "degraded"

        async def run(self, request: ToolRequest) -> ToolResult:
            calls.append(request.params["code"])
            return ToolResult(png_for(request.params["code"]), {}, cacheable="boxes" not in request.params["code"])

    registry.register(Degraded)
    try:
        cache = Cache(tmp_path / "c.sqlite")
        async with Engine(settings(tools={"code": {"backends": ["degraded"]}}), cache=cache) as engine:
            for _ in range(2):
                await engine.run_response(tag("code", "a", code="boxes") + tag("code", "b", code="fine"))
        cache.close()
    finally:
        registry.unregister("code", "degraded")
    assert calls == ["boxes", "fine", "boxes"]  # the degraded chart was made again, the good one came from the cache


def test_render_hints_when_a_chart_drew_boxes(tmp_path, monkeypatch):
    """matplotlib's "Glyph ... missing from font(s)" warnings (passed on by the sandbox) become one hint."""
    from typer.testing import CliRunner

    import llmi.cli.render  # noqa: F401 - registers the command
    from llmi.cli import app
    from llmi.tools import registry
    from llmi.tools.base import Backend, ToolRequest, ToolResult
    from tests.fakes import png_for

    class Boxes(Backend):
        tool, name = "code", "boxes"

        async def run(self, request: ToolRequest) -> ToolResult:
            return ToolResult(png_for(request.params["code"]), {"font": "DejaVu Sans", "warnings": [
                "Glyph 38144 (\\N{CJK UNIFIED IDEOGRAPH-9500}) missing from font(s) DejaVu Sans."]})

    registry.register(Boxes)
    try:
        cfg = tmp_path / "llmi.toml"
        cfg.write_text('[tools.code]\nbackends = ["boxes"]\n[cache]\nenabled = false\n', encoding="utf-8")
        resp = tmp_path / "r.txt"
        resp.write_text('<imgen>{"source": "code", "description": "d", "params": {"code": "plt.title(\'销售\')"}}'
                        "</imgen>", encoding="utf-8")
        monkeypatch.setenv("COLUMNS", "200")
        r = CliRunner().invoke(app, ["render", str(resp), "-c", str(cfg), "-o", str(tmp_path / "o.json")])
    finally:
        registry.unregister("code", "boxes")
    assert r.exit_code == 0, r.output
    assert "hint: 1 chart(s) use characters the chart fonts lack" in " ".join(r.output.split())
    assert "llmi doctor" in r.output
