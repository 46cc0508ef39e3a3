"""Settings: defaults, file, environment, overrides, and errors that say what to change."""

from __future__ import annotations

import pytest

from llmi.config import load_settings
from llmi.errors import ConfigError


def test_defaults_without_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={})
    assert s.tool("code").backends == ["sandbox"]
    assert s.tool("search").backends == ["local"]
    assert s.images.min_width == 400
    assert s.sandbox.allow_weaker is False


def test_file_then_env_then_overrides(tmp_path):
    cfg = tmp_path / "llmi.toml"
    cfg.write_text('[llm]\nbase_url = "http://file/v1"\nmodel = "m-file"\n[tools.search]\nbackends = ["wikimedia"]\n'
                   '[backends.search.wikimedia]\nmax_candidates = 3\n')
    s = load_settings(cfg, environ={"LLMI_MODEL": "m-env", "LLMI_TOOLS__SEARCH__CONCURRENCY": "3"},
                      overrides={"llm": {"base_url": "http://flag/v1"}})
    assert s.llm.base_url == "http://flag/v1"
    assert s.llm.model == "m-env"
    assert s.tool("search").backends == ["wikimedia"] and s.tool("search").concurrency == 3
    assert s.tool("code").backends == ["sandbox"]  # partial tool tables merge over defaults
    assert s.backend_options("search", "wikimedia") == {"max_candidates": 3}


def test_llmi_config_env_var(tmp_path, monkeypatch):
    cfg = tmp_path / "x.toml"
    cfg.write_text("[sandbox]\nworkers = 3\n")
    monkeypatch.setenv("LLMI_CONFIG", str(cfg))
    assert load_settings().sandbox.workers == 3
    monkeypatch.setenv("LLMI_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="LLMI_CONFIG"):
        load_settings()


@pytest.mark.parametrize(
    "text, match",
    [
        ("[sandbox]\nworkerz = 3\n", "workerz"),
        ("[tools.code]\nconcurrency = 'many'\n", "concurrency"),
        ("not toml = = =", "cannot read config file"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg, environ={})


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "conf" / "pics").mkdir(parents=True)
    cfg = tmp_path / "conf" / "llmi.toml"
    cfg.write_text('[cache]\npath = "c.sqlite"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings(cfg, environ={})
    assert s.resolve_path("pics") == tmp_path / "conf" / "pics"
    assert s.resolve_path("/abs/x") == __import__("pathlib").Path("/abs/x")
    assert s.cache.resolved_path(s._config_dir) == tmp_path / "conf" / "c.sqlite"
    # without a file, relative paths stay relative to the current directory
    assert load_settings(environ={}).resolve_path("pics") == __import__("pathlib").Path("pics")


def test_examples_render_from_any_directory(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from llmi.cli import app

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["render", str(root / "examples/report.txt"), "-c", str(root / "examples/llmi.toml"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["stats"]["search"] == {"total": 2, "success": 2}


# ---------------------------------------------------------------- review: edge cases found later


def test_empty_file_and_bom_and_non_utf8(tmp_path):
    cfg = tmp_path / "llmi.toml"
    cfg.write_bytes(b"")
    assert load_settings(cfg, environ={}).tool("code").backends == ["sandbox"]
    cfg.write_bytes(b'\xef\xbb\xbf[llm]\nmodel = "m"\n')  # Notepad writes a BOM
    assert load_settings(cfg, environ={}).llm.model == "m"
    cfg.write_bytes(b'[llm]\nmodel = "\xe9t\xe9"\n')  # Latin-1, not UTF-8
    with pytest.raises(ConfigError, match="UTF-8"):
        load_settings(cfg, environ={})


@pytest.mark.parametrize(
    "text, match",
    [
        ("tools = 3\n", "tools"),
        ("[tools.serach]\nconcurrency = 2\n", "serach"),
        ("[tools.search]\nretries = -1\n", "retries"),
        ("[tools.search]\nconcurrency = 0\n", "concurrency"),
        ("[tools.search]\ntimeout_s = 0\n", "timeout_s"),
        ("[tools.search]\nbackoff_s = -1\n", "backoff_s"),
        ("[tools.search]\nmax_backoff_s = -1\n", "max_backoff_s"),
    ],
)
def test_bad_tool_tables_are_config_errors(tmp_path, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg, environ={})


def test_env_values_lists_dicts_bools_and_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {
        "LLMI_TOOLS__SEARCH__BACKENDS": '["wikimedia", "diffusion:openai"]',
        "LLMI_LLM__EXTRA_BODY": '{"top_k": 20}',
        "LLMI_SANDBOX__ALLOW_WEAKER": "true",
        "LLMI_CACHE__ENABLED": "0",
        "LLMI_FETCH__ALLOW": '["10.0.0.0/8"]',
        "LLMI_LLM__MODEL": "",  # set but empty: ignored, like LLMI_MODEL=""
    }
    s = load_settings(environ=env)
    assert s.tool("search").backends == ["wikimedia", "diffusion:openai"]
    assert s.llm.extra_body == {"top_k": 20}
    assert s.sandbox.allow_weaker is True and s.cache.enabled is False
    assert s.fetch.allow == ["10.0.0.0/8"] and s.llm.model == ""
    # a plain string stays a string; a bad JSON list is reported by the field, not crashed on
    assert load_settings(environ={"LLMI_LLM__MODEL": "[x]"}).llm.model == "[x]"
    with pytest.raises(ConfigError, match="backends"):
        load_settings(environ={"LLMI_TOOLS__SEARCH__BACKENDS": "[wikimedia"})


def test_env_vars_that_contradict_each_other_are_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for env in (
        {"LLMI_TOOLS__SEARCH": "x", "LLMI_TOOLS__SEARCH__CONCURRENCY": "3"},
        {"LLMI_TOOLS__SEARCH__CONCURRENCY": "3", "LLMI_TOOLS__SEARCH": "x"},
    ):
        with pytest.raises(ConfigError, match="LLMI_TOOLS__SEARCH"):
            load_settings(environ=env)
    with pytest.raises(ConfigError, match="LLMI_MODEL"):
        load_settings(environ={"LLMI_MODEL": "m", "LLMI_LLM__MODEL__X": "x"})
