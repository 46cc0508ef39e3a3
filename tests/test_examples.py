"""Every example in examples/ renders offline with examples/llmi.toml, exactly as README says.

The examples are what a new user runs first, so each must produce every image (no failure blocks, no
format violations). The examples are rendered through the CLI, from the repository root, like the README's
commands; the JSON output is then checked block by block.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmi.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

#: example -> (input images, expected images per tool in order)
CASES = {
    "report.txt": ([], ["search", "code", "code", "search"]),
    "edit_chain.txt": (["examples/images/garden.jpg"], ["edit", "edit", "edit", "code"]),
    "tutorial_zh.txt": ([], ["search", "code", "code", "code"]),
}


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.txt")) == sorted(CASES)


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    """Render an example once per module (charts take seconds); returns (output path, CLI output)."""
    tmp = tmp_path_factory.mktemp("examples")
    done: dict[tuple[str, str], tuple[Path, str]] = {}

    def _render(name: str, suffix: str = ".json") -> tuple[Path, str]:
        if (name, suffix) not in done:
            out = tmp / (Path(name).stem + suffix)
            args = ["render", f"examples/{name}", "--config", "examples/llmi.toml", "-o", str(out)]
            for img in CASES[name][0]:
                args += ["--image", img]
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(ROOT)
                mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
                mp.delenv("LLMI_CONFIG", raising=False)
                r = CliRunner().invoke(app, args)
            assert r.exit_code == 0, r.output
            done[(name, suffix)] = (out, r.output)
        return done[(name, suffix)]

    return _render


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_renders_every_image(render, name):
    tools = CASES[name][1]
    out, output = render(name)
    doc = json.loads(out.read_text(encoding="utf-8"))
    failures = [(b["tool"], b["kind"], b["reason"]) for b in doc["blocks"] if b["type"] == "failure"]
    assert failures == []
    assert doc["violations"] == []
    produced = [b for b in doc["blocks"] if b["type"] == "image"]
    assert [b["tool"] for b in produced] == tools
    assert all(b["width"] >= 400 and b["height"] >= 300 for b in produced)
    assert f"{len(tools)} image(s), 0 failure(s), 0 format violation(s)" in output


def test_chinese_tutorial_finds_the_tea_photo_and_keeps_cjk_labels(render):
    out, _ = render("tutorial_zh.txt")
    doc = json.loads(out.read_text(encoding="utf-8"))
    photo, *charts = [b for b in doc["blocks"] if b["type"] == "image"]
    assert photo["provenance"]["path"] == "green-tea-cup-wooden-table.jpg"
    # the Python-dict payload's escapes are decoded once: the code has real newlines, and the label's
    # "\n" (written as \\n in the tag) is still an escape inside the chart code
    assert "\nsales = [820" in charts[0]["params"]["code"]
    assert "'冷泡茶\\n(夏季限定)'" in charts[1]["params"]["code"]
    assert "月份" in charts[0]["params"]["code"]
    text = "".join(b["text"] for b in doc["blocks"] if b["type"] == "text")
    assert "第一步：按月统计销量" in text and "<imgen>" not in text
    if "CJK" in charts[0]["provenance"].get("font", ""):  # with a CJK font installed, every chart uses it
        assert all("CJK" in c["provenance"]["font"] for c in charts)


def test_examples_render_to_html_with_every_image_embedded(render):
    out, _ = render("tutorial_zh.txt", ".html")
    page = out.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3 and page.count("data:image/jpeg;base64,") == 1
    assert 'class="llmi-failure"' not in page
    assert "用 Python 分析一家茶馆的销售数据" in page


def test_library_images_are_big_enough_and_captioned():
    from PIL import Image

    for img in sorted((EXAMPLES / "library").glob("*.jpg")):
        with Image.open(img) as im:
            assert im.size[0] >= 800 and im.size[1] >= 600, img.name
        assert img.with_suffix(".txt").read_text(encoding="utf-8").strip(), img.name
