"""Settings: one TOML file plus environment variables.

Where settings come from, later winning:

1. built-in defaults (below);
2. the TOML file: ``--config PATH``, else ``$LLMI_CONFIG``, else ``./llmi.toml``, else
   ``~/.config/llmi/config.toml`` (the first that exists);
3. environment variables: ``LLMI_BASE_URL``, ``LLMI_MODEL``, ``LLMI_API_KEY`` for the writing LLM, and
   any field as ``LLMI_<SECTION>__<FIELD>`` (e.g. ``LLMI_SANDBOX__ALLOW_WEAKER=1``);
4. explicit arguments (CLI flags, keyword arguments).

Backend tables are validated by each backend's own ``Options`` model when the backend is created, so a
misspelt key fails with a message naming the backend. API keys are read from the file or from the
environment variable a backend names, never from the command line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator

from .errors import ConfigError
from .eval.settings import EvalJudgeSettings
from .server.settings import ServerSettings
from .train.settings import TrainSettings
from .tts.config import TTSSettings
from .reward.settings import RewardSettings
from .tools.spec import TOOLS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LLMSettings(_Section):
    """The writing LLM (any OpenAI-compatible server, or a local transformers model)."""

    backend: str = Field("openai", description="'openai' (any OpenAI-compatible server) or 'transformers'")
    base_url: str = Field("http://localhost:8000/v1", description="OpenAI-compatible base URL")
    model: str = Field("", description="model id; empty: the only model the server lists")
    api_key: SecretStr | None = Field(None, description="API key (or set LLMI_API_KEY)")
    model_path: str = Field("", description="for backend 'transformers': a local model folder")
    device: str = Field("auto", description="for backend 'transformers': cpu, cuda, auto")
    temperature: float | None = Field(0.7, description="sampling temperature; None: the server's default")
    top_p: float | None = Field(None, description="nucleus sampling; None: the server's default")
    max_tokens: int | None = Field(4096, description="longest response in tokens; None: the server's limit")
    timeout_s: float = Field(600.0, description="seconds one response may take")
    vision: bool | None = Field(None, description="does the model see images? None: assume yes for openai")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="backend knobs passed through")
    system_prompt_file: str = Field("", description="replace the built-in system prompt")
    starts_in_think: bool | None = Field(
        None, description="for backend 'openai': true when replies begin inside reasoning without an opening "
        "<think> (the chat template opens it, the server has no reasoning parser); None: found out from the "
        "reply (its reasoning is then streamed as text until the first </think>)")


class ToolSettings(_Section):
    """How the engine runs one tool."""

    backends: list[str] = Field(
        default_factory=list,
        description="fallback chain: backend names of this tool, or 'tool:name' for another tool",
    )
    concurrency: int = Field(4, ge=1, description="calls of this tool at once")
    timeout_s: float = Field(120.0, gt=0, description="seconds per attempt")
    retries: int = Field(2, ge=0, description="extra attempts after a transient failure")
    backoff_s: float = Field(1.0, ge=0, description="first wait between attempts; doubled per retry, with jitter")
    max_backoff_s: float = Field(
        30.0, ge=0, description="longest wait; a Retry-After above it ends the retries (the chain moves on)"
    )
    cache: bool = Field(True, description="reuse cached results of this tool (the [cache] file)")


def _default_tools() -> dict[str, ToolSettings]:
    """One ``ToolSettings`` per tool, with the tool table's defaults (:data:`llmi.tools.spec.TOOLS`)."""
    return {name: ToolSettings(**spec.defaults) for name, spec in TOOLS.items()}


class FetchSettings(_Section):
    """Downloading images from URLs that came from search results or model output."""

    allow: list[str] = Field(
        default_factory=list,
        description="hosts, host:port pairs or CIDR ranges admitted although internal (your own servers)",
    )
    max_bytes: int = Field(20 * 1024 * 1024, description="largest download, in bytes")
    timeout_s: float = Field(20.0, description="seconds per download")
    max_redirects: int = Field(5, description="redirects followed (each target checked again)")
    user_agent: str = Field("llmi/0.1 (+https://github.com/llmi-project/llmi)", description="User-Agent header sent")


class ImageLimits(_Section):
    """Which images a tool result may be: smaller ones are refused (search picks another), larger ones too."""

    min_width: int = Field(400, description="narrowest image accepted, in pixels")
    min_height: int = Field(400, description="lowest image accepted, in pixels")
    max_width: int = Field(12000, description="widest image accepted, in pixels")
    max_height: int = Field(12000, description="tallest image accepted, in pixels")
    max_pixels: int = Field(64_000_000, description="most pixels decoded (guards against decompression bombs)")


class SandboxSettings(_Section):
    """The chart tool's sandbox."""

    workers: int = Field(2, description="warm chart workers")
    memory_mb: int = Field(1536, description="memory limit of one chart run, in MiB")
    cpu_s: int = Field(20, description="CPU seconds one chart run may use")
    wall_s: float = Field(30.0, description="seconds one chart run may take")
    max_output_bytes: int = Field(16 * 1024 * 1024, description="largest chart image, in bytes")
    dpi: int = Field(150, description="resolution charts are saved at")
    allow_weaker: bool = Field(
        False, description="run even when required sandbox layers are missing on this host (an explicit, logged choice)")
    max_jobs_per_worker: int = Field(500, description="recycle a worker after this many jobs")


class CacheSettings(_Section):
    """The tool-result cache, shared by generation, evaluation and reward scoring."""

    enabled: bool = Field(True, description="cache tool results")
    path: str = Field("", description="sqlite file; empty: $XDG_CACHE_HOME/llmi/cache.sqlite")

    def resolved_path(self, base: Path | None = None) -> Path:
        if self.path:
            p = Path(self.path).expanduser()
            return p if p.is_absolute() or base is None else base / p
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "llmi" / "cache.sqlite"


class JudgeSettings(_Section):
    """A judge of the reward ([llm_judge] reads the text, [mllm_judge] the finished document): any
    OpenAI-compatible chat endpoint."""

    base_url: str = Field("", description="OpenAI-compatible base URL of the judge")
    model: str = Field("", description="model id; empty: the only model the server lists")
    api_key: SecretStr | None = Field(None, description="API key (prefer api_key_env)")
    api_key_env: str = Field("", description="environment variable holding the API key")
    concurrency: int = Field(8, description="requests in flight to this judge")
    timeout_s: float = Field(120.0, description="seconds per request")
    retries: int = Field(3, description="extra attempts after a failed or unparseable reply")
    backoff_s: float = Field(
        1.0, ge=0, description="first wait between attempts; doubled per retry (with jitter); a Retry-After wins")
    max_backoff_s: float = Field(30.0, ge=0, description="the longest any one wait may be, Retry-After included")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="request fields passed through, e.g. {temperature = 0.5}")


class Settings(_Section):
    llm: LLMSettings = Field(default_factory=LLMSettings, description="the writing LLM")
    tools: dict[str, ToolSettings] = Field(
        default_factory=_default_tools, description="per tool: fallback chain of backends, limits, retries")
    backends: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="backends[tool][name]: one backend's own option table")
    fetch: FetchSettings = Field(default_factory=FetchSettings, description="safe downloads of image URLs")
    images: ImageLimits = Field(default_factory=ImageLimits, description="sizes a tool's image may have")
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings, description="the chart tool's sandbox")
    cache: CacheSettings = Field(default_factory=CacheSettings, description="the tool-result cache")
    llm_judge: JudgeSettings = Field(default_factory=JudgeSettings, description="the reward's text judge")
    mllm_judge: JudgeSettings = Field(default_factory=JudgeSettings, description="the reward's image judge")
    reward: RewardSettings = Field(default_factory=RewardSettings, description="the hybrid reward's knobs (llmi reward, TRL)")
    server: ServerSettings = Field(default_factory=ServerSettings, description="llmi serve")
    train: TrainSettings = Field(default_factory=TrainSettings, description="llmi train")
    eval_judge: EvalJudgeSettings = Field(default_factory=EvalJudgeSettings, description="llmi eval: the judge")
    tts: TTSSettings = Field(default_factory=TTSSettings, description="test-time scaling (--tts N, llmi.tts)")

    #: The folder of the config file these settings came from (relative paths in it are relative to it).
    _config_dir: Path | None = PrivateAttr(None)

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, tools: dict[str, ToolSettings]) -> dict[str, ToolSettings]:
        unknown = sorted(set(tools) - set(_default_tools()))
        if unknown:  # a misspelt [tools.serach] table would otherwise be ignored without a word
            raise ValueError(f"unknown tool(s) {', '.join(unknown)}; the tools are {', '.join(_default_tools())}")
        return tools

    def resolve_path(self, path: str | os.PathLike) -> Path:
        """A path from the settings: ``~`` expanded; a relative one is taken relative to the config file's
        folder when the settings came from a file, else to the current directory."""
        p = Path(path).expanduser()
        if p.is_absolute() or self._config_dir is None:
            return p
        return self._config_dir / p

    def tool(self, name: str) -> ToolSettings:
        return self.tools.get(name) or _default_tools()[name]

    def backend_options(self, tool: str, name: str) -> dict[str, Any]:
        return dict(self.backends.get(tool, {}).get(name, {}))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def find_config_file(explicit: str | os.PathLike | None = None) -> Path | None:
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    env = os.environ.get("LLMI_CONFIG")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ConfigError(f"LLMI_CONFIG points at {p}, which does not exist")
        return p
    for p in (Path("llmi.toml"), Path.home() / ".config" / "llmi" / "config.toml"):
        if p.is_file():
            return p
    return None


def _env_value(value: str) -> Any:
    """An environment value: JSON when it looks like a list or table (``'["a", "b"]'``, ``'{"k": 1}'``),
    else the string, which pydantic converts (``"1"``/``"true"`` for booleans, numbers)."""
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            pass  # left as a string: the field's validation error names the variable's section and key
    return value


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    owner: dict[tuple[str, ...], str] = {}  # the variable that set each value
    short = {"LLMI_BASE_URL": ("llm", "base_url"), "LLMI_MODEL": ("llm", "model"), "LLMI_API_KEY": ("llm", "api_key")}
    for var, (sec, key) in short.items():
        if environ.get(var):
            out.setdefault(sec, {})[key] = environ[var]
            owner[(sec, key)] = var
    for var, value in sorted(environ.items()):
        if not var.startswith("LLMI_") or "__" not in var or value == "":  # set but empty: unset
            continue
        path = var[5:].lower().split("__")
        node = out
        for depth, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{var} sets a key inside {owner[tuple(path[: depth + 1])]}, which is a value; unset one of them")
        if isinstance(node.get(path[-1]), dict):
            inner = next(v for k, v in owner.items() if k[: len(path)] == tuple(path) and len(k) > len(path))
            raise ConfigError(f"{var} is a value, but {inner} sets a key inside it; unset one of them")
        node[path[-1]] = _env_value(value)
        owner[tuple(path)] = var
    return out


def load_settings(
    path: str | os.PathLike | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults, the config file, the environment and ``overrides``."""
    data: dict[str, Any] = {}
    cfg = find_config_file(path)
    if cfg is not None:
        try:
            data = tomllib.loads(cfg.read_text(encoding="utf-8-sig"))  # -sig: a BOM (Notepad) is skipped
        except UnicodeDecodeError as exc:
            raise ConfigError(f"cannot read config file {cfg}: it is not UTF-8 text ({exc})") from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {cfg}: {exc}") from exc
    data = _deep_merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    if overrides:
        data = _deep_merge(data, overrides)
    if isinstance(data.get("tools"), dict):  # partial tool tables merge over the defaults (else: invalid below)
        defaults = {k: v.model_dump() for k, v in _default_tools().items()}
        data["tools"] = _deep_merge(defaults, data["tools"])
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        where = f" (from {cfg})" if cfg else ""
        raise ConfigError(f"invalid settings{where}:\n{exc}") from exc
    if cfg is not None:
        settings._config_dir = cfg.resolve().parent
    return settings
