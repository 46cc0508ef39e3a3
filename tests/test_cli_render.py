"""`llmi render` end to end on the shipped examples (offline: sandboxed charts, local library, Pillow edits)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmi.cli import app, main  # noqa: F401  (main registers the subcommands)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def cli():
    from llmi.cli import doctor, render  # noqa: F401

    return CliRunner()


@pytest.fixture
def in_repo(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMI_CONFIG", raising=False)
    return tmp_path


def test_render_report_example_to_json(cli, in_repo):
    out = in_repo / "report.json"
    r = cli.invoke(app, ["render", "examples/report.txt", "--config", "examples/llmi.toml", "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    kinds = [b["type"] for b in doc["blocks"]]
    assert kinds.count("image") == 4, [b.get("reason") for b in doc["blocks"] if b["type"] == "failure"]
    assert doc["stats"] == {"search": {"total": 2, "success": 2}, "code": {"total": 2, "success": 2}}
    images = [b for b in doc["blocks"] if b["type"] == "image"]
    assert images[0]["provenance"]["backend"] == "local"
    assert "bicycle" in images[0]["provenance"]["path"]
    assert "lighthouse" in images[3]["provenance"]["path"]
    assert images[1]["mime"] == "image/png" and images[1]["width"] > 400
    assert "The user wants" not in json.dumps(doc)  # think block dropped
    assert doc["violations"] == []


def test_render_edit_chain_example_to_html_and_markdown(cli, in_repo):
    html = in_repo / "garden.html"
    r = cli.invoke(app, ["render", "examples/edit_chain.txt", "--image", "examples/images/garden.jpg",
                         "--config", "examples/llmi.toml", "-o", str(html)])
    assert r.exit_code == 0, r.output
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 4
    assert 'class="llmi-failure"' not in page

    md = in_repo / "garden.md"
    r = cli.invoke(app, ["render", "examples/edit_chain.txt", "-i", "examples/images/garden.jpg",
                         "-c", "examples/llmi.toml", "-o", str(md)])
    assert r.exit_code == 0, r.output
    assets = sorted(p.name for p in (in_repo / "garden_assets").iterdir())
    assert len(assets) == 4


def test_failed_tags_still_exit_zero(cli, in_repo):
    resp = in_repo / "r.txt"
    resp.write_text('Text <imgen>{"source": "diffusion", "description": "d", "params": {"prompt": "p"}}</imgen> '
                    "<imgen>{broken</imgen> end")
    out = in_repo / "o.json"
    r = cli.invoke(app, ["render", str(resp), "-c", "examples/llmi.toml", "-o", str(out)])
    assert r.exit_code == 0, r.output
    blocks = json.loads(out.read_text())["blocks"]
    assert [b.get("kind") for b in blocks if b["type"] == "failure"] == ["no_backend", "unparseable_payload"]
    assert "2 failure(s)" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["render", "missing.txt", "-o", "{tmp}/o.html"], "does not exist"),
        (["render", "examples/report.txt", "-i", "missing.png", "-o", "{tmp}/o.html"], "input image missing.png does not exist"),
        (["render", "examples/report.txt", "-i", "examples/library/lighthouse-rocky-coast.txt", "-o", "{tmp}/o.html"], "is not a PNG"),
        (["render", "examples/report.txt", "-o", "{tmp}/o.pdf"], "output format"),
        (["render", "examples/report.txt", "-c", "nope.toml", "-o", "{tmp}/o.html"], "does not exist"),
    ],
)
def test_unusable_input_is_one_line_and_nonzero(cli, in_repo, args, message):
    r = cli.invoke(app, [a.replace("{tmp}", str(in_repo)) for a in args])
    assert r.exit_code == 2
    assert message in r.output
    assert "Traceback" not in r.output


def test_doctor_lists_tools_backends_and_sandbox_layers(cli, in_repo):
    r = cli.invoke(app, ["doctor", "-c", "examples/llmi.toml"])
    assert r.exit_code == 0, r.output
    for word in ("search", "local", "wikimedia", "code", "sandbox", "edit", "pillow", "landlock"):
        assert word in r.output.lower(), word
