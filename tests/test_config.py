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


# ------------------------------------------------------------------------------------------------
# Help text and the [reward] table
# ------------------------------------------------------------------------------------------------


def _fields_without_help(model, prefix=""):
    from pydantic import BaseModel

    missing = []
    for name, field in model.model_fields.items():
        if not field.description:
            missing.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            missing += _fields_without_help(ann, f"{prefix}{name}.")
    return missing


def test_every_settings_field_has_help_text():
    from llmi.config import Settings, ToolSettings

    assert _fields_without_help(Settings) + _fields_without_help(ToolSettings, "tools.*.") == []


def test_reward_table_from_toml(tmp_path):
    from llmi.reward import RewardConfig

    cfg = tmp_path / "llmi.toml"
    cfg.write_text(
        "[reward]\nw_tool = 0.1\non_judge_error = \"fallback\"\nfallback_score = 2.5\n"
        "tool_weights = {code = 0.5, edit = 0.3, search = 0.1, diffusion = 0.1}\n"
        "no_image_mllm = [4, 4, 4]\nimpute = \"group_mean\"\n",
        encoding="utf-8",
    )
    s = load_settings(cfg, environ={})
    rc = s.reward.to_config()
    assert isinstance(rc, RewardConfig)
    assert (rc.w_tool, rc.on_judge_error, rc.fallback_score, rc.no_image_mllm) == (0.1, "fallback", 2.5, (4, 4, 4))
    assert dict(rc.tool_weights) == {"code": 0.5, "edit": 0.3, "search": 0.1, "diffusion": 0.1}
    assert s.reward.impute == "group_mean"
    assert s.reward.to_config(w_tool=0.0).w_tool == 0.0  # a flag wins over the file
    assert load_settings(cfg, environ={"LLMI_REWARD__W_TOOL": "0.25"}).reward.w_tool == 0.25


def test_reward_defaults_are_the_papers(tmp_path, monkeypatch):
    from llmi.reward import RewardConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMI_CONFIG", raising=False)

    assert load_settings(environ={}).reward.to_config() == RewardConfig()


@pytest.mark.parametrize(
    "text, match",
    [
        ("[reward]\nw_nmu = 0.3\n", "w_nmu"),
        ("[reward]\nw_num = 0\nw_mllm = 0\nw_llm = 0\n", "at least one"),
        ("[reward]\non_judge_error = \"ignore\"\n", "on_judge_error"),
        ("[reward]\ntool_weights = {crayons = 1}\n", "crayons"),
        ("[reward]\ntool_beta = 2\n", "tool_beta"),
    ],
)
def test_bad_reward_tables_are_config_errors(tmp_path, text, match):
    cfg = tmp_path / "llmi.toml"
    cfg.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg, environ={})
