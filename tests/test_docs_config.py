"""Every ```toml block in README.md and docs/*.md must be a valid llmi configuration.

Docs rot silently: a renamed option or backend keeps "working" in the README until a user copies it. Each
block is loaded through ``load_settings`` (the same path as ``--config``), every backend named in a fallback
chain must exist, and every ``[backends.<tool>.<name>]`` table must validate against that backend's own
``Options`` model (extra keys are forbidden there, so a misspelt key fails here).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmi.config import load_settings
from llmi.engine import parse_chain_entry
from llmi.protocol import SOURCES
from llmi.tools import registry

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "llmi.toml"]
_FENCE = re.compile(r"^```toml[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks() -> list[tuple[str, str]]:
    out = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            out.append((path.relative_to(ROOT).as_posix(), text))
            continue
        for i, m in enumerate(_FENCE.finditer(text)):
            line = text[: m.start()].count("\n") + 1
            out.append((f"{path.relative_to(ROOT).as_posix()}:{line}", m.group(1)))
    return out


BLOCKS = _blocks()


def test_the_docs_have_toml_examples():
    # README has two, docs/search.md two, docs/diffusion-edit.md one; if they vanish, this test is moot.
    assert len(BLOCKS) >= 6, [where for where, _ in BLOCKS]


@pytest.mark.parametrize("where, text", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_toml_block_is_a_valid_config(where, text, tmp_path):
    cfg = tmp_path / "llmi.toml"
    cfg.write_text(text, encoding="utf-8")
    settings = load_settings(cfg, environ={})  # no LLMI_* variables from the machine running the tests

    for tool in SOURCES:
        for entry in settings.tool(tool).backends:
            t, name = parse_chain_entry(tool, entry)
            assert name in registry.names(t), f"{where}: [tools.{tool}] names unknown backend {entry!r}"

    checked = 0
    for tool, tables in settings.backends.items():
        assert tool in SOURCES, f"{where}: [backends.{tool}] is not a tool"
        for name in tables:
            cls = registry.get(tool, name)
            cls.Options.model_validate(settings.backend_options(tool, name))
            checked += 1
    assert checked or "[backends." not in text


def test_a_misspelt_key_in_a_doc_block_would_be_caught(tmp_path):
    """The check above is only worth something if the Options models really refuse unknown keys."""
    from pydantic import ValidationError

    cfg = tmp_path / "llmi.toml"
    cfg.write_text('[backends.search.local]\nroot = "x"\nrecursiv = true\n', encoding="utf-8")
    settings = load_settings(cfg, environ={})
    with pytest.raises(ValidationError):
        registry.get("search", "local").Options.model_validate(settings.backend_options("search", "local"))
