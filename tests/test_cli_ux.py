"""What a new user trips over on the command line: every unusable input is one line and exit 2 (never a
traceback), a document is still written when tags fail, text from models and tools is never taken for
Rich markup, and ``llmi doctor`` stays readable at 80 columns and finishes quickly when services hang."""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmi.cli import app
from tests.helpers import make_png

ROOT = Path(__file__).resolve().parents[1]
SEARCH_TAG = '<imgen>{"source": "search", "description": "bike", "params": {"query": "red bicycle"}}</imgen>'
EDIT_TAG = '<imgen>{"source": "edit", "description": "m", "params": {"img_index": 0, "prompt": "mirror the image"}}</imgen>'


@pytest.fixture
def cli(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("LLMI_CONFIG", raising=False)
    for var in ("SERPAPI_API_KEY", "BRAVE_API_KEY", "OPENAI_API_KEY", "ARK_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input)

    return invoke


def assert_one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    for w in words:
        assert w in lines[0], (w, lines[0])


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data, encoding="utf-8")
    return p


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (a decompression bomb's first bytes)."""

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


# -- configuration ------------------------------------------------------------------------------------
def test_bad_toml_is_one_line(cli, tmp_path):
    cfg = write(tmp_path, "bad.toml", "[tools.search\nbackends = 1\n")
    assert_one_line_error(cli("render", "examples/report.txt", "-c", cfg, "-o", tmp_path / "o.html"),
                          "cannot read config file", "line 1")


def test_misspelt_settings_key_is_one_line_naming_the_key(cli, tmp_path):
    cfg = write(tmp_path, "c.toml", '[tools.search]\nbackend = ["local"]\n')
    assert_one_line_error(cli("render", "examples/report.txt", "-c", cfg, "-o", tmp_path / "o.html"),
                          "tools.search.backend", "unknown key")


def test_unknown_backend_in_a_chain_stops_before_any_work(cli, tmp_path):
    cfg = write(tmp_path, "c.toml", '[tools.search]\nbackends = ["local", "nosuch"]\n')
    out = tmp_path / "o.html"
    assert_one_line_error(cli("render", "examples/report.txt", "-c", cfg, "-o", out),
                          "tools.search.backends", "'nosuch'", "known: ", "wikimedia")
    assert not out.exists()


def test_misspelt_backend_option_names_the_table_literally(cli, tmp_path):
    # "[backends.search.local]" used to vanish: Rich took it for a style tag
    cfg = write(tmp_path, "c.toml", '[backends.search.local]\nroot = "examples/library"\nrecursiv = true\n')
    assert_one_line_error(cli("render", "examples/report.txt", "-c", cfg, "-o", tmp_path / "o.html"),
                          "[backends.search.local]", "recursiv")


def test_missing_api_key_fails_the_tags_not_the_run(cli, tmp_path):
    cfg = write(tmp_path, "c.toml", '[tools.search]\nbackends = ["serpapi"]\n[tools.code]\nbackends = []\n')
    resp = write(tmp_path, "r.txt", f"A bike: {SEARCH_TAG} done")
    out = tmp_path / "o.html"
    r = cli("render", resp, "-c", cfg, "-o", out)
    assert r.exit_code == 0, r.output
    assert out.exists()
    assert "set SERPAPI_API_KEY" in r.output and "llmi doctor" in r.output
    assert "0 image(s), 1 failure(s)" in r.output


def test_every_tag_failing_still_writes_the_document(cli, tmp_path):
    resp = write(tmp_path, "r.txt", 'a <imgen>{"source": "video", "description": "x", "params": {}}</imgen> '
                                    '<imgen>not a dict</imgen> <imgen>{"source": "search"')
    out = tmp_path / "o.md"
    r = cli("render", resp, "-c", "examples/llmi.toml", "-o", out)
    assert r.exit_code == 0, r.output
    assert "3 failure(s)" in r.output and out.read_text(encoding="utf-8").count("Image failed") == 3


# -- the response file ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, words",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["binary", "NUL"]),
        (b"caf\xe9 au lait", ["not UTF-8", "offset 3"]),
    ],
)
def test_binary_response_is_one_line(cli, tmp_path, data, words):
    resp = write(tmp_path, "r.txt", data)
    assert_one_line_error(cli("render", resp, "-c", "examples/llmi.toml", "-o", tmp_path / "o.html"), *words)


@pytest.mark.parametrize("path, words", [("examples", ["is a folder"]), ("/dev/zero", ["not a regular file"]),
                                         ("missing.txt", ["does not exist"])])
def test_unreadable_response_is_one_line(cli, tmp_path, path, words):
    assert_one_line_error(cli("render", path, "-c", "examples/llmi.toml", "-o", tmp_path / "o.html"), *words)


def test_huge_response_is_refused_without_reading_it(cli, tmp_path, monkeypatch):
    from llmi.cli import common

    monkeypatch.setattr(common, "MAX_RESPONSE_BYTES", 1024 * 1024)
    resp = tmp_path / "r.txt"
    with open(resp, "wb") as f:
        f.truncate(3 * 1024 * 1024)  # sparse: the size alone must refuse it
    assert_one_line_error(cli("render", resp, "-c", "examples/llmi.toml", "-o", tmp_path / "o.html"),
                          "too large", "limit is 1 MiB")


def test_empty_response_writes_an_empty_document_with_a_warning(cli, tmp_path):
    resp = write(tmp_path, "r.txt", "")
    out = tmp_path / "o.json"
    r = cli("render", resp, "-c", "examples/llmi.toml", "-o", out)
    assert r.exit_code == 0 and out.exists()
    assert "warning: the response file" in r.output and "is empty" in r.output


def test_response_from_stdin(cli, tmp_path):
    out = tmp_path / "o.json"
    r = cli("render", "-", "-c", "examples/llmi.toml", "-i", "examples/images/garden.jpg", "-o", out,
            input=f"Mirrored: {EDIT_TAG}")
    assert r.exit_code == 0, r.output
    assert "1 image(s), 0 failure(s)" in r.output
    # the tool line numbers images like img_index does: the user's image is 0, the tag's image 1
    assert "✔ [1] edit" in r.output


def test_interrupt_leaves_no_document_and_no_traceback(cli, tmp_path, monkeypatch):
    from llmi.engine import Engine

    async def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "run_response", interrupted)
    out = tmp_path / "o.html"
    r = cli("render", "examples/report.txt", "-c", "examples/llmi.toml", "-o", out)
    assert r.exit_code == 130
    assert "error: interrupted" in r.output and "Traceback" not in r.output
    assert not out.exists() and not list(tmp_path.glob(".o.html*"))


# -- output --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, words", [("nodir/o.html", ["folder of", "does not exist"]),
                                         ("o.pdf", ["output format", ".html"]), ("adir.html", ["is a folder"])])
def test_unusable_output_is_one_line(cli, tmp_path, name, words):
    (tmp_path / "adir.html").mkdir()
    assert_one_line_error(cli("render", "examples/report.txt", "-c", "examples/llmi.toml", "-o", tmp_path / name),
                          *words)


# -- input images ---------------------------------------------------------------------------------
def test_other_image_formats_are_accepted(cli, tmp_path):
    from PIL import Image

    resp = write(tmp_path, "r.txt", EDIT_TAG)
    for fmt in ("GIF", "WEBP", "BMP"):
        img = tmp_path / f"in.{fmt.lower()}"
        Image.new("RGB", (64, 48), (10, 120, 200)).save(img, fmt)
        r = cli("render", resp, "-c", "examples/llmi.toml", "-i", img, "-o", tmp_path / f"{fmt}.json")
        assert r.exit_code == 0 and "1 image(s), 0 failure(s)" in r.output, (fmt, r.output)


@pytest.mark.parametrize(
    "name, data, words",
    [
        ("bomb.png", png_claiming(20000, 20000), ["not usable", "too large"]),
        ("scan.tiff", b"II*\x00\x08\x00\x00\x00" + b"\x00" * 64, ["not a PNG, JPEG, GIF, WEBP or BMP image"]),
        ("empty.png", b"", ["is empty"]),
        ("cut.png", make_png(64, 64)[:60], ["not usable"]),
    ],
)
def test_unusable_input_image_is_one_line(cli, tmp_path, name, data, words):
    img = write(tmp_path, name, data)
    t0 = time.monotonic()
    r = cli("render", "examples/edit_chain.txt", "-c", "examples/llmi.toml", "-i", img, "-o", tmp_path / "o.html")
    assert time.monotonic() - t0 < 30  # refused from the header, not after decoding 400 Mpx
    assert_one_line_error(r, *words)


@pytest.mark.parametrize("path, words", [("examples", ["is a folder"]), ("/dev/zero", ["not a regular file"])])
def test_input_image_that_is_not_a_file(cli, tmp_path, path, words):
    assert_one_line_error(cli("render", "examples/report.txt", "-c", "examples/llmi.toml", "-i", path,
                              "-o", tmp_path / "o.html"), *words)


# -- text we did not write is not markup ------------------------------------------------------------
def test_descriptions_and_reasons_are_printed_literally(cli, tmp_path):
    resp = write(tmp_path, "r.txt", '<imgen>{"source": "search", "description": "[bold]x[/] [/oops] [red]",'
                                    ' "params": {"query": "zzzz qqqq"}}</imgen>')
    r = cli("render", resp, "-c", "examples/llmi.toml", "-o", tmp_path / "o.json")
    assert r.exit_code == 0, r.output
    assert "[bold]x[/] [/oops] [red]" in r.output


# -- help -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [[], ["render"], ["generate"], ["reward"], ["doctor"]])
def test_help(cli, cmd):
    r = cli(*cmd, "--help")
    assert r.exit_code == 0, r.output
    assert "Usage: llmi" in r.output
    assert "list[Path]" not in r.output


# -- doctor -----------------------------------------------------------------------------------------
def test_doctor_fits_80_columns_and_shows_text_literally(cli):
    r = cli("doctor", "-c", "examples/llmi.toml")
    assert r.exit_code == 0, r.output
    assert "config file: examples/llmi.toml" in r.output
    assert all(len(line.rstrip()) <= 80 for line in r.output.splitlines()), r.output
    assert "…" not in r.output  # details fold instead of being cut off
    assert "usable tools: search, code, edit" in r.output


def test_doctor_shows_details_literally(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    r = cli("doctor", "-c", "examples/llmi.toml")
    assert r.exit_code == 0, r.output
    # both used to lose their brackets: Rich took "[local]" and "[backends...]" for style tags
    if "missing_dependency" in r.output:  # torch/diffusers not installed here
        assert "pip install 'llmi[local]'" in r.output
    assert "[backends.diffusion.qwen-server]" in r.output


@pytest.fixture
def hanging_server():
    """Accepts connections and never answers (a service behind a dead proxy)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns, stop = [], threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_doctor_probe_is_bounded_and_clear(cli, tmp_path, monkeypatch, hanging_server):
    from llmi.cli import doctor

    monkeypatch.setattr(doctor, "PROBE_TIMEOUT_S", 1.0)
    cfg = write(tmp_path, "c.toml", f'''
[tools.search]
backends = ["serpapi"]
[tools.diffusion]
backends = ["openai", "qwen-server"]
[tools.edit]
backends = ["qwen-server", "pillow"]
[backends.search.serpapi]
api_key = "serp-SECRET-123"
base_url = "{hanging_server}"
[backends.diffusion.openai]
api_key = "sk-SECRET-456"
base_url = "{hanging_server}/v1"
[backends.diffusion.qwen-server]
servers = ["{hanging_server}"]
[backends.edit.qwen-server]
servers = ["{hanging_server}"]
''')
    t0 = time.monotonic()
    r = cli("doctor", "-c", cfg, "--probe")
    elapsed = time.monotonic() - t0
    assert r.exit_code == 0, r.output
    assert elapsed < 10, elapsed  # four hanging services probed at once, not 4 x 10+ s one after another
    assert r.output.count("no answer within 1 s") == 4
    assert "SECRET" not in r.output
    assert "usable tools: code, edit (after probing)" in r.output


def test_options_become_settings_sections_only_when_given():
    """The settings overrides the subcommands build from their options (cli.common): an option left out
    (None) or given empty is not an override; 0 and False are; --model-path implies the transformers
    backend unless --backend says otherwise; a section with nothing set is left out."""
    from llmi.cli.common import given, llm_options, sections

    assert given(model=None, base_url="", temperature=0.0, vision=False) == {"temperature": 0.0, "vision": False}
    assert llm_options(model_path=Path("/m"), model="x") == {"backend": "transformers", "model_path": "/m", "model": "x"}
    assert llm_options(model_path=Path("/m"), backend="openai")["backend"] == "openai"
    assert llm_options(model=None) == {}
    assert sections(llm={}, eval_judge={"model": "j"}) == {"eval_judge": {"model": "j"}}
